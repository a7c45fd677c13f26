//! Active health checks under steady traffic: failing endpoints leave
//! rotation and come back, dead and hung backends cost no idempotent
//! request, and a rolling update loses nothing.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use skiff_tests::{
    admin_get, metric_value, start_proxy, unanswered_listener, wait_for, Backend, Client, Load,
    TempDir,
};

const LIMIT: Duration = Duration::from_secs(15);

fn config(endpoints: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|a| a.to_string()).collect();
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n      - cluster: app\n\
         clusters:\n  - name: app\n    lb: round_robin\n    endpoints: [{}]\n{extra}\n",
        list.join(", ")
    )
}

fn metric(proxy: &skiff::Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    let metrics = skiff::admin::prometheus::render(proxy.registry(), &proxy.clusters());
    metric_value(&metrics, name, labels).unwrap_or(-1.0)
}

fn endpoints_in(proxy: &skiff::Proxy, state: &str) -> f64 {
    metric(
        proxy,
        "skiff_endpoints",
        &[("cluster", "app"), ("state", state)],
    )
}

async fn ready(proxy: &skiff::Proxy) {
    wait_for("the first health checks", LIMIT, || proxy.is_ready()).await;
}

/// The `/clusters` entry of the endpoint at `address`.
async fn endpoint_json(proxy: &skiff::Proxy, address: SocketAddr) -> serde_json::Value {
    let admin = proxy.admin_address().expect("admin");
    let (_, body) = admin_get(admin, "/clusters").await.expect("/clusters");
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    json["clusters"][0]["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| e["address"] == address.to_string())
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_backend_failing_its_check_leaves_rotation_and_comes_back() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let addresses: Vec<SocketAddr> = backends.iter().map(|b| b.address).collect();
    let (proxy, address) = start_proxy(&config(
        &addresses,
        "    health_check: { http: { path: /healthz }, interval: 100ms, timeout: 1s, \
         unhealthy_threshold: 2, healthy_threshold: 2 }",
    ))
    .await;
    ready(&proxy).await;
    assert!(
        backends
            .iter()
            .all(|b| b.control.health_checks.load(Relaxed) > 0),
        "every endpoint is checked, with the identifying user-agent"
    );
    let load = Load::start(address, "/", 4, false);
    let sick = &backends[1];
    wait_for("traffic on every backend", LIMIT, || {
        backends.iter().all(|b| b.requests() > 10)
    })
    .await;

    // Failing its check: out within unhealthy_threshold × interval (plus
    // a margin for a loaded machine).
    sick.control.health_status.store(503, Relaxed);
    let failing_since = std::time::Instant::now();
    wait_for(
        "the failing endpoint to leave",
        Duration::from_secs(5),
        || endpoints_in(&proxy, "unhealthy") == 1.0,
    )
    .await;
    let took = failing_since.elapsed();
    let after = sick.requests();
    let ok_then = load.ok.load(Relaxed);
    wait_for("500 more requests", LIMIT, || {
        load.ok.load(Relaxed) > ok_then + 500
    })
    .await;
    // Requests in flight when it left may still finish on it: at most one
    // per client connection.
    assert!(
        sick.requests() <= after + 4,
        "no traffic while unhealthy: {} then {}",
        after,
        sick.requests()
    );
    let json = endpoint_json(&proxy, sick.address).await;
    assert_eq!(json["health"], "unhealthy", "{json}");
    assert_eq!(json["health_failure"], "answered 503", "{json}");
    assert!(
        metric(
            &proxy,
            "skiff_health_checks_total",
            &[("cluster", "app"), ("result", "failed")]
        ) >= 2.0
    );

    // Passing again: back after healthy_threshold passes.
    sick.control.health_status.store(0, Relaxed);
    wait_for("the endpoint to come back", LIMIT, || {
        endpoints_in(&proxy, "healthy") == 3.0
    })
    .await;
    let back = sick.requests();
    wait_for("traffic on it again", LIMIT, || sick.requests() > back + 10).await;

    let (ok, failed, errors) = load.stop().await;
    assert_eq!(failed, 0, "no request failed: {errors:?}");
    assert!(ok > 1000);
    eprintln!("left rotation {took:?} after its check began failing");
}

#[tokio::test]
async fn a_new_endpoint_takes_traffic_only_after_its_first_check() {
    let good = Backend::start("good").await;
    let sick = Backend::start("sick").await;
    sick.control.health_status.store(500, Relaxed);
    let (proxy, address) = start_proxy(&config(
        &[good.address, sick.address],
        "    panic_threshold: 0\n    health_check: { http: { path: /healthz, expected_statuses: [200] }, interval: 1s }",
    ))
    .await;
    ready(&proxy).await;
    let mut c = Client::h1(address).await.expect("connect");
    for _ in 0..50 {
        let (status, name, _) = c.get("/").await.expect("response");
        assert_eq!((status.as_u16(), name.as_str()), (200, "good"));
    }
    assert_eq!(
        sick.requests(),
        0,
        "failed its first check: never in rotation"
    );
    assert_eq!(
        endpoint_json(&proxy, sick.address).await["health"],
        "unhealthy"
    );
}

#[tokio::test]
async fn a_backend_that_never_answers_fails_its_checks_and_costs_no_request() {
    let good = Backend::start("good").await;
    let other = Backend::start("other").await;
    let (hung, _keep) = unanswered_listener().await;
    let (proxy, address) = start_proxy(&config(
        &[good.address, other.address, hung],
        "    timeouts: { request: 300ms }\n    health_check: { http: { path: /healthz }, interval: 200ms, timeout: 200ms }",
    ))
    .await;
    ready(&proxy).await;
    let load = Load::start(address, "/", 4, false);
    wait_for("steady traffic", LIMIT, || load.ok.load(Relaxed) > 500).await;
    let json = endpoint_json(&proxy, hung).await;
    assert_eq!(json["health"], "unhealthy", "{json}");
    assert_eq!(json["health_failure"], "no answer within 200ms", "{json}");
    assert!(
        metric(
            &proxy,
            "skiff_health_checks_total",
            &[("cluster", "app"), ("result", "timeout")]
        ) >= 1.0
    );
    let (_, failed, errors) = load.stop().await;
    assert_eq!(failed, 0, "{errors:?}");
}

#[tokio::test]
async fn without_checks_a_hung_backend_times_out_is_ejected_and_others_are_unharmed() {
    let good = Backend::start("good").await;
    let other = Backend::start("other").await;
    let (hung, _keep) = unanswered_listener().await;
    let (proxy, address) = start_proxy(&config(
        &[good.address, other.address, hung],
        "    retries: { attempts: 2, per_try_timeout: 200ms, min_per_second: 100 }\n    \
         outlier_detection: { consecutive_failures: 3, max_ejection_percent: 34 }",
    ))
    .await;
    ready(&proxy).await;
    let load = Load::start(address, "/", 4, false);
    wait_for("the hung endpoint's ejection", LIMIT, || {
        endpoints_in(&proxy, "ejected") == 1.0
    })
    .await;
    let json = endpoint_json(&proxy, hung).await;
    assert_eq!(json["state"], "ejected", "{json}");
    assert_eq!(
        json["ejection"]["reason"],
        "3 5xx responses or connect failures in a row"
    );
    let ok_then = load.ok.load(Relaxed);
    wait_for("traffic after the ejection", LIMIT, || {
        load.ok.load(Relaxed) > ok_then + 300
    })
    .await;
    let (_, failed, errors) = load.stop().await;
    assert_eq!(
        failed, 0,
        "timed-out GETs are retried elsewhere: {errors:?}"
    );
    let timeouts = ["request_timeout", "connect_timeout"].map(|kind| {
        metric(
            &proxy,
            "skiff_upstream_errors_total",
            &[("cluster", "app"), ("kind", kind)],
        )
    });
    assert!(timeouts[0] + timeouts[1] >= 3.0, "{timeouts:?}");
}

#[tokio::test]
async fn a_cluster_of_503s_ejects_no_more_than_its_cap() {
    let mut backends = Vec::new();
    for i in 0..10 {
        let b = Backend::start(&format!("b{i}")).await;
        b.control.status.store(503, Relaxed);
        backends.push(b);
    }
    let addresses: Vec<SocketAddr> = backends.iter().map(|b| b.address).collect();
    let (proxy, address) = start_proxy(&config(
        &addresses,
        "    retries: { attempts: 0 }\n    outlier_detection: { consecutive_failures: 2, max_ejection_percent: 30 }",
    ))
    .await;
    ready(&proxy).await;
    let mut c = Client::h1(address).await.expect("connect");
    for _ in 0..200 {
        let (status, _, _) = c.get("/").await.expect("response");
        assert_eq!(status, 503);
        assert!(endpoints_in(&proxy, "ejected") <= 3.0, "over the cap");
    }
    assert_eq!(endpoints_in(&proxy, "ejected"), 3.0);
    assert_eq!(
        metric(&proxy, "skiff_ejections_total", &[("cluster", "app")]),
        3.0
    );
}

#[tokio::test]
async fn every_endpoint_unhealthy_panics_and_still_serves() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    a.control.health_status.store(503, Relaxed);
    b.control.health_status.store(503, Relaxed);
    let (proxy, address) = start_proxy(&config(
        &[a.address, b.address],
        "    health_check: { http: { path: /healthz }, interval: 100ms }",
    ))
    .await;
    ready(&proxy).await;
    assert_eq!(endpoints_in(&proxy, "unhealthy"), 2.0);
    let mut c = Client::h1(address).await.expect("connect");
    for _ in 0..20 {
        let (status, _, _) = c.get("/").await.expect("response");
        assert_eq!(status, 200, "what can be served is served");
    }
    assert!(a.requests() > 0 && b.requests() > 0);
    assert!(metric(&proxy, "skiff_panic_total", &[("cluster", "app")]) >= 20.0);
}

