//! What skiff's metrics cost (issue 8).
//!
//! `benches/scripts/metrics-cost.sh` builds skiff twice (as is, and with
//! `--features no-metrics`, which compiles out the request path's status
//! counters and duration histograms) and runs this example:
//!
//! 1. Throughput through each build, closed loop, alternating over
//!    `ROUNDS`, skiff pinned to CPU 0 and everything else to CPU 1: the
//!    ratio is the cost of recording metrics per request.
//! 2. Scrape time of `/metrics` with 100 clusters × 10 endpoints (every
//!    endpoint with traffic counted): `render` in process, and `GET
//!    /metrics` over HTTP from the running process.
//! 3. Request latency at a fixed rate while `/metrics` is scraped every
//!    second, against the same without scrapes.
//!
//! `SKIFF_NO_METRICS_BIN` names the no-metrics binary (the script sets it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use skiff_bench::load::{self, LoadSpec, Protocol};
use skiff_tests::{admin_get, free_port, Backend, TempDir};

const ROUNDS: usize = 3;
const CLUSTERS: usize = 100;
const PER_CLUSTER: usize = 10;

fn config(listen: SocketAddr, admin: SocketAddr, app: &[SocketAddr], many: bool) -> String {
    let list = |a: &[SocketAddr]| {
        a.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut text = format!(
        "admin: {{ listen: {admin} }}\n\
         listeners:\n  - name: web\n    listen: {listen}\n    routes:\n      - cluster: app\n\
         clusters:\n  - name: app\n    lb: round_robin\n    endpoints: [{}]\n",
        list(app)
    );
    if many {
        // Other clusters routed by host, so their series exist; their
        // endpoints are never reached.
        for c in 0..CLUSTERS {
            let endpoints: Vec<SocketAddr> = (0..PER_CLUSTER)
                .map(|e| SocketAddr::from(([10, 9, c as u8, e as u8 + 1], 8080)))
                .collect();
            text.push_str(&format!(
                "  - name: service-{c:03}\n    endpoints: [{}]\n",
                list(&endpoints)
            ));
        }
    }
    text
}

fn with_routes(text: String, many: bool) -> String {
    if !many {
        return text;
    }
    let routes: String = (0..CLUSTERS)
        .map(|c| {
            format!(
                "      - match: {{ host: service-{c:03}.shop }}\n        cluster: service-{c:03}\n"
            )
        })
        .collect();
    text.replacen(
        "    routes:\n      - cluster: app\n",
        &format!("    routes:\n{routes}      - cluster: app\n"),
        1,
    )
}

fn pin(pid: u32, cpu: usize) {
    let _ = std::process::Command::new("taskset")
        .args(["-a", "-cp", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status();
}

struct Running {
    child: std::process::Child,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(bin: &PathBuf, dir: &TempDir, app: &[SocketAddr], many: bool) -> Running {
    let (listen, admin) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let path = dir.write(
        "skiff.yaml",
        &with_routes(config(listen, admin, app, many), many),
    );
    let child = std::process::Command::new(bin)
        .args(["--log-level", "warn", "run", "-c"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start skiff");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((status, _)) = admin_get(admin, "/ready").await {
            if status == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "skiff did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pin(child.id(), 0);
    Running {
        child,
        listen,
        admin,
    }
}

fn spec(listen: SocketAddr, rate: Option<f64>, seconds: u64) -> LoadSpec {
    let mut spec = LoadSpec::new(
        format!("http://{listen}/").parse().expect("url"),
        Protocol::Http1,
    );
    spec.connections = if rate.is_some() { 8 } else { 16 };
    spec.rate = rate;
    spec.duration = Duration::from_secs(seconds);
    spec.warmup = Duration::from_secs(1);
    spec
}

fn skiff_bin() -> PathBuf {
    skiff_tests::skiff_bin()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    pin(std::process::id(), 1);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!("machine: {cpus} CPUs, {model}; skiff pinned to CPU 0, load and backends on CPU 1");
    let mut backends = Vec::new();
    for name in ["a", "b", "c"] {
        backends.push(Backend::start(name).await);
    }
    let app: Vec<SocketAddr> = backends.iter().map(|b| b.address).collect();
    let dir = TempDir::new("metrics-bench");

    // 1. Metrics on versus compiled out.
    let with = skiff_bin();
    let without = std::env::var_os("SKIFF_NO_METRICS_BIN").map(PathBuf::from);
    if let Some(without) = &without {
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            for (bin, out, label) in [
                (&with, &mut on, "metrics on"),
                (without, &mut off, "metrics off"),
            ] {
                let running = start(bin, &dir, &app, false).await;
                let result = load::run(&spec(running.listen, None, 8))
                    .await
                    .expect("load");
                println!(
                    "round {round} {label:>11}: {:.0} req/s, p99 {:.3} ms, {} errors",
                    result.requests_per_second(),
                    result.percentile(99.0).as_secs_f64() * 1e3,
                    result.errors()
                );
                out.push(result.requests_per_second());
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "throughput with metrics {:.0} req/s, without {:.0} req/s: metrics cost {:.2}%\n",
            mean(&on),
            mean(&off),
            (1.0 - mean(&on) / mean(&off)) * 100.0
        );
    } else {
        println!("(SKIFF_NO_METRICS_BIN not set: skipping the on/off comparison)\n");
    }

    // 2. Scrape time with 100 clusters × 10 endpoints, in process first.
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let text = with_routes(config(loopback, loopback, &app, true), true);
    let (proxy, _) = skiff_tests::start_proxy(&text).await;
    for c in proxy.clusters().iter() {
        for e in c.snapshot().members.iter() {
            for status in [200, 200, 200, 404, 503] {
                e.requests.record(status);
            }
        }
    }
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..200 {
        let started = Instant::now();
        let body = skiff::metrics::render(proxy.registry(), &proxy.clusters());
        times.push(started.elapsed());
        size = body.len();
    }
    times.sort();
    println!(
        "render with {CLUSTERS} clusters x {PER_CLUSTER} endpoints ({} KiB, {} lines): median {:.2} ms, max {:.2} ms",
        size / 1024,
        skiff::metrics::render(proxy.registry(), &proxy.clusters()).lines().count(),
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
    );
    drop(proxy);

    // 3. Over HTTP from the running process, and p99 with and without scrapes.
    let (mut quiet, mut scraped, mut scrape_times) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS.min(2) {
        for scrape in [false, true] {
            let running = start(&with, &dir, &app, true).await;
            let admin = running.admin;
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = stop.clone();
            let scraper = tokio::spawn(async move {
                let mut times = Vec::new();
                while scrape && !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    let started = Instant::now();
                    let (status, _) = admin_get(admin, "/metrics").await.expect("scrape");
                    assert_eq!(status, 200);
                    times.push(started.elapsed());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                times
            });
            let result = load::run(&spec(running.listen, Some(2000.0), 10))
                .await
                .expect("load");
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let times = scraper.await.expect("scraper");
            let p99 = result.percentile(99.0).as_secs_f64() * 1e3;
            println!(
                "round {round} {:>15}: 2000 req/s p50 {:.3} ms, p99 {:.3} ms ({} errors){}",
                if scrape {
                    "scraped every 1s"
                } else {
                    "no scrapes"
                },
                result.percentile(50.0).as_secs_f64() * 1e3,
                p99,
                result.errors(),
                if times.is_empty() {
                    String::new()
                } else {
                    let mut t = times.clone();
                    t.sort();
                    format!(
                        "; GET /metrics median {:.2} ms, max {:.2} ms",
                        t[t.len() / 2].as_secs_f64() * 1e3,
                        t[t.len() - 1].as_secs_f64() * 1e3
                    )
                }
            );
            if scrape {
                scraped.push(p99);
                scrape_times.extend(times);
            } else {
                quiet.push(p99);
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    scrape_times.sort();
    println!(
        "\nGET /metrics ({CLUSTERS}x{PER_CLUSTER}) over HTTP: median {:.2} ms, max {:.2} ms; \
         request p99 {:.3} ms while scraped vs {:.3} ms not ({:.2}x)",
        scrape_times[scrape_times.len() / 2].as_secs_f64() * 1e3,
        scrape_times[scrape_times.len() - 1].as_secs_f64() * 1e3,
        mean(&scraped),
        mean(&quiet),
        mean(&scraped) / mean(&quiet)
    );
}
