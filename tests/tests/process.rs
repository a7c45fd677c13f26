//! The `skiff` binary as a user runs it: `skiff check`, `skiff run` with
//! live reloads and endpoint files under load, streaming memory, SIGTERM.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use skiff_tests::{
    admin_get, free_port, metric_value, simple_config, skiff_bin, wait_for, wait_for_async,
    Backend, Client, Load, SkiffProcess, TempDir,
};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Runs `skiff check -c path`.
fn skiff_check(path: impl AsRef<std::path::Path>) -> std::process::Output {
    Command::new(skiff_bin())
        .args(["check", "-c"])
        .arg(path.as_ref())
        .output()
        .expect("run skiff check")
}

#[test]
fn check_reports_every_mistake_with_its_position() {
    let dir = TempDir::new("check");
    let bad = dir.write(
        "bad.yaml",
        "\
admin: { listen: 127.0.0.1:9901 }
listeners:
  - name: web
    listen: 0.0.0.0:99999
    routes:
      - match: { path_prefix: /products }
        cluster: product-catalog
      - cluster: ghost
  - name: web
    listen: 127.0.0.1:8081
    routes: []
    colour: blue
clusters:
  - name: product-catalog
    endpoints: [127.0.0.1:9001]
    timeouts: { connect: soon }
  - name: product-catalog
    endpoints: [not-an-address]
",
    );
    let out = skiff_check(&bad);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = bad.display().to_string();
    for expected in [
        format!("{file}:4:13: listeners[0].listen: `0.0.0.0:99999` is not an address"),
        format!("{file}:8:18: listeners[0].routes[1].cluster: no cluster named `ghost`"),
        format!("{file}:9:5: listeners[1]: duplicate listener name `web`"),
        format!("{file}:12:5: listeners[1].colour: unknown field"),
        format!("{file}:16:26: clusters[0].timeouts.connect: `soon` is not a duration"),
        format!("{file}:17:5: clusters[1]: duplicate cluster name `product-catalog`"),
        format!("{file}:18:17: clusters[1].endpoints[0]: `not-an-address` is not an address"),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }

    let good = dir.write(
        "good.yaml",
        &simple_config(
            addr(8080),
            addr(9901),
            "round_robin",
            "endpoints: [127.0.0.1:9001]",
        ),
    );
    let out = skiff_check(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(skiff_bin())
        .args(["check", "-c"])
        .arg(dir.path("missing.yaml"))
        .output()
        .expect("run check");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.yaml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_under_load_fails_no_request() {
    let b1 = Backend::start("b1").await;
    let b2 = Backend::start("b2").await;
    let b3 = Backend::start("b3").await;
    let dir = TempDir::new("reload");
    let (listen, admin) = (addr(free_port()), addr(free_port()));
    let v1 = simple_config(
        listen,
        admin,
        "round_robin",
        &format!("endpoints: [{}, {}]", b1.address, b2.address),
    );
    let path = dir.write("skiff.yaml", &v1);
    let skiff = SkiffProcess::start(&path, admin).await;
    skiff.wait_ready().await;

    let load = Load::start(listen, "/", 4, false);
    wait_for("traffic flowing", Duration::from_secs(10), || {
        load.ok.load(std::sync::atomic::Ordering::Relaxed) > 200
    })
    .await;

    // 1. File change: b1 out, b3 in, and least-request.
    let v2 = simple_config(
        listen,
        admin,
        "least_request",
        &format!("endpoints: [{}, {}]", b2.address, b3.address),
    );
    dir.write("skiff.yaml", &v2);
    wait_for("b3 to get traffic", Duration::from_secs(10), || {
        b3.requests() > 50
    })
    .await;
    let b1_after = b1.requests();

    // 2. SIGHUP with a new route to a new cluster.
    let v3 = v2.replace(
        "      - match: { path_prefix: / }\n        cluster: app\n",
        "      - match: { path_prefix: /new }\n        cluster: fresh\n      - match: { path_prefix: / }\n        cluster: app\n",
    ) + &format!("  - name: fresh\n    endpoints: [{}]\n", b1.address);
    std::fs::write(&path, &v3).expect("write v3");
    skiff.signal("HUP");
    wait_for_async("the new route", Duration::from_secs(10), || async {
        let Ok(mut c) = Client::h1(listen).await else {
            return false;
        };
        matches!(c.get("/new").await, Ok((s, b, _)) if s == 200 && b == "b1")
    })
    .await;

    // 3. An invalid config is refused and the running one stays.
    dir.write("skiff.yaml", "listeners: [ {name: web} ]\nclusters: nope\n");
    wait_for_async(
        "the refused reload to be counted",
        Duration::from_secs(10),
        || async {
            let Ok((_, m)) = admin_get(admin, "/metrics").await else {
                return false;
            };
            metric_value(&m, "skiff_config_reloads_total", &[("result", "failure")]).unwrap_or(0.0)
                >= 1.0
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (ok, failed, errors) = load.stop().await;
    assert_eq!(failed, 0, "failed requests during reloads: {errors:?}");
    assert!(ok > 500, "only {ok} requests went through");
    assert!(
        b1.requests() - b1_after <= 1 + 4,
        "b1 kept getting / traffic after it left the set"
    );
    let (_, m) = admin_get(admin, "/metrics").await.expect("metrics");
    assert!(
        metric_value(&m, "skiff_config_reloads_total", &[("result", "success")]).unwrap_or(0.0)
            >= 2.0,
        "{m}"
    );
    assert!(
        skiff.log_text().contains("config reload refused"),
        "{}",
        skiff.log_text()
    );
    let (_, config) = admin_get(admin, "/config").await.expect("config");
    assert!(
        config.contains("fresh"),
        "running config was replaced by the invalid one: {config}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_file_changes_under_load_fail_no_request() {
    let backends = [
        Backend::start("e1").await,
        Backend::start("e2").await,
        Backend::start("e3").await,
        Backend::start("e4").await,
    ];
    let dir = TempDir::new("epfile");
    let set = |idx: &[usize]| -> String {
        idx.iter()
            .map(|&i| format!("- address: {}\n  weight: 1\n", backends[i].address))
            .collect()
    };
    dir.write("endpoints.yaml", &set(&[0, 1]));
    let (listen, admin) = (addr(free_port()), addr(free_port()));
    let path = dir.write(
        "skiff.yaml",
        &simple_config(
            listen,
            admin,
            "least_request",
            "discovery: { file: endpoints.yaml }",
        ),
    );
    let skiff = SkiffProcess::start(&path, admin).await;
    skiff.wait_ready().await;
    let load = Load::start(listen, "/slow/2", 6, false);
    wait_for("traffic flowing", Duration::from_secs(10), || {
        load.ok.load(std::sync::atomic::Ordering::Relaxed) > 100
    })
    .await;

    for next in [&[1, 2][..], &[2, 3], &[0, 1, 2, 3], &[3]] {
        dir.write("endpoints.yaml", &set(next));
        let mut want: Vec<String> = next
            .iter()
            .map(|&i| backends[i].address.to_string())
            .collect();
        want.sort();
        wait_for_async("the new set to be applied", Duration::from_secs(10), || {
            let want = want.clone();
            async move { active_endpoints(admin).await == want }
        })
        .await;
        let target = &backends[*next.last().expect("nonempty")];
        let before = target.requests();
        wait_for(
            "the new set to take traffic",
            Duration::from_secs(10),
            || target.requests() > before + 20,
        )
        .await;
    }
    // A malformed file keeps the last good set.
    dir.write("endpoints.yaml", "- address: [broken\n");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = backends[3].requests();
    wait_for(
        "traffic still flowing to the last good set",
        Duration::from_secs(10),
        || backends[3].requests() > before + 20,
    )
    .await;

    let (ok, failed, errors) = load.stop().await;
    assert_eq!(
        failed, 0,
        "failed requests during endpoint changes: {errors:?}"
    );
    assert!(ok > 300, "only {ok} requests");
    assert!(
        skiff.log_text().contains("endpoint file rejected"),
        "{}",
        skiff.log_text()
    );
    assert_eq!(
        active_endpoints(admin).await,
        vec![backends[3].address.to_string()]
    );
}

/// Addresses of the endpoints taking traffic in the first cluster, sorted.
async fn active_endpoints(admin: SocketAddr) -> Vec<String> {
    let Ok((_, clusters)) = admin_get(admin, "/clusters").await else {
        return Vec::new();
    };
    let clusters: serde_json::Value = serde_json::from_str(&clusters).unwrap_or_default();
    let mut active: Vec<String> = clusters["clusters"][0]["endpoints"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|e| e["state"] == "active")
                .filter_map(|e| e["address"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    active.sort();
    active
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_with_flat_memory() {
    const SIZE: u64 = 200 * 1024 * 1024;
    let backend = Backend::start("big").await;
    let dir = TempDir::new("stream");
    let (listen, admin) = (addr(free_port()), addr(free_port()));
    let path = dir.write(
        "skiff.yaml",
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
    let (status, _, _) = client.get("/bytes/1024").await.expect("warm up");
    assert_eq!(status, 200);
    let baseline = skiff.rss_kib();

    let peak = skiff_tests::RssPeak::start(skiff.pid(), Duration::from_millis(25));

    // Download.
    let resp = client
        .send(
            Request::get(format!("/bytes/{SIZE}"))
                .body(skiff_tests::empty())
                .expect("req"),
        )
        .await
        .expect("download");
    let received = skiff_tests::drain_body(resp.into_body())
        .await
        .expect("body");
    assert_eq!(received, SIZE);

    // Upload.
    let resp = client
        .send(
            Request::post("/sink")
                .body(skiff_tests::generated(SIZE))
                .expect("req"),
        )
        .await
        .expect("upload");
    let count = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(String::from_utf8_lossy(&count), SIZE.to_string());
    let growth_kib = peak.stop().saturating_sub(baseline);
    // 400 MB went through; buffering any real part of it would show here.
    assert!(
        growth_kib < 24 * 1024,
        "RSS grew by {growth_kib} KiB while streaming (baseline {baseline} KiB)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let backend = Backend::start("b").await;
    let dir = TempDir::new("drain");
    let (listen, admin) = (addr(free_port()), addr(free_port()));
    let config = simple_config(
        listen,
        admin,
        "round_robin",
        &format!("endpoints: [{}]", backend.address),
    )
    .replace("drain_delay: 0s", "drain_delay: 1s");
    let path = dir.write("skiff.yaml", &config);
    let mut skiff = SkiffProcess::start(&path, admin).await;
    skiff.wait_ready().await;

    let mut h2 = Client::h2(listen).await.expect("h2 connect");
    let (status, _, _) = h2.get("/").await.expect("h2 request");
    assert_eq!(status, 200);
    let mut slow_client = Client::h1(listen).await.expect("connect");
    let slow = tokio::spawn(async move {
        let resp = slow_client
            .send(
                Request::get("/slow/2500")
                    .body(skiff_tests::empty())
                    .expect("req"),
            )
            .await
            .expect("slow response");
        let close = resp
            .headers()
            .get("connection")
            .map(|v| v.to_str().unwrap_or("").to_string());
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        (status, close)
    });
    wait_for(
        "the slow request to reach the backend",
        Duration::from_secs(5),
        || {
            backend
                .control
                .in_flight
                .load(std::sync::atomic::Ordering::Relaxed)
                == 1
        },
    )
    .await;

    let signalled = Instant::now();
    skiff.signal("TERM");
    wait_for_async("/ready to fail", Duration::from_secs(2), || async {
        matches!(admin_get(admin, "/ready").await, Ok((s, _)) if s == 503)
    })
    .await;
    // During the drain delay, new connections are still served.
    let mut late = Client::h1(listen)
        .await
        .expect("connect during the drain delay");
    let (status, _, _) = late.get("/").await.expect("request during the drain delay");
    assert_eq!(status, 200);
    assert!(
        signalled.elapsed() < Duration::from_secs(1),
        "drain delay elapsed before the check"
    );

    let (status, close) = slow.await.expect("slow task");
    assert_eq!(status, 200, "the in-flight request must finish");
    assert_eq!(
        close.as_deref(),
        Some("close"),
        "HTTP/1 responses during drain say connection: close"
    );
    // HTTP/2 clients get GOAWAY and their connection closes.
    if let Client::H2(tx) = &h2 {
        let start = Instant::now();
        while !tx.is_closed() && start.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(tx.is_closed(), "h2 connection still open after the drain");
    }
    assert!(
        h2.get("/").await.is_err(),
        "h2 connection accepted a new request after GOAWAY"
    );

    let exit = tokio::task::spawn_blocking(move || {
        let status = skiff.child.wait().expect("wait");
        (status, skiff)
    })
    .await
    .expect("join");
    assert!(exit.0.success(), "skiff exited with {:?}", exit.0);
    assert!(
        Client::h1(listen).await.is_err(),
        "listener still accepting after shutdown"
    );
}

#[test]
fn example_configs_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("deploy/examples") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // Endpoint files are read by their cluster, not as configs.
        if !name.ends_with(".yaml") || name.contains("endpoints") {
            continue;
        }
        let out = skiff_check(&path);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked > 0, "no example configs found in {}", dir.display());
}

#[test]
fn readme_config_example_is_valid() {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .expect("README.md");
    let block = readme
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a yaml block in the README");
    if let Err(e) = skiff_config::Config::parse(block, "README.md", std::path::Path::new(".")) {
        panic!("the README's config example is invalid:\n{e}");
    }
}

#[test]
fn demo_runs_the_shop_and_moves_traffic_off_the_slow_replica() {
    let out = Command::new(skiff_bin())
        .args(["demo", "--duration", "6s", "--admin", "127.0.0.1:0"])
        .output()
        .expect("run skiff demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for replica in [
        "product-catalog-1",
        "product-catalog-3",
        "order-2",
        "user-auth-1",
    ] {
        assert!(text.contains(replica), "{replica} missing:\n{text}");
    }
    assert!(text.contains("admin on http://127.0.0.1:"), "{text}");
    assert!(text.contains("product-catalog-2 slowed down"), "{text}");
    let done = text
        .lines()
        .find_map(|l| l.strip_prefix("done: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(done > 100, "only {done} requests:\n{text}");
    // The last table: the slow replica's share of catalog traffic is below
    // the even third it would get from round-robin.
    let last_table = text.rsplit("replica ").next().unwrap_or("");
    let share = last_table
        .lines()
        .find(|l| l.starts_with("product-catalog-2"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.trim_end_matches('%').parse::<f64>().ok())
        .unwrap_or(100.0);
    assert!(
        share < 30.0,
        "slow replica still got {share}%:\n{last_table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_runtime_serves_reloads_and_drains() {
    let b1 = Backend::start("b1").await;
    let b2 = Backend::start("b2").await;
    let dir = TempDir::new("percore");
    let (listen, admin) = (addr(free_port()), addr(free_port()));
    let v1 = simple_config(
        listen,
        admin,
        "least_request",
        &format!("endpoints: [{}]", b1.address),
    );
    let path = dir.write("skiff.yaml", &v1);
    let skiff =
        SkiffProcess::start_with_args(&path, admin, &["--runtime", "per-core", "--threads", "2"])
            .await;
    skiff.wait_ready().await;
    let load = Load::start(listen, "/", 8, false);
    wait_for("traffic flowing", Duration::from_secs(10), || {
        load.ok.load(std::sync::atomic::Ordering::Relaxed) > 200
    })
    .await;
    dir.write(
        "skiff.yaml",
        &simple_config(
            listen,
            admin,
            "least_request",
            &format!("endpoints: [{}]", b2.address),
        ),
    );
    wait_for("b2 to take the traffic", Duration::from_secs(10), || {
        b2.requests() > 100
    })
    .await;
    let (ok, failed, errors) = load.stop().await;
    assert_eq!(failed, 0, "{errors:?}");
    assert!(ok > 300);
    skiff.signal("TERM");
    let mut skiff = skiff;
    let status = tokio::task::spawn_blocking(move || skiff.child.wait().expect("wait"))
        .await
        .expect("join");
    assert!(status.success(), "{status:?}");
}