/// A backend in a process of its own (tests/src/bin/skiff-test-backend.rs).
struct BackendProcess {
    child: tokio::process::Child,
    address: SocketAddr,
}

impl BackendProcess {
    async fn start(name: &str) -> BackendProcess {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_skiff-test-backend"))
            .arg(name)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start skiff-test-backend");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(LIMIT, lines.next_line())
            .await
            .expect("backend start in time")
            .expect("read stdout")
            .expect("a line");
        let address = line
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected backend output {line:?}"));
        BackendProcess { child, address }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    async fn exited(&mut self) -> bool {
        tokio::time::timeout(LIMIT, self.child.wait()).await.is_ok()
    }
}

#[tokio::test]
async fn a_backend_killed_mid_load_costs_only_non_idempotent_requests_in_flight_on_it() {
    let mut procs = Vec::new();
    for name in ["p0", "p1", "p2"] {
        procs.push(BackendProcess::start(name).await);
    }
    let addresses: Vec<SocketAddr> = procs.iter().map(|p| p.address).collect();
    let (proxy, address) = start_proxy(&config(
        &addresses,
        "    retries: { attempts: 2, min_per_second: 1000 }\n    \
         health_check: { http: { path: /healthz }, interval: 200ms }",
    ))
    .await;
    ready(&proxy).await;
    // GETs (idempotent) and POSTs of a slow path, side by side.
    let gets = Load::start(address, "/slow/5", 6, false);
    let posts_ok = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let posts_failed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut post_tasks = Vec::new();
    for _ in 0..3 {
        let (ok, failed, stop) = (posts_ok.clone(), posts_failed.clone(), stop.clone());
        post_tasks.push(tokio::spawn(async move {
            let mut client = None;
            while !stop.load(Relaxed) {
                if client.is_none() {
                    client = Client::h1(address).await.ok();
                }
                let Some(c) = client.as_mut() else { continue };
                let req = http::Request::post("/slow/5")
                    .body(skiff_tests::empty())
                    .expect("request");
                match c.send(req).await {
                    Ok(resp) if resp.status() == 200 => {
                        let _ = skiff_tests::drain_body(resp.into_body()).await;
                        ok.fetch_add(1, Relaxed);
                    }
                    Ok(_) => {
                        failed.fetch_add(1, Relaxed);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Relaxed);
                        client = None;
                    }
                }
            }
        }));
    }
    wait_for("steady traffic", LIMIT, || gets.ok.load(Relaxed) > 300).await;
    procs[1].signal("-KILL");
    assert!(procs[1].exited().await);
    let ok_then = gets.ok.load(Relaxed);
    wait_for("traffic after the kill", LIMIT, || {
        // Out of rotation: failing its checks, or ejected first.
        let out = endpoints_in(&proxy, "unhealthy") + endpoints_in(&proxy, "ejected");
        gets.ok.load(Relaxed) > ok_then + 300 && out == 1.0
    })
    .await;
    stop.store(true, Relaxed);
    for t in post_tasks {
        let _ = t.await;
    }
    let (ok, failed, errors) = gets.stop().await;
    assert_eq!(
        failed, 0,
        "every GET succeeds, retried elsewhere: {errors:?}"
    );
    // A POST in flight on the killed backend (one per client at most) may
    // fail; every other POST succeeds (connect failures are retried).
    let posts_failed = posts_failed.load(Relaxed);
    assert!(posts_failed <= 3, "{posts_failed} POSTs failed");
    assert!(posts_ok.load(Relaxed) > 50 && ok > 600);
}

