//! The Gateway API at scale: HTTPRoutes of 5 rules each, translated into
//! a route table (what one object change costs before it is applied),
//! and one request matched against the table (what every request pays).
//!
//! `spread`: routes over 200 hostnames (5 rules × N/200 routes per host),
//! as a cluster with many services looks. `one_host`: every route on one
//! hostname, the worst case for a linear scan within a host.
//!
//! ```text
//! cargo bench -p skiff-bench --bench gateway_api
//! ```

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use serde_json::json;
use skiff_gateway::{translate, World, CONTROLLER};
use skiff_route::{BadPattern, Lookup, Table};

/// A world of `n` HTTPRoutes of 5 rules each on the Gateway `bench/web`,
/// over `hosts` hostnames; rule 2 of each also asks for a header.
fn world(n: usize, hosts: usize) -> World {
    let mut w = World::default();
    let objects = [
        json!({ "kind": "GatewayClass", "metadata": { "name": "skiff" }, "spec": { "controllerName": CONTROLLER } }),
        json!({ "kind": "Gateway", "metadata": { "name": "web", "namespace": "bench" },
                "spec": { "gatewayClassName": "skiff", "listeners": [{ "name": "http", "port": 80, "protocol": "HTTP" }] } }),
        json!({ "kind": "Service", "metadata": { "name": "svc", "namespace": "bench" }, "spec": { "ports": [{ "name": "http", "port": 80 }] } }),
    ];
    for o in objects {
        w.apply(o).expect("an object");
    }
    for i in 0..n {
        let rules: Vec<_> = (0..5)
            .map(|j| {
                let mut m =
                    json!({ "path": { "type": "PathPrefix", "value": format!("/r{i}/p{j}") } });
                if j == 2 {
                    m["headers"] = json!([{ "name": "x-version", "value": "2" }]);
                }
                json!({ "matches": [m], "backendRefs": [{ "name": "svc", "port": 80 }] })
            })
            .collect();
        let route = json!({
            "kind": "HTTPRoute",
            "metadata": { "name": format!("r{i}"), "namespace": "bench", "creationTimestamp": "2026-12-01T00:00:00Z" },
            "spec": { "parentRefs": [{ "name": "web" }], "hostnames": [format!("h{}.example.com", i % hosts)], "rules": rules }
        });
        w.apply(route).expect("a route");
    }
    w
}

/// Translates and builds the port's table (targets: the route names).
fn table(w: &World) -> Table<String> {
    let t = translate(w, ("bench", "web"), CONTROLLER);
    skiff_route::from_config(&t.ports[0].routes, |r| {
        Ok::<_, BadPattern>(r.name.clone().unwrap_or_default())
    })
    .expect("a table")
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("gateway_match");
    for (shape, hosts) in [("spread", 200), ("one_host", 1)] {
        for n in [100, 1000, 4000] {
            if shape == "spread" && n < 200 {
                continue;
            }
            let t = table(&world(n, hosts));
            // A route in the middle, its last rule: the host's entries up
            // to it are tried first.
            let i = n / 2;
            let req = http::Request::get(format!("/r{i}/p4/items"))
                .body(())
                .expect("a request");
            let host = format!("h{}.example.com", i % hosts);
            assert!(t.find(&Lookup::of(&req, Some(&host))).is_some());
            group.bench_with_input(BenchmarkId::new(shape, n), &n, |b, _| {
                b.iter(|| black_box(t.find(&Lookup::of(black_box(&req), Some(black_box(&host))))))
            });
        }
    }
    group.finish();
}

fn translating(c: &mut Criterion) {
    let mut group = c.benchmark_group("gateway_translate");
    group.sample_size(10);
    for n in [100, 1000] {
        let w = world(n, 200);
        group.bench_with_input(BenchmarkId::from_parameter(n), &w, |b, w| {
            b.iter(|| black_box(table(black_box(w))))
        });
    }
    group.finish();
}

criterion_group!(benches, matching, translating);
criterion_main!(benches);
