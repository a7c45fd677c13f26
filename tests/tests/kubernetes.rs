//! Kubernetes discovery end to end: a real `skiff run` process finds the
//! fake API server through a kubeconfig file, as a user points it at a
//! cluster, and routes real requests to real backends while the
//! EndpointSlices change, the watch expires, and the API server goes away.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use skiff_tests::fake_kube::{
    cluster_json, endpoint_slice, ready_pod, terminating_pod, FakeKube, Pods,
};
use skiff_tests::{
    admin_get, free_port, metric_value, wait_for, wait_for_async, Client, Load, SkiffProcess,
    TempDir,
};

/// Generous: the watcher's backoff grows to 30 s between retries.
const RECOVERY: Duration = Duration::from_secs(90);
const SOON: Duration = Duration::from_secs(20);

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A running skiff with one listener `web` routing to cluster `app`.
struct Skiff {
    process: SkiffProcess,
    listen: SocketAddr,
    admin: SocketAddr,
    dir: TempDir,
}

/// `clusters` is the YAML list under `clusters:`; `app` must be in it.
fn config_text(listen: SocketAddr, admin: SocketAddr, clusters: &str) -> String {
    format!(
        "admin: {{ listen: {admin} }}\n\
         shutdown: {{ drain_delay: 0s, grace_period: 10s }}\n\
         listeners:\n  - name: web\n    listen: {listen}\n    routes:\n      - match: {{ path_prefix: / }}\n        cluster: app\n\
         clusters:\n{clusters}"
    )
}

/// The usual cluster: Service `web` in namespace `shop`, port `http`.
fn app_cluster() -> String {
    kubernetes_cluster("app", "shop", "web", "http")
}

fn kubernetes_cluster(name: &str, namespace: &str, service: &str, port: &str) -> String {
    format!(
        "  - name: {name}\n    lb: round_robin\n    discovery: {{ kubernetes: {{ namespace: {namespace}, service: {service}, port: {port} }} }}\n"
    )
}

async fn start_skiff(fake: &FakeKube, tag: &str, clusters: &str) -> Skiff {
    let dir = TempDir::new(tag);
    let kubeconfig = fake.write_kubeconfig(&dir.0);
    let (listen, admin) = (addr(free_port()), addr(free_port()));
    let config = dir.write("skiff.yaml", &config_text(listen, admin, clusters));
    let process =
        SkiffProcess::start_with_env(&config, admin, &[], &[("KUBECONFIG", &kubeconfig)]).await;
    Skiff {
        process,
        listen,
        admin,
        dir,
    }
}