#[tokio::test]
async fn a_rolling_update_under_load_loses_no_request() {
    let dir = TempDir::new("rolling");
    let mut old = Vec::new();
    for name in ["v1-a", "v1-b", "v1-c"] {
        old.push(BackendProcess::start(name).await);
    }
    let write = |list: &[SocketAddr]| {
        let text: String = list.iter().map(|a| format!("- {a}\n")).collect();
        dir.write("endpoints.yaml", &text);
    };
    let mut current: Vec<SocketAddr> = old.iter().map(|p| p.address).collect();
    write(&current);
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n      - cluster: app\n\
         clusters:\n  - name: app\n    discovery: {{ file: {} }}\n    \
         health_check: {{ http: {{ path: /healthz }}, interval: 100ms }}\n",
        dir.path("endpoints.yaml").display()
    );
    let (proxy, address) = start_proxy(&yaml).await;
    ready(&proxy).await;
    let load = Load::start(address, "/slow/2", 6, false);
    let h2_load = Load::start(address, "/slow/2", 2, true);
    wait_for("steady traffic", LIMIT, || load.ok.load(Relaxed) > 200).await;

    let cluster = proxy.clusters()[0].clone();
    let mut new = Vec::new();
    for (i, name) in ["v2-a", "v2-b", "v2-c"].into_iter().enumerate() {
        // The new pod starts and passes its checks.
        let pod = BackendProcess::start(name).await;
        current.push(pod.address);
        write(&current);
        wait_for("the new pod to be healthy", LIMIT, || {
            cluster
                .snapshot()
                .endpoints
                .iter()
                .any(|e| e.address == pod.address)
        })
        .await;
        // The old pod leaves the set, then gets SIGTERM and exits after
        // its requests in progress.
        let leaving = old[i].address;
        current.retain(|a| *a != leaving);
        write(&current);
        wait_for("the old pod to leave the set", LIMIT, || {
            cluster
                .snapshot()
                .members
                .iter()
                .all(|e| e.address != leaving)
        })
        .await;
        old[i].signal("-TERM");
        assert!(old[i].exited().await, "old pod exits");
        let ok_then = load.ok.load(Relaxed);
        wait_for("traffic on the new set", LIMIT, || {
            load.ok.load(Relaxed) > ok_then + 100
        })
        .await;
        new.push(pod);
    }
    let (ok, failed, errors) = load.stop().await;
    let (h2_ok, h2_failed, h2_errors) = h2_load.stop().await;
    assert_eq!(failed, 0, "HTTP/1.1: {errors:?}");
    assert_eq!(h2_failed, 0, "HTTP/2: {h2_errors:?}");
    assert!(ok > 300 && h2_ok > 50);
    let members: Vec<SocketAddr> = cluster
        .snapshot()
        .members
        .iter()
        .map(|e| e.address)
        .collect();
    assert_eq!(members, new.iter().map(|p| p.address).collect::<Vec<_>>());
}

