//! Self-healing traffic: the circuit breaker refuses fast instead of
//! letting requests pile up behind a slow or unreachable upstream.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

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
    let metrics = skiff::metrics::render(proxy.registry(), &proxy.clusters());
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
