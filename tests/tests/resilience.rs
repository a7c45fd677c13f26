//! Self-healing traffic: the circuit breaker refuses fast instead of
//! letting requests pile up behind a slow or unreachable upstream.

use std::net::SocketAddr;

use http_body_util::BodyExt;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use skiff_tests::{metric_value, start_proxy, unanswered_listener, wait_for, Backend, Client};

const LIMIT: Duration = Duration::from_secs(10);

fn config(endpoint: SocketAddr, extra: &str) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n      - cluster: app\n\
         clusters:\n  - name: app\n    endpoints: [{endpoint}]\n{extra}\n"
    )
}

fn overflow_count(proxy: &skiff::Proxy) -> Option<f64> {
    let metrics = skiff::admin::prometheus::render(proxy.registry(), &proxy.clusters());
    metric_value(&metrics, "skiff_overflow_total", &[("cluster", "app")])
}

#[tokio::test]
async fn requests_over_max_requests_get_a_fast_503_while_the_others_finish() {
    let backend = Backend::start("b").await;
    let (proxy, address) = start_proxy(&config(
        backend.address,
        "    circuit_breaker: { max_requests: 2 }",
    ))
    .await;
    // Two requests held at the backend fill the cluster.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Client::h1(address).await.expect("connect");
        held.push(tokio::spawn(async move { c.get("/hold").await }));
    }
    let control = backend.control.clone();
    wait_for("two requests at the backend", LIMIT, || {
        control.in_flight.load(Relaxed) == 2
    })
    .await;

    // The third is refused at once: the held two are still in flight.
    let mut c = Client::h1(address).await.expect("connect");
    let resp = c
        .send(
            http::Request::get("/next")
                .body(skiff_tests::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-skiff-overflow"], "max_requests");
    assert_eq!(
        control.in_flight.load(Relaxed),
        2,
        "answered while the others wait"
    );
    assert_eq!(
        backend.requests(),
        2,
        "the refused request never reached the backend"
    );
    assert_eq!(overflow_count(&proxy), Some(1.0));

    // Once they finish, requests pass again.
    control.released.store(true, Relaxed);
    for h in held {
        let (status, _, _) = h.await.expect("task").expect("held response");
        assert_eq!(status, 200);
    }
    let (status, name, _) = c.get("/after").await.expect("response");
    assert_eq!((status.as_u16(), name.as_str()), (200, "b"));
}

#[tokio::test]
async fn requests_over_max_pending_get_a_fast_503_while_a_connect_hangs() {
    let (endpoint, _held) = unanswered_listener().await;
    let (proxy, address) = start_proxy(&config(
        endpoint,
        "    timeouts: { connect: 30s }\n    circuit_breaker: { max_pending: 1 }",
    ))
    .await;
    // The first request waits for a connection that never comes.
    let mut first = Client::h1(address).await.expect("connect");
    let waiting = tokio::spawn(async move { first.get("/").await });
    let cluster = proxy
        .clusters()
        .iter()
        .find(|c| &*c.name == "app")
        .cloned()
        .expect("cluster");
    wait_for("one request waiting for a connection", LIMIT, || {
        cluster.stats.pending.load(Relaxed) == 1
    })
    .await;

    let mut c = Client::h1(address).await.expect("connect");
    let resp = c
        .send(
            http::Request::get("/")
                .body(skiff_tests::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-skiff-overflow"], "max_pending");
    assert_eq!(
        cluster.stats.pending.load(Relaxed),
        1,
        "the first still waits"
    );
    assert_eq!(overflow_count(&proxy), Some(1.0));
    waiting.abort();
}

/// Retries seen on their own: no endpoint leaves rotation meanwhile.
const NO_EJECTION: &str = "    outlier_detection: { consecutive_failures: 0 }\n";

/// An address where nothing listens: connects are refused.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn retries(proxy: &skiff::Proxy) -> f64 {
    let metrics = skiff::admin::prometheus::render(proxy.registry(), &proxy.clusters());
    metric_value(&metrics, "skiff_retries_total", &[("cluster", "app")]).unwrap_or(0.0)
}

fn two_endpoints(a: SocketAddr, b: SocketAddr, extra: &str) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n      - cluster: app\n\
         clusters:\n  - name: app\n    lb: round_robin\n    endpoints: [{a}, {b}]\n{extra}"
    )
}