#[tokio::test]
async fn slow_start_gives_a_scaled_up_endpoint_a_small_share_first() {
    let dir = TempDir::new("slow-start");
    let old = [Backend::start("a").await, Backend::start("b").await];
    let fresh = Backend::start("fresh").await;
    let list = |extra: Option<SocketAddr>| -> String {
        old.iter()
            .map(|b| b.address)
            .chain(extra)
            .map(|a| format!("- {a}\n"))
            .collect()
    };
    dir.write("endpoints.yaml", &list(None));
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         listeners:\n  - name: web\n    listen: 127.0.0.1:0\n    routes:\n      - cluster: app\n\
         clusters:\n  - name: app\n    lb: round_robin\n    discovery: {{ file: {} }}\n    \
         health_check: {{ http: {{ path: /healthz }}, interval: 100ms }}\n    \
         slow_start: {{ window: 60s, min_weight_percent: 10 }}\n",
        dir.path("endpoints.yaml").display()
    );
    let (proxy, address) = start_proxy(&yaml).await;
    ready(&proxy).await;
    let cluster = proxy.clusters()[0].clone();
    dir.write("endpoints.yaml", &list(Some(fresh.address)));
    wait_for("the new endpoint to pass its first check", LIMIT, || {
        cluster
            .snapshot()
            .endpoints
            .iter()
            .any(|e| e.address == fresh.address)
    })
    .await;
    let json = endpoint_json(&proxy, fresh.address).await;
    assert_eq!(json["slow_start_percent"], 10, "{json}");
    let mut c = Client::h1(address).await.expect("connect");
    for _ in 0..210 {
        let (status, _, _) = c.get("/").await.expect("response");
        assert_eq!(status, 200);
    }
    // Weights 100 : 100 : 10 (its 10% floor for the first 6 s of 60).
    let share = fresh.requests();
    assert!(
        (5..=20).contains(&share),
        "the new endpoint got {share} of 210, not a tenth of a full share"
    );
}

