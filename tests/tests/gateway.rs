//! The ingress gateway's routing, through real curl: exact paths, header
//! matches, prefix rewrites, request header edits, per-route timeouts,
//! unknown hosts, and the HTTP→HTTPS redirect.

use std::net::SocketAddr;

use skiff_tests::tls::{curl, Ca, Subject};
use skiff_tests::{collect_body, empty, start_proxy, Backend, Client, TempDir};

fn url(host: &str, address: SocketAddr, path: &str) -> String {
    format!("http://{host}:{}{path}", address.port())
}

/// `curl -i` through `address` as `host`; returns (status line, whole output).
async fn get(host: &str, address: SocketAddr, path: &str, headers: &[&str]) -> (String, String) {
    let mut args = vec!["-i".to_string()];
    for h in headers {
        args.extend(["-H".to_string(), h.to_string()]);
    }
    args.push(url(host, address, path));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = curl(host, address, &args).await;
    assert!(out.ok, "curl failed: {}", out.stderr);
    let status = out.stdout.lines().next().unwrap_or("").trim().to_string();
    (status, out.stdout)
}

#[tokio::test]
async fn routes_match_exact_paths_and_headers_rewrite_prefixes_and_edit_headers() {
    let (status, canary, stable) = (
        Backend::start("status").await,
        Backend::start("canary").await,
        Backend::start("stable").await,
    );
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n\
         \x20     - match: {{ host: shop.example.com, path: /status }}\n        cluster: status\n\
         \x20     - match: {{ host: shop.example.com, path_prefix: /shop/, headers: [{{ name: x-canary, exact: \"1\" }}] }}\n        cluster: canary\n        rewrite: {{ path_prefix: / }}\n        request_headers: {{ add: {{ x-gateway: skiff }}, remove: [x-debug] }}\n\
         \x20     - match: {{ host: shop.example.com, path_prefix: /shop/ }}\n        cluster: stable\n        rewrite: {{ path_prefix: / }}\n\
         clusters:\n\
         \x20 - {{ name: status, endpoints: [{}] }}\n\
         \x20 - {{ name: canary, endpoints: [{}] }}\n\
         \x20 - {{ name: stable, endpoints: [{}] }}\n",
        status.address, canary.address, stable.address
    );
    let (_proxy, address) = start_proxy(&yaml).await;
    let host = "shop.example.com";

    let (line, out) = get(host, address, "/status", &[]).await;
    assert!(
        line.contains("200") && out.contains("x-backend: status"),
        "{out}"
    );
    let (line, _) = get(host, address, "/status/more", &[]).await;
    assert!(
        line.contains("404"),
        "an exact path matches only itself: {line}"
    );

    let (_, out) = get(
        host,
        address,
        "/shop/headers?q=1",
        &["x-canary: 1", "x-debug: secret"],
    )
    .await;
    assert!(out.contains("x-backend: canary"), "{out}");
    assert!(
        out.contains("\"x-uri\":\"/headers?q=1\""),
        "prefix rewritten, query kept: {out}"
    );
    assert!(out.contains("\"x-gateway\":\"skiff\""), "{out}");
    assert!(!out.contains("secret"), "x-debug removed: {out}");

    let (_, out) = get(host, address, "/shop/headers", &["x-canary: 2"]).await;
    assert!(out.contains("x-backend: stable"), "{out}");
    assert!(!out.contains("x-gateway"), "{out}");

    let (line, out) = get("unknown.example.org", address, "/shop/headers", &[]).await;
    assert!(line.contains("404"), "an unknown host has no route: {out}");
}

#[tokio::test]
async fn an_unknown_host_goes_to_the_default_route_when_there_is_one() {
    let (shop, fallback) = (
        Backend::start("shop").await,
        Backend::start("fallback").await,
    );
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n\
         \x20     - {{ match: {{ host: shop.example.com }}, cluster: shop }}\n\
         \x20     - {{ match: {{ path_prefix: / }}, cluster: fallback }}\n\
         clusters:\n\
         \x20 - {{ name: shop, endpoints: [{}] }}\n\
         \x20 - {{ name: fallback, endpoints: [{}] }}\n",
        shop.address, fallback.address
    );
    let (_proxy, address) = start_proxy(&yaml).await;
    let (_, out) = get("shop.example.com", address, "/", &[]).await;
    assert!(out.contains("x-backend: shop"), "{out}");
    let (_, out) = get("unknown.example.org", address, "/", &[]).await;
    assert!(out.contains("x-backend: fallback"), "{out}");
}

#[tokio::test]
async fn a_route_timeout_replaces_the_clusters() {
    let slow = Backend::start("slow").await;
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n\
         \x20     - {{ match: {{ path_prefix: /hold }}, cluster: slow, timeout: 200ms }}\n\
         clusters:\n\
         \x20 - {{ name: slow, endpoints: [{}], timeouts: {{ request: 60s }}, retries: {{ attempts: 0 }} }}\n",
        slow.address
    );
    let (_proxy, address) = start_proxy(&yaml).await;
    let (line, out) = get("shop.example.com", address, "/hold", &[]).await;
    slow.control
        .released
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(line.contains("504"), "{out}");
    assert!(out.contains("no response headers after 200ms"), "{out}");
}

#[tokio::test]
async fn plain_http_is_redirected_to_https_and_curl_follows_it() {
    let dir = TempDir::new("gw-redirect");
    let backend = Backend::start("shop").await;
    let ca = Ca::new("gateway CA");
    let ca_file = ca.write(&dir.0, "ca");
    let (crt, key) = ca
        .issue(Subject {
            dns: &["shop.example.com"],
            ..Default::default()
        })
        .write(&dir.0, "shop");
    let https_port = skiff_tests::free_port();
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n\
         \x20 - name: web\n    listen: 127.0.0.1:0\n    routes:\n\
         \x20     - {{ match: {{ path_prefix: / }}, redirect: {{ scheme: https, port: {https_port}, code: 308 }} }}\n\
         \x20 - name: websecure\n    listen: 127.0.0.1:{https_port}\n    tls: {{ cert: {}, key: {} }}\n    routes:\n\
         \x20     - {{ match: {{ path_prefix: / }}, cluster: shop }}\n\
         clusters:\n\
         \x20 - {{ name: shop, endpoints: [{}] }}\n",
        crt.display(),
        key.display(),
        backend.address
    );
    let (_proxy, address) = start_proxy(&yaml).await;
    let (line, out) = get("shop.example.com", address, "/cart?id=7", &[]).await;
    assert!(line.contains("308"), "{out}");
    assert!(
        out.contains(&format!(
            "location: https://shop.example.com:{https_port}/cart?id=7"
        )),
        "{out}"
    );

    let https_resolve = format!("shop.example.com:{https_port}:127.0.0.1");
    let out = curl(
        "shop.example.com",
        address,
        &[
            "-L",
            "--resolve",
            &https_resolve,
            "--cacert",
            &ca_file.display().to_string(),
            &url("shop.example.com", address, "/headers"),
        ],
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("\"x-forwarded-proto\":\"https\""),
        "{}",
        out.stdout
    );
}

/// The route features the Gateway API brought into skiff's own config,
/// end to end: a weighted split measured over 1,000 requests, method and
/// query matches, regular expressions, a host rewrite, header edits on
/// both sides (set, add after the client's, remove), and a redirect
/// that keeps the listener's port.
#[tokio::test]
async fn splits_conditions_rewrites_and_response_edits() {
    let (a, b, posts) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("posts").await,
    );
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n\
         \x20     - match: {{ path_separated_prefix: /items, method: POST, query: [{{ name: color, regex: 'red|blue' }}] }}\n        cluster: posts\n        rewrite: {{ host: posts.internal, path: /headers }}\n\
         \x20     - match: {{ path_regex: '/old/[0-9]+' }}\n        redirect: {{ scheme: http, host: new.example.com, path: /new, code: 302 }}\n\
         \x20     - match: {{ path_prefix: /redirect }}\n        redirect: {{ scheme: http, code: 307 }}\n\
         \x20     - match: {{ path_prefix: / }}\n        backends: [{{ cluster: a, weight: 80 }}, {{ cluster: b, weight: 20, response_headers: {{ set: {{ x-picked: b }} }} }}]\n\
         \x20       request_headers: {{ add: {{ x-add: added }} }}\n\
         \x20       response_headers: {{ set: {{ cache-control: no-store }}, add: {{ x-route: split }} }}\n\
         clusters:\n\
         \x20 - {{ name: a, endpoints: [{}] }}\n\
         \x20 - {{ name: b, endpoints: [{}] }}\n\
         \x20 - {{ name: posts, endpoints: [{}] }}\n",
        a.address, b.address, posts.address
    );
    let (_proxy, address) = start_proxy(&yaml).await;
    let mut client = Client::h1(address).await.unwrap();

    // 1,000 requests split 80/20: the count of b is binomial (n 1,000,
    // p 0.2, standard deviation 12.6); 5 deviations either way.
    let mut to_b = 0;
    for _ in 0..1000 {
        let resp = call(&mut client, "GET", "/anything", &[]).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("cache-control"), Some("no-store"));
        assert_eq!(resp.header("x-route"), Some("split"));
        let backend = resp.header("x-backend").unwrap().to_string();
        assert_eq!(resp.header("x-picked").is_some(), backend == "b");
        to_b += usize::from(backend == "b");
    }
    assert!((137..=263).contains(&to_b), "b served {to_b} of 1,000");

    // `add` goes after the client's own value.
    let resp = call(&mut client, "GET", "/headers", &[("x-add", "mine")]).await;
    assert!(
        resp.body.contains("\"x-add\":\"mine, added\""),
        "{}",
        resp.body
    );

    // Method, whole-segment prefix and query regex, and the host rewrite.
    let resp = call(&mut client, "POST", "/items/7?color=blue", &[]).await;
    assert_eq!(resp.header("x-backend"), Some("posts"), "{}", resp.body);
    assert!(
        resp.body.contains("\"host\":\"posts.internal\""),
        "{}",
        resp.body
    );
    assert!(
        resp.body.contains("\"x-uri\":\"/headers?color=blue\""),
        "{}",
        resp.body
    );
    for (method, path) in [
        ("GET", "/items?color=blue"),
        ("POST", "/items?color=green"),
        ("POST", "/itemsx?color=red"),
    ] {
        let resp = call(&mut client, method, path, &[]).await;
        assert_ne!(resp.header("x-backend"), Some("posts"), "{method} {path}");
    }

    let resp = call(&mut client, "GET", "/old/42?x=1", &[]).await;
    assert_eq!(resp.status, 302);
    assert_eq!(
        resp.header("location"),
        Some("http://new.example.com/new?x=1")
    );
    let resp = call(&mut client, "GET", "/old/4x", &[]).await;
    assert!(
        resp.header("x-backend").is_some(),
        "the expression matches whole paths"
    );
    let resp = call(&mut client, "GET", "/redirect/here", &[]).await;
    assert_eq!(resp.status, 307);
    assert_eq!(
        resp.header("location"),
        Some("http://test.local/redirect/here"),
        "a scheme given: its default port, not the listener's"
    );
}

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn call(client: &mut Client, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = http::Request::builder().method(method).uri(path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = client.send(req.body(empty()).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&collect_body(body).await).into_owned(),
    }
}

