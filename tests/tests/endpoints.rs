//! Endpoint sets changing under live requests, readiness and pooled
//! connections, against an in-process proxy with a file source.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use skiff_tests::{admin_get, wait_for, wait_for_async, Backend, Client, TempDir};

fn file_config(dir: &TempDir, extra: &str) -> skiff_config::Config {
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n      - cluster: app\n\
         clusters:\n  - name: app\n    lb: round_robin\n    discovery: {{ file: endpoints.yaml }}\n{extra}"
    );
    skiff_config::Config::parse(&yaml, "test.yaml", &dir.0).expect("config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_first_endpoint_set() {
    let dir = TempDir::new("ready");
    let backend = Backend::start("a").await;
    let proxy = skiff::Proxy::start(file_config(&dir, ""), None)
        .await
        .expect("start");
    let admin = proxy.admin_address().expect("admin");
    let (status, body) = admin_get(admin, "/ready").await.expect("ready");
    assert_eq!(status, 503);
    assert!(body.contains("waiting for endpoints of app"), "{body}");
    dir.write("endpoints.yaml", &format!("- {}\n", backend.address));
    wait_for_async("ready", Duration::from_secs(5), || async {
        matches!(admin_get(admin, "/ready").await, Ok((s, _)) if s == 200)
    })
    .await;
    let (status, _) = admin_get(admin, "/live").await.expect("live");
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_endpoint_finishes_in_flight_requests() {
    let dir = TempDir::new("removed");
    let old = Backend::start("old").await;
    let new = Backend::start("new").await;
    dir.write("endpoints.yaml", &format!("- {}\n", old.address));
    let proxy = skiff::Proxy::start(file_config(&dir, ""), None)
        .await
        .expect("start");
    let address = proxy.listener_address("web").expect("web");
    wait_for("first set", Duration::from_secs(5), || proxy.is_ready()).await;

    // A request that takes a while is in flight on `old`...
    let mut client = Client::h1(address).await.expect("connect");
    let slow = tokio::spawn(async move {
        let resp = client
            .send(
                Request::get("/slow/800")
                    .body(skiff_tests::empty())
                    .expect("req"),
            )
            .await
            .expect("response");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, body)
    });
    wait_for("slow request at old", Duration::from_secs(5), || {
        old.control.in_flight.load(Relaxed) == 1
    })
    .await;

    // ...when `old` leaves the set.
    dir.write("endpoints.yaml", &format!("- {}\n", new.address));
    let cluster = proxy.clusters()[0].clone();
    wait_for("old to be draining", Duration::from_secs(5), || {
        let n = cluster.endpoint_counts();
        (n.healthy, n.draining) == (1, 1)
    })
    .await;
    let mut other = Client::h1(address).await.expect("connect");
    for _ in 0..5 {
        let (status, backend, _) = other.get("/").await.expect("new request");
        assert_eq!((status.as_u16(), backend.as_str()), (200, "new"));
    }
    let (status, body) = slow.await.expect("slow task");
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"old");
    wait_for("old to be dropped", Duration::from_secs(5), || {
        let n = cluster.endpoint_counts();
        (n.healthy, n.draining) == (1, 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_close_after_the_idle_timeout() {
    let dir = TempDir::new("idle");
    let backend = Backend::start("a").await;
    dir.write("endpoints.yaml", &format!("- {}\n", backend.address));
    let proxy = skiff::Proxy::start(file_config(&dir, "    timeouts: { idle: 300ms }\n"), None)
        .await
        .expect("start");
    let address = proxy.listener_address("web").expect("web");
    wait_for("first set", Duration::from_secs(5), || proxy.is_ready()).await;
    let mut client = Client::h1(address).await.expect("connect");
    let (status, _, _) = client.get("/").await.expect("request");
    assert_eq!(status, 200);
    let cluster = proxy.clusters()[0].clone();
    let endpoint = cluster.endpoints_for_display()[0].clone();
    wait_for(
        "the connection to be pooled",
        Duration::from_secs(2),
        || endpoint.idle_connections() == 1,
    )
    .await;
    // Reused while fresh...
    let (status, _, _) = client.get("/").await.expect("request");
    assert_eq!(status, 200);
    wait_for(
        "the connection back in the pool",
        Duration::from_secs(2),
        || endpoint.idle_connections() == 1,
    )
    .await;
    // ...and closed once idle past the timeout.
    wait_for(
        "the idle connection to close",
        Duration::from_secs(5),
        || endpoint.idle_connections() == 0,
    )
    .await;
}
