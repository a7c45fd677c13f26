//! Microbenches of the per-request pieces. Results go in BENCHMARKS.md.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use skiff::cluster::Cluster;
use skiff::metrics::Registry;
use skiff::proxy::route::RouteTable;
use skiff_config::cluster::LbPolicy;
use skiff_config::endpoints::EndpointSpec;
use skiff_config::Config;
use skiff_discovery::EndpointSet;
use skiff_route::Lookup;

fn cluster(lb: LbPolicy, n: usize, weighted: bool) -> Arc<Cluster> {
    let yaml = format!(
        "clusters:\n  - name: c\n    lb: {}\n    endpoints: []\n",
        match lb {
            LbPolicy::RoundRobin => "round_robin",
            LbPolicy::LeastRequest => "least_request",
        }
    );
    let config = Config::parse(&yaml, "bench.yaml", Path::new(".")).expect("config");
    let cluster = Arc::new(Cluster::new(config.clusters[0].clone()).expect("a plaintext cluster"));
    let set: EndpointSet = (0..n)
        .map(|i| {
            EndpointSpec::new(
                SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080)),
                if weighted { 1 + (i % 4) as u32 } else { 1 },
            )
        })
        .collect();
    cluster.apply(&set);
    cluster
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [10usize, 1_000, 10_000] {
        for (name, lb, weighted) in [
            ("round_robin", LbPolicy::RoundRobin, false),
            ("round_robin_weighted", LbPolicy::RoundRobin, true),
            ("least_request", LbPolicy::LeastRequest, false),
            ("least_request_weighted", LbPolicy::LeastRequest, true),
        ] {
            let cl = cluster(lb, n, weighted);
            // A pick as the request path does it: snapshot load, choice,
            // in-flight count up, and down again when the guard drops.
            group.bench_with_input(BenchmarkId::new(name, n), &cl, |b, cl| {
                b.iter(|| black_box(cl.pick()))
            });
        }
    }
    group.finish();
}

fn route_match(c: &mut Criterion) {
    let mut routes = String::new();
    for i in 0..100 {
        let host = match i % 3 {
            0 => format!("host: svc{i}.shop.example.com, "),
            1 => format!("host: '*.zone{i}.example.com', "),
            _ => String::new(),
        };
        routes.push_str(&format!(
            "      - match: {{ {host}path_prefix: /api/v{i}/ }}\n        cluster: c\n"
        ));
    }
    let yaml = format!(
        "listeners:\n  - name: web\n    listen: 127.0.0.1:1\n    routes:\n{routes}clusters:\n  - name: c\n    endpoints: []\n"
    );
    let config = Config::parse(&yaml, "bench.yaml", Path::new(".")).expect("config");
    let clusters: HashMap<String, Arc<Cluster>> = [(
        "c".to_string(),
        Arc::new(Cluster::new(config.clusters[0].clone()).expect("a plaintext cluster")),
    )]
    .into();
    let table =
        RouteTable::build(&config.listeners[0], &clusters, &Registry::default()).expect("routes");
    let mut group = c.benchmark_group("route_match_100_routes");
    let req = http::Request::get("/api/v99/items")
        .body(())
        .expect("a request");
    group.bench_function("exact_host_hit", |b| {
        b.iter(|| {
            black_box(table.find(&Lookup::of(
                black_box(&req),
                Some(black_box("svc99.shop.example.com")),
            )))
        })
    });
    let req = http::Request::get("/api/v97/x")
        .body(())
        .expect("a request");
    group.bench_function("suffix_host_hit", |b| {
        b.iter(|| {
            black_box(table.find(&Lookup::of(
                black_box(&req),
                Some(black_box("a.zone97.example.com")),
            )))
        })
    });
    let req = http::Request::get("/api/v98/x")
        .body(())
        .expect("a request");
    group.bench_function("any_host_last_route", |b| {
        b.iter(|| black_box(table.find(&Lookup::of(black_box(&req), Some(black_box("other.org"))))))
    });
    let req = http::Request::get("/nothing").body(()).expect("a request");
    group.bench_function("miss", |b| {
        b.iter(|| black_box(table.find(&Lookup::of(black_box(&req), Some(black_box("other.org"))))))
    });
    group.finish();
}

fn headers(c: &mut Criterion) {
    let peer: SocketAddr = "10.1.2.3:40000".parse().expect("addr");
    let template = http::Request::get("/products/42?x=1")
        .header("host", "shop.example.com")
        .header("user-agent", "curl/8.5.0")
        .header("accept", "*/*")
        .header("connection", "keep-alive")
        .header("accept-encoding", "gzip, br")
        .header("cookie", "session=abcdef0123456789")
        .body(())
        .expect("request");
    let mut plain = template.headers().clone();
    plain.remove("connection");
    for (name, headers) in [
        ("prepare_request_headers", template.headers().clone()),
        ("prepare_request_headers_no_hop_by_hop", plain),
    ] {
        c.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let mut r = http::Request::new(());
                    *r.uri_mut() = template.uri().clone();
                    *r.headers_mut() = headers.clone();
                    r
                },
                |mut r| {
                    skiff::proxy::forward::prepare_request(&mut r, peer, false);
                    r
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
}

fn snapshot_load(c: &mut Criterion) {
    let cl = cluster(LbPolicy::LeastRequest, 1_000, false);
    // What every request pays to see the current endpoint set.
    c.bench_function("snapshot_load", |b| {
        b.iter(|| black_box(cl.snapshot().endpoints.len()))
    });
}

criterion_group!(benches, pick, route_match, headers, snapshot_load);
criterion_main!(benches);
