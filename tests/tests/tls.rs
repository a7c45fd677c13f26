//! TLS termination, SNI, ALPN, resumption, mTLS, certificate rotation and
//! upstream TLS, with real clients: curl, `openssl s_client`, rustls.

use std::net::SocketAddr;
use std::path::Path;

use skiff_tests::tls::{curl, s_client, Ca, Subject};
use skiff_tests::{start_proxy, Backend, TempDir};

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// A gateway config: listener `web` with `tls` (YAML flow mapping body),
/// routing everything to `backend`.
fn tls_config(tls: &str, backend: SocketAddr) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    tls: {{ {tls} }}\n    routes:\n      - match: {{ path_prefix: / }}\n        cluster: app\n\
         clusters:\n  - name: app\n    endpoints: [{backend}]\n"
    )
}

/// A CA, a default certificate for shop.example.com and an SNI one for
/// api.example.com, written into `dir`; returns the CA file and the `tls` body.
fn two_certificates(dir: &TempDir) -> (Ca, String) {
    let ca = Ca::new("skiff test CA");
    let (shop_crt, shop_key) = ca
        .issue(Subject {
            dns: &["shop.example.com"],
            ..Default::default()
        })
        .write(&dir.0, "shop");
    let (api_crt, api_key) = ca
        .issue(Subject {
            dns: &["api.example.com", "*.api.example.com"],
            ..Default::default()
        })
        .write(&dir.0, "api");
    let tls = format!(
        "cert: {}, key: {}, certificates: [{{ cert: {}, key: {} }}]",
        p(&shop_crt),
        p(&shop_key),
        p(&api_crt),
        p(&api_key)
    );
    (ca, tls)
}

#[tokio::test]
async fn curl_gets_http1_and_http2_over_https() {
    let dir = TempDir::new("tls-curl");
    let backend = Backend::start("app").await;
    let (ca, tls) = two_certificates(&dir);
    let ca_file = ca.write(&dir.0, "ca");
    let (_proxy, address) = start_proxy(&tls_config(&tls, backend.address)).await;
    let url = format!("https://shop.example.com:{}/headers", address.port());
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = curl(
            "shop.example.com",
            address,
            &[
                "--cacert",
                &p(&ca_file),
                flag,
                "-w",
                "\n%{http_code} %{http_version}",
                &url,
            ],
        )
        .await;
        assert!(out.ok, "curl {flag} failed: {}", out.stderr);
        assert!(
            out.stdout.ends_with(&format!("200 {version}")),
            "{flag}: {}",
            out.stdout
        );
        assert!(
            out.stdout.contains("\"x-forwarded-proto\":\"https\""),
            "the upstream learns the client used https: {}",
            out.stdout
        );
    }
}

#[tokio::test]
async fn s_client_sees_the_certificate_for_its_sni_and_the_alpn_it_asked_for() {
    let dir = TempDir::new("tls-sni");
    let backend = Backend::start("app").await;
    let (ca, tls) = two_certificates(&dir);
    let ca_file = ca.write(&dir.0, "ca");
    let (_proxy, address) = start_proxy(&tls_config(&tls, backend.address)).await;
    for (sni, alpn, subject) in [
        ("api.example.com", "h2", "api.example.com"),
        ("v2.api.example.com", "http/1.1", "api.example.com"),
        ("shop.example.com", "h2", "shop.example.com"),
        // No SNI match: the default certificate.
        ("other.example.org", "http/1.1", "shop.example.com"),
    ] {
        let out = s_client(
            address,
            &["-servername", sni, "-alpn", alpn, "-CAfile", &p(&ca_file)],
            "",
        )
        .await;
        assert!(
            out.stdout.contains(&format!("subject=CN = {subject}")),
            "SNI {sni}: {}",
            out.stdout
        );
        assert!(
            out.stdout.contains(&format!("ALPN protocol: {alpn}")),
            "SNI {sni}: {}",
            out.stdout
        );
    }
    // TLS 1.2 is offered too.
    let out = s_client(
        address,
        &[
            "-servername",
            "shop.example.com",
            "-tls1_2",
            "-CAfile",
            &p(&ca_file),
        ],
        "",
    )
    .await;
    assert!(
        out.stdout.contains("Protocol  : TLSv1.2") || out.stdout.contains("TLSv1.2"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn a_wrong_name_and_an_expired_certificate_fail_client_verification() {
    let dir = TempDir::new("tls-bad");
    let backend = Backend::start("app").await;
    let (ca, tls) = two_certificates(&dir);
    let ca_file = ca.write(&dir.0, "ca");
    let (_proxy, address) = start_proxy(&tls_config(&tls, backend.address)).await;
    let url = format!("https://other.example.org:{}/", address.port());
    let out = curl(
        "other.example.org",
        address,
        &["--cacert", &p(&ca_file), &url],
    )
    .await;
    assert!(!out.ok, "a certificate for another name must not verify");
    assert!(
        out.stderr.contains("subject name") || out.stderr.contains("does not match"),
        "{}",
        out.stderr
    );

    let (crt, key) = ca
        .issue(Subject {
            dns: &["old.example.com"],
            expired: true,
            ..Default::default()
        })
        .write(&dir.0, "expired");
    let tls = format!("cert: {}, key: {}", p(&crt), p(&key));
    let (_old, address) = start_proxy(&tls_config(&tls, backend.address)).await;
    let url = format!("https://old.example.com:{}/", address.port());
    let out = curl(
        "old.example.com",
        address,
        &["--cacert", &p(&ca_file), &url],
    )
    .await;
    assert!(!out.ok, "an expired certificate must not verify");
    assert!(out.stderr.contains("expired"), "{}", out.stderr);
}

#[tokio::test]
async fn sessions_resume() {
    let dir = TempDir::new("tls-resume");
    let backend = Backend::start("app").await;
    let (ca, tls) = two_certificates(&dir);
    let ca_file = ca.write(&dir.0, "ca");
    let (proxy, address) = start_proxy(&tls_config(&tls, backend.address)).await;
    let session = p(&dir.path("session.pem"));
    for version in ["-tls1_2", "-tls1_3"] {
        let request = "GET / HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n\r\n";
        // -ign_eof: read to the server's close, so TLS 1.3 tickets arrive.
        let common = [
            "-servername",
            "shop.example.com",
            version,
            "-ign_eof",
            "-CAfile",
            &p(&ca_file),
        ];
        let first = s_client(
            address,
            &[&common[..], &["-sess_out", &session]].concat(),
            request,
        )
        .await;
        assert!(
            first.stdout.contains("New, "),
            "{version}: {}",
            first.stdout
        );
        let again = s_client(
            address,
            &[&common[..], &["-sess_in", &session]].concat(),
            request,
        )
        .await;
        assert!(
            again.stdout.contains("Reused, "),
            "{version} resumes: {}",
            again.stdout
        );
    }
    let metrics = skiff::metrics::render(proxy.registry(), &proxy.clusters());
    let resumed =
        skiff_tests::metric_value(&metrics, "skiff_tls_resumed_total", &[("listener", "web")]);
    assert!(resumed >= Some(2.0), "{metrics}");
}
