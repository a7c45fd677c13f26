//! Kubernetes discovery at scale (issue 4): a Service of 10,000 endpoints in
//! 100 EndpointSlices, sent by the tests' fake API server over the real
//! watch protocol.
//!
//! `cargo run --release -p skiff-bench --example kube_discovery`
//!
//! 0. The pieces of one changed slice, called directly (no API server, no
//!    threads), for Services of 1,000 and 10,000 endpoints in slices of
//!    100: the whole-Service merge the namespace task did before (merge,
//!    copy into a set, compare with the last), the slice-by-slice update
//!    that replaced it (and the set built from it), the whole-Service event
//!    (the fallback switching), and the cluster's `apply` with its
//!    inherently O(N) part (the snapshot's pointer array and balancer).
//! 1. In process (so the data path's snapshot can be read directly): the
//!    time from the last of the 100 slices sent to the cluster's snapshot
//!    holding all 10,000 endpoints; then the time to apply one changed
//!    slice, for a Service of 10,000 endpoints and one of 1,000 (is it
//!    proportional to the slice or to the Service?).
//!
//! 2. As a `skiff run` process (release binary): RSS idle with the
//!    cluster's Service empty, and after its 10,000 endpoints arrive.
//! 3. Request latency through that process, quiet and while one slice of
//!    the 10,000-endpoint Service changes every millisecond.
//!
//! `KUBE_BENCH_PIECES_ONLY=1` stops after part 0, `KUBE_BENCH_IN_PROCESS_ONLY=1`
//! after part 1 (to interleave runs of two builds).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;
use skiff::cluster::balance::Balancer;
use skiff::cluster::Cluster;
use skiff_config::cluster::LbPolicy;
use skiff_config::endpoints::ServicePort;
use skiff_config::Config;
use skiff_discovery::kubernetes::{merge, ServiceEndpoints, Slice};
use skiff_discovery::EndpointSet;
use skiff_tests::fake_kube::terminating_pod;
use skiff_tests::fake_kube::{endpoint_slice, ready_pod, FakeKube};
use skiff_tests::{free_port, Backend, Client, RssPeak, SkiffProcess, TempDir};

const SLICES: usize = 100;
const PER_SLICE: usize = 100;
/// Changed slices timed per Service (`KUBE_BENCH_CHANGES` overrides, for profiling).
const CHANGES: usize = 50;

/// Slice `s` of Service `service` with `n` endpoints (10.`base`.s.1..).
fn slice(service: &str, base: u8, s: usize, n: usize) -> Value {
    let pods: Vec<Value> = (0..n)
        .map(|i| ready_pod(&format!("10.{base}.{s}.{}", i + 1)))
        .collect();
    endpoint_slice(
        &format!("{service}-{s:03}"),
        service,
        &[("http", 8080)],
        &pods,
    )
}

fn cluster_config(name: &str) -> String {
    format!(
        "  - name: {name}\n    lb: round_robin\n    discovery: {{ kubernetes: {{ namespace: shop, service: {name}, port: http }} }}\n"
    )
}

fn config(listen: SocketAddr, admin: SocketAddr, route_to: &str, clusters: &[&str]) -> String {
    let clusters: String = clusters.iter().map(|c| cluster_config(c)).collect();
    format!(
        "admin: {{ listen: {admin} }}\n\
         listeners:\n  - name: web\n    listen: {listen}\n    routes:\n      - match: {{ path_prefix: / }}\n        cluster: {route_to}\n\
         clusters:\n{clusters}"
    )
}

/// When `cluster`'s snapshot (what the request path reads) first holds
/// `n` endpoints; polled from a blocking thread every 20 µs.
async fn when_len(cluster: &Arc<Cluster>, n: usize) -> Instant {
    let cluster = cluster.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if cluster.snapshot().members.len() == n {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "{} never reached {n} endpoints",
                cluster.name
            );
            std::thread::sleep(Duration::from_micros(20));
        }
    })
    .await
    .expect("poller")
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Repetitions of each piece in part 0; the median is reported.
const PIECE_RUNS: usize = 301;

fn parsed(value: Value) -> Slice {
    let object: EndpointSlice = serde_json::from_value(value).expect("slice JSON");
    Slice::parse(&object).expect("slice")
}

