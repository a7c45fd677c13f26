//! TLS termination, SNI, ALPN, resumption, mTLS, certificate rotation and
//! upstream TLS, with real clients: curl, `openssl s_client`, rustls.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use skiff::tls::certs::TlsFiles;
use skiff_tests::tls::{
    client_config, curl, der_of, s_client, Ca, HttpsConn, SecretMount, Subject, TlsBackend,
};
use skiff_tests::{start_proxy, wait_for, Backend, TempDir};

const LIMIT: Duration = Duration::from_secs(10);

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
    let (old, address) = start_proxy(&tls_config(&tls, backend.address)).await;
    let url = format!("https://old.example.com:{}/", address.port());
    let out = curl(
        "old.example.com",
        address,
        &["--cacert", &p(&ca_file), &url],
    )
    .await;
    assert!(!out.ok, "an expired certificate must not verify");
    assert!(out.stderr.contains("expired"), "{}", out.stderr);
    // The expiry is there to alert on: 2000-01-01T00:00:00Z.
    assert_eq!(
        tls_metric(
            &old,
            "skiff_tls_certificate_expiry_timestamp_seconds",
            &[("listener", "web")]
        ),
        946_684_800.0
    );
    // And the TLS families pass Prometheus' own linter.
    let text = skiff::admin::prometheus::render(old.registry(), &old.clusters());
    let tls_families: String = text
        .lines()
        .filter(|l| l.contains("skiff_tls_"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    use std::io::Write as _;
    lint.stdin
        .take()
        .unwrap()
        .write_all(tls_families.as_bytes())
        .unwrap();
    let lint = lint.wait_with_output().unwrap();
    assert!(
        lint.status.success(),
        "{}{}\n{tls_families}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
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
    let metrics = skiff::admin::prometheus::render(proxy.registry(), &proxy.clusters());
    let resumed =
        skiff_tests::metric_value(&metrics, "skiff_tls_resumed_total", &[("listener", "web")]);
    assert!(resumed >= Some(2.0), "{metrics}");
}

/// HTTPS clients that each handshake, send a few keep-alive requests, and
/// start over; they note which certificate each handshake presented.
struct HttpsLoad {
    ok: Arc<AtomicU64>,
    failures: Arc<parking_lot::Mutex<Vec<String>>>,
    leaves: Arc<parking_lot::Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl HttpsLoad {
    fn start(address: SocketAddr, host: &'static str, ca_pem: &str, clients: usize) -> HttpsLoad {
        // No resumption: each handshake shows the certificate served now.
        let mut config = (*client_config(ca_pem, &[b"http/1.1"], None)).clone();
        config.resumption = rustls::client::Resumption::disabled();
        let config = Arc::new(config);
        let load = HttpsLoad {
            ok: Arc::default(),
            failures: Arc::default(),
            leaves: Arc::default(),
            stop: Arc::default(),
            tasks: Vec::new(),
        };
        let tasks = (0..clients)
            .map(|_| {
                let (ok, failures, leaves, stop, config) = (
                    load.ok.clone(),
                    load.failures.clone(),
                    load.leaves.clone(),
                    load.stop.clone(),
                    config.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Relaxed) {
                        let mut conn = match HttpsConn::connect(address, host, config.clone()).await
                        {
                            Ok(c) => c,
                            Err(e) => {
                                failures.lock().push(format!("handshake: {e}"));
                                continue;
                            }
                        };
                        {
                            let mut seen = leaves.lock();
                            if !seen.contains(&conn.leaf) {
                                seen.push(conn.leaf.clone());
                            }
                        }
                        for _ in 0..5 {
                            match conn.get("/").await {
                                Ok((status, _)) if status == 200 => {
                                    ok.fetch_add(1, Relaxed);
                                }
                                Ok((status, body)) => failures
                                    .lock()
                                    .push(format!("{status}: {}", String::from_utf8_lossy(&body))),
                                Err(e) => {
                                    failures.lock().push(format!("request: {e}"));
                                    break;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        HttpsLoad { tasks, ..load }
    }

    fn presented(&self, leaf: &[u8]) -> bool {
        self.leaves.lock().iter().any(|l| l == leaf)
    }

    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let failures = self.failures.lock().clone();
        (self.ok.load(Relaxed), failures)
    }
}

fn tls_metric(proxy: &skiff::Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = skiff::admin::prometheus::render(proxy.registry(), &proxy.clusters());
    skiff_tests::metric_value(&text, name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_by_symlink_swap_under_load_without_a_failed_request() {
    let dir = TempDir::new("tls-rotate");
    let backend = Backend::start("app").await;
    let ca = Ca::new("skiff test CA");
    let shop = Subject {
        dns: &["shop.example.com"],
        ..Default::default()
    };
    let first = ca.issue(Subject { ..shop });
    let second = ca.issue(Subject {
        dns: &["shop.example.com"],
        ..Default::default()
    });
    let secret_dir = dir.path("secret");
    std::fs::create_dir_all(&secret_dir).unwrap();
    let mut mount = SecretMount::new(
        &secret_dir,
        &[("tls.crt", &first.cert), ("tls.key", &first.key)],
    );
    let tls = format!(
        "cert: {}, key: {}",
        p(&mount.path("tls.crt")),
        p(&mount.path("tls.key"))
    );
    let (proxy, address) = start_proxy(&tls_config(&tls, backend.address)).await;
    let load = HttpsLoad::start(address, "shop.example.com", &ca.pem, 4);
    let (old_leaf, new_leaf) = (der_of(&first.cert), der_of(&second.cert));
    wait_for("handshakes with the first certificate", LIMIT, || {
        load.presented(&old_leaf)
    })
    .await;

    mount.update(&[("tls.crt", &second.cert), ("tls.key", &second.key)]);
    wait_for("new handshakes present the new certificate", LIMIT, || {
        load.presented(&new_leaf)
    })
    .await;

    // A broken update (a certificate with another's key) is refused; the
    // running certificate stays and traffic goes on.
    let third = ca.issue(Subject {
        dns: &["shop.example.com"],
        ..Default::default()
    });
    mount.update(&[("tls.crt", &third.cert), ("tls.key", &first.key)]);
    wait_for("the broken certificate is refused", LIMIT, || {
        tls_metric(
            &proxy,
            "skiff_tls_certificate_reloads_total",
            &[("listener", "web"), ("result", "failure")],
        ) >= 1.0
    })
    .await;
    let mut conn = HttpsConn::connect(
        address,
        "shop.example.com",
        client_config(&ca.pem, &[b"http/1.1"], None),
    )
    .await
    .expect("handshake after the refused update");
    assert_eq!(conn.leaf, new_leaf, "the last good certificate stays");
    assert_eq!(conn.get("/").await.expect("request").0, 200);

    let (ok, failures) = load.stop().await;
    assert!(ok > 0);
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        tls_metric(
            &proxy,
            "skiff_tls_certificate_reloads_total",
            &[("listener", "web"), ("result", "success")]
        ) >= 1.0
    );
    assert!(tls_metric(&proxy, "skiff_tls_handshakes_total", &[("listener", "web")]) > 1.0);
}

#[tokio::test]
async fn a_bad_certificate_in_the_config_is_refused_naming_the_field_and_file() {
    let dir = TempDir::new("tls-badcfg");
    let ca = Ca::new("skiff test CA");
    let a = ca.issue(Subject {
        dns: &["a.example.com"],
        ..Default::default()
    });
    let b = ca.issue(Subject {
        dns: &["b.example.com"],
        ..Default::default()
    });
    let (a_crt, _) = a.write(&dir.0, "a");
    let (_, b_key) = b.write(&dir.0, "b");
    let garbage = dir.write("garbage.crt", "not a certificate\n");
    for (tls, expect) in [
        (
            format!("cert: {}, key: {}", p(&a_crt), p(&b_key)),
            "does not match the certificate",
        ),
        (
            format!("cert: {}, key: {}", p(&garbage), p(&b_key)),
            "no certificate in it",
        ),
        (
            format!("cert: {}/missing.crt, key: {}", dir.0.display(), p(&b_key)),
            "cannot read",
        ),
        (format!("cert: {}", p(&a_crt)), "`cert` needs its `key`"),
    ] {
        let yaml = tls_config(&tls, "127.0.0.1:1".parse().unwrap());
        let err =
            skiff_config::Config::parse_checked(&yaml, "gateway.yaml", Path::new("."), &TlsFiles)
                .expect_err("a bad certificate must be refused")
                .to_string();
        assert!(err.contains("gateway.yaml:"), "{err}");
        assert!(err.contains("listeners[0].tls"), "{err}");
        assert!(err.contains(expect), "expected {expect:?} in: {err}");
    }
}

#[tokio::test]
async fn mtls_lets_in_allowed_identities_and_refuses_others_with_a_log_line() {
    let dir = TempDir::new("tls-mtls");
    let backend = Backend::start("app").await;
    let ca = Ca::new("mesh CA");
    let ca_file = ca.write(&dir.0, "ca");
    let (srv_crt, srv_key) = ca
        .issue(Subject {
            dns: &["gateway.shop.svc"],
            ..Default::default()
        })
        .write(&dir.0, "server");
    let order = ca
        .issue(Subject {
            uris: &["spiffe://cluster.local/ns/shop/sa/order"],
            ..Default::default()
        })
        .write(&dir.0, "order");
    let cart = ca
        .issue(Subject {
            uris: &["spiffe://cluster.local/ns/shop/sa/cart"],
            ..Default::default()
        })
        .write(&dir.0, "cart");
    let checkout = ca
        .issue(Subject {
            dns: &["checkout.shop.svc"],
            ..Default::default()
        })
        .write(&dir.0, "checkout");
    let payments = Backend::start("payments").await;
    let foreign_ca = Ca::new("someone else's CA");
    let impostor = foreign_ca
        .issue(Subject {
            uris: &["spiffe://cluster.local/ns/shop/sa/order"],
            ..Default::default()
        })
        .write(&dir.0, "impostor");
    let (port, admin_port) = (skiff_tests::free_port(), skiff_tests::free_port());
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let config = dir.write(
        "gateway.yaml",
        &format!(
            "admin: {{ listen: {admin} }}\n\
             listeners:\n  - name: web\n    listen: {address}\n    tls:\n      cert: {}\n      key: {}\n      client_auth:\n        ca: {}\n        allow: [spiffe://cluster.local/ns/shop/sa/order, \"*.shop.svc\"]\n        identity_header: x-client-identity\n    routes:\n      - match: {{ path_prefix: /, headers: [{{ name: x-client-identity, exact: checkout.shop.svc }}] }}\n        cluster: payments\n      - match: {{ path_prefix: / }}\n        cluster: app\n\
             clusters:\n  - name: app\n    endpoints: [{}]\n  - name: payments\n    endpoints: [{}]\n",
            p(&srv_crt),
            p(&srv_key),
            p(&ca_file),
            backend.address,
            payments.address
        ),
    );
    let skiff = skiff_tests::SkiffProcess::start(&config, admin).await;
    let url = format!("https://gateway.shop.svc:{port}/headers");
    let get = |client: Option<&(std::path::PathBuf, std::path::PathBuf)>, tls12: bool| {
        let mut args = vec!["--cacert".to_string(), p(&ca_file)];
        if tls12 {
            args.extend(["--tls-max".into(), "1.2".into()]);
        }
        if let Some((crt, key)) = client {
            args.extend(["--cert".into(), p(crt), "--key".into(), p(key)]);
        }
        // A client cannot forge the identity header.
        args.extend(["-H".into(), "x-client-identity: forged".into(), url.clone()]);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            curl("gateway.shop.svc", address, &args).await
        }
    };

    let allowed = get(Some(&order), false).await;
    assert!(
        allowed.ok,
        "the allowed identity is let in: {}",
        allowed.stderr
    );
    assert!(
        allowed
            .stdout
            .contains("\"x-client-identity\":\"spiffe://cluster.local/ns/shop/sa/order\""),
        "{}",
        allowed.stdout
    );
    // The identity is there for routing too.
    let routed = get(Some(&checkout), false).await;
    assert!(routed.ok, "{}", routed.stderr);
    assert!(
        routed
            .stdout
            .contains("\"x-client-identity\":\"checkout.shop.svc\""),
        "{}",
        routed.stdout
    );
    assert_eq!(payments.requests(), 1, "routed by the client's identity");
    assert_eq!(backend.requests(), 1);

    for (who, client) in [
        ("a foreign identity", Some(&cart)),
        ("an identity from another CA", Some(&impostor)),
        ("no certificate", None),
    ] {
        let refused = get(client, false).await;
        assert!(!refused.ok, "{who} must be refused: {}", refused.stdout);
        // In TLS 1.2 the alert ends the handshake itself, where curl shows it.
        let refused = get(client, true).await;
        assert!(!refused.ok, "{who} must be refused: {}", refused.stdout);
        assert!(
            refused.stderr.contains("alert"),
            "{who}: a TLS alert, got {}",
            refused.stderr
        );
    }
    let logged = |log: &str| {
        log.contains("spiffe://cluster.local/ns/shop/sa/cart is not in client_auth.allow")
            && log.contains("identity spiffe://cluster.local/ns/shop/sa/order has a certificate that does not verify")
            && log.contains("no client certificate")
            && log.matches("peer=127.0.0.1:").count() >= 6
    };
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !logged(&skiff.log_text()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refusals are not all logged:\n{}",
            skiff.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, metrics) = skiff_tests::admin_get(admin, "/metrics").await.unwrap();
    assert_eq!(
        skiff_tests::metric_value(
            &metrics,
            "skiff_tls_errors_total",
            &[("listener", "web"), ("reason", "client_cert")]
        ),
        Some(6.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn upstream_tls_verifies_the_endpoint_and_a_mismatch_is_a_502_that_says_why() {
    let dir = TempDir::new("tls-upstream");
    let ca = Ca::new("upstream CA");
    let ca_file = ca.write(&dir.0, "ca");
    let backend_cert = ca.issue(Subject {
        dns: &["payments.shop.svc"],
        ..Default::default()
    });
    let plain = TlsBackend::start("payments", &backend_cert).await;
    let gateway_cert = ca.issue(Subject {
        uris: &["spiffe://cluster.local/ns/shop/sa/gateway"],
        ..Default::default()
    });
    let (client_crt, client_key) = gateway_cert.write(&dir.0, "client");
    let mutual =
        TlsBackend::start_with_client_ca("payments-mtls", &backend_cert, Some(&ca.pem)).await;
    // A client certificate the upstream does not trust yet: rotated below.
    let stranger = Ca::new("not the upstream's CA").issue(Subject {
        uris: &["spiffe://cluster.local/ns/shop/sa/gateway"],
        ..Default::default()
    });
    let (rotating_crt, rotating_key) = stranger.write(&dir.0, "rotating");
    let ca = p(&ca_file);
    let cluster = |name: &str, protocol: &str, backend: SocketAddr, tls: &str| {
        format!("  - name: {name}\n    protocol: {protocol}\n    endpoints: [{backend}]\n    retries: {{ attempts: 0 }}\n    tls: {{ {tls} }}\n")
    };
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n\
         {}\
         clusters:\n{}{}{}{}{}{}",
        ["good", "h2", "wrong", "mtls", "nocert", "rotating"]
            .iter()
            .map(|c| format!("      - {{ match: {{ path_prefix: /{c} }}, cluster: {c} }}\n"))
            .collect::<String>(),
        cluster(
            "good",
            "http1",
            plain.address,
            &format!("ca: {ca}, sni: payments.shop.svc")
        ),
        cluster(
            "h2",
            "http2",
            plain.address,
            &format!("ca: {ca}, sni: payments.shop.svc")
        ),
        cluster(
            "wrong",
            "http1",
            plain.address,
            &format!("ca: {ca}, sni: orders.shop.svc")
        ),
        cluster(
            "mtls",
            "http1",
            mutual.address,
            &format!(
                "ca: {ca}, sni: payments.shop.svc, cert: {}, key: {}",
                p(&client_crt),
                p(&client_key)
            )
        ),
        cluster(
            "nocert",
            "http1",
            mutual.address,
            &format!("ca: {ca}, sni: payments.shop.svc")
        ),
        cluster(
            "rotating",
            "http1",
            mutual.address,
            &format!(
                "ca: {ca}, sni: payments.shop.svc, cert: {}, key: {}",
                p(&rotating_crt),
                p(&rotating_key)
            )
        ),
    );
    let (_proxy, address) = start_proxy(&yaml).await;
    let mut client = skiff_tests::Client::h1(address).await.unwrap();
    let mut get = async |path: &str| {
        let (status, _, body) = client.get(path).await.expect("response");
        (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
    };
    assert_eq!(get("/good").await, (200, "payments HTTP/1.1".into()));
    assert_eq!(
        get("/h2").await,
        (200, "payments HTTP/2.0".into()),
        "ALPN chose h2"
    );
    assert_eq!(get("/mtls").await, (200, "payments-mtls HTTP/1.1".into()));
    let (status, body) = get("/wrong").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("TLS handshake with"), "{body}");
    assert!(body.contains("not valid for name"), "{body}");
    // TLS 1.3: the upstream refuses the missing client certificate after
    // the client's side of the handshake, so it surfaces as a reset.
    let (status, body) = get("/nocert").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("alert"), "{body}");

    // The client certificate is rotated on disk: new upstream connections
    // present the new one without a config reload.
    let (status, _) = get("/rotating").await;
    assert_eq!(status, 502, "the first certificate is not trusted upstream");
    gateway_cert.write(&dir.0, "rotating");
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let (status, body) = get("/rotating").await;
        if status == 200 {
            assert_eq!(body, "payments-mtls HTTP/1.1");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_pass_through_over_tls() {
    skiff_tests::require_python_module("websockets", "websockets");
    let dir = TempDir::new("tls-wss");
    let server = skiff_tests::PyPeer::server("ws_echo.py");
    let ca = Ca::new("skiff test CA");
    let ca_file = ca.write(&dir.0, "ca");
    let (crt, key) = ca
        .issue(Subject {
            ips: &["127.0.0.1"],
            ..Default::default()
        })
        .write(&dir.0, "local");
    let tls = format!("cert: {}, key: {}", p(&crt), p(&key));
    let backend: SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let (proxy, address) = start_proxy(&tls_config(&tls, backend)).await;
    let url = format!("wss://{address}/chat");
    let (ok, output) = skiff_tests::py_client("ws_echo.py", &[&url, &p(&ca_file)]).await;
    assert!(ok, "wss client failed through skiff:\n{output}");
    let cluster = proxy
        .clusters()
        .iter()
        .find(|c| &*c.name == "app")
        .cloned()
        .expect("app");
    wait_for("tunnel closed", LIMIT, || cluster.in_flight() == 0).await;
}

#[tokio::test]
async fn health_checks_reach_tls_upstreams_over_tls_and_name_a_failed_handshake() {
    let dir = TempDir::new("tls-health");
    let ca = Ca::new("upstream CA");
    let ca_file = ca.write(&dir.0, "ca");
    let cert = ca.issue(Subject {
        dns: &["payments.shop.svc"],
        ..Default::default()
    });
    let backend = TlsBackend::start("payments", &cert).await;
    let ca = ca_file.display().to_string();
    let cluster = |name: &str, protocol: &str, sni: &str| {
        format!(
            "  - name: {name}\n    protocol: {protocol}\n    endpoints: [{}]\n    \
             tls: {{ ca: {ca}, sni: {sni} }}\n    \
             health_check: {{ http: {{ path: /healthz }}, interval: 100ms }}\n",
            backend.address
        )
    };
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n      - cluster: h1\n\
         clusters:\n{}{}{}",
        cluster("h1", "http1", "payments.shop.svc"),
        cluster("h2", "http2", "payments.shop.svc"),
        cluster("wrong", "http1", "orders.shop.svc"),
    );
    let (proxy, _) = skiff_tests::start_proxy(&yaml).await;
    skiff_tests::wait_for("the first checks", Duration::from_secs(15), || {
        proxy.is_ready()
    })
    .await;
    let metrics = skiff::admin::prometheus::render(proxy.registry(), &proxy.clusters());
    for (cluster, state) in [("h1", "healthy"), ("h2", "healthy"), ("wrong", "unhealthy")] {
        assert_eq!(
            skiff_tests::metric_value(
                &metrics,
                "skiff_endpoints",
                &[("cluster", cluster), ("state", state)]
            ),
            Some(1.0),
            "{cluster} should be {state}:\n{metrics}"
        );
    }
    let wrong = proxy
        .clusters()
        .iter()
        .find(|c| &*c.name == "wrong")
        .cloned()
        .expect("cluster");
    let failure = wrong.snapshot().members[0]
        .health_failure()
        .unwrap_or_default();
    assert!(failure.contains("TLS handshake"), "{failure}");
}

#[tokio::test]
async fn a_reload_changes_certificates_and_can_turn_tls_off_on_the_same_socket() {
    let dir = TempDir::new("tls-reload");
    let backend = Backend::start("app").await;
    let (ca, both) = two_certificates(&dir);
    let ca_file = ca.write(&dir.0, "ca");
    let only_shop = both[..both.find(", certificates").unwrap()].to_string();
    let (proxy, address) = start_proxy(&tls_config(&only_shop, backend.address)).await;
    let subject = |out: &skiff_tests::tls::Output| {
        out.stdout
            .lines()
            .find(|l| l.starts_with("subject="))
            .unwrap_or("")
            .to_string()
    };
    let ask_api = ["-servername", "api.example.com", "-CAfile", &p(&ca_file)];
    let before = s_client(address, &ask_api, "").await;
    assert_eq!(subject(&before), "subject=CN = shop.example.com");

    // Same listener address: the socket stays, the new certificates serve.
    let fixed = |yaml: String| {
        yaml.replace(
            "\n    listen: 127.0.0.1:0",
            &format!("\n    listen: {address}"),
        )
    };
    let config = |yaml: String| {
        skiff_config::Config::parse_checked(&fixed(yaml), "reload.yaml", Path::new("."), &TlsFiles)
            .unwrap()
    };
    proxy
        .apply(config(tls_config(&both, backend.address)))
        .await
        .expect("reload");
    assert_eq!(proxy.listener_address("web"), Some(address));
    let after = s_client(address, &ask_api, "").await;
    assert_eq!(subject(&after), "subject=CN = api.example.com");

    // TLS off: the same port now speaks plain HTTP.
    let plain = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n      - match: {{ path_prefix: / }}\n        cluster: app\n\
         clusters:\n  - name: app\n    endpoints: [{}]\n",
        backend.address
    );
    proxy.apply(config(plain)).await.expect("reload");
    let mut client = skiff_tests::Client::h1(address).await.unwrap();
    let (status, _, body) = client.get("/").await.unwrap();
    assert_eq!((status.as_u16(), &body[..]), (200, &b"app"[..]));
}

#[tokio::test]
async fn without_alpn_http2_is_told_by_its_preface_and_http1_still_works() {
    let dir = TempDir::new("tls-noalpn");
    let backend = Backend::start("app").await;
    let (ca, tls) = two_certificates(&dir);
    let ca_file = ca.write(&dir.0, "ca");
    let (_proxy, address) = start_proxy(&tls_config(&tls, backend.address)).await;

    // HTTP/2 with prior knowledge over TLS, no ALPN offered.
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(client_config(&ca.pem, &[], None))
        .connect("shop.example.com".try_into().unwrap(), tcp)
        .await
        .expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::get("https://shop.example.com/headers")
        .body(skiff_tests::empty())
        .unwrap();
    let resp = sender.send_request(req).await.expect("h2 response");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("\"x-forwarded-proto\":\"https\""), "{body}");

    // HTTP/1.1 without ALPN.
    let url = format!("https://shop.example.com:{}/", address.port());
    let out = curl(
        "shop.example.com",
        address,
        &[
            "--no-alpn",
            "--cacert",
            &p(&ca_file),
            "-w",
            " %{http_version}",
            &url,
        ],
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout, "app 1.1");
}

/// A TLS stream to `address` for `host`, offering `alpn`.
async fn tls_stream(
    address: SocketAddr,
    ca: &Ca,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    tokio_rustls::TlsConnector::from(client_config(&ca.pem, alpn, None))
        .connect("shop.example.com".try_into().unwrap(), tcp)
        .await
        .expect("handshake")
}

/// Everything the server sends until it closes the connection (with or
/// without `close_notify`, which rustls reports as an unexpected end).
async fn read_until_closed(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(LIMIT, stream.read_to_end(&mut answer))
        .await
        .expect("in time");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https1_streams_large_bodies_both_ways_and_answers_pipelined_requests_in_order() {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let dir = TempDir::new("tls-bodies");
    let backend = Backend::start("app").await;
    let (ca, tls) = two_certificates(&dir);
    let (_proxy, address) = start_proxy(&tls_config(&tls, backend.address)).await;

    // 4 MiB up and echoed back while it is still being sent: the session
    // is read (the body) and written (the response) at once.
    let stream = tls_stream(address, &ca, &[b"http/1.1"]).await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let upload: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    for round in 0..2 {
        let req = http::Request::put("/echo")
            .header("host", "shop.example.com")
            .body(skiff_tests::full(upload.clone()))
            .unwrap();
        sender.ready().await.expect("kept alive");
        let resp = tokio::time::timeout(LIMIT, sender.send_request(req))
            .await
            .expect("in time")
            .expect("response");
        assert_eq!(resp.status(), 200, "round {round}");
        let body = tokio::time::timeout(LIMIT, resp.into_body().collect())
            .await
            .expect("in time")
            .unwrap()
            .to_bytes();
        assert!(
            body[..] == upload[..],
            "round {round}: echoed {} bytes",
            body.len()
        );
    }
    // A large download on the same kept-alive connection.
    let req = http::Request::get("/bytes/3000000")
        .header("host", "shop.example.com")
        .body(skiff_tests::empty())
        .unwrap();
    sender.ready().await.expect("kept alive");
    let resp = sender.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 3_000_000);

    // Two requests in one TLS record: two responses, in order.
    let mut stream = tls_stream(address, &ca, &[b"http/1.1"]).await;
    stream
        .write_all(
            b"GET /bytes/7 HTTP/1.1\r\nhost: shop.example.com\r\n\r\n\
              GET /headers HTTP/1.1\r\nhost: shop.example.com\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream).await;
    let first = answer.find("HTTP/1.1 200").expect("first response");
    let second = answer.rfind("HTTP/1.1 200").expect("second response");
    assert!(first < second, "two responses: {answer}");
    assert!(
        answer[second..].contains("\"x-forwarded-proto\":\"https\""),
        "the second is /headers, over https: {answer}"
    );
}

#[tokio::test]
async fn https1_limits_apply_and_an_idle_connection_is_closed_after_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TempDir::new("tls-limits");
    let backend = Backend::start("app").await;
    let (ca, tls) = two_certificates(&dir);
    let config = tls_config(&tls, backend.address).replace(
        "    routes:\n",
        "    limits: { idle_timeout: 1s, max_header_bytes: 4KiB }\n    routes:\n",
    );
    let (_proxy, address) = start_proxy(&config).await;

    // A head larger than max_header_bytes: 431, as on plaintext.
    let mut stream = tls_stream(address, &ca, &[b"http/1.1"]).await;
    let big = format!(
        "GET / HTTP/1.1\r\nhost: shop.example.com\r\nx-big: {}\r\n\r\n",
        "a".repeat(8 << 10)
    );
    stream.write_all(big.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // A kept-alive connection with nothing more to say is closed once it
    // has been idle for idle_timeout.
    let mut stream = tls_stream(address, &ca, &[b"http/1.1"]).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: shop.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "served"
    );
    let idle_since = std::time::Instant::now();
    let end = tokio::time::timeout(LIMIT, stream.read(&mut buf))
        .await
        .expect("closed within the limit");
    assert!(
        matches!(end, Ok(0)) || end.is_err(),
        "nothing more arrives: {end:?}"
    );
    assert!(
        idle_since.elapsed() >= Duration::from_millis(900),
        "not before idle_timeout: {:?}",
        idle_since.elapsed()
    );
}

#[tokio::test]
async fn a_retried_https_request_keeps_what_tls_added_and_drops_what_the_client_forged() {
    use tokio::io::AsyncWriteExt;
    let dir = TempDir::new("tls-retry");
    let failing = Backend::start("failing").await;
    failing
        .control
        .status
        .store(503, std::sync::atomic::Ordering::Relaxed);
    let healthy = Backend::start("healthy").await;
    let ca = Ca::new("mesh CA");
    let ca_file = ca.write(&dir.0, "ca");
    let (crt, key) = ca
        .issue(Subject {
            dns: &["shop.example.com"],
            ..Default::default()
        })
        .write(&dir.0, "server");
    let order = ca.issue(Subject {
        uris: &["spiffe://cluster.local/ns/shop/sa/order"],
        ..Default::default()
    });
    let config = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    tls:\n      cert: {}\n      key: {}\n      client_auth: {{ ca: {}, identity_header: x-client-identity }}\n    routes:\n      - match: {{ path_prefix: / }}\n        cluster: app\n\
         clusters:\n  - name: app\n    lb: round_robin\n    endpoints: [{}, {}]\n    retries: {{ min_per_second: 1000 }}\n    outlier_detection: {{ consecutive_failures: 0 }}\n",
        p(&crt),
        p(&key),
        p(&ca_file),
        failing.address,
        healthy.address
    );
    let (_proxy, address) = start_proxy(&config).await;
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut stream =
        tokio_rustls::TlsConnector::from(client_config(&ca.pem, &[b"http/1.1"], Some(&order)))
            .connect("shop.example.com".try_into().unwrap(), tcp)
            .await
            .expect("handshake");
    // Round robin over two endpoints: of two requests, one or both go to
    // the failing one first and are retried from the client's raw head.
    for i in 0..2 {
        let close = if i == 1 { "connection: close\r\n" } else { "" };
        stream
            .write_all(
                format!(
                    "GET /headers HTTP/1.1\r\nhost: shop.example.com\r\n\
                     x-client-identity: forged\r\nx-forwarded-proto: http\r\n{close}\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
    }
    let answer = read_until_closed(&mut stream).await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    assert!(failing.requests() >= 1, "a request was retried");
    assert_eq!(
        answer
            .matches("\"x-client-identity\":\"spiffe://cluster.local/ns/shop/sa/order\"")
            .count(),
        2,
        "both answers, the retried one too, carry the verified identity: {answer}"
    );
    assert_eq!(
        answer.matches("\"x-forwarded-proto\":\"https\"").count(),
        2,
        "{answer}"
    );
    assert!(!answer.contains("forged"), "{answer}");
}
