//! The gateway role end to end: a real `skiff run` serves a Gateway API
//! `Gateway` it reads, with its HTTPRoutes, Services and EndpointSlices,
//! from the fake API server (the real wire protocol, through a
//! kubeconfig), and real backends answer. Routes are edited, split and
//! removed live.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::fake_kube::{endpoint_slice, ready_pod, FakeKube, Pods};
use skiff_tests::{
    admin_get, collect_body, empty, free_port, wait_for_async, Client, Load, SkiffProcess, TempDir,
};

const SOON: Duration = Duration::from_secs(20);

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The shop's objects: skiff's GatewayClass, the Gateway `shop/web` with
/// one HTTP listener on port 80, and Services `catalog` and
/// `catalog-v2` (port 8080, named `http`) whose slices point at `pods`.
fn shop(fake: &FakeKube, catalog: &Pods, v2: &Pods) {
    fake.apply_object(json!({
        "kind": "GatewayClass", "metadata": { "name": "skiff", "generation": 1 },
        "spec": { "controllerName": "skiff.io/gateway-controller" }
    }));
    fake.apply_object(json!({ "kind": "Namespace", "metadata": { "name": "shop" } }));
    fake.apply_object(json!({
        "kind": "Gateway", "metadata": { "name": "web", "namespace": "shop", "generation": 1 },
        "spec": { "gatewayClassName": "skiff", "listeners": [{ "name": "http", "port": 80, "protocol": "HTTP" }] }
    }));
    for (name, pods) in [("catalog", catalog), ("catalog-v2", v2)] {
        fake.apply_object(json!({
            "kind": "Service", "metadata": { "name": name, "namespace": "shop" },
            "spec": { "ports": [{ "name": "http", "port": 8080, "targetPort": pods.port }] }
        }));
        let endpoints: Vec<Value> = (1..=pods.backends.len())
            .map(|i| ready_pod(&pods.ip(i)))
            .collect();
        fake.apply(
            "shop",
            endpoint_slice(
                &format!("{name}-1"),
                name,
                &[("http", pods.port)],
                &endpoints,
            ),
        );
    }
}

fn route(name: &str, spec: Value) -> Value {
    json!({
        "kind": "HTTPRoute",
        "metadata": { "name": name, "namespace": "shop", "generation": 1, "creationTimestamp": "2026-12-01T00:00:00Z" },
        "spec": spec,
    })
}

struct Gateway {
    _process: SkiffProcess,
    /// Where the Gateway's port 80 is bound (80 + the offset).
    port80: SocketAddr,
    admin: SocketAddr,
    _dir: TempDir,
}

async fn start(fake: &FakeKube, tag: &str) -> Gateway {
    start_as(fake, tag, "gw-0").await
}

/// A gateway replica named `pod` (its Lease identity), with a 2 s Lease.
async fn start_as(fake: &FakeKube, tag: &str, pod: &str) -> Gateway {
    let dir = TempDir::new(tag);
    let kubeconfig = fake.write_kubeconfig(&dir.0);
    let (bound, admin) = (free_port(), addr(free_port()));
    let config = dir.write(
        "skiff.yaml",
        &format!(
            "admin: {{ listen: {admin} }}\n\
             shutdown: {{ drain_delay: 0s, grace_period: 10s }}\n\
             gateway_api:\n  gateway: {{ namespace: shop, name: web }}\n  listen_address: 127.0.0.1\n  port_offset: {}\n  lease_duration: 2s\n",
            bound - 80
        ),
    );
    let env = [
        ("KUBECONFIG", kubeconfig.as_path()),
        ("POD_NAME", std::path::Path::new(pod)),
    ];
    let process = SkiffProcess::start_with_env(&config, admin, &[], &env).await;
    let gateway = Gateway {
        _process: process,
        port80: addr(bound),
        admin,
        _dir: dir,
    };
    wait_for_async("the gateway to be ready", SOON, || async move {
        matches!(admin_get(admin, "/ready").await, Ok((s, _)) if s == 200)
    })
    .await;
    gateway
}

/// GETs `path` as `host`: (status, `x-backend`, `location`).
async fn get(
    address: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut client = Client::h1(address).await.expect("connect");
    let mut req = http::Request::get(path).header("host", host);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = client
        .send(req.body(empty()).unwrap())
        .await
        .expect("response");
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (status, backend, location) = (
        resp.status().as_u16(),
        header("x-backend"),
        header("location"),
    );
    collect_body(resp.into_body()).await;
    (status, backend, location)
}

/// Which Service's pods answered: `v1-N` are catalog's, `v2-N`
/// catalog-v2's.
fn service_of(backend: &str) -> &str {
    backend.split('-').next().unwrap_or("")
}

#[tokio::test]
async fn serves_a_gateways_routes_and_follows_their_changes() {
    let fake = FakeKube::start_new().await;
    let (catalog, v2) = (
        Pods::start_named(2, "v1").await,
        Pods::start_named(1, "v2").await,
    );
    shop(&fake, &catalog, &v2);
    fake.apply_object(route(
        "catalog",
        json!({
            "parentRefs": [{ "name": "web" }],
            "hostnames": ["shop.example.com"],
            "rules": [
                {
                    "matches": [{ "path": { "type": "PathPrefix", "value": "/catalog" } }],
                    "backendRefs": [
                        { "name": "catalog", "port": 8080, "weight": 90 },
                        { "name": "catalog-v2", "port": 8080, "weight": 10 }
                    ]
                },
                {
                    "matches": [{ "path": { "type": "PathPrefix", "value": "/catalog" }, "headers": [{ "name": "x-canary", "value": "1" }] }],
                    "backendRefs": [{ "name": "catalog-v2", "port": 8080 }]
                },
                {
                    "matches": [{ "path": { "type": "PathPrefix", "value": "/old" } }],
                    "filters": [{ "type": "RequestRedirect", "requestRedirect": { "path": { "type": "ReplacePrefixMatch", "replacePrefixMatch": "/catalog" } } }]
                },
                {
                    "matches": [{ "path": { "type": "Exact", "value": "/missing" } }],
                    "backendRefs": [{ "name": "nowhere", "port": 8080 }]
                }
            ]
        }),
    ));
    let gw = start(&fake, "gateway-api").await;
    let host = "shop.example.com";

    // The split, measured: 1,000 requests at 90/10; v2's count is
    // binomial (sd 9.5), 5 deviations either way.
    let mut to_v2 = 0;
    for _ in 0..1000 {
        let (status, backend, _) = get(gw.port80, host, "/catalog/items", &[]).await;
        assert_eq!(status, 200, "{backend}");
        to_v2 += usize::from(service_of(&backend) == "v2");
    }
    assert!(
        (52..=148).contains(&to_v2),
        "catalog-v2 served {to_v2} of 1,000"
    );

    // A header match is more specific than the same path without one.
    for _ in 0..20 {
        let (_, backend, _) = get(gw.port80, host, "/catalog", &[("x-canary", "1")]).await;
        assert_eq!(service_of(&backend), "v2");
    }
    // Hostnames: the route names shop.example.com only; the port in Host
    // is ignored.
    assert_eq!(
        get(gw.port80, "shop.example.com:80", "/catalog", &[])
            .await
            .0,
        200
    );
    assert_eq!(
        get(gw.port80, "other.example.com", "/catalog", &[]).await.0,
        404
    );
    // A redirect on the Gateway's port 80 names no port, though skiff is
    // bound elsewhere.
    let (status, _, location) = get(gw.port80, host, "/old/7?x=1", &[]).await;
    assert_eq!(
        (status, location.as_str()),
        (302, "http://shop.example.com/catalog/7?x=1")
    );
    // A backend that does not resolve is answered 500.
    assert_eq!(get(gw.port80, host, "/missing", &[]).await.0, 500);

    // The routes as skiff serves them, named by the objects.
    let (_, config) = admin_get(gw.admin, "/config").await.unwrap();
    assert!(config.contains("HTTPRoute/shop/catalog/rule/0"), "{config}");

    // Edited: the hostnames go, so any host is served (the load below
    // sends `test.local`).
    let catalog_rule = |backends: Value| {
        json!({
            "parentRefs": [{ "name": "web" }],
            "rules": [{ "matches": [{ "path": { "type": "PathPrefix", "value": "/catalog" } }], "backendRefs": backends }]
        })
    };
    fake.apply_object(route(
        "catalog",
        catalog_rule(json!([{ "name": "catalog", "port": 8080 }])),
    ));
    let any_host = || async move { get(gw.port80, "test.local", "/catalog/x", &[]).await.0 == 200 };
    wait_for_async("the route for any host", SOON, any_host).await;

    // Edited under load: every request answered while the route moves
    // all of /catalog to v2.
    let load = Load::start(gw.port80, "/catalog/x", 4, false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.apply_object(route(
        "catalog",
        catalog_rule(json!([{ "name": "catalog-v2", "port": 8080 }])),
    ));
    let moved = || async move {
        let (_, backend, _) = get(gw.port80, "test.local", "/catalog/x", &[]).await;
        service_of(&backend) == "v2"
    };
    wait_for_async("the edited route", SOON, moved).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed, errors) = load.stop().await;
    let first: Vec<&String> = errors.iter().take(5).collect();
    assert!(
        ok > 0 && failed == 0,
        "{ok} ok, {failed} failed, first: {first:?}"
    );
    for _ in 0..20 {
        let (_, backend, _) = get(gw.port80, "any.host", "/catalog/x", &[]).await;
        assert_eq!(
            service_of(&backend),
            "v2",
            "all of it moved, for any host now"
        );
    }

    // Removed: nothing routes there any more.
    fake.delete_object("HTTPRoute", "shop", "catalog");
    let gone = || async move { get(gw.port80, "any.host", "/catalog/x", &[]).await.0 == 404 };
    wait_for_async("the deleted route", SOON, gone).await;
}