#[tokio::test]
async fn http2_clusters_are_checked_over_http2_and_tcp_checks_need_only_a_connection() {
    let good = Backend::start("good").await;
    let sick = Backend::start("sick").await;
    sick.control.health_status.store(503, Relaxed);
    let (proxy, _) = start_proxy(&config(
        &[good.address, sick.address],
        "    protocol: http2\n    panic_threshold: 0\n    health_check: { http: { path: /healthz }, interval: 100ms }",
    ))
    .await;
    ready(&proxy).await;
    wait_for("the h2 checks to tell the two apart", LIMIT, || {
        endpoints_in(&proxy, "healthy") == 1.0 && endpoints_in(&proxy, "unhealthy") == 1.0
    })
    .await;
    assert!(good.control.health_checks.load(Relaxed) > 0);

    // A TCP check passes on connect, whatever HTTP would say; a closed
    // port fails it.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("address")
    };
    let (proxy, _) = start_proxy(&config(
        &[sick.address, closed],
        "    panic_threshold: 0\n    health_check: { tcp: {}, interval: 100ms }",
    ))
    .await;
    ready(&proxy).await;
    assert_eq!(endpoints_in(&proxy, "healthy"), 1.0);
    let json = endpoint_json(&proxy, closed).await;
    assert_eq!(json["health"], "unhealthy", "{json}");
    assert!(
        json["health_failure"]
            .as_str()
            .is_some_and(|f| f.starts_with("connect:")),
        "{json}"
    );
}
