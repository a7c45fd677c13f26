//! The gateway role at 1,000 HTTPRoutes of 5 rules each (issue 19): how
//! long one route change takes from its watch event to the new table in
//! use, and what the routes cost in memory.
//!
//! `cargo run --release -p skiff-bench --example gateway_apply`
//!
//! A release `skiff run --gateway` process reads the objects from the
//! fake API server. One route's backend weight is edited `EDITS` times;
//! skiff logs each apply with `translate_ms` (translation and table
//! build), `apply_ms` (the proxy's reload step) and `since_change_ms`
//! (from the first event, including the quiet 5 ms in which further events
//! are gathered). Memory: the process's RSS with no routes, then with
//! all of them.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::fake_kube::{endpoint_slice, ready_pod, FakeKube};
use skiff_tests::{admin_get, free_port, SkiffProcess, TempDir};

const ROUTES: usize = 1000;
const EDITS: usize = 20;

fn route(i: usize, weight: u32) -> Value {
    let rules: Vec<Value> = (0..5)
        .map(|j| {
            json!({
                "matches": [{ "path": { "type": "PathPrefix", "value": format!("/r{i}/p{j}") } }],
                "backendRefs": [{ "name": "svc", "port": 80, "weight": weight }]
            })
        })
        .collect();
    json!({
        "kind": "HTTPRoute",
        "metadata": { "name": format!("r{i}"), "namespace": "bench", "creationTimestamp": "2026-12-01T00:00:00Z" },
        "spec": { "parentRefs": [{ "name": "web" }], "hostnames": [format!("h{}.example.com", i % 200)], "rules": rules }
    })
}

async fn ready(admin: SocketAddr) {
    for _ in 0..600 {
        if matches!(admin_get(admin, "/ready").await, Ok((s, _)) if s == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("skiff did not become ready");
}

/// The `field=value` numbers of every `gateway applied` line in the log.
fn applied(log: &str, field: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("gateway applied"))
        .filter_map(|l| {
            let at = l.find(&format!("{field}="))? + field.len() + 1;
            l[at..].split_whitespace().next()?.parse().ok()
        })
        .collect()
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:>16}: median {:.2} ms, p90 {:.2} ms, max {:.2} ms ({} applies)",
        p(0.5),
        p(0.9),
        p(1.0),
        v.len()
    );
}

#[tokio::main]
async fn main() {
    let fake = FakeKube::start_new().await;
    fake.apply_object(json!({ "kind": "GatewayClass", "metadata": { "name": "skiff" }, "spec": { "controllerName": "skiff.io/gateway-controller" } }));
    fake.apply_object(json!({ "kind": "Namespace", "metadata": { "name": "bench" } }));
    fake.apply_object(json!({ "kind": "Gateway", "metadata": { "name": "web", "namespace": "bench" },
        "spec": { "gatewayClassName": "skiff", "listeners": [{ "name": "http", "port": 80, "protocol": "HTTP" }] } }));
    fake.apply_object(json!({ "kind": "Service", "metadata": { "name": "svc", "namespace": "bench" }, "spec": { "ports": [{ "name": "http", "port": 80 }] } }));
    fake.apply(
        "bench",
        endpoint_slice("svc-1", "svc", &[("http", 9)], &[ready_pod("127.0.0.1")]),
    );

    let dir = TempDir::new("gateway-apply");
    let kubeconfig = fake.write_kubeconfig(&dir.0);
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.write(
        "skiff.yaml",
        &format!(
            "admin: {{ listen: {admin} }}\ngateway_api:\n  gateway: {{ namespace: bench, name: web }}\n  listen_address: 127.0.0.1\n  port_offset: {}\n",
            free_port() - 80
        ),
    );
    let env = [("KUBECONFIG", kubeconfig.as_path())];
    let skiff = SkiffProcess::start_with_env(&config, admin, &["--threads", "1"], &env).await;
    ready(admin).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_empty = skiff.rss_kib();

    for i in 0..ROUTES {
        fake.apply_object(route(i, 1));
    }
    // The first translation of them all.
    for _ in 0..600 {
        if applied(&skiff.log_text(), "routes")
            .iter()
            .any(|&n| n as usize == ROUTES * 5)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_full = skiff.rss_kib();
    let before = applied(&skiff.log_text(), "apply_ms").len();

    for e in 0..EDITS {
        fake.apply_object(route(ROUTES / 2, 2 + e as u32));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let log = skiff.log_text();
    let take = |field| {
        applied(&log, field)
            .into_iter()
            .skip(before)
            .collect::<Vec<f64>>()
    };
    println!("{ROUTES} HTTPRoutes x 5 rules, one route edited {EDITS} times (release skiff, one thread):");
    summary("translate", take("translate_ms"));
    summary("apply", take("apply_ms"));
    summary("since change", take("since_change_ms"));
    println!(
        "memory: {rss_empty} KiB with no routes, {rss_full} KiB with {} route entries: {:.2} KiB per HTTPRoute",
        ROUTES * 5,
        (rss_full as f64 - rss_empty as f64) / ROUTES as f64
    );
}