#[tokio::test]
async fn connect_failures_are_retried_on_another_endpoint_even_for_posts() {
    let backend = Backend::start("b").await;
    let (proxy, address) =
        start_proxy(&two_endpoints(closed_port(), backend.address, NO_EJECTION)).await;
    let mut c = Client::h1(address).await.expect("connect");
    // Round robin sends every first try to the refused endpoint; eight
    // retries stay inside the budget's floor of ten a second.
    for i in 0..8 {
        let req = http::Request::post("/sink")
            .body(skiff_tests::full(vec![b'x'; i]))
            .expect("request");
        let resp = c.send(req).await.expect("response");
        assert_eq!(resp.status(), 200, "request {i}");
    }
    assert_eq!(backend.requests(), 8);
    assert_eq!(retries(&proxy), 8.0);
}

/// A proxy in front of an endpoint answering 503 and a healthy one, with
/// room for every retry (the budget has a test of its own) and no
/// ejection.
async fn failing_and_healthy() -> (Backend, Backend, skiff::Proxy, SocketAddr) {
    let failing = Backend::start("failing").await;
    failing.control.status.store(503, Relaxed);
    let healthy = Backend::start("healthy").await;
    let (proxy, address) = start_proxy(&two_endpoints(
        failing.address,
        healthy.address,
        "    retries: { min_per_second: 1000 }\n    outlier_detection: { consecutive_failures: 0 }\n",
    ))
    .await;
    (failing, healthy, proxy, address)
}

#[tokio::test]
async fn after_a_503_idempotent_or_marked_requests_are_retried_and_other_posts_are_not() {
    let (failing, _healthy, proxy, address) = failing_and_healthy().await;
    let mut c = Client::h1(address).await.expect("connect");
    for i in 0..8 {
        let (status, name, _) = c.get(&format!("/get/{i}")).await.expect("response");
        assert_eq!(
            (status.as_u16(), name.as_str()),
            (200, "healthy"),
            "GET {i}"
        );
    }
    assert!(
        failing.requests() >= 1,
        "round robin sent some GETs to the failing endpoint"
    );
    assert_eq!(retries(&proxy), failing.requests() as f64);

    // A retried request is the same request: its headers, prepared once.
    let mut seen_retry = false;
    for _ in 0..4 {
        let before = failing.requests();
        let req = http::Request::get("/headers")
            .header("x-custom", "kept")
            .body(skiff_tests::empty())
            .expect("request");
        let resp = c.send(req).await.expect("response");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        if failing.requests() > before {
            seen_retry = true;
            let headers: serde_json::Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(headers["x-custom"], "kept", "{headers}");
            assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "{headers}");
            assert_eq!(
                headers["x-request-id"].as_str().map(str::len),
                Some(36),
                "{headers}"
            );
        }
    }
    assert!(
        seen_retry,
        "one of the /headers requests went to the failing endpoint first"
    );

    let mut refused = 0;
    for _ in 0..10 {
        let req = http::Request::post("/sink")
            .body(skiff_tests::full("order"))
            .expect("request");
        let resp = c.send(req).await.expect("response");
        refused += usize::from(resp.status() == 503);
    }
    assert!(
        refused >= 1,
        "a POST that got a 503 is answered with it, not sent again"
    );

    // Unless the client marks it retryable; the mark stays with skiff.
    for i in 0..4 {
        let req = http::Request::post("/headers")
            .header("x-skiff-retryable", "true")
            .body(skiff_tests::empty())
            .expect("request");
        let resp = c.send(req).await.expect("response");
        assert_eq!(resp.status(), 200, "marked POST {i}");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let headers: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert!(headers.get("x-skiff-retryable").is_none(), "{headers}");
    }
}

/// HTTP/2 clients: a retried request is the request skiff prepared and
/// its own HTTP/1 client sent, given back for the next try, not a copy.
#[tokio::test]
async fn after_a_503_requests_from_http2_clients_are_retried_with_their_headers() {
    let (failing, _healthy, proxy, address) = failing_and_healthy().await;
    let mut c = Client::h2(address).await.expect("connect");
    let mut seen_retry = false;
    for i in 0..8 {
        let before = failing.requests();
        let req = http::Request::get(format!("http://shop.example/headers?{i}"))
            .header("x-custom", "kept")
            .body(skiff_tests::empty())
            .expect("request");
        let resp = c.send(req).await.expect("response");
        assert_eq!(resp.status(), 200, "GET {i}");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let headers: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(headers["x-custom"], "kept", "{headers}");
        assert_eq!(headers["host"], "shop.example", "{headers}");
        assert_eq!(
            headers["x-request-id"].as_str().map(str::len),
            Some(36),
            "{headers}"
        );
        seen_retry |= failing.requests() > before;
    }
    assert!(
        seen_retry,
        "round robin sent some GETs to the failing endpoint"
    );
    assert_eq!(retries(&proxy), failing.requests() as f64);
}