/// A `kubernetes.io/tls` Secret as the API server holds it (`data` in
/// base64).
fn tls_secret(namespace: &str, name: &str, cert: &str, key: &str) -> Value {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({
        "kind": "Secret", "apiVersion": "v1", "type": "kubernetes.io/tls",
        "metadata": { "name": name, "namespace": namespace },
        "data": { "tls.crt": b64(cert), "tls.key": b64(key) },
    })
}

/// The condition `kind` of the Gateway's listener `listener`.
fn listener_condition(fake: &FakeKube, listener: &str, kind: &str) -> Option<Value> {
    let gateway = fake.object("Gateway", "shop", "web")?;
    let listeners = gateway["status"]["listeners"].as_array()?.clone();
    let ours = listeners.iter().find(|l| l["name"] == listener)?;
    ours["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
}

/// HTTPS listeners serve the certificates of the Secrets they name, each
/// for its listener's hostname (SNI); a Secret in another namespace needs
/// a ReferenceGrant; a rotated Secret serves the next handshake; one
/// edited into something that does not load leaves the last certificate
/// serving and says why in the listener's status. The HTTP listener
/// beside them answers every request meanwhile.
#[tokio::test]
async fn https_listeners_serve_certificates_from_secrets() {
    use skiff_tests::tls::{curl, Ca, Subject};
    let fake = FakeKube::start_new().await;
    let (catalog, v2) = (
        Pods::start_named(1, "v1").await,
        Pods::start_named(1, "v2").await,
    );
    shop(&fake, &catalog, &v2);
    let https = |name: &str, host: &str, secret: Value| {
        json!({ "name": name, "port": 443, "protocol": "HTTPS", "hostname": host,
                "tls": { "certificateRefs": [secret] } })
    };
    fake.apply_object(json!({
        "kind": "Gateway", "metadata": { "name": "web", "namespace": "shop", "generation": 2 },
        "spec": { "gatewayClassName": "skiff", "listeners": [
            { "name": "http", "port": 80, "protocol": "HTTP" },
            https("shop", "shop.example.com", json!({ "name": "shop-cert" })),
            https("org", "*.example.org", json!({ "name": "org-cert", "namespace": "certs" })),
        ] }
    }));
    let ca = Ca::new("gateway CA");
    let issue = |ca: &Ca, dns: &str| {
        ca.issue(Subject {
            dns: &[dns],
            ..Default::default()
        })
    };
    let shop_cert = issue(&ca, "shop.example.com");
    fake.apply_object(tls_secret(
        "shop",
        "shop-cert",
        &shop_cert.cert,
        &shop_cert.key,
    ));
    let org = issue(&ca, "*.example.org");
    fake.apply_object(tls_secret("certs", "org-cert", &org.cert, &org.key));
    fake.apply_object(route(
        "catalog",
        json!({ "parentRefs": [{ "name": "web" }], "rules": [{ "backendRefs": [{ "name": "catalog", "port": 8080 }] }] }),
    ));
    let gw = start(&fake, "gateway-api-https").await;
    let port443 = addr(gw.port80.port() + 363);
    let dir = TempDir::new("gateway-api-https-ca");
    let ca_file = ca.write(&dir.0, "ca");
    let fetch = |host: &'static str, ca_file: std::path::PathBuf| async move {
        let url = format!("https://{host}:{}/catalog", port443.port());
        let ca = ca_file.display().to_string();
        curl(
            host,
            port443,
            &["-D", "-", "-o", "/dev/null", "--cacert", &ca, &url],
        )
        .await
    };
    wait_for_async("HTTPS for shop.example.com", SOON, || {
        let ca_file = ca_file.clone();
        async move {
            let out = fetch("shop.example.com", ca_file).await;
            out.ok && out.stdout.contains("x-backend: v1-")
        }
    })
    .await;
    let load = Load::start(gw.port80, "/catalog/x", 2, false);

    // The other namespace's Secret is not the Gateway's to use yet.
    wait_for_async("RefNotPermitted on the org listener", SOON, || async {
        listener_condition(&fake, "org", "ResolvedRefs")
            .is_some_and(|c| c["reason"] == "RefNotPermitted")
    })
    .await;
    let out = fetch("www.example.org", ca_file.clone()).await;
    assert!(!out.ok, "no certificate for *.example.org yet: {out:?}");
    fake.apply_object(json!({
        "kind": "ReferenceGrant", "metadata": { "name": "gateway-certs", "namespace": "certs" },
        "spec": {
            "from": [{ "group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "shop" }],
            "to": [{ "group": "", "kind": "Secret", "name": "org-cert" }]
        }
    }));
    wait_for_async("HTTPS for *.example.org", SOON, || {
        let ca_file = ca_file.clone();
        async move { fetch("www.example.org", ca_file).await.ok }
    })
    .await;
    assert!(fetch("shop.example.com", ca_file.clone()).await.ok);

    // Rotated to a certificate of another CA: new handshakes get it.
    let rotated_ca = Ca::new("rotated CA");
    let rotated_file = rotated_ca.write(&dir.0, "rotated");
    let rotated = issue(&rotated_ca, "shop.example.com");
    fake.apply_object(tls_secret("shop", "shop-cert", &rotated.cert, &rotated.key));
    wait_for_async("the rotated certificate", SOON, || {
        let rotated_file = rotated_file.clone();
        async move { fetch("shop.example.com", rotated_file).await.ok }
    })
    .await;

    // Edited into what does not load (the suite's malformed Secret): the
    // rotated certificate stays, and the listener's status says why.
    fake.apply_object(tls_secret(
        "shop",
        "shop-cert",
        "Hello world\n",
        "Hello world\n",
    ));
    wait_for_async(
        "InvalidCertificateRef on the shop listener",
        SOON,
        || async {
            listener_condition(&fake, "shop", "ResolvedRefs").is_some_and(|c| {
                c["reason"] == "InvalidCertificateRef"
                    && c["message"].as_str().unwrap_or("").contains("tls.crt")
            })
        },
    )
    .await;
    let programmed = listener_condition(&fake, "shop", "Programmed").unwrap();
    assert_eq!(programmed["status"], "True", "{programmed}");
    let out = fetch("shop.example.com", rotated_file.clone()).await;
    assert!(out.ok, "the last good certificate still serves: {out:?}");
    assert!(fetch("www.example.org", ca_file.clone()).await.ok);

    let (ok, failed, errors) = load.stop().await;
    let first: Vec<&String> = errors.iter().take(5).collect();
    assert!(
        ok > 0 && failed == 0,
        "HTTP beside the changes: {ok} ok, {failed} failed, first: {first:?}"
    );
}

/// HTTPRouteRetry and HTTPRouteTimeoutBackendRequest: a rule's `retry`
/// tries again on its codes only, as many times as it says (the
/// backend recovers after N failures, as the suite's echo server does);
/// `timeouts.backendRequest` bounds each try, and a slow try is tried
/// again within `timeouts.request`.
#[tokio::test]
async fn rule_retries_and_backend_request_timeouts() {
    use std::sync::atomic::Ordering::Relaxed;
    let fake = FakeKube::start_new().await;
    let (catalog, v2) = (
        Pods::start_named(1, "v1").await,
        Pods::start_named(1, "v2").await,
    );
    shop(&fake, &catalog, &v2);
    let rule = |prefix: &str, extra: Value| {
        let mut rule = json!({
            "matches": [{ "path": { "type": "PathPrefix", "value": prefix } }],
            "backendRefs": [{ "name": "catalog", "port": 8080 }]
        });
        for (k, v) in extra.as_object().unwrap() {
            rule[k] = v.clone();
        }
        rule
    };
    fake.apply_object(route(
        "retries",
        json!({
            "parentRefs": [{ "name": "web" }],
            "rules": [
                rule("/retry/code-500-attempts-3", json!({ "retry": { "codes": [500], "attempts": 3, "backoff": "1ms" } })),
                rule("/retry/code-all-attempts-2", json!({ "retry": { "codes": [500, 502, 503, 504], "attempts": 2 } })),
                rule("/slow", json!({ "timeouts": { "request": "5s", "backendRequest": "200ms" },
                                      "retry": { "codes": [504], "attempts": 1 } })),
            ]
        }),
    ));
    let gw = start(&fake, "gateway-api-retry").await;
    wait_for_async("the route", SOON, || async {
        get(gw.port80, "a", "/retry/code-500-attempts-3", &[])
            .await
            .0
            == 200
    })
    .await;
    let control = &catalog.pod(1).control;
    let case = |path: &'static str, status: u16, fail: u64| async move {
        control.failure_status.store(status, Relaxed);
        control.failures_left.store(fail, Relaxed);
        let before = control.requests.load(Relaxed);
        let answered = get(gw.port80, "a", path, &[]).await.0;
        let tries = control.requests.load(Relaxed) - before;
        control.failures_left.store(0, Relaxed);
        (answered, tries)
    };
    let three = "/retry/code-500-attempts-3";
    assert_eq!(
        case(three, 500, 2).await,
        (200, 3),
        "succeeds after 2 retries"
    );
    assert_eq!(
        case(three, 500, 4).await,
        (500, 4),
        "3 retries, then the 500"
    );
    assert_eq!(
        case(three, 503, 2).await,
        (503, 1),
        "503 is not among its codes"
    );
    let all = "/retry/code-all-attempts-2";
    assert_eq!(case(all, 502, 1).await, (200, 2));
    assert_eq!(case(all, 504, 3).await, (504, 3));

    // Each try is bounded by backendRequest (200ms), the 504 it makes is
    // tried once more, and the request ends well within its 5s.
    let started = std::time::Instant::now();
    let (status, _, _) = get(gw.port80, "a", "/slow/1000", &[]).await;
    assert_eq!(status, 504);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let (status, _, _) = get(gw.port80, "a", "/slow/10", &[]).await;
    assert_eq!(status, 200);

    // Counted by route name too, the HTTPRoute's rule named.
    let (_, metrics) = admin_get(gw.admin, "/metrics").await.unwrap();
    let by_rule = |rule: &str, class: &str| {
        skiff_tests::metric_value(
            &metrics,
            "skiff_route_requests_total",
            &[
                ("listener", "gateway-80"),
                ("route", rule),
                ("code_class", class),
            ],
        )
    };
    assert_eq!(
        by_rule("HTTPRoute/shop/retries/rule/1", "5xx"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        by_rule("HTTPRoute/shop/retries/rule/1", "2xx"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        by_rule("HTTPRoute/shop/retries/rule/2", "5xx"),
        Some(1.0),
        "{metrics}"
    );
}

/// HTTPRouteRequestMirror and HTTPRouteRequestPercentageMirror: the
/// mirror gets a copy of every request (its body too) while the client
/// gets the real backend's answer; a share of 20% mirrors about a fifth;
/// and a mirror that hangs never slows the request.
#[tokio::test]
async fn request_mirrors_get_copies_and_never_slow_the_request() {
    use std::sync::atomic::Ordering::Relaxed;
    let fake = FakeKube::start_new().await;
    let (catalog, v2) = (
        Pods::start_named(1, "v1").await,
        Pods::start_named(1, "v2").await,
    );
    shop(&fake, &catalog, &v2);
    let mirrored = |prefix: &str, mirror: Value| {
        json!({
            "matches": [{ "path": { "type": "PathPrefix", "value": prefix } }],
            "filters": [{ "type": "RequestMirror", "requestMirror": mirror }],
            "backendRefs": [{ "name": "catalog", "port": 8080 }]
        })
    };
    let to_v2 = json!({ "name": "catalog-v2", "port": 8080 });
    fake.apply_object(route(
        "mirror",
        json!({
            "parentRefs": [{ "name": "web" }],
            "rules": [
                mirrored("/mirror", json!({ "backendRef": to_v2 })),
                mirrored("/percent", json!({ "backendRef": to_v2, "percent": 20 })),
                mirrored("/sink", json!({ "backendRef": to_v2 })),
            ]
        }),
    ));
    let gw = start(&fake, "gateway-api-mirror").await;
    wait_for_async("the route", SOON, || async {
        get(gw.port80, "a", "/mirror/x", &[]).await.0 == 200
    })
    .await;
    let mirror = &v2.pod(1).control;
    wait_for_async("the first copy", SOON, || async {
        mirror.requests.load(Relaxed) == 1
    })
    .await;

    for _ in 0..20 {
        let (status, backend, _) = get(gw.port80, "a", "/mirror/x", &[]).await;
        assert_eq!(
            (status, service_of(&backend)),
            (200, "v1"),
            "the real answer"
        );
    }
    wait_for_async("20 more copies", SOON, || async {
        mirror.requests.load(Relaxed) == 21
    })
    .await;

    // A body is copied whole.
    let mut client = Client::h1(gw.port80).await.unwrap();
    let body = vec![b'x'; 5000];
    let req = http::Request::post("/sink")
        .header("host", "a")
        .body(skiff_tests::full(body))
        .unwrap();
    let resp = client.send(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    collect_body(resp.into_body()).await;
    wait_for_async("the body's copy", SOON, || async {
        mirror.last_sink.load(Relaxed) == 5000
    })
    .await;

    // 20% of 500: 100 expected, σ ≈ 8.9; 5σ bound.
    let before = mirror.requests.load(Relaxed);
    for _ in 0..500 {
        assert_eq!(get(gw.port80, "a", "/percent/x", &[]).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let copies = mirror.requests.load(Relaxed) - before;
    assert!(
        (55..=145).contains(&copies),
        "{copies} copies of 500 at 20%"
    );

    // The mirror hangs for 5 s on every request: the requests do not wait.
    mirror.delay_ms.store(5000, Relaxed);
    let started = std::time::Instant::now();
    for _ in 0..10 {
        assert_eq!(get(gw.port80, "a", "/mirror/x", &[]).await.0, 200);
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "10 requests took {took:?} beside a hung mirror"
    );
    mirror.delay_ms.store(0, Relaxed);
}

/// HTTPRouteCORS: a preflight from an allowed origin (exact, or under a
/// wildcard) is answered by skiff and never reaches the backend; the
/// answer to a request from it says so; another origin gets nothing.
#[tokio::test]
async fn cors_preflights_are_answered_and_answers_marked() {
    use std::sync::atomic::Ordering::Relaxed;
    let fake = FakeKube::start_new().await;
    let (catalog, v2) = (
        Pods::start_named(1, "v1").await,
        Pods::start_named(1, "v2").await,
    );
    shop(&fake, &catalog, &v2);
    fake.apply_object(route(
        "cors",
        json!({
            "parentRefs": [{ "name": "web" }],
            "rules": [{
                "matches": [{ "path": { "type": "PathPrefix", "value": "/cors-1" } }],
                "filters": [{ "type": "CORS", "cors": {
                    "allowOrigins": ["https://www.foo.com", "https://*.bar.com"],
                    "allowMethods": ["GET", "OPTIONS"],
                    "allowHeaders": ["x-header-1", "x-header-2"],
                    "exposeHeaders": ["x-header-3", "x-header-4"],
                    "allowCredentials": true,
                    "maxAge": 3600
                } }],
                "backendRefs": [{ "name": "catalog", "port": 8080 }]
            }]
        }),
    ));
    let gw = start(&fake, "gateway-api-cors").await;
    wait_for_async("the route", SOON, || async {
        get(gw.port80, "a", "/cors-1", &[]).await.0 == 200
    })
    .await;
    let send = |method: &'static str, origin: &'static str, preflight: bool| async move {
        let mut client = Client::h1(gw.port80).await.unwrap();
        let mut req = http::Request::builder()
            .method(method)
            .uri("/cors-1")
            .header("host", "a")
            .header("origin", origin);
        if preflight {
            req = req
                .header("access-control-request-method", "GET")
                .header("access-control-request-headers", "x-header-1, x-header-2");
        }
        let resp = client.send(req.body(empty()).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        collect_body(resp.into_body()).await;
        (status, headers)
    };
    let backend = &catalog.pod(1).control;
    let before = backend.requests.load(Relaxed);
    let (status, h) = send("OPTIONS", "https://xpto.www.bar.com", true).await;
    assert_eq!(status, 200);
    assert_eq!(h["access-control-allow-origin"], "https://xpto.www.bar.com");
    assert_eq!(h["access-control-allow-methods"], "GET, OPTIONS");
    assert_eq!(h["access-control-allow-headers"], "x-header-1, x-header-2");
    assert_eq!(h["access-control-expose-headers"], "x-header-3, x-header-4");
    assert_eq!(h["access-control-max-age"], "3600");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(backend.requests.load(Relaxed), before, "answered by skiff");

    let (status, h) = send("GET", "https://www.foo.com", false).await;
    assert_eq!(status, 200);
    assert_eq!(h["access-control-allow-origin"], "https://www.foo.com");
    assert_eq!(h["x-backend"], "v1-1");
    for (method, preflight) in [("OPTIONS", true), ("GET", false)] {
        let (_, h) = send(method, "https://foobar.com", preflight).await;
        assert!(h.get("access-control-allow-origin").is_none(), "{h:?}");
        assert_eq!(
            h["vary"], "origin",
            "a cache must not serve it to an allowed origin"
        );
    }
}

/// The mesh's routes (a Service as parent) get their status from the
/// Gateway's elected writer: one route attached to the Gateway and to a
/// Service has both entries, and a route on a missing Service says so.
#[tokio::test]
async fn mesh_route_status_is_written_by_the_gateways_writer() {
    let fake = FakeKube::start_new().await;
    let (catalog, v2) = (
        Pods::start_named(1, "v1").await,
        Pods::start_named(1, "v2").await,
    );
    shop(&fake, &catalog, &v2);
    fake.apply_object(route(
        "both",
        json!({
            "parentRefs": [{ "name": "web" }, { "group": "", "kind": "Service", "name": "catalog", "port": 8080 }],
            "rules": [{ "backendRefs": [{ "name": "catalog", "port": 8080 }] }]
        }),
    ));
    fake.apply_object(route(
        "nowhere",
        json!({
            "parentRefs": [{ "group": "", "kind": "Service", "name": "missing" }],
            "rules": [{ "backendRefs": [{ "name": "catalog", "port": 8080 }] }]
        }),
    ));
    let _gw = start(&fake, "gateway-api-mesh-status").await;
    let entry = |route: &str, parent: &str| {
        let object = fake.object("HTTPRoute", "shop", route)?;
        let parents = object["status"]["parents"].as_array()?.clone();
        let ours = parents
            .into_iter()
            .find(|p| p["parentRef"]["name"] == parent)?;
        let accepted = (ours["conditions"].as_array()?.iter())
            .find(|c| c["type"] == "Accepted")?
            .clone();
        Some((
            accepted["status"].as_str()?.to_string(),
            accepted["reason"].as_str()?.to_string(),
        ))
    };
    wait_for_async("both parents' status", SOON, || async {
        entry("both", "web") == Some(("True".into(), "Accepted".into()))
            && entry("both", "catalog") == Some(("True".into(), "Accepted".into()))
    })
    .await;
    wait_for_async("the missing Service's status", SOON, || async {
        entry("nowhere", "missing") == Some(("False".into(), "NoMatchingParent".into()))
    })
    .await;
}

/// A listener added to the Gateway is bound, changed in place, and
/// closed when removed, without a restart and without a failed request
/// on the listener beside it.
#[tokio::test]
async fn listeners_are_added_changed_and_removed_live() {
    let fake = FakeKube::start_new().await;
    let (catalog, v2) = (
        Pods::start_named(1, "v1").await,
        Pods::start_named(1, "v2").await,
    );
    shop(&fake, &catalog, &v2);
    fake.apply_object(route(
        "catalog",
        json!({ "parentRefs": [{ "name": "web" }], "rules": [{ "backendRefs": [{ "name": "catalog", "port": 8080 }] }] }),
    ));
    let gw = start(&fake, "gateway-api-listeners").await;
    wait_for_async("the route", SOON, || async {
        get(gw.port80, "a", "/x", &[]).await.0 == 200
    })
    .await;
    let load = Load::start(gw.port80, "/catalog/x", 2, false);
    let gateway = |extra: Option<Value>| {
        let mut listeners = vec![json!({ "name": "http", "port": 80, "protocol": "HTTP" })];
        listeners.extend(extra);
        json!({
            "kind": "Gateway", "metadata": { "name": "web", "namespace": "shop", "generation": 2 },
            "spec": { "gatewayClassName": "skiff", "listeners": listeners }
        })
    };
    let port90 = addr(gw.port80.port() + 10);
    fake.apply_object(gateway(Some(
        json!({ "name": "extra", "port": 90, "protocol": "HTTP" }),
    )));
    wait_for_async("the new listener bound", SOON, || async {
        match Client::h1(port90).await {
            Ok(_) => get(port90, "a", "/x", &[]).await.0 == 200,
            Err(_) => false,
        }
    })
    .await;
    fake.apply_object(gateway(Some(
        json!({ "name": "extra", "port": 90, "protocol": "HTTP", "hostname": "only.example.com" }),
    )));
    wait_for_async("the listener's hostname", SOON, || async {
        get(port90, "a", "/x", &[]).await.0 == 404
    })
    .await;
    assert_eq!(get(port90, "only.example.com", "/x", &[]).await.0, 200);
    fake.apply_object(gateway(None));
    wait_for_async("the removed listener closed", SOON, || async {
        Client::h1(port90).await.is_err()
    })
    .await;
    let (ok, failed, errors) = load.stop().await;
    let first: Vec<&String> = errors.iter().take(5).collect();
    assert!(
        ok > 0 && failed == 0,
        "port 80 beside the changes: {ok} ok, {failed} failed, first: {first:?}"
    );
}

/// Makes `n` gRPC calls of `method` as `authority` through `address`
/// with a real client (grpcio): how many each server answered, the
/// status codes of the failures, and the last reply.
async fn grpc_calls(
    address: SocketAddr,
    authority: &str,
    method: &str,
    n: usize,
    metadata: &[&str],
) -> Value {
    let (target, count) = (address.to_string(), n.to_string());
    let mut args = vec!["calls", &target, authority, method, &count];
    args.extend_from_slice(metadata);
    let (ok, stdout, stderr) = skiff_tests::py_run("grpc_echo.py", &args).await;
    assert!(ok, "grpc client: {stdout}{stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// A GRPCRoute served to a real gRPC client (grpcio, h2c with prior
/// knowledge) by real gRPC servers: service and method matching, a
/// header match with a header modifier, a 70/30 split, an unresolvable
/// backend answered `UNAVAILABLE` and an unrouted call `UNIMPLEMENTED`
/// (the statuses GRPCRoute asks for), over backends that speak HTTP/2
/// although their Service port declares no `appProtocol`.
#[tokio::test]
async fn grpc_routes_serve_a_real_grpc_client() {
    skiff_tests::require_python_module("grpc", "grpcio");
    let fake = FakeKube::start_new().await;
    let (catalog, v2) = (
        Pods::start_named(1, "v1").await,
        Pods::start_named(1, "v2").await,
    );
    shop(&fake, &catalog, &v2);
    let servers = [
        skiff_tests::PyPeer::server_with("grpc_echo.py", &["127.0.0.1:0", "grpc-v1"]),
        skiff_tests::PyPeer::server_with("grpc_echo.py", &["127.0.0.1:0", "grpc-v2"]),
    ];
    for (name, server) in ["grpc-v1", "grpc-v2"].iter().zip(&servers) {
        fake.apply_object(json!({
            "kind": "Service", "metadata": { "name": name, "namespace": "shop" },
            "spec": { "ports": [{ "name": "grpc", "port": 9000, "targetPort": server.port }] }
        }));
        fake.apply(
            "shop",
            endpoint_slice(
                &format!("{name}-1"),
                name,
                &[("grpc", server.port)],
                &[ready_pod("127.0.0.1")],
            ),
        );
    }
    let backend = |name: &str, weight: u32| json!({ "name": name, "port": 9000, "weight": weight });
    fake.apply_object(json!({
        "kind": "GRPCRoute",
        "metadata": { "name": "shop-grpc", "namespace": "shop", "generation": 3 },
        "spec": {
            "parentRefs": [{ "name": "web" }],
            "hostnames": ["grpc.example.com"],
            "rules": [
                { "matches": [{ "method": { "service": "shop.Catalog", "method": "List" } }],
                  "backendRefs": [backend("grpc-v1", 1)] },
                { "matches": [{ "method": { "service": "shop.Catalog" }, "headers": [{ "name": "x-version", "value": "two" }] }],
                  "filters": [{ "type": "RequestHeaderModifier", "requestHeaderModifier": { "add": [{ "name": "x-routed", "value": "by-header" }] } }],
                  "backendRefs": [backend("grpc-v2", 1)] },
                { "matches": [{ "method": { "service": "shop.Split" } }],
                  "backendRefs": [backend("grpc-v1", 70), backend("grpc-v2", 30)] },
                { "matches": [{ "method": { "type": "RegularExpression", "service": "shop\\.Broken.*" } }],
                  "backendRefs": [backend("no-such-service", 1)] }
            ]
        }
    }));
    let gw = start(&fake, "gateway-api-grpc").await;
    let host = "grpc.example.com";
    wait_for_async("the GRPCRoute", SOON, || async {
        let r = grpc_calls(gw.port80, host, "/shop.Catalog/List", 1, &[]).await;
        r["servers"]["grpc-v1"] == 1
    })
    .await;

    let r = grpc_calls(gw.port80, host, "/shop.Catalog/List", 5, &["x-version=two"]).await;
    assert_eq!(r["servers"]["grpc-v1"], 5, "the exact method wins: {r}");
    let r = grpc_calls(gw.port80, host, "/shop.Catalog/Get", 5, &["x-version=two"]).await;
    assert_eq!(r["servers"]["grpc-v2"], 5, "{r}");
    assert_eq!(r["last"]["metadata"]["x-routed"], "by-header", "{r}");
    assert_eq!(r["last"]["method"], "/shop.Catalog/Get", "{r}");
    let r = grpc_calls(gw.port80, host, "/shop.Catalog/Get", 1, &[]).await;
    assert_eq!(
        r["codes"]["UNIMPLEMENTED"], 1,
        "no rule matches without the header: {r}"
    );

    // 1,000 calls split 70/30: 300 expected for v2, σ ≈ 14.5; 5σ bound.
    let r = grpc_calls(gw.port80, host, "/shop.Split/Any", 1000, &[]).await;
    let to_v2 = r["servers"]["grpc-v2"].as_u64().unwrap_or(0);
    let to_v1 = r["servers"]["grpc-v1"].as_u64().unwrap_or(0);
    assert_eq!(to_v1 + to_v2, 1000, "every call answered: {r}");
    assert!((228..=372).contains(&to_v2), "v2 took {to_v2} of 1000: {r}");

    let r = grpc_calls(gw.port80, host, "/shop.BrokenService/Call", 2, &[]).await;
    assert_eq!(r["codes"]["UNAVAILABLE"], 2, "an unresolvable backend: {r}");
    let r = grpc_calls(gw.port80, "other.example.com", "/shop.Catalog/List", 1, &[]).await;
    assert_eq!(
        r["codes"]["UNIMPLEMENTED"], 1,
        "another host has no route: {r}"
    );

    // Status: accepted, with the unresolvable reference named.
    wait_for_async("the GRPCRoute's status", SOON, || async {
        let object = fake.object("GRPCRoute", "shop", "shop-grpc");
        let parents = object
            .as_ref()
            .and_then(|o| o["status"]["parents"].as_array().cloned());
        parents.unwrap_or_default().iter().any(|p| {
            let conditions = p["conditions"].as_array().cloned().unwrap_or_default();
            let has = |kind: &str, status: &str, reason: &str| {
                conditions.iter().any(|c| {
                    c["type"] == kind
                        && c["status"] == status
                        && c["reason"] == reason
                        && c["observedGeneration"] == 3
                })
            };
            has("Accepted", "True", "Accepted") && has("ResolvedRefs", "False", "BackendNotFound")
        })
    })
    .await;
}

/// A cluster without the GRPCRoute CRD (Gateway API before v1.1): the
/// gateway takes it as no GRPCRoutes and serves its HTTPRoutes.
#[tokio::test]
async fn a_kind_the_cluster_does_not_serve_is_taken_as_none() {
    let fake = FakeKube::start_new().await;
    fake.unserve("GRPCRoute");
    let (catalog, v2) = (
        Pods::start_named(1, "v1").await,
        Pods::start_named(1, "v2").await,
    );
    shop(&fake, &catalog, &v2);
    fake.apply_object(route(
        "catalog",
        json!({ "parentRefs": [{ "name": "web" }], "rules": [{ "backendRefs": [{ "name": "catalog", "port": 8080 }] }] }),
    ));
    let gw = start(&fake, "gateway-api-no-grpcroute").await;
    wait_for_async("the route", SOON, || async {
        get(gw.port80, "a", "/x", &[]).await.0 == 200
    })
    .await;
}

/// A Gateway skiff does not serve (another controller's class) binds
/// nothing, and the process stays up and says why.
#[tokio::test]
async fn a_gateway_of_another_class_is_not_served() {
    let fake = FakeKube::start_new().await;
    fake.apply_object(json!({
        "kind": "GatewayClass", "metadata": { "name": "other" },
        "spec": { "controllerName": "example.com/other" }
    }));
    fake.apply_object(json!({
        "kind": "Gateway", "metadata": { "name": "web", "namespace": "shop" },
        "spec": { "gatewayClassName": "other", "listeners": [{ "name": "http", "port": 80, "protocol": "HTTP" }] }
    }));
    let gw = start(&fake, "gateway-api-other").await;
    assert!(
        Client::h1(gw.port80).await.is_err(),
        "port 80 (+offset) is not bound"
    );
    let (_, config) = admin_get(gw.admin, "/config").await.unwrap();
    assert!(!config.contains("gateway-80"), "{config}");
}

/// The condition `kind` of this controller's entry in `route`'s status.
fn route_condition(fake: &FakeKube, route: &str, kind: &str) -> Option<Value> {
    let object = fake.object("HTTPRoute", "shop", route)?;
    let parents = object["status"]["parents"].as_array()?.clone();
    let ours = parents
        .iter()
        .find(|p| p["controllerName"] == "skiff.io/gateway-controller")?;
    ours["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
}

fn lease_holder(fake: &FakeKube) -> Option<String> {
    let lease = fake.object("Lease", "shop", "skiff-gateway-web")?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_string)
}

/// Status as conformance reads it, written by the one replica holding
/// the Lease, and taken over by the other when the writer stops.
#[tokio::test]
async fn status_is_written_by_one_replica_and_handed_over() {
    let fake = FakeKube::start_new().await;
    let (catalog, v2) = (
        Pods::start_named(1, "v1").await,
        Pods::start_named(1, "v2").await,
    );
    shop(&fake, &catalog, &v2);
    let mut good = route(
        "catalog",
        json!({ "parentRefs": [{ "name": "web" }], "rules": [{ "backendRefs": [{ "name": "catalog", "port": 8080 }] }] }),
    );
    // Another controller's entry, which must stay as it is.
    good["status"] = json!({ "parents": [{
        "parentRef": { "name": "theirs" }, "controllerName": "example.com/other",
        "conditions": [{ "type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z" }]
    }]});
    fake.apply_object(good);
    fake.apply_object(route(
        "broken",
        json!({ "parentRefs": [{ "name": "web" }], "rules": [{ "matches": [{ "path": { "value": "/broken" } }], "backendRefs": [{ "name": "nowhere", "port": 8080 }] }] }),
    ));
    fake.apply_object(route(
        "elsewhere",
        json!({ "parentRefs": [{ "name": "web", "sectionName": "nope" }], "rules": [] }),
    ));
    let a = start_as(&fake, "gateway-status-a", "gw-a").await;
    let b = start_as(&fake, "gateway-status-b", "gw-b").await;

    let written = || async {
        route_condition(&fake, "catalog", "ResolvedRefs").is_some()
            && route_condition(&fake, "broken", "ResolvedRefs").is_some()
            && route_condition(&fake, "elsewhere", "Accepted").is_some()
            && fake
                .object("Gateway", "shop", "web")
                .is_some_and(|g| g["status"]["listeners"].is_array())
    };
    wait_for_async("status to be written", SOON, written).await;
    let accepted = route_condition(&fake, "catalog", "Accepted").unwrap();
    assert_eq!(
        (
            accepted["status"].as_str(),
            accepted["observedGeneration"].as_i64()
        ),
        (Some("True"), Some(1))
    );
    assert!(accepted["lastTransitionTime"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let catalog_status = fake.object("HTTPRoute", "shop", "catalog").unwrap()["status"].clone();
    assert_eq!(
        catalog_status["parents"][0]["controllerName"], "example.com/other",
        "{catalog_status}"
    );
    assert_eq!(catalog_status["parents"].as_array().unwrap().len(), 2);
    let broken = route_condition(&fake, "broken", "ResolvedRefs").unwrap();
    assert_eq!(
        (broken["status"].as_str(), broken["reason"].as_str()),
        (Some("False"), Some("BackendNotFound"))
    );
    let elsewhere = route_condition(&fake, "elsewhere", "Accepted").unwrap();
    assert_eq!(elsewhere["reason"], "NoMatchingParent");
    let gateway = fake.object("Gateway", "shop", "web").unwrap();
    let conditions = gateway["status"]["conditions"].as_array().unwrap().clone();
    for kind in ["Accepted", "Programmed"] {
        let c = conditions.iter().find(|c| c["type"] == kind).unwrap();
        assert_eq!(c["status"], "True", "{kind}: {c}");
    }
    let listener = &gateway["status"]["listeners"][0];
    assert_eq!(listener["name"], "http");
    assert_eq!(
        listener["attachedRoutes"], 2,
        "catalog and broken; not elsewhere"
    );
    assert_eq!(listener["supportedKinds"][0]["kind"], "HTTPRoute");
    let class = fake.object("GatewayClass", "", "skiff").unwrap();
    assert_eq!(class["status"]["conditions"][0]["type"], "Accepted");

    // One writer: the Lease names one of the two.
    let holder = lease_holder(&fake).expect("a Lease");
    assert!(holder == "gw-a" || holder == "gw-b", "{holder}");
    let (writer, standby) = if holder == "gw-a" { (a, b) } else { (b, a) };
    drop(writer);

    // The route is fixed: the other replica, once it holds the Lease,
    // writes the new generation.
    fake.apply_object(json!({
        "kind": "HTTPRoute",
        "metadata": { "name": "broken", "namespace": "shop", "generation": 2, "creationTimestamp": "2026-12-01T00:00:00Z" },
        "spec": { "parentRefs": [{ "name": "web" }], "rules": [{ "matches": [{ "path": { "value": "/broken" } }], "backendRefs": [{ "name": "catalog", "port": 8080 }] }] }
    }));
    let fixed = || async {
        route_condition(&fake, "broken", "ResolvedRefs")
            .is_some_and(|c| c["status"] == "True" && c["observedGeneration"] == 2)
    };
    wait_for_async("the other replica to write status", SOON, fixed).await;
    assert_ne!(
        lease_holder(&fake).as_deref(),
        Some(holder.as_str()),
        "the Lease changed hands"
    );
    assert_eq!(get(standby.port80, "x", "/broken", &[]).await.0, 200);
}

fn check_manifests(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(skiff_tests::skiff_bin())
        .args(["check", "--manifests"])
        .args(args)
        .output()
        .expect("run skiff check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// deploy/gateway-api: Kubernetes accepts the core objects, skiff's own
/// config in the ConfigMap reads, and the Gateway with the shop's routes
/// translates with no problem (`skiff check --manifests`, offline).
#[test]
fn the_deploy_manifests_validate_and_translate_with_no_problem() {
    skiff_tests::validate_manifests("deploy/gateway-api");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("deploy/gateway-api");

    let configmap = std::fs::read_to_string(dir.join("configmap.yaml")).unwrap();
    let config: String = configmap
        .lines()
        .skip_while(|l| !l.starts_with("  skiff.yaml: |"))
        .skip(1)
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let parsed = skiff_config::Config::parse(&config, "configmap", std::path::Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"));
    let gateway = parsed.gateway_api.expect("the gateway role");
    assert_eq!(
        (
            gateway.namespace.as_str(),
            gateway.name.as_str(),
            gateway.port_offset
        ),
        ("shop", "web", 10000)
    );

    let services = root.join("deploy/kustomize/shop/services.yaml");
    let (ok, text) = check_manifests(&[
        dir.to_str().unwrap(),
        services.to_str().unwrap(),
        "-n",
        "shop",
    ]);
    assert!(ok, "{text}");
    for line in [
        "port 80 (http): 3 routes",
        "shop/product-catalog:80 (90), shop/product-catalog-canary:80 (10)",
        "prefix /auth [header x-client]",
        "Service shop/product-catalog port 80 (mesh): 1 routes",
        "Service shop/user-auth port 80 (mesh): 1 routes",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // Without the Services, every backend is a problem, named.
    let (ok, text) = check_manifests(&[dir.to_str().unwrap(), "-n", "shop"]);
    assert!(!ok, "{text}");
    assert!(text.contains("HTTPRoute shop/order (parent web): ResolvedRefs False (BackendNotFound): Service shop/order does not exist"), "{text}");
    assert!(text.contains("HTTPRoute shop/user-auth-mesh (parent Service user-auth): Accepted False (NoMatchingParent): Service shop/user-auth does not exist"), "{text}");
    assert!(text.contains("7 problems"), "{text}");
}

/// The shop as an Ingress (`deploy/ingress`): valid manifests, a config
/// in the ingress role, and with the shop's Services every path served
/// and nothing wrong.
#[test]
fn the_ingress_deploy_manifests_validate_and_translate_with_no_problem() {
    skiff_tests::validate_manifests("deploy/ingress");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("deploy/ingress");
    let configmap = std::fs::read_to_string(dir.join("configmap.yaml")).unwrap();
    let config: String = configmap
        .lines()
        .skip_while(|l| !l.starts_with("  skiff.yaml: |"))
        .skip(1)
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let parsed = skiff_config::Config::parse(&config, "configmap", std::path::Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"));
    let ingress = parsed.ingress.expect("the ingress role");
    assert_eq!(
        (ingress.class.as_str(), ingress.port_offset),
        ("skiff", 10000)
    );

    let services = root.join("deploy/kustomize/shop/services.yaml");
    let (ok, text) = check_manifests(&[
        dir.to_str().unwrap(),
        services.to_str().unwrap(),
        "-n",
        "shop",
    ]);
    assert!(ok, "{text}");
    for line in [
        "IngressClass skiff: 1 Ingresses",
        "port 80 (http): 3 routes",
        "Ingress/shop/shop/rule/0/path/0: shop.example.com prefix /catalog -> shop/product-catalog:80 (1)",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let (ok, text) = check_manifests(&[dir.to_str().unwrap(), "-n", "shop"]);
    assert!(!ok, "{text}");
    assert!(text.contains("Ingress shop/shop: rules[0].http.paths[1]: Service shop/order does not exist; answered 500"), "{text}");
}

/// Mesh routes (a Service as parent) are read offline too: what the
/// Service's clients would take, and every problem.
#[test]
fn mesh_routes_are_checked_offline() {
    let dir = TempDir::new("mesh-manifests");
    let file = dir.write(
        "mesh.yaml",
        "kind: Service\nmetadata: { name: catalog, namespace: shop }\nspec: { ports: [{ name: http, port: 80 }] }\n---\n\
         kind: Service\nmetadata: { name: catalog-v2, namespace: shop }\nspec: { ports: [{ name: http, port: 80 }] }\n---\n\
         kind: HTTPRoute\nmetadata: { name: canary, namespace: shop }\nspec:\n  parentRefs: [{ group: \"\", kind: Service, name: catalog, port: 80 }]\n  \
         rules: [{ backendRefs: [{ name: catalog, port: 80, weight: 90 }, { name: catalog-v2, port: 80, weight: 10 }] }]\n---\n\
         kind: HTTPRoute\nmetadata: { name: broken, namespace: shop }\nspec:\n  parentRefs: [{ group: \"\", kind: Service, name: missing }]\n  \
         rules: [{ backendRefs: [{ name: catalog, port: 80 }] }]\n",
    );
    let (ok, text) = check_manifests(&[file.to_str().unwrap()]);
    assert!(!ok, "{text}");
    for line in [
        "Service shop/catalog port 80 (mesh): 1 routes",
        "shop/catalog:80 (90), shop/catalog-v2:80 (10)",
        "HTTPRoute shop/broken (parent Service missing): Accepted False (NoMatchingParent): Service shop/missing does not exist",
        "1 problem",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

/// The sidecar's RBAC for the mesh's routes (and the rest of
/// `deploy/kubernetes`) validates.
#[test]
fn the_mesh_routes_rbac_validates() {
    let files = skiff_tests::validate_manifests("deploy/kubernetes");
    assert!(files.iter().any(|f| f.ends_with("mesh-routes-rbac.yaml")));
}

/// An object that cannot be read is named with its file and line.
#[test]
fn unreadable_manifests_are_named_by_file_and_line() {
    let dir = TempDir::new("manifests");
    let file = dir.write(
        "bad.yaml",
        "kind: GatewayClass\nmetadata: { name: skiff }\nspec: { controllerName: skiff.io/gateway-controller }\n---\nkind: HTTPRoute\nmetadata: { name: r }\nspec: { parentRefs: oops }\n",
    );
    let (ok, text) = check_manifests(&[file.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("bad.yaml:5: HTTPRoute default/r: invalid type"),
        "{text}"
    );
}

/// Ingress objects of the class `skiff`, served as ingress-nginx serves
/// them: host and path rules (a port by name, `Exact` before a shorter
/// `Prefix`), the cluster's default class taking Ingresses that name
/// none, another class's left alone, `defaultBackend` for the rest, TLS
/// from the Secret with plain HTTP redirected to HTTPS (308), and
/// `status.loadBalancer` written with the configured address. A deleted
/// Ingress stops being served.
#[tokio::test]
async fn ingresses_of_a_class_are_served_with_tls_and_status() {
    use skiff_tests::tls::{curl, Ca, Subject};
    let fake = FakeKube::start_new().await;
    let (catalog, v2) = (
        Pods::start_named(1, "v1").await,
        Pods::start_named(1, "v2").await,
    );
    shop(&fake, &catalog, &v2);
    fake.apply_object(json!({
        "kind": "IngressClass",
        "metadata": { "name": "skiff", "annotations": { "ingressclass.kubernetes.io/is-default-class": "true" } },
        "spec": { "controller": "skiff.io/ingress-controller" }
    }));
    let ca = Ca::new("ingress CA");
    let cert = ca.issue(Subject {
        dns: &["shop.example.com"],
        ..Default::default()
    });
    fake.apply_object(tls_secret("shop", "shop-tls", &cert.cert, &cert.key));
    let service = |name: &str, port: Value| json!({ "service": { "name": name, "port": port } });
    let ingress = |name: &str, spec: Value| {
        json!({ "kind": "Ingress", "apiVersion": "networking.k8s.io/v1",
                "metadata": { "name": name, "namespace": "shop" }, "spec": spec })
    };
    fake.apply_object(ingress(
        "shop",
        json!({
            "ingressClassName": "skiff",
            "tls": [{ "hosts": ["shop.example.com"], "secretName": "shop-tls" }],
            "defaultBackend": service("catalog-v2", json!({ "number": 8080 })),
            "rules": [{ "host": "shop.example.com", "http": { "paths": [
                { "path": "/catalog", "pathType": "Prefix", "backend": service("catalog", json!({ "name": "http" })) },
                { "path": "/catalog/new", "pathType": "Exact", "backend": service("catalog-v2", json!({ "number": 8080 })) }
            ] } }]
        }),
    ));
    fake.apply_object(ingress(
        "plain",
        json!({ "rules": [{ "host": "plain.example.com", "http": { "paths": [
            { "path": "/", "pathType": "Prefix", "backend": service("catalog", json!({ "number": 8080 })) }
        ] } }] }),
    ));
    fake.apply_object(ingress(
        "theirs",
        json!({ "ingressClassName": "nginx", "rules": [{ "host": "theirs.example.com", "http": { "paths": [
            { "path": "/", "pathType": "Prefix", "backend": service("catalog", json!({ "number": 8080 })) }
        ] } }] }),
    ));

    let dir = TempDir::new("ingress");
    let kubeconfig = fake.write_kubeconfig(&dir.0);
    let (bound, admin) = (free_port(), addr(free_port()));
    let config = dir.write(
        "skiff.yaml",
        &format!(
            "admin: {{ listen: {admin} }}\n\
             shutdown: {{ drain_delay: 0s, grace_period: 10s }}\n\
             ingress:\n  class: skiff\n  listen_address: 127.0.0.1\n  port_offset: {}\n  \
             status_address: 203.0.113.7\n  namespace: shop\n  lease_duration: 2s\n",
            bound - 80
        ),
    );
    let env = [
        ("KUBECONFIG", kubeconfig.as_path()),
        ("POD_NAME", std::path::Path::new("ingress-0")),
    ];
    let _process = SkiffProcess::start_with_env(&config, admin, &[], &env).await;
    wait_for_async("the ingress to be ready", SOON, || async move {
        matches!(admin_get(admin, "/ready").await, Ok((s, _)) if s == 200)
    })
    .await;
    let (port80, port443) = (addr(bound), addr(bound + 363));

    let (status, _, location) = get(port80, "shop.example.com", "/catalog/a?x=1", &[]).await;
    assert_eq!(
        (status, location.as_str()),
        (308, "https://shop.example.com/catalog/a?x=1"),
        "a TLS host is redirected to HTTPS"
    );
    let ca_file = ca.write(&dir.0, "ca");
    let https = |path: &'static str| {
        let ca = ca_file.display().to_string();
        async move {
            let url = format!("https://shop.example.com:{}{path}", port443.port());
            let out = curl(
                "shop.example.com",
                port443,
                &["-D", "-", "-o", "/dev/null", "--cacert", &ca, &url],
            )
            .await;
            assert!(out.ok, "{out:?}");
            let backend = out
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix("x-backend: "));
            backend.unwrap_or_default().trim().to_string()
        }
    };
    assert_eq!(
        service_of(&https("/catalog/a").await),
        "v1",
        "by the port's name"
    );
    assert_eq!(
        service_of(&https("/catalog/new").await),
        "v2",
        "Exact over a shorter Prefix"
    );
    assert_eq!(
        service_of(&https("/elsewhere").await),
        "v2",
        "the default backend"
    );
    let (status, backend, _) = get(port80, "plain.example.com", "/x", &[]).await;
    assert_eq!(
        (status, service_of(&backend)),
        (200, "v1"),
        "the default class's"
    );
    let (_, backend, _) = get(port80, "theirs.example.com", "/x", &[]).await;
    assert_eq!(
        service_of(&backend),
        "v2",
        "nginx's Ingress is not served: default backend"
    );

    wait_for_async("status.loadBalancer", SOON, || async {
        let object = fake.object("Ingress", "shop", "shop");
        object.is_some_and(|o| o["status"]["loadBalancer"]["ingress"][0]["ip"] == "203.0.113.7")
    })
    .await;
    let plain = fake.object("Ingress", "shop", "plain").unwrap();
    assert_eq!(
        plain["status"]["loadBalancer"]["ingress"][0]["ip"],
        "203.0.113.7"
    );
    let theirs = fake.object("Ingress", "shop", "theirs").unwrap();
    assert!(theirs["status"].get("loadBalancer").is_none(), "{theirs}");

    fake.delete_object("Ingress", "shop", "plain");
    wait_for_async("the deleted Ingress", SOON, || async move {
        let (_, backend, _) = get(port80, "plain.example.com", "/x", &[]).await;
        service_of(&backend) == "v2"
    })
    .await;
}