#[test]
fn mistakes_in_gateway_routes_are_reported_with_their_field() {
    let cases = [
        (
            "{ match: { path_prefix: / }, cluster: app, redirect: { port: 443 } }",
            "give one of `cluster`, `backends` or `redirect`",
        ),
        (
            "{ match: { path_prefix: / } }",
            "missing field `cluster` (or `backends`, or `redirect`)",
        ),
        (
            "{ match: { headers: [{ name: \"bad header\", exact: x }] }, cluster: app }",
            "listeners[0].routes[0].match.headers[0].name: `bad header` is not a header name",
        ),
        (
            "{ match: { headers: [{ name: x-a }] }, cluster: app }",
            "give one of `exact`, `prefix`, `regex` or `present`",
        ),
        (
            "{ cluster: app, rewrite: { path_prefix: v2 } }",
            "listeners[0].routes[0].rewrite.path_prefix: `v2` must start with `/`",
        ),
        (
            "{ redirect: { code: 200 } }",
            "listeners[0].routes[0].redirect.code",
        ),
        (
            "{ cluster: app, timeout: soon }",
            "listeners[0].routes[0].timeout",
        ),
    ];
    for (route, expect) in cases {
        let yaml = format!(
            "listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n      - {route}\n\
             clusters:\n  - {{ name: app, endpoints: [127.0.0.1:1] }}\n"
        );
        let err = skiff_config::Config::parse(&yaml, "gw.yaml", std::path::Path::new("."))
            .expect_err(route)
            .to_string();
        assert!(
            err.contains(expect),
            "{route}: expected {expect:?} in {err}"
        );
        assert!(err.contains("gw.yaml:5:"), "{err}");
    }
}