/// A request that names no host is sent with its endpoint's address as
/// Host; its retry names the next endpoint, not the first.
#[tokio::test]
async fn a_retry_of_a_request_without_host_names_the_endpoint_it_goes_to() {
    let (failing, healthy, _proxy, address) = failing_and_healthy().await;
    let mut seen_retry = false;
    for _ in 0..6 {
        let before = failing.requests();
        let mut conn = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        conn.write_all(b"GET /headers HTTP/1.0\r\n\r\n")
            .await
            .expect("write");
        let mut out = Vec::new();
        conn.read_to_end(&mut out).await.expect("read");
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let headers: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(headers["host"], healthy.address.to_string(), "{headers}");
        seen_retry |= failing.requests() > before;
    }
    assert!(
        seen_retry,
        "round robin sent some requests to the failing endpoint"
    );
}

#[tokio::test]
async fn the_retry_budget_holds_when_every_endpoint_fails() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    a.control.status.store(503, Relaxed);
    b.control.status.store(503, Relaxed);
    let (proxy, address) = start_proxy(&two_endpoints(a.address, b.address, NO_EJECTION)).await;
    let mut c = Client::h1(address).await.expect("connect");
    let started = std::time::Instant::now();
    let requests = 300;
    for _ in 0..requests {
        let (status, _, _) = c.get("/").await.expect("response");
        assert_eq!(status, 503);
    }
    let seconds = started.elapsed().as_secs_f64().ceil() + 1.0;
    let attempts = (a.requests() + b.requests()) as f64;
    // 20% of the requests, plus the minimum of 10 a second.
    let bound = requests as f64 * 1.2 + 10.0 * seconds;
    assert!(
        attempts <= bound,
        "{attempts} upstream attempts for {requests} requests (bound {bound})"
    );
    assert!(attempts > requests as f64, "some were retried");
    assert_eq!(retries(&proxy), attempts - requests as f64);
}

fn metric(proxy: &skiff::Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    let metrics = skiff::admin::prometheus::render(proxy.registry(), &proxy.clusters());
    metric_value(&metrics, name, labels).unwrap_or(-1.0)
}

#[tokio::test]
async fn an_endpoint_failing_in_a_row_is_ejected_and_comes_back_after_its_time() {
    let failing = Backend::start("failing").await;
    failing.control.status.store(503, Relaxed);
    let healthy = Backend::start("healthy").await;
    let (proxy, address) = start_proxy(&two_endpoints(
        failing.address,
        healthy.address,
        "    retries: { attempts: 0 }\n    outlier_detection: { consecutive_failures: 3, base_ejection_time: 1s }\n",
    ))
    .await;
    let mut c = Client::h1(address).await.expect("connect");
    while failing.requests() < 3 {
        c.get("/").await.expect("response");
    }
    let ejected = [("cluster", "app"), ("state", "ejected")];
    assert_eq!(metric(&proxy, "skiff_endpoints", &ejected), 1.0);
    assert_eq!(
        metric(&proxy, "skiff_ejections_total", &[("cluster", "app")]),
        1.0
    );
    for i in 0..20 {
        let (status, name, _) = c.get("/").await.expect("response");
        assert_eq!(
            (status.as_u16(), name.as_str()),
            (200, "healthy"),
            "request {i}"
        );
    }
    assert_eq!(failing.requests(), 3, "no traffic while ejected");

    // Recovered, it takes traffic again once its ejection time is over.
    failing.control.status.store(0, Relaxed);
    let cluster = proxy
        .clusters()
        .iter()
        .find(|c| &*c.name == "app")
        .cloned()
        .expect("cluster");
    wait_for("the ejection to end", LIMIT, || {
        cluster.endpoint_counts().ejected == 0
    })
    .await;
    for _ in 0..4 {
        c.get("/").await.expect("response");
    }
    assert!(failing.requests() > 3, "back in rotation");
}