/// Median time of `f` over [`PIECE_RUNS`] calls, each given its call number.
fn median(mut f: impl FnMut(usize)) -> Duration {
    let mut times: Vec<Duration> = (0..PIECE_RUNS)
        .map(|i| {
            let started = Instant::now();
            f(i);
            started.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// Part 0: one changed slice, piece by piece, for a Service of `slices`
/// slices of [`PER_SLICE`].
fn pieces(slices: usize) {
    let port = ServicePort::Name("http".into());
    let mut service: std::collections::BTreeMap<String, Slice> = (0..slices)
        .map(|s| {
            let slice = parsed(slice("svc", 1, s, PER_SLICE));
            (slice.name.clone(), slice)
        })
        .collect();
    // The changed slice: one endpoint more, then back.
    let changed = [
        parsed(slice("svc", 1, slices / 2, PER_SLICE + 1)),
        parsed(slice("svc", 1, slices / 2, PER_SLICE)),
    ];
    let total = slices * PER_SLICE;

    // Before: the namespace task re-merged the Service, copied the set and
    // compared it with the one last published.
    let mut last: EndpointSet = merge(service.values(), &port).into();
    let whole = median(|i| {
        let slice = &changed[i % 2];
        service.insert(slice.name.clone(), slice.clone());
        let set: EndpointSet = merge(service.values(), &port).into();
        assert!(set != last);
        last = set;
    });

    // After: the slice alone, then the set built for the cluster.
    let mut live = ServiceEndpoints::from_slices(service.values(), port.clone());
    let mut i = 0;
    let update = median(|_| {
        i += 1;
        assert!(live.upsert(&changed[i % 2]));
    });
    let build = median(|_| {
        std::hint::black_box(live.set());
    });

    // The whole-Service event: only the changed slice is ready, and its
    // pods go terminating, so the fallback to serving + terminating
    // endpoints switches on (and off again).
    let mut fallback = ServiceEndpoints::new(port.clone());
    for s in 0..slices {
        fallback.upsert(&fallback_slice(s));
    }
    let flip = [
        parsed(slice("svc", 1, slices / 2, PER_SLICE)),
        fallback_slice(slices / 2),
    ];
    let switch = median(|i| {
        assert!(fallback.upsert(&flip[i % 2]));
    });

    // The cluster: `apply` of the set with the changed slice, and the part
    // of it no design avoids while the request path reads an array of
    // endpoints (the pointer array, the balancer over it).
    let config = Config::parse(
        "clusters:\n  - name: c\n    lb: round_robin\n    endpoints: []\n",
        "bench.yaml",
        std::path::Path::new("."),
    )
    .expect("config");
    let cluster = Cluster::new(config.clusters[0].clone()).expect("a plaintext cluster");
    let sets: Vec<EndpointSet> = changed
        .iter()
        .map(|c| {
            live.upsert(c);
            live.set()
        })
        .collect();
    cluster.apply(&sets[1]);
    let apply = median(|i| cluster.apply(&sets[i % 2]));
    let snapshot = cluster.snapshot();
    let array = median(|_| {
        std::hint::black_box(snapshot.endpoints.to_vec());
    });
    let balancer = median(|_| {
        std::hint::black_box(Balancer::new(LbPolicy::RoundRobin, &snapshot.endpoints));
    });

    println!(
        "{total:>6} endpoints, one changed slice of {PER_SLICE}: before (merge whole Service + set + compare) {}; \
         after: slice update {}, set for the cluster {}; fallback switch (whole Service) {}; \
         Cluster::apply {} (of which pointer array {}, balancer {}) [medians of {PIECE_RUNS}]",
        us(whole),
        us(update),
        us(build),
        us(switch),
        us(apply),
        us(array),
        us(balancer),
    );
}

/// Slice `s` of the part-0 Service with every pod terminating.
fn fallback_slice(s: usize) -> Slice {
    let pods: Vec<Value> = (0..PER_SLICE)
        .map(|i| terminating_pod(&format!("10.1.{s}.{}", i + 1)))
        .collect();
    parsed(endpoint_slice(
        &format!("svc-{s:03}"),
        "svc",
        &[("http", 8080)],
        &pods,
    ))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    for slices in [SLICES / 10, SLICES] {
        pieces(slices);
    }
    if std::env::var_os("KUBE_BENCH_PIECES_ONLY").is_some() {
        return;
    }
    let dir = TempDir::new("kube-bench");

    // 1. Timing, in process.
    let fake = FakeKube::start_new().await;
    let kubeconfig = fake.write_kubeconfig(&dir.0);
    // Before any client is built; the only thread reading the environment.
    std::env::set_var("KUBECONFIG", &kubeconfig);
    let (loopback, any) = (SocketAddr::from(([127, 0, 0, 1], 0)), "big");
    let (proxy, _) =
        skiff_tests::start_proxy(&config(loopback, loopback, any, &["big", "small"])).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !proxy.is_ready() {
        assert!(Instant::now() < deadline, "not ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let find = |name: &str| {
        proxy
            .clusters()
            .iter()
            .find(|c| &*c.name == name)
            .cloned()
            .expect("cluster")
    };
    let (big, small) = (find("big"), find("small"));

    let first = Instant::now();
    for s in 0..SLICES {
        fake.apply("shop", slice("big", 1, s, PER_SLICE));
    }
    let sent = Instant::now();
    let full = when_len(&big, SLICES * PER_SLICE).await;
    println!(
        "{} endpoints in {SLICES} slices: sending took {}, last slice sent -> data path has the full set: {} (first slice sent -> full set: {})",
        SLICES * PER_SLICE,
        ms(sent - first),
        ms(full.saturating_duration_since(sent)),
        ms(full - first),
    );
    for s in 0..SLICES / 10 {
        fake.apply("shop", slice("small", 2, s, PER_SLICE));
    }
    when_len(&small, SLICES * PER_SLICE / 10).await;

    let changes = std::env::var("KUBE_BENCH_CHANGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CHANGES);
    for (cluster, base, slices) in [(&small, 2, SLICES / 10), (&big, 1, SLICES)] {
        let total = slices * PER_SLICE;
        let mut times = Vec::with_capacity(changes);
        for i in 0..changes {
            // One slice gains an endpoint, then loses it again.
            let n = if i % 2 == 0 { PER_SLICE + 1 } else { PER_SLICE };
            let sent = Instant::now();
            fake.apply("shop", slice(&cluster.name, base, slices / 2, n));
            let seen = when_len(cluster, total - PER_SLICE + n).await;
            times.push(seen - sent);
        }
        times.sort();
        println!(
            "one changed slice ({PER_SLICE} endpoints) of a {total}-endpoint Service -> data path: p50 {}, p90 {}, max {} ({changes} changes)",
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.9)),
            ms(percentile(&times, 1.0)),
        );
    }
    drop(proxy);
    if std::env::var_os("KUBE_BENCH_IN_PROCESS_ONLY").is_some() {
        return;
    }

    // 2. Memory of a `skiff run` process.
    let fake = FakeKube::start_new().await;
    let kubeconfig = fake.write_kubeconfig(&dir.0);
    let probe = Backend::start("probe").await;
    let (listen, admin) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let path = dir.write(
        "memory.yaml",
        &config(listen, admin, "probe", &["big", "probe"]),
    );
    let skiff =
        SkiffProcess::start_with_env(&path, admin, &[], &[("KUBECONFIG", &kubeconfig)]).await;
    skiff.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = skiff.rss_kib();
    let peak = RssPeak::start(skiff.pid(), Duration::from_millis(5));
    for s in 0..SLICES {
        fake.apply("shop", slice("big", 1, s, PER_SLICE));
    }
    // Events arrive in order on the namespace's one watch: once the probe
    // Service's slice routes, the 100 slices before it are in.
    fake.apply(
        "shop",
        endpoint_slice(
            "probe-0",
            "probe",
            &[("http", probe.address.port())],
            &[ready_pod("127.0.0.1")],
        ),
    );
    let mut client = Client::h1(listen).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((status, _, _)) = client.get("/").await {
            if status == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "probe never routed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = skiff.rss_kib();
    let peak = peak.stop();
    println!(
        "skiff run RSS: idle {idle} KiB, with {} endpoints {after} KiB (+{} KiB), peak while receiving {peak} KiB",
        SLICES * PER_SLICE,
        after.saturating_sub(idle)
    );

    // 3. Do requests wait on updates? Latency of sequential requests to the
    // probe Service, first quiet, then while one slice of the 10,000-endpoint
    // Service changes back and forth as fast as the fake can send it.
    let quiet = latencies(&mut client, REQUESTS).await;
    let churn = {
        let fake = fake.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut updates = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let n = if updates.is_multiple_of(2) {
                    PER_SLICE + 1
                } else {
                    PER_SLICE
                };
                fake.apply("shop", slice("big", 1, SLICES / 2, n));
                updates += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            updates
        });
        let busy = latencies(&mut client, REQUESTS).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let updates = task.await.expect("churn task");
        (busy, updates)
    };
    let (busy, updates) = churn;
    let row = |what: &str, l: &[Duration]| {
        println!(
            "requests {what}: p50 {}, p99 {}, max {} ({} requests)",
            ms(percentile(l, 0.5)),
            ms(percentile(l, 0.99)),
            ms(percentile(l, 1.0)),
            l.len()
        )
    };
    row("with discovery quiet", &quiet);
    row(
        &format!("while {updates} slice updates of the 10,000-endpoint Service arrive"),
        &busy,
    );
}

/// Sequential requests to measure, through one keep-alive connection.
const REQUESTS: usize = 3000;

/// Sorted latencies of `n` sequential GETs.
async fn latencies(client: &mut Client, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let (status, _, _) = client.get("/").await.expect("request");
        assert_eq!(status, 200);
        out.push(started.elapsed());
    }
    out.sort();
    out
}