#[test]
fn gateway_manifests_are_valid_and_carry_a_valid_skiff_config() {
    let files = skiff_tests::validate_manifests("deploy/gateway");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/gateway");
    let all: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("manifest"))
        .collect();
    for must in [
        "kind: Deployment",
        "replicas: 2",
        "httpGet: { path: /ready, port: admin }",
        "kind: PodDisruptionBudget",
        "type: LoadBalancer",
        "secretName: skiff-gateway-tls",
        "serviceAccountName: skiff",
        "kind: ClusterRole",
    ] {
        assert!(all.contains(must), "the gateway manifests lack `{must}`");
    }

    // The ConfigMap's skiff.yaml is a config `skiff check` accepts, given
    // a certificate where the Secret is mounted.
    let configmap = std::fs::read_to_string(dir.join("configmap.yaml")).expect("configmap");
    let config: String = configmap
        .lines()
        .skip_while(|l| !l.starts_with("  skiff.yaml: |"))
        .skip(1)
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let certs = TempDir::new("gw-manifest");
    let ca = Ca::new("gateway CA");
    ca.issue(Subject {
        dns: &["shop.example.com"],
        ..Default::default()
    })
    .write(&certs.0, "tls");
    let config = config.replace("/etc/skiff/tls/", &format!("{}/", certs.0.display()));
    let parsed = skiff_config::Config::parse_checked(
        &config,
        "configmap.yaml",
        std::path::Path::new("."),
        &skiff::tls::certs::TlsFiles,
    )
    .unwrap_or_else(|e| panic!("the ConfigMap's skiff.yaml is invalid:\n{e}"));
    assert_eq!(parsed.listeners.len(), 2);
    assert!(parsed.listeners[1].tls.is_some());
}
