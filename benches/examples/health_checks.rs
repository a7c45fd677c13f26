//! Active health checking at scale (issue 5): 1,000 endpoints checked every
//! second, what it costs skiff in CPU, and whether it moves the request
//! path's p99.
//!
//! `cargo run --release -p skiff-bench --example health_checks`
//!
//! A `skiff run` process (release binary, pinned to CPU 0) has two
//! clusters: `fleet`, 1,000 endpoints (1,000 real listeners in this
//! process, answering `GET /healthz` with keep-alive), and `app`, three
//! test backends that take the request traffic. Two configs alternate over
//! `ROUNDS`: `fleet` with an HTTP check at a 1 s interval, and the same
//! without checks (the baseline). In each round:
//!
//! 1. skiff's CPU time over an idle window (no requests), from
//!    `/proc/PID/task/*/schedstat` (ns), as a share of one core;
//! 2. an open-loop load of `RATE` GET/s through `app` (skiff-bench's
//!    engine: latency from the intended send time), for its p50/p99.
//!
//! Load generator, fleet and backends run on CPU 1.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use skiff_bench::load::{self, LoadSpec, Protocol};
use skiff_tests::{free_port, Backend, SkiffProcess, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ENDPOINTS: usize = 1000;
const IDLE_WINDOW: Duration = Duration::from_secs(20);
const RATE: f64 = 2000.0;
const LOAD_DURATION: Duration = Duration::from_secs(10);
const ROUNDS: usize = 2;

/// Answers every request on a connection with `200 ok` (keep-alive).
async fn answer(mut stream: tokio::net::TcpStream) {
    let mut buf = vec![0u8; 4096];
    let mut have = 0;
    loop {
        match stream.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
        while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if stream.write_all(reply).await.is_err() {
                return;
            }
            buf.copy_within(end + 4..have, 0);
            have -= end + 4;
        }
        if have == buf.len() {
            return;
        }
    }
}

/// Starts `n` listeners on 127.0.0.1 on a thread of its own; returns
/// their addresses.
fn fleet(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind fleet listener"))
        .collect();
    let addresses = listeners
        .iter()
        .map(|l| l.local_addr().expect("address"))
        .collect();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("fleet runtime");
        rt.block_on(async move {
            for l in listeners {
                l.set_nonblocking(true).expect("nonblocking");
                let l = tokio::net::TcpListener::from_std(l).expect("listener");
                tokio::spawn(async move {
                    while let Ok((s, _)) = l.accept().await {
                        tokio::spawn(answer(s));
                    }
                });
            }
            std::future::pending::<()>().await
        });
    });
    addresses
}

fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    fleet: &[SocketAddr],
    app: &[SocketAddr],
    checks: bool,
) -> String {
    let list = |a: &[SocketAddr]| {
        a.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let check = if checks {
        "    health_check: { http: { path: /healthz }, interval: 1s, timeout: 1s }\n"
    } else {
        ""
    };
    format!(
        "admin: {{ listen: {admin} }}\n\
         listeners:\n  - name: web\n    listen: {listen}\n    routes:\n      - cluster: app\n\
         clusters:\n  - name: app\n    lb: round_robin\n    endpoints: [{}]\n\
         \x20 - name: fleet\n    endpoints: [{}]\n{check}",
        list(app),
        list(fleet)
    )
}

/// CPU time of every thread of `pid`, from schedstat (ns resolution).
fn cpu_time(pid: u32) -> Duration {
    let mut total = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
                total += text
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(total)
}

fn pin(pid: u32, cpu: usize) {
    let _ = std::process::Command::new("taskset")
        .args(["-a", "-cp", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status();
}

struct Round {
    cpu_share: f64,
    checks_per_second: f64,
    p50: Duration,
    p99: Duration,
    requests: u64,
    errors: u64,
}

async fn round(dir: &TempDir, fleet: &[SocketAddr], app: &[SocketAddr], checks: bool) -> Round {
    let (listen, admin) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let path = dir.write("skiff.yaml", &config(listen, admin, fleet, app, checks));
    let skiff = SkiffProcess::start(&path, admin).await;
    skiff.wait_ready().await;
    pin(skiff.pid(), 0);
    // Let the first round of checks (all at once) and their connections settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let checks_before = checks_done(admin).await;
    let before = cpu_time(skiff.pid());
    let started = Instant::now();
    tokio::time::sleep(IDLE_WINDOW).await;
    let used = cpu_time(skiff.pid()) - before;
    let elapsed = started.elapsed();
    let checks_per_second = (checks_done(admin).await - checks_before) / elapsed.as_secs_f64();

    let mut spec = LoadSpec::new(
        format!("http://{listen}/").parse().expect("url"),
        Protocol::Http1,
    );
    spec.label = if checks { "checks" } else { "no checks" }.into();
    spec.connections = 8;
    spec.rate = Some(RATE);
    spec.duration = LOAD_DURATION;
    spec.warmup = Duration::from_secs(1);
    let result = load::run(&spec).await.expect("load");
    Round {
        cpu_share: used.as_secs_f64() / elapsed.as_secs_f64(),
        checks_per_second,
        p50: result.percentile(50.0),
        p99: result.percentile(99.0),
        requests: result.requests,
        errors: result.errors(),
    }
}

async fn checks_done(admin: SocketAddr) -> f64 {
    let (_, text) = skiff_tests::admin_get(admin, "/metrics")
        .await
        .expect("metrics");
    ["passed", "failed", "timeout", "error"]
        .iter()
        .filter_map(|result| {
            skiff_tests::metric_value(
                &text,
                "skiff_health_checks_total",
                &[("cluster", "fleet"), ("result", result)],
            )
        })
        .sum()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    pin(std::process::id(), 1);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "machine: {} CPUs, {cpu}; skiff pinned to CPU 0, fleet/backends/load on CPU 1",
        cpus
    );
    let fleet = fleet(ENDPOINTS);
    let mut backends = Vec::new();
    for name in ["a", "b", "c"] {
        backends.push(Backend::start(name).await);
    }
    let app: Vec<SocketAddr> = backends.iter().map(|b| b.address).collect();
    let dir = TempDir::new("health-bench");
    let mut rows = Vec::new();
    for r in 0..ROUNDS {
        for checks in [true, false] {
            let row = round(&dir, &fleet, &app, checks).await;
            println!(
                "round {r} {:>9}: skiff CPU {:.2}% of a core idle ({:.0} checks/s); \
                 {RATE} req/s: p50 {:.3} ms, p99 {:.3} ms ({} requests, {} errors)",
                if checks { "checks" } else { "no checks" },
                row.cpu_share * 100.0,
                row.checks_per_second,
                row.p50.as_secs_f64() * 1e3,
                row.p99.as_secs_f64() * 1e3,
                row.requests,
                row.errors,
            );
            rows.push((checks, row));
        }
    }
    let mean = |checks: bool, f: &dyn Fn(&Round) -> f64| {
        let v: Vec<f64> = rows
            .iter()
            .filter(|(c, _)| *c == checks)
            .map(|(_, r)| f(r))
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let cpu_with = mean(true, &|r| r.cpu_share);
    let cpu_without = mean(false, &|r| r.cpu_share);
    let p99_with = mean(true, &|r| r.p99.as_secs_f64());
    let p99_without = mean(false, &|r| r.p99.as_secs_f64());
    println!(
        "\n{ENDPOINTS} endpoints at 1 s: health checking costs {:.2}% of a core \
         ({:.2}% with checks - {:.2}% without); request p99 {:.3} ms with checks vs {:.3} ms without ({:.2}x)",
        (cpu_with - cpu_without) * 100.0,
        cpu_with * 100.0,
        cpu_without * 100.0,
        p99_with * 1e3,
        p99_without * 1e3,
        p99_with / p99_without
    );
}
