//! Balancing end to end: real backends, a real proxy, real clients.

use std::collections::HashMap;
use std::time::Duration;

use skiff_tests::{start_proxy, Backend, Client};

fn config(lb: &str, endpoints: &str) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n      - cluster: app\n\
         clusters:\n  - name: app\n    lb: {lb}\n    endpoints: {endpoints}\n"
    )
}

async fn count_backends(address: std::net::SocketAddr, requests: usize) -> HashMap<String, usize> {
    let mut client = Client::h1(address).await.expect("connect");
    let mut counts = HashMap::new();
    for _ in 0..requests {
        let (status, backend, _) = client.get("/").await.expect("request");
        assert_eq!(status, 200);
        *counts.entry(backend).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_exact_over_cycles() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let list = format!(
        "[{}, {}, {}]",
        backends[0].address, backends[1].address, backends[2].address
    );
    let (_proxy, address) = start_proxy(&config("round_robin", &list)).await;
    let counts = count_backends(address, 300).await;
    assert_eq!(counts.get("a"), Some(&100), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&100), "{counts:?}");
    assert_eq!(counts.get("c"), Some(&100), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_honours_weights_exactly() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let list = format!(
        "[{{ address: '{}', weight: 3 }}, {{ address: '{}', weight: 1 }}]",
        a.address, b.address
    );
    let (_proxy, address) = start_proxy(&config("round_robin", &list)).await;
    let counts = count_backends(address, 400).await;
    assert_eq!(counts.get("a"), Some(&300), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&100), "{counts:?}");
}

/// Runs `workers` concurrent clients for `per_worker` requests each.
async fn concurrent_counts(
    address: std::net::SocketAddr,
    workers: usize,
    per_worker: usize,
) -> HashMap<String, usize> {
    let mut tasks = Vec::new();
    for _ in 0..workers {
        tasks.push(tokio::spawn(count_backends(address, per_worker)));
    }
    let mut total = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.expect("worker") {
            *total.entry(k).or_insert(0) += v;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_less_to_a_slow_endpoint() {
    let fast1 = Backend::start("fast1").await;
    let fast2 = Backend::start("fast2").await;
    let slow = Backend::start("slow").await;
    slow.control
        .delay_ms
        .store(40, std::sync::atomic::Ordering::Relaxed);
    let list = format!("[{}, {}, {}]", fast1.address, fast2.address, slow.address);
    let (_proxy, address) = start_proxy(&config("least_request", &list)).await;
    let counts = concurrent_counts(address, 12, 40).await;
    let total: usize = counts.values().sum();
    let slow_share = *counts.get("slow").unwrap_or(&0) as f64 / total as f64;
    // Round-robin would give it a third; least-request gives it far less.
    assert!(
        slow_share < 0.15,
        "slow endpoint got {:.1}% ({counts:?})",
        slow_share * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_least_request_follows_weights_under_load() {
    let a = Backend::start("heavy").await;
    let b = Backend::start("light").await;
    for x in [&a, &b] {
        x.control
            .delay_ms
            .store(5, std::sync::atomic::Ordering::Relaxed);
    }
    let list = format!(
        "[{{ address: '{}', weight: 3 }}, {{ address: '{}', weight: 1 }}]",
        a.address, b.address
    );
    let (_proxy, address) = start_proxy(&config("least_request", &list)).await;
    let counts = concurrent_counts(address, 16, 30).await;
    let total: usize = counts.values().sum();
    let heavy = *counts.get("heavy").unwrap_or(&0) as f64 / total as f64;
    assert!(
        heavy > 0.6,
        "heavy endpoint got {:.1}% ({counts:?})",
        heavy * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_is_held_until_the_response_body_ends() {
    let a = Backend::start("a").await;
    let list = format!("[{}]", a.address);
    let (proxy, address) = start_proxy(&config("least_request", &list)).await;
    let mut client = Client::h1(address).await.expect("connect");
    let req = http::Request::get("/bytes/10000000")
        .body(skiff_tests::empty())
        .expect("req");
    let resp = client.send(req).await.expect("response headers");
    assert_eq!(resp.status(), 200);
    let cluster = proxy.clusters()[0].clone();
    // Headers are here but the body is not read: still in flight.
    assert_eq!(cluster.in_flight(), 1);
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body.len(), 10_000_000);
    skiff_tests::wait_for("in-flight back to 0", Duration::from_secs(5), || {
        cluster.in_flight() == 0
    })
    .await;
}