#[tokio::test]
async fn with_every_endpoint_ejected_the_cluster_panics_and_still_serves() {
    let only = Backend::start("only").await;
    only.control.status.store(503, Relaxed);
    let (proxy, address) = start_proxy(&config(
        only.address,
        "    retries: { attempts: 0 }\n    outlier_detection: { consecutive_failures: 2 }",
    ))
    .await;
    let mut c = Client::h1(address).await.expect("connect");
    for _ in 0..2 {
        c.get("/").await.expect("response");
    }
    let ejected = [("cluster", "app"), ("state", "ejected")];
    assert_eq!(metric(&proxy, "skiff_endpoints", &ejected), 1.0);
    // No endpoint left in rotation: below the panic threshold, all serve.
    only.control.status.store(0, Relaxed);
    let (status, name, _) = c.get("/").await.expect("response");
    assert_eq!((status.as_u16(), name.as_str()), (200, "only"));
    assert!(metric(&proxy, "skiff_panic_total", &[("cluster", "app")]) >= 1.0);
}

#[tokio::test]
async fn bodies_up_to_64_kib_are_replayed_on_retry_and_longer_ones_are_not() {
    let failing = Backend::start("failing").await;
    failing.control.status.store(503, Relaxed);
    let healthy = Backend::start("healthy").await;
    let (_proxy, address) = start_proxy(&two_endpoints(
        failing.address,
        healthy.address,
        "    retries: { min_per_second: 1000 }\n    outlier_detection: { consecutive_failures: 0 }\n",
    ))
    .await;
    for h2 in [false, true] {
        let mut c = if h2 {
            Client::h2(address).await
        } else {
            Client::h1(address).await
        }
        .expect("connect");
        // PUT is idempotent; round robin sends half of the first tries to
        // the failing endpoint, and the retry must carry the whole body.
        for len in [1usize, 1000, 65536] {
            for _ in 0..2 {
                let req = http::Request::put("/sink")
                    .header("content-length", len.to_string())
                    .body(skiff_tests::full(vec![b'p'; len]))
                    .expect("request");
                let resp = c.send(req).await.expect("response");
                assert_eq!(resp.status(), 200, "PUT of {len} bytes (h2: {h2})");
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                assert_eq!(body, len.to_string(), "the retry sent the same body");
            }
        }
        // A marked POST with a body, likewise.
        for _ in 0..2 {
            let req = http::Request::post("/sink")
                .header("x-skiff-retryable", "true")
                .header("content-length", "5")
                .body(skiff_tests::full("order"))
                .expect("request");
            let resp = c.send(req).await.expect("response");
            assert_eq!(resp.status(), 200, "marked POST (h2: {h2})");
        }
        // Over 64 KiB the body streams and is not kept: a 503 is the answer.
        let mut refused = 0;
        for _ in 0..4 {
            let len = 65537;
            let req = http::Request::put("/sink")
                .header("content-length", len.to_string())
                .body(skiff_tests::full(vec![b'p'; len]))
                .expect("request");
            let resp = c.send(req).await.expect("response");
            refused += usize::from(resp.status() == 503);
        }
        assert!(
            refused >= 1,
            "a long PUT that got a 503 is not sent again (h2: {h2})"
        );
    }
}

/// An HTTP/2 server that refuses every other stream (`REFUSED_STREAM`) and
/// answers the rest; returns its address and the streams it refused.
async fn refusing_h2_server() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = refused.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let refused = count.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                let mut n = 0u64;
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    n += 1;
                    if n % 2 == 1 {
                        refused.fetch_add(1, Relaxed);
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                    } else {
                        let resp = http::Response::builder()
                            .status(200)
                            .body(())
                            .expect("response");
                        let _ = respond.send_response(resp, true);
                    }
                }
            });
        }
    });
    (address, refused)
}

#[tokio::test]
async fn a_refused_http2_stream_is_retried_even_for_a_post() {
    let (upstream, refused) = refusing_h2_server().await;
    let (proxy, address) = start_proxy(&config(
        upstream,
        "    protocol: http2\n    retries: { min_per_second: 1000 }\n    outlier_detection: { consecutive_failures: 0 }",
    ))
    .await;
    let mut c = Client::h1(address).await.expect("connect");
    for i in 0..10 {
        let req = http::Request::post("/order")
            .body(skiff_tests::empty())
            .expect("request");
        let resp = c.send(req).await.expect("response");
        assert_eq!(
            resp.status(),
            200,
            "POST {i}: the refused stream was sent again"
        );
    }
    assert_eq!(refused.load(Relaxed), 10);
    assert_eq!(retries(&proxy), 10.0);
}
