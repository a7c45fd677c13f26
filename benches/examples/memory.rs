//! Memory of `skiff run`: idle RSS with the e-commerce example config, and
//! RSS growth while streaming 1 GB down and 1 GB up through it.
//!
//! `cargo run --release -p skiff-bench --example memory`
//! (uses the release `skiff` binary, building it if needed).

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use skiff_tests::{free_port, simple_config, Backend, Client, RssPeak, SkiffProcess, TempDir};

const STREAM: u64 = 1 << 30;

#[tokio::main]
async fn main() {
    let dir = TempDir::new("memory");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");

    // 1. Idle, with the example config (its listeners moved to free ports).
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let shop = std::fs::read_to_string(root.join("shop.yaml"))
        .expect("deploy/examples/shop.yaml")
        .replace("127.0.0.1:9901", &admin.to_string())
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", free_port()));
    std::fs::copy(
        root.join("user-auth-endpoints.yaml"),
        dir.path("user-auth-endpoints.yaml"),
    )
    .expect("copy");
    let path = dir.write("shop.yaml", &shop);
    let skiff = SkiffProcess::start(&path, admin).await;
    skiff.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("idle RSS, example config: {} KiB", skiff.rss_kib());
    drop(skiff);

    // 2. Streaming.
    let backend = Backend::start("big").await;
    let (listen, admin) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let path = dir.write(
        "stream.yaml",
        &simple_config(
            listen,
            admin,
            "round_robin",
            &format!("endpoints: [{}]", backend.address),
        ),
    );
    let skiff = SkiffProcess::start(&path, admin).await;
    skiff.wait_ready().await;
    let mut client = Client::h1(listen).await.expect("connect");
    client.get("/bytes/1024").await.expect("warm up");
    let baseline = skiff.rss_kib();
    let peak = RssPeak::start(skiff.pid(), Duration::from_millis(10));
    let started = std::time::Instant::now();
    let resp = client
        .send(
            http::Request::get(format!("/bytes/{STREAM}"))
                .body(skiff_tests::empty())
                .expect("req"),
        )
        .await
        .expect("download");
    let got = skiff_tests::drain_body(resp.into_body())
        .await
        .expect("body");
    assert_eq!(got, STREAM);
    let down = started.elapsed();
    let started = std::time::Instant::now();
    let resp = client
        .send(
            http::Request::post("/sink")
                .body(skiff_tests::generated(STREAM))
                .expect("req"),
        )
        .await
        .expect("upload");
    let n = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(String::from_utf8_lossy(&n), STREAM.to_string());
    let up = started.elapsed();
    let peak = peak.stop();
    println!(
        "streaming 1 GiB down ({:.2}s) and 1 GiB up ({:.2}s): RSS {baseline} KiB before, peak {peak} KiB, growth {} KiB",
        down.as_secs_f64(),
        up.as_secs_f64(),
        peak - baseline
    );
}