impl Skiff {
    async fn wait_ready(&self) {
        let admin = self.admin;
        let ready =
            || async move { matches!(admin_get(admin, "/ready").await, Ok((s, _)) if s == 200) };
        let deadline = std::time::Instant::now() + SOON;
        while !ready().await {
            assert!(
                std::time::Instant::now() < deadline,
                "skiff not ready; log:\n{}",
                self.process.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn cluster(&self, name: &str) -> Value {
        let (_, body) = admin_get(self.admin, "/clusters").await.expect("/clusters");
        cluster_json(&body, name)
    }

    async fn metric(&self, name: &str, cluster: &str) -> f64 {
        let (_, text) = admin_get(self.admin, "/metrics").await.expect("/metrics");
        metric_value(&text, name, &[("cluster", cluster)]).unwrap_or(-1.0)
    }

    /// Waits until `cluster`'s endpoints taking traffic are exactly `want`
    /// and none is left draining.
    async fn wait_endpoints(&self, cluster: &str, want: &[SocketAddr]) {
        let want: BTreeSet<String> = want.iter().map(|a| a.to_string()).collect();
        let admin = self.admin;
        let deadline = std::time::Instant::now() + SOON;
        let last = loop {
            let (_, body) = admin_get(admin, "/clusters").await.expect("/clusters");
            let c = cluster_json(&body, cluster);
            let active: BTreeSet<String> = endpoints_in(&c, "active");
            if active == want && endpoints_in(&c, "draining").is_empty() {
                return;
            }
            if std::time::Instant::now() > deadline {
                break serde_json::to_string_pretty(&c).unwrap_or_default();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        panic!(
            "timed out waiting for {cluster} to have endpoints {want:?}; last:\n{last}\nlog:\n{}",
            self.process.log_text()
        );
    }

    /// Sends `n` GETs of `/` on one connection; returns the backends that answered.
    async fn backends_answering(&self, n: usize) -> BTreeSet<String> {
        let mut client = Client::h1(self.listen).await.expect("connect");
        let mut seen = BTreeSet::new();
        for _ in 0..n {
            let (status, backend, _) = client.get("/").await.expect("request");
            assert_eq!(status, 200);
            seen.insert(backend);
        }
        seen
    }
}

fn endpoints_in(cluster: &Value, state: &str) -> BTreeSet<String> {
    cluster["endpoints"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter(|e| e["state"] == state)
                .filter_map(|e| e["address"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn at(pods: &Pods, i: usize) -> SocketAddr {
    pods.pod(i).address
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_slices_added_modified_and_deleted() {
    let pods = Pods::start(3).await;
    let fake = FakeKube::start_new().await;
    let http = [("http", pods.port)];
    fake.apply(
        "shop",
        endpoint_slice(
            "web-abc",
            "web",
            &http,
            &[ready_pod(&pods.ip(1)), ready_pod(&pods.ip(2))],
        ),
    );
    let skiff = start_skiff(&fake, "k8s-follow", &app_cluster()).await;
    skiff.wait_ready().await;
    skiff
        .wait_endpoints("app", &[at(&pods, 1), at(&pods, 2)])
        .await;
    assert_eq!(
        skiff.backends_answering(10).await,
        names(&["pod-1", "pod-2"])
    );

    // `/clusters` says where each endpoint came from.
    let app = skiff.cluster("app").await;
    let origin = &app["endpoints"][0]["origin"];
    assert_eq!(
        origin,
        &json!({ "slice": "web-abc", "zone": "zone-a", "node": "node-1",
                 "ready": true, "serving": true, "terminating": false }),
        "{app:#}"
    );

    // MODIFIED: a third pod.
    fake.apply(
        "shop",
        endpoint_slice(
            "web-abc",
            "web",
            &http,
            &[
                ready_pod(&pods.ip(1)),
                ready_pod(&pods.ip(2)),
                ready_pod(&pods.ip(3)),
            ],
        ),
    );
    skiff
        .wait_endpoints("app", &[at(&pods, 1), at(&pods, 2), at(&pods, 3)])
        .await;
    assert_eq!(
        skiff.backends_answering(12).await,
        names(&["pod-1", "pod-2", "pod-3"])
    );

    // ADDED, for another Service: nothing changes for `web`.
    let updates = skiff.metric("skiff_discovery_updates_total", "app").await;
    fake.apply(
        "shop",
        endpoint_slice("other-xyz", "other", &http, &[ready_pod(&pods.ip(3))]),
    );
    // DELETED: the only slice of `web` goes, and with it every endpoint.
    fake.delete("shop", "web-abc");
    skiff.wait_endpoints("app", &[]).await;
    assert_eq!(
        skiff.metric("skiff_discovery_updates_total", "app").await,
        updates + 1.0,
        "only the delete changed `web`"
    );
    let mut client = Client::h1(skiff.listen).await.expect("connect");
    let (status, _, _) = client.get("/").await.expect("request");
    assert_eq!(status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_three_slices_and_a_duplicate_endpoint_counts_it_once() {
    let pods = Pods::start(3).await;
    let fake = FakeKube::start_new().await;
    let http = [("http", pods.port)];
    fake.apply(
        "shop",
        endpoint_slice(
            "web-a",
            "web",
            &http,
            &[ready_pod(&pods.ip(1)), ready_pod(&pods.ip(2))],
        ),
    );
    // Pod 2 also shows, terminating, in another slice (a controller moving it).
    fake.apply(
        "shop",
        endpoint_slice(
            "web-b",
            "web",
            &http,
            &[terminating_pod(&pods.ip(2)), ready_pod(&pods.ip(3))],
        ),
    );
    fake.apply("shop", endpoint_slice("web-c", "web", &http, &[]));
    let skiff = start_skiff(&fake, "k8s-dup", &app_cluster()).await;
    skiff.wait_ready().await;
    skiff
        .wait_endpoints("app", &[at(&pods, 1), at(&pods, 2), at(&pods, 3)])
        .await;
    let app = skiff.cluster("app").await;
    let listed = app["endpoints"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(listed, 3, "{app:#}");
    let pod2 = app["endpoints"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["address"] == at(&pods, 2).to_string()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        pod2["origin"]["slice"], "web-a",
        "the non-terminating listing wins"
    );
    assert_eq!(
        skiff.backends_answering(12).await,
        names(&["pod-1", "pod-2", "pod-3"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_port_maps_to_each_slices_own_target_port() {
    let blue = Pods::start(1).await;
    let green = Pods::start(1).await;
    let fake = FakeKube::start_new().await;
    // Same Service port name, different target ports per slice.
    fake.apply(
        "shop",
        endpoint_slice(
            "web-blue",
            "web",
            &[("metrics", 9), ("http", blue.port)],
            &[ready_pod("127.0.0.1")],
        ),
    );
    fake.apply(
        "shop",
        endpoint_slice(
            "web-green",
            "web",
            &[("http", green.port)],
            &[ready_pod("127.0.0.1")],
        ),
    );
    let clusters = format!(
        "{}{}",
        app_cluster(),
        kubernetes_cluster("by-number", "shop", "web", &green.port.to_string())
    );
    let skiff = start_skiff(&fake, "k8s-ports", &clusters).await;
    skiff.wait_ready().await;
    skiff
        .wait_endpoints("app", &[addr(blue.port), addr(green.port)])
        .await;
    skiff.wait_endpoints("by-number", &[addr(green.port)]).await;
    let mut client = Client::h1(skiff.listen).await.expect("connect");
    let mut seen = BTreeSet::new();
    for _ in 0..6 {
        let (status, backend, _) = client.get("/").await.expect("request");
        assert_eq!(status, 200);
        seen.insert(backend);
    }
    // Both answer as "pod-1"; count requests per backend instead.
    assert_eq!(seen, names(&["pod-1"]));
    assert_eq!(blue.pod(1).requests(), 3);
    assert_eq!(green.pod(1).requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_and_down_under_steady_traffic_loses_no_request() {
    let pods = Pods::start(3).await;
    let fake = FakeKube::start_new().await;
    let http = [("http", pods.port)];
    fake.apply(
        "shop",
        endpoint_slice("web-1", "web", &http, &[ready_pod(&pods.ip(1))]),
    );
    let skiff = start_skiff(&fake, "k8s-scale", &app_cluster()).await;
    skiff.wait_ready().await;
    let load = Load::start(skiff.listen, "/", 4, false);
    wait_for("traffic", SOON, || load.ok.load(Relaxed) > 50).await;

    // Scale up to three.
    fake.apply(
        "shop",
        endpoint_slice(
            "web-1",
            "web",
            &http,
            &[
                ready_pod(&pods.ip(1)),
                ready_pod(&pods.ip(2)),
                ready_pod(&pods.ip(3)),
            ],
        ),
    );
    wait_for("new pods to get traffic", SOON, || {
        pods.pod(2).requests() > 20 && pods.pod(3).requests() > 20
    })
    .await;

    // Scale down to one: the two pods terminate, then leave the slice.
    fake.apply(
        "shop",
        endpoint_slice(
            "web-1",
            "web",
            &http,
            &[
                ready_pod(&pods.ip(1)),
                terminating_pod(&pods.ip(2)),
                terminating_pod(&pods.ip(3)),
            ],
        ),
    );
    skiff.wait_endpoints("app", &[at(&pods, 1)]).await;
    fake.apply(
        "shop",
        endpoint_slice("web-1", "web", &http, &[ready_pod(&pods.ip(1))]),
    );
    let after = (pods.pod(2).requests(), pods.pod(3).requests());
    let ok = load.ok.load(Relaxed);
    wait_for("traffic after scaling down", SOON, || {
        load.ok.load(Relaxed) > ok + 100
    })
    .await;
    assert_eq!(
        (pods.pod(2).requests(), pods.pod(3).requests()),
        after,
        "terminating pods got new requests"
    );
    let (ok, failed, errors) = load.stop().await;
    assert_eq!(failed, 0, "failed requests: {errors:?}");
    assert!(ok > 0);
}

/// A reload that moves the route to a new Kubernetes cluster: the new
/// cluster gets its endpoints before the route uses it (Envoy's cluster
/// warming), so no request meets it empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moving_a_route_to_a_new_service_loses_no_request() {
    let (old, new) = (
        Pods::start_named(1, "old").await,
        Pods::start_named(1, "new").await,
    );
    let fake = FakeKube::start_new().await;
    let slice = |name: &str, service: &str, pods: &Pods| {
        endpoint_slice(
            name,
            service,
            &[("http", pods.port)],
            &[ready_pod(&pods.ip(1))],
        )
    };
    fake.apply("shop", slice("web-1", "web", &old));
    fake.apply("shop", slice("web2-1", "web2", &new));
    let skiff = start_skiff(&fake, "k8s-reload-move", &app_cluster()).await;
    skiff.wait_ready().await;
    let load = Load::start(skiff.listen, "/", 4, false);
    wait_for("traffic", SOON, || load.ok.load(Relaxed) > 50).await;

    let moved = config_text(
        skiff.listen,
        skiff.admin,
        &kubernetes_cluster("app2", "shop", "web2", "http"),
    )
    .replace("cluster: app\n", "cluster: app2\n");
    skiff.dir.write("skiff.yaml", &moved);
    wait_for("the new Service to take the traffic", SOON, || {
        new.pod(1).requests() > 50
    })
    .await;
    let (ok, failed, errors) = load.stop().await;
    let first: Vec<&String> = errors.iter().take(5).collect();
    assert!(
        ok > 0 && failed == 0,
        "{ok} ok, {failed} failed, first: {first:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_of_three_pods_under_steady_traffic_loses_no_request() {
    // Pods 1-3 are the old version, 4-6 the new.
    let pods = Pods::start(6).await;
    let fake = FakeKube::start_new().await;
    let http = [("http", pods.port)];
    let slice = |members: &[Value]| endpoint_slice("web-1", "web", &http, members);
    let mut members: Vec<(usize, Value)> = (1..=3).map(|i| (i, ready_pod(&pods.ip(i)))).collect();
    let values = |m: &[(usize, Value)]| m.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>();
    fake.apply("shop", slice(&values(&members)));
    let skiff = start_skiff(&fake, "k8s-rolling", &app_cluster()).await;
    skiff.wait_ready().await;
    let load = Load::start(skiff.listen, "/", 4, false);
    wait_for("traffic", SOON, || load.ok.load(Relaxed) > 50).await;

    for step in 0..3 {
        let (old, new) = (1 + step, 4 + step);
        // The new pod becomes ready...
        members.push((new, ready_pod(&pods.ip(new))));
        fake.apply("shop", slice(&values(&members)));
        let new_requests = pods.pod(new).requests();
        wait_for("the new pod to get traffic", SOON, || {
            pods.pod(new).requests() > new_requests + 10
        })
        .await;
        // ...the old one terminates...
        for m in members.iter_mut().filter(|m| m.0 == old) {
            m.1 = terminating_pod(&pods.ip(old));
        }
        fake.apply("shop", slice(&values(&members)));
        let want: Vec<SocketAddr> = members
            .iter()
            .filter(|m| m.0 != old)
            .map(|m| at(&pods, m.0))
            .collect();
        skiff.wait_endpoints("app", &want).await;
        // ...and is gone: it stops accepting, as a killed pod does.
        members.retain(|m| m.0 != old);
        fake.apply("shop", slice(&values(&members)));
        skiff.wait_endpoints("app", &want).await;
        pods.backends[old - 1].stop_accepting();
        let ok = load.ok.load(Relaxed);
        wait_for("traffic after the step", SOON, || {
            load.ok.load(Relaxed) > ok + 50
        })
        .await;
    }
    skiff
        .wait_endpoints("app", &[at(&pods, 4), at(&pods, 5), at(&pods, 6)])
        .await;
    let (ok, failed, errors) = load.stop().await;
    assert_eq!(failed, 0, "failed requests: {errors:?}");
    assert!(ok > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_endpoint_gets_no_new_requests_and_finishes_in_flight_ones() {
    let pods = Pods::start(2).await;
    let fake = FakeKube::start_new().await;
    let http = [("http", pods.port)];
    fake.apply(
        "shop",
        endpoint_slice("web-1", "web", &http, &[ready_pod(&pods.ip(1))]),
    );
    let skiff = start_skiff(&fake, "k8s-terminating", &app_cluster()).await;
    skiff.wait_ready().await;

    // A request is held in flight on pod 1...
    let mut client = Client::h1(skiff.listen).await.expect("connect");
    let held = tokio::spawn(async move {
        let req = Request::get("/hold")
            .body(skiff_tests::empty())
            .expect("request");
        let resp = client.send(req).await.expect("response");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, body)
    });
    wait_for("the held request at pod 1", SOON, || {
        pods.pod(1).control.in_flight.load(Relaxed) == 1
    })
    .await;

    // ...when pod 1 starts terminating and pod 2 is ready.
    fake.apply(
        "shop",
        endpoint_slice(
            "web-1",
            "web",
            &http,
            &[terminating_pod(&pods.ip(1)), ready_pod(&pods.ip(2))],
        ),
    );
    let admin = skiff.admin;
    let pod1 = at(&pods, 1).to_string();
    wait_for_async("pod 1 to drain with its request", SOON, || {
        let pod1 = pod1.clone();
        async move {
            let (_, body) = admin_get(admin, "/clusters").await.expect("/clusters");
            let c = cluster_json(&body, "app");
            endpoints_in(&c, "draining") == BTreeSet::from([pod1])
        }
    })
    .await;
    let before = pods.pod(1).requests();
    assert_eq!(skiff.backends_answering(10).await, names(&["pod-2"]));
    assert_eq!(pods.pod(1).requests(), before, "pod 1 got a new request");

    // The held request still finishes, then pod 1 is gone.
    pods.pod(1).control.released.store(true, Relaxed);
    let (status, body) = held.await.expect("held request");
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"pod-1");
    skiff.wait_endpoints("app", &[at(&pods, 2)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_down_at_start_keeps_ready_failing_until_it_comes_up() {
    let pods = Pods::start(1).await;
    let fake = FakeKube::unstarted();
    fake.apply(
        "shop",
        endpoint_slice(
            "web-1",
            "web",
            &[("http", pods.port)],
            &[ready_pod(&pods.ip(1))],
        ),
    );
    let skiff = start_skiff(&fake, "k8s-down-at-start", &app_cluster()).await;
    wait_for_async("a discovery error", SOON, || async {
        skiff.metric("skiff_discovery_errors_total", "app").await >= 1.0
    })
    .await;
    let (status, body) = admin_get(skiff.admin, "/ready").await.expect("/ready");
    assert_eq!(status, 503);
    assert!(body.contains("waiting for endpoints of app"), "{body}");

    fake.start().await;
    let admin = skiff.admin;
    wait_for_async("ready once the API server is up", RECOVERY, || async move {
        matches!(admin_get(admin, "/ready").await, Ok((s, _)) if s == 200)
    })
    .await;
    assert_eq!(skiff.backends_answering(3).await, names(&["pod-1"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_going_away_keeps_the_last_endpoints_and_counts_errors() {
    let pods = Pods::start(3).await;
    let fake = FakeKube::start_new().await;
    let http = [("http", pods.port)];
    fake.apply(
        "shop",
        endpoint_slice(
            "web-1",
            "web",
            &http,
            &[ready_pod(&pods.ip(1)), ready_pod(&pods.ip(2))],
        ),
    );
    let skiff = start_skiff(&fake, "k8s-away", &app_cluster()).await;
    skiff.wait_ready().await;
    let load = Load::start(skiff.listen, "/", 4, false);
    wait_for("traffic", SOON, || load.ok.load(Relaxed) > 50).await;
    let errors_before = skiff.metric("skiff_discovery_errors_total", "app").await;

    fake.stop();
    let stopped = std::time::Instant::now();
    wait_for_async(
        "discovery errors while the API server is away",
        RECOVERY,
        || async {
            skiff.metric("skiff_discovery_errors_total", "app").await >= errors_before + 2.0
        },
    )
    .await;
    let ok = load.ok.load(Relaxed);
    wait_for("traffic while the API server is away", SOON, || {
        load.ok.load(Relaxed) > ok + 200
    })
    .await;
    let (status, _) = admin_get(skiff.admin, "/ready").await.expect("/ready");
    assert_eq!(status, 200, "ready stays while the last endpoints serve");
    skiff
        .wait_endpoints("app", &[at(&pods, 1), at(&pods, 2)])
        .await;
    assert!(
        skiff
            .process
            .log_text()
            .contains("the last known endpoints stay"),
        "{}",
        skiff.process.log_text()
    );

    // Away for as long as the outage, traffic flowing throughout.
    let outage = Duration::from_secs(30);
    if let Some(rest) = outage.checked_sub(stopped.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    assert_eq!(load.failed.load(Relaxed), 0, "failed during the outage");

    // The Service scales up while the API server is away; skiff catches up.
    fake.apply(
        "shop",
        endpoint_slice(
            "web-1",
            "web",
            &http,
            &[
                ready_pod(&pods.ip(1)),
                ready_pod(&pods.ip(2)),
                ready_pod(&pods.ip(3)),
            ],
        ),
    );
    fake.start().await;
    let admin = skiff.admin;
    let want = at(&pods, 3).to_string();
    wait_for_async("the change made while away", RECOVERY, || {
        let want = want.clone();
        async move {
            let (_, body) = admin_get(admin, "/clusters").await.expect("/clusters");
            endpoints_in(&cluster_json(&body, "app"), "active").contains(&want)
        }
    })
    .await;
    let (_, failed, errors) = load.stop().await;
    assert_eq!(failed, 0, "failed requests: {errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_watch_relists_without_churn() {
    let pods = Pods::start(2).await;
    let fake = FakeKube::start_new().await;
    fake.apply(
        "shop",
        endpoint_slice(
            "web-1",
            "web",
            &[("http", pods.port)],
            &[ready_pod(&pods.ip(1)), ready_pod(&pods.ip(2))],
        ),
    );
    let skiff = start_skiff(&fake, "k8s-expired", &app_cluster()).await;
    skiff.wait_ready().await;
    let mut client = Client::h1(skiff.listen).await.expect("connect");
    for _ in 0..10 {
        let (status, _, _) = client.get("/").await.expect("request");
        assert_eq!(status, 200);
    }
    let connections = |pods: &Pods| {
        (1..=2)
            .map(|i| pods.pod(i).control.connections.load(Relaxed))
            .collect::<Vec<_>>()
    };
    let connections_before = connections(&pods);
    let updates = skiff.metric("skiff_discovery_updates_total", "app").await;
    let requests_before: Vec<u64> = skiff.cluster("app").await["endpoints"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|e| e["requests"]["total"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(requests_before.iter().sum::<u64>(), 10);

    let lists = fake.lists();
    fake.expire_watches();
    wait_for("a relist and a new watch", RECOVERY, || {
        fake.lists() > lists && fake.open_watches("shop") == 1
    })
    .await;
    for _ in 0..10 {
        let (status, _, _) = client.get("/").await.expect("request");
        assert_eq!(status, 200);
    }
    assert_eq!(
        skiff.metric("skiff_discovery_updates_total", "app").await,
        updates,
        "an unchanged relist published a set"
    );
    assert_eq!(
        connections(&pods),
        connections_before,
        "pooled connections were replaced"
    );
    let requests_after: Vec<u64> = skiff.cluster("app").await["endpoints"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|e| e["requests"]["total"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        requests_after.iter().sum::<u64>(),
        20,
        "a counter was reset"
    );
    assert!(skiff.process.log_text().contains("relisting"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_slice_is_skipped_and_named_in_the_log() {
    let pods = Pods::start(2).await;
    let fake = FakeKube::start_new().await;
    let http = [("http", pods.port)];
    fake.apply(
        "shop",
        endpoint_slice("web-good", "web", &http, &[ready_pod(&pods.ip(1))]),
    );
    // An address that is not an IP, and a field of the wrong type.
    fake.apply(
        "shop",
        endpoint_slice("web-bad-ip", "web", &http, &[ready_pod("10.0.0.300")]),
    );
    let mut wrong_type = endpoint_slice("web-wrong-type", "web", &http, &[]);
    wrong_type["endpoints"] = json!("not a list");
    fake.apply("shop", wrong_type);
    let skiff = start_skiff(&fake, "k8s-malformed", &app_cluster()).await;
    skiff.wait_ready().await;
    skiff.wait_endpoints("app", &[at(&pods, 1)]).await;
    let log = skiff.process.log_text();
    assert!(
        log.contains("web-bad-ip") && log.contains("is not an IP address"),
        "{log}"
    );
    assert!(log.contains("web-wrong-type"), "{log}");

    // A good slice going bad keeps its last good version...
    let mut broken = endpoint_slice("web-good", "web", &http, &[]);
    broken["addressType"] = json!("Carrier-Pigeon");
    fake.apply("shop", broken);
    let admin = skiff.admin;
    wait_for("the broken update to be logged", SOON, || {
        skiff
            .process
            .log_text()
            .contains("unknown addressType `Carrier-Pigeon`")
    })
    .await;
    skiff.wait_endpoints("app", &[at(&pods, 1)]).await;
    // ...and the watch goes on.
    fake.apply(
        "shop",
        endpoint_slice(
            "web-good",
            "web",
            &http,
            &[ready_pod(&pods.ip(1)), ready_pod(&pods.ip(2))],
        ),
    );
    skiff
        .wait_endpoints("app", &[at(&pods, 1), at(&pods, 2)])
        .await;
    let (status, _) = admin_get(admin, "/ready").await.expect("/ready");
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_watch_per_namespace_however_many_clusters_use_it() {
    let fake = FakeKube::start_new().await;
    fake.apply(
        "unused",
        endpoint_slice("x-1", "x", &[("http", 80)], &[ready_pod("10.0.0.1")]),
    );
    let mut clusters = app_cluster();
    for i in 0..60 {
        clusters += &kubernetes_cluster(&format!("shop-{i}"), "shop", &format!("svc-{i}"), "http");
    }
    let billing: String = (0..40)
        .map(|i| {
            kubernetes_cluster(
                &format!("billing-{i}"),
                "billing",
                &format!("svc-{i}"),
                "http",
            )
        })
        .collect();
    let skiff = start_skiff(&fake, "k8s-one-watch", &format!("{clusters}{billing}")).await;
    skiff.wait_ready().await;
    wait_for("both namespaces watched", SOON, || {
        fake.watched_namespaces() == ["billing", "shop"]
    })
    .await;
    assert_eq!(fake.open_watches("shop"), 1);
    assert_eq!(fake.open_watches("billing"), 1);
    let calls = fake.calls();
    assert!(
        calls.iter().all(|c| c.namespace != "unused"),
        "a namespace no cluster uses was read"
    );
    for c in calls.iter().filter(|c| c.watch) {
        assert_eq!(
            c.query.get("labelSelector").map(String::as_str),
            Some("kubernetes.io/service-name")
        );
        assert_eq!(
            c.query.get("allowWatchBookmarks").map(String::as_str),
            Some("true")
        );
    }
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.watch && c.namespace == "shop")
            .count(),
        1
    );

    // A reload without the billing clusters ends the billing watch.
    skiff.dir.write(
        "skiff.yaml",
        &config_text(skiff.listen, skiff.admin, &clusters),
    );
    skiff.process.signal("HUP");
    wait_for("the billing watch to stop", SOON, || {
        fake.open_watches("billing") == 0
    })
    .await;
    assert_eq!(fake.open_watches("shop"), 1);

    // A cluster added later in a watched namespace gets its set at once,
    // from the watch already open.
    let pods = Pods::start(1).await;
    fake.apply(
        "shop",
        endpoint_slice(
            "late-1",
            "late",
            &[("http", pods.port)],
            &[ready_pod(&pods.ip(1))],
        ),
    );
    let with_late = format!(
        "{clusters}{}",
        kubernetes_cluster("late", "shop", "late", "http")
    );
    skiff.dir.write(
        "skiff.yaml",
        &config_text(skiff.listen, skiff.admin, &with_late),
    );
    skiff.process.signal("HUP");
    skiff.wait_endpoints("late", &[at(&pods, 1)]).await;
    let shop_watches = fake
        .calls()
        .iter()
        .filter(|c| c.watch && c.namespace == "shop")
        .count();
    assert_eq!(shop_watches, 1, "a new cluster opened another watch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_watch_resumes_from_the_last_bookmark_without_relisting() {
    let pods = Pods::start(1).await;
    let fake = FakeKube::start_new().await;
    fake.apply(
        "shop",
        endpoint_slice(
            "web-1",
            "web",
            &[("http", pods.port)],
            &[ready_pod(&pods.ip(1))],
        ),
    );
    let skiff = start_skiff(&fake, "k8s-bookmark", &app_cluster()).await;
    skiff.wait_ready().await;
    wait_for("a watch", SOON, || fake.open_watches("shop") == 1).await;
    // Changes elsewhere move the resourceVersion on; a bookmark carries it.
    for i in 0..5 {
        fake.apply(
            "elsewhere",
            endpoint_slice(&format!("e-{i}"), "e", &[("http", 80)], &[]),
        );
    }
    let bookmark = fake.bookmark();
    let lists = fake.lists();
    fake.end_watches();
    let resumed = || fake.calls().iter().filter(|c| c.watch).count() == 2;
    let deadline = std::time::Instant::now() + SOON;
    while !(resumed() && fake.open_watches("shop") == 1) {
        assert!(
            std::time::Instant::now() < deadline,
            "the watch did not resume; calls: {:#?}\nlog:\n{}",
            fake.calls(),
            skiff.process.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resumed = fake
        .calls()
        .into_iter()
        .rfind(|c| c.watch)
        .expect("second watch");
    assert_eq!(
        resumed.query.get("resourceVersion").map(String::as_str),
        Some(bookmark.to_string().as_str()),
        "{resumed:?}"
    );
    assert_eq!(fake.lists(), lists, "a closed watch relisted");
    skiff.wait_endpoints("app", &[at(&pods, 1)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_service_is_listed_in_pages() {
    let fake = FakeKube::start_new().await;
    // 1,200 slices of one endpoint each: three pages of the watcher's 500.
    for i in 0..1200u32 {
        let ip = format!("10.1.{}.{}", i / 250, i % 250 + 1);
        fake.apply(
            "shop",
            endpoint_slice(
                &format!("big-{i:04}"),
                "big",
                &[("http", 8080)],
                &[ready_pod(&ip)],
            ),
        );
    }
    let clusters = format!(
        "{}{}",
        app_cluster(),
        kubernetes_cluster("big", "shop", "big", "http")
    );
    let skiff = start_skiff(&fake, "k8s-pages", &clusters).await;
    skiff.wait_ready().await;
    let big = skiff.cluster("big").await;
    assert_eq!(big["endpoints"].as_array().map(Vec::len), Some(1200));
    let lists: Vec<_> = fake.calls().into_iter().filter(|c| !c.watch).collect();
    assert_eq!(lists.len(), 3, "{lists:?}");
    assert_eq!(lists[0].query.get("limit").map(String::as_str), Some("500"));
    assert!(lists[1].query.contains_key("continue"), "{lists:?}");
}

#[test]
fn the_rbac_manifests_are_valid_and_grant_only_reading_endpointslices() {
    skiff_tests::require_python_module("kubernetes_validate", "kubernetes-validate");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let out = std::process::Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rbac = std::fs::read_to_string(dir.join("rbac.yaml")).expect("rbac.yaml");
    let rules: Vec<&str> = rbac
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("- apiGroups") || l.starts_with("resources:") || l.starts_with("verbs:")
        })
        .collect();
    assert_eq!(
        rules,
        [
            "- apiGroups: [\"discovery.k8s.io\"]",
            "resources: [\"endpointslices\"]",
            "verbs: [\"get\", \"list\", \"watch\"]",
        ],
        "the ClusterRole grants more than reading EndpointSlices"
    );
    assert!(
        !rbac.contains("kind: ClusterRoleBinding"),
        "a ClusterRoleBinding grants every namespace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_kubeconfig_and_no_service_account_keeps_ready_failing_and_says_why() {
    let dir = TempDir::new("k8s-no-config");
    let (listen, admin) = (addr(free_port()), addr(free_port()));
    let config = dir.write("skiff.yaml", &config_text(listen, admin, &app_cluster()));
    let missing = dir.path("no-such-kubeconfig");
    let process = SkiffProcess::start_with_env(
        &config,
        admin,
        &[],
        &[("KUBECONFIG", &missing), ("HOME", &dir.0)],
    )
    .await;
    wait_for_async("a discovery error", SOON, || async {
        let (_, text) = admin_get(admin, "/metrics").await.expect("/metrics");
        metric_value(&text, "skiff_discovery_errors_total", &[("cluster", "app")])
            .is_some_and(|v| v >= 1.0)
    })
    .await;
    let (status, body) = admin_get(admin, "/ready").await.expect("/ready");
    assert_eq!(status, 503);
    assert!(body.contains("waiting for endpoints of app"), "{body}");
    let log = process.log_text();
    assert!(log.contains("no Kubernetes client"), "{log}");
}
