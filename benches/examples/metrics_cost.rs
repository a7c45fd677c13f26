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
//! Part 3 runs `METRICS_COST_ROUNDS` rounds (2 by default), and with
//! `SKIFF_COMPARE_BIN` (another build of skiff, e.g. the last release's)
//! runs that build too in every round, for a same-run baseline.
//! Arguments pick parts: `render` (2, in process only; what
//! `callgrind --toggle-collect='skiff::admin::prometheus::render*'` measures) and
//! `scrape` (2 over HTTP, and 3); none runs all three.
//!
//! The scraper of part 3 is a plain blocking client on its own thread: on
//! the load generator's single-threaded runtime, reading and copying the
//! 255 KiB body delayed the generator's own timestamps, which showed up
//! as request latency that skiff did not cause.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_bench::load::{self, LoadSpec, Protocol};
use skiff_tests::{admin_get, free_port, Backend, TempDir};

const ROUNDS: usize = 3;
const CLUSTERS: usize = 100;
const PER_CLUSTER: usize = 10;
/// Renders timed in process (part 2).
const RENDERS: usize = 200;

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

/// `GET /metrics` with a blocking client, the body read into `buf`
/// (reused), so that scraping costs the load generator's CPU little.
fn scrape(admin: SocketAddr, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut stream = std::net::TcpStream::connect(admin)?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: skiff\r\nConnection: close\r\n\r\n")?;
    buf.clear();
    stream.read_to_end(buf)?;
    if !buf.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other("GET /metrics did not answer 200"));
    }
    Ok(())
}

/// Scrapes every second on its own thread until `stop`; returns the times.
fn scraper(admin: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Duration>> {
    std::thread::spawn(move || {
        let mut times = Vec::new();
        let mut buf = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            scrape(admin, &mut buf).expect("scrape");
            times.push(started.elapsed());
            let next = started + Duration::from_secs(1);
            while !stop.load(Ordering::Relaxed) && Instant::now() < next {
                std::thread::park_timeout(next.saturating_duration_since(Instant::now()));
            }
        }
        times
    })
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
    let parts: Vec<String> = std::env::args().skip(1).collect();
    let part = |name: &str| parts.is_empty() || parts.iter().any(|p| p == name);

    // 1. Metrics on versus compiled out.
    let with = skiff_bin();
    let without = std::env::var_os("SKIFF_NO_METRICS_BIN").map(PathBuf::from);
    if !parts.is_empty() {
        println!("(parts {parts:?} only: skipping the on/off comparison)\n");
    } else if let Some(without) = &without {
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
    if part("render") {
        render_in_process(&app).await;
    }
    if !part("scrape") {
        return;
    }

    // 3. Over HTTP from the running process, and p99 with and without
    // scrapes; with SKIFF_COMPARE_BIN, for that build too, round by round.
    let rounds = std::env::var("METRICS_COST_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2);
    let mut builds = vec![("this build", with.clone())];
    if let Some(other) = std::env::var_os("SKIFF_COMPARE_BIN") {
        builds.push(("compared", PathBuf::from(other)));
    }
    for (label, bin) in &builds {
        println!("{label}: {}", bin.display());
    }
    let mut results = vec![(Vec::new(), Vec::new(), Vec::new()); builds.len()];
    for round in 0..rounds {
        for ((label, bin), (quiet, scraped, scrape_times)) in builds.iter().zip(&mut results) {
            for scrape in [false, true] {
                let running = start(bin, &dir, &app, true).await;
                let stop = Arc::new(AtomicBool::new(false));
                let scraper = scrape.then(|| scraper(running.admin, stop.clone()));
                let result = load::run(&spec(running.listen, Some(2000.0), 10))
                    .await
                    .expect("load");
                stop.store(true, Ordering::Relaxed);
                let times = match scraper {
                    Some(s) => {
                        s.thread().unpark();
                        s.join().expect("scraper")
                    }
                    None => Vec::new(),
                };
                let ms = |p: f64| result.percentile(p).as_secs_f64() * 1e3;
                println!(
                    "round {round} {label:>10} {:>16}: 2000 req/s p50 {:.3} ms, p99 {:.3} ms, \
                     p99.9 {:.3} ms ({} errors){}",
                    if scrape {
                        "scraped every 1s"
                    } else {
                        "no scrapes"
                    },
                    ms(50.0),
                    ms(99.0),
                    ms(99.9),
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
                    scraped.push(ms(99.0));
                    scrape_times.extend(times);
                } else {
                    quiet.push(ms(99.0));
                }
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    for ((label, _), (quiet, scraped, scrape_times)) in builds.iter().zip(&mut results) {
        scrape_times.sort();
        println!(
            "\n{label}: GET /metrics ({CLUSTERS}x{PER_CLUSTER}) over HTTP: median {:.2} ms, \
             max {:.2} ms; request p99 {:.3} ms while scraped vs {:.3} ms not ({:.2}x)",
            scrape_times[scrape_times.len() / 2].as_secs_f64() * 1e3,
            scrape_times[scrape_times.len() - 1].as_secs_f64() * 1e3,
            mean(scraped),
            mean(quiet),
            mean(scraped) / mean(quiet)
        );
    }
}

/// Part 2 in process: `render` over 100 clusters × 10 endpoints, 200 times.
async fn render_in_process(app: &[SocketAddr]) {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let text = with_routes(config(loopback, loopback, app, true), true);
    let (proxy, _) = skiff_tests::start_proxy(&text).await;
    for c in proxy.clusters().iter() {
        for e in c.snapshot().members.iter() {
            for status in [200, 200, 200, 404, 503] {
                e.requests.record(status);
            }
        }
    }
    let (mut times, size) = render_times(&proxy, RENDERS);
    times.sort();
    // The text itself, to compare renders before and after a change.
    if let Some(path) = std::env::var_os("METRICS_COST_DUMP") {
        let body = skiff::admin::prometheus::render(proxy.registry(), &proxy.clusters());
        std::fs::write(path, body).expect("write METRICS_COST_DUMP");
    }
    println!(
        "render with {CLUSTERS} clusters x {PER_CLUSTER} endpoints ({} KiB, {} lines): median {:.2} ms, max {:.2} ms",
        size / 1024,
        skiff::admin::prometheus::render(proxy.registry(), &proxy.clusters()).lines().count(),
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
    );
    drop(proxy);
}

/// Renders `n` times as a scrape does (into the text buffer the metrics
/// thread keeps), timing each; apart so that callgrind can count these
/// alone: `--toggle-collect='*render_times*'`.
#[inline(never)]
fn render_times(proxy: &skiff::Proxy, n: usize) -> (Vec<Duration>, usize) {
    let mut times = Vec::with_capacity(n);
    let mut text = String::new();
    for _ in 0..n {
        let started = Instant::now();
        text.clear();
        skiff::admin::prometheus::render_into(&mut text, proxy.registry(), &proxy.clusters());
        times.push(started.elapsed());
    }
    (times, text.len())
}
