//! The peer runner behind `skiff-bench compare`: the same load through the
//! direct path, skiff (round-robin and least-request), nginx, HAProxy and
//! Pingora, interleaved over several rounds, in one run on one machine.
//!
//! The proxy under test is pinned to one core (`proxy_cpus`), and this
//! process, its load generator and the upstream pool to the other, the
//! same for every peer. The primary figure is the proxy's CPU time per
//! request (utime + stime from `/proc` over the measured run, divided by
//! its requests): on two cores the load generator and upstreams cap
//! requests per second for every proxy alike, but CPU per request shows
//! what each proxy costs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::load::{self, Latencies, LoadResult, LoadSpec, Protocol};
use crate::peers::{Peer, PeerKind, PeerSetup};

/// Idle keep-alive connections held open in the `idle` scenario. The issue
/// asks for 10,000; this sandbox's hard open-file limit is 20,000, and
/// HAProxy reserves two descriptors per `maxconn`, so 9,900 is its ceiling
/// here. Every peer gets the same 9,000.
pub const IDLE_CONNECTIONS: usize = 9_000;
/// How often the `churn` scenario rewrites skiff's endpoint file.
pub const CHURN_INTERVAL: Duration = Duration::from_millis(100);

/// One kind of load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// HTTP/1.1 keep-alive, 1 KiB responses, closed loop.
    Small,
    /// HTTP/1.1 keep-alive, 64 KiB responses, closed loop.
    Large,
    /// h2c in, 100 concurrent streams over 2 connections, 1 KiB responses.
    H2,
    /// Open loop at half the slowest proxy's `small` peak: latency.
    FixedRate,
    /// 10,000 idle keep-alive connections: memory per connection.
    Idle,
    /// skiff only: throughput with its endpoint set updated every 100 ms.
    Churn,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Small,
        Scenario::Large,
        Scenario::H2,
        Scenario::FixedRate,
        Scenario::Idle,
        Scenario::Churn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Small => "1k",
            Scenario::Large => "64k",
            Scenario::H2 => "h2",
            Scenario::FixedRate => "fixed-rate",
            Scenario::Idle => "idle",
            Scenario::Churn => "churn",
        }
    }

    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    fn body_size(self) -> usize {
        match self {
            Scenario::Large => 64 * 1024,
            _ => 1024,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Scenario::Small => "HTTP/1.1 keep-alive, 1 KiB responses, closed loop",
            Scenario::Large => "HTTP/1.1 keep-alive, 64 KiB responses, closed loop",
            Scenario::H2 => "h2c in (2 connections x 50 streams), HTTP/1.1 upstream, 1 KiB",
            Scenario::FixedRate => "open loop at half the slowest proxy's 1k peak, 1 KiB",
            Scenario::Idle => "9,000 idle HTTP/1.1 keep-alive connections held open",
            Scenario::Churn => "skiff round-robin, endpoint file rewritten every 100 ms vs never",
        }
    }
}

/// What a comparison runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub peers: Vec<PeerKind>,
    pub scenarios: Vec<Scenario>,
    pub rounds: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    pub skiff: PathBuf,
    pub pingora: Option<PathBuf>,
    pub workdir: PathBuf,
    /// Core(s) for the proxies (`taskset -c`).
    pub proxy_cpus: String,
    /// This binary, to start the upstream pool as a child process.
    pub self_exe: PathBuf,
    /// Rate for `fixed-rate` when `1k` is not run.
    pub rate: Option<f64>,
    /// Arguments for `skiff run` besides the config.
    pub skiff_args: Vec<String>,
}

/// One peer's figures over every round of a scenario.
#[derive(Debug, Clone)]
pub struct Figures {
    pub label: String,
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// The proxy's CPU time over the measured runs (zero for `direct`).
    pub cpu: Duration,
    pub peak_rss_kib: u64,
    pub latencies: Latencies,
    /// Requests per second of each round.
    pub round_rps: Vec<f64>,
    /// For `idle`: RSS before and with the idle connections, KiB.
    pub idle_rss_kib: Option<(u64, u64)>,
    /// Every round's result folded into one, for the chart.
    pub merged: Option<LoadResult>,
}

impl Figures {
    fn new(label: &str) -> Figures {
        Figures {
            label: label.to_string(),
            requests: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            cpu: Duration::ZERO,
            peak_rss_kib: 0,
            latencies: Latencies::new(),
            round_rps: Vec::new(),
            idle_rss_kib: None,
            merged: None,
        }
    }

    fn add(&mut self, result: &LoadResult, cpu: Duration) {
        self.requests += result.requests;
        self.errors += result.errors();
        self.elapsed += result.elapsed;
        self.cpu += cpu;
        self.latencies.merge(&result.latencies);
        self.round_rps.push(result.requests_per_second());
        match &mut self.merged {
            None => {
                let mut first = result.clone();
                first.label = self.label.clone();
                self.merged = Some(first);
            }
            Some(m) => {
                m.requests += result.requests;
                m.status_errors += result.status_errors;
                m.transport_errors += result.transport_errors;
                m.bytes_received += result.bytes_received;
                m.elapsed += result.elapsed;
                m.latencies.merge(&result.latencies);
            }
        }
    }

    pub fn rps(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.requests as f64 / self.elapsed.as_secs_f64()
        }
    }

    /// CPU microseconds per request, if measured.
    pub fn cpu_per_request_us(&self) -> Option<f64> {
        (self.requests > 0 && !self.cpu.is_zero())
            .then(|| self.cpu.as_secs_f64() * 1e6 / self.requests as f64)
    }

    /// Bytes of RSS per idle connection, for `idle`.
    pub fn bytes_per_connection(&self) -> Option<f64> {
        self.idle_rss_kib.map(|(before, with)| {
            (with.saturating_sub(before) * 1024) as f64 / IDLE_CONNECTIONS as f64
        })
    }
}

/// One scenario's results.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    pub scenario: Scenario,
    pub figures: Vec<Figures>,
    pub note: String,
}

/// Runs every scenario of `opts` and returns their reports.
pub async fn run(opts: &Options) -> anyhow::Result<Vec<ScenarioReport>> {
    std::fs::create_dir_all(&opts.workdir)
        .with_context(|| format!("create {}", opts.workdir.display()))?;
    let mut reports = Vec::new();
    let mut small_peak: Option<f64> = None;
    for &scenario in &opts.scenarios {
        eprintln!("== scenario {}: {}", scenario.name(), scenario.describe());
        let report = match scenario {
            Scenario::Small | Scenario::Large | Scenario::H2 => {
                throughput(opts, scenario, None).await?
            }
            Scenario::FixedRate => {
                let rate = small_peak
                    .or(opts.rate)
                    .context("fixed-rate needs the 1k scenario first, or --rate")?;
                throughput(opts, scenario, Some(rate / 2.0)).await?
            }
            Scenario::Idle => idle(opts).await?,
            Scenario::Churn => churn(opts).await?,
        };
        if scenario == Scenario::Small {
            small_peak = report
                .figures
                .iter()
                .filter(|f| f.label != PeerKind::Direct.name())
                .map(|f| f.rps())
                .reduce(f64::min);
        }
        eprintln!("{}", table(&report));
        reports.push(report);
    }
    Ok(reports)
}

/// The upstream pool: three servers on free ports, in a child process.
struct Upstreams {
    child: Child,
    addresses: Vec<SocketAddr>,
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_upstreams(opts: &Options, body_size: usize) -> anyhow::Result<Upstreams> {
    let addresses: Vec<SocketAddr> = (0..3)
        .map(|_| free_port().map(|p| SocketAddr::from(([127, 0, 0, 1], p))))
        .collect::<anyhow::Result<_>>()?;
    let list: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
    let child = Command::new(&opts.self_exe)
        .args([
            "upstream",
            "--body-size",
            &body_size.to_string(),
            "--listen",
        ])
        .arg(list.join(","))
        .stdout(Stdio::null())
        .spawn()
        .context("start the upstream pool")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    for a in &addresses {
        while std::net::TcpStream::connect(a).is_err() {
            if Instant::now() > deadline {
                bail!("upstream {a} did not start");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(Upstreams { child, addresses })
}

fn setup(opts: &Options, upstreams: &Upstreams, h2c: bool) -> PeerSetup {
    PeerSetup {
        skiff: opts.skiff.clone(),
        pingora: opts.pingora.clone(),
        workdir: opts.workdir.clone(),
        proxy_cpus: opts.proxy_cpus.clone(),
        upstreams: upstreams.addresses.clone(),
        h2c,
        skiff_args: opts.skiff_args.clone(),
    }
}

fn spec_for(
    opts: &Options,
    scenario: Scenario,
    address: SocketAddr,
    label: &str,
    rate: Option<f64>,
) -> anyhow::Result<LoadSpec> {
    let (protocol, connections, streams) = match scenario {
        Scenario::H2 => (Protocol::H2, 2, 50),
        _ => (Protocol::Http1, opts.connections, 1),
    };
    let url = format!("http://{address}/").parse().context("url")?;
    let mut spec = LoadSpec::new(url, protocol);
    spec.label = label.to_string();
    spec.connections = connections;
    spec.streams = streams;
    spec.duration = opts.duration;
    spec.warmup = Duration::ZERO;
    spec.rate = rate;
    Ok(spec)
}

/// Warms a peer up, then measures one run and the peer's CPU over it.
async fn measure(
    peer: &Peer,
    spec: &LoadSpec,
    warmup: Duration,
) -> anyhow::Result<(LoadResult, Duration)> {
    if !warmup.is_zero() {
        let mut w = spec.clone();
        w.duration = warmup;
        load::run(&w)
            .await
            .with_context(|| format!("warm up {}", spec.label))?;
    }
    let before = peer.cpu_time();
    let result = load::run(spec)
        .await
        .with_context(|| format!("load {}", spec.label))?;
    let cpu = peer.cpu_time().saturating_sub(before);
    Ok((result, cpu))
}

async fn throughput(
    opts: &Options,
    scenario: Scenario,
    rate: Option<f64>,
) -> anyhow::Result<ScenarioReport> {
    let upstreams = start_upstreams(opts, scenario.body_size())?;
    let setup = setup(opts, &upstreams, scenario == Scenario::H2);
    let mut peers = Vec::new();
    for &kind in &opts.peers {
        peers.push(Peer::start(kind, free_port()?, &setup)?);
    }
    let mut figures: Vec<Figures> = opts.peers.iter().map(|k| Figures::new(k.name())).collect();
    for round in 1..=opts.rounds {
        // Each round starts with another peer, so that none always runs
        // right after the same one (or always first).
        let first = (round - 1) % peers.len().max(1);
        let order = (0..peers.len()).map(|i| (first + i) % peers.len());
        for i in order {
            let (peer, fig) = (&peers[i], &mut figures[i]);
            let spec = spec_for(opts, scenario, peer.address, peer.kind.name(), rate)?;
            let (result, cpu) = measure(peer, &spec, opts.warmup).await?;
            eprintln!(
                "   round {round} {:<9} {:>9.0} req/s  p99 {:>8}  cpu/req {}",
                peer.kind.name(),
                result.requests_per_second(),
                crate::report::latency(result.percentile(99.0)),
                if cpu.is_zero() || result.requests == 0 {
                    "-".to_string()
                } else {
                    format!("{:.2} us", cpu.as_secs_f64() * 1e6 / result.requests as f64)
                }
            );
            fig.add(&result, cpu);
        }
    }
    for (peer, fig) in peers.iter().zip(figures.iter_mut()) {
        fig.peak_rss_kib = peer.peak_rss_kib();
    }
    let note = match rate {
        Some(r) => format!("{} requests/s, open loop", r.round()),
        None => String::new(),
    };
    Ok(ScenarioReport {
        scenario,
        figures,
        note,
    })
}

async fn idle(opts: &Options) -> anyhow::Result<ScenarioReport> {
    let upstreams = start_upstreams(opts, 1024)?;
    let setup = setup(opts, &upstreams, false);
    let mut figures = Vec::new();
    for &kind in opts.peers.iter().filter(|k| **k != PeerKind::Direct) {
        let peer = Peer::start(kind, free_port()?, &setup)?;
        // One request first, so lazily built state (pools, buffers) is there.
        let mut first = hold(peer.address).await?;
        first.shutdown().await.ok();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = peer.rss_kib();
        let mut held = Vec::with_capacity(IDLE_CONNECTIONS);
        for _ in 0..IDLE_CONNECTIONS {
            held.push(
                hold(peer.address)
                    .await
                    .with_context(|| format!("{kind}: open idle connection {}", held.len() + 1))?,
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let with = peer.rss_kib();
        let mut fig = Figures::new(kind.name());
        fig.idle_rss_kib = Some((before, with));
        fig.peak_rss_kib = peer.peak_rss_kib();
        eprintln!(
            "   {:<9} idle RSS {before} KiB, with {IDLE_CONNECTIONS} connections {with} KiB ({:.0} bytes each)",
            kind.name(),
            fig.bytes_per_connection().unwrap_or(0.0)
        );
        figures.push(fig);
        drop(held);
    }
    Ok(ScenarioReport {
        scenario: Scenario::Idle,
        figures,
        note: format!("{IDLE_CONNECTIONS} connections, each after one request"),
    })
}

/// Opens a connection, makes one request, reads the response, keeps it open.
async fn hold(address: SocketAddr) -> anyhow::Result<tokio::net::TcpStream> {
    let mut s = tokio::net::TcpStream::connect(address)
        .await
        .context("connect")?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
        .await?;
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    // Headers plus the 1 KiB body; enough that the response is consumed.
    while got < 1024 {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            bail!("closed before the response ended");
        }
        got += n;
    }
    Ok(s)
}

async fn churn(opts: &Options) -> anyhow::Result<ScenarioReport> {
    let upstreams = start_upstreams(opts, 1024)?;
    let dir = &opts.workdir;
    let endpoints = dir.join("churn-endpoints.yaml");
    let write_set = |variant: usize| -> std::io::Result<()> {
        // Every set is valid and different: the weights rotate.
        let text: String = upstreams
            .addresses
            .iter()
            .enumerate()
            .map(|(i, a)| format!("- address: {a}\n  weight: {}\n", 1 + (i + variant) % 3))
            .collect();
        let tmp = endpoints.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &endpoints)
    };
    write_set(0)?;
    let port = free_port()?;
    let config = dir.join("skiff-churn.yaml");
    std::fs::write(
        &config,
        format!(
            "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - name: bench\n    listen: 127.0.0.1:{port}\n    routes:\n      - cluster: upstream\n\
             clusters:\n  - name: upstream\n    lb: round_robin\n    discovery: {{ file: {}, interval: 20ms }}\n",
            endpoints.display()
        ),
    )?;
    let mut child = Command::new("taskset")
        .args(["-c", &opts.proxy_cpus])
        .arg(&opts.skiff)
        .arg("run")
        .args(&opts.skiff_args)
        .args(["--log-level", "warn", "-c"])
        .arg(&config)
        .spawn()
        .context("start skiff for churn")?;
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(address).is_err() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("skiff (churn) did not start");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = child.id();
    let cpu = || -> Duration {
        crate::peers::process_tree(pid)
            .into_iter()
            .map(crate::peers::cpu_time)
            .sum()
    };
    let mut steady = Figures::new("skiff-rr steady");
    let mut churning = Figures::new("skiff-rr churn");
    let mut updates = 0usize;
    for _round in 1..=opts.rounds {
        for churn_on in [false, true] {
            let spec = spec_for(
                opts,
                Scenario::Small,
                address,
                if churn_on { "churn" } else { "steady" },
                None,
            )?;
            let mut w = spec.clone();
            w.duration = opts.warmup;
            load::run(&w).await?;
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let writer = churn_on.then(|| {
                let stop = stop.clone();
                let endpoints = endpoints.clone();
                let addresses = upstreams.addresses.clone();
                std::thread::spawn(move || {
                    let mut n = 1;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let text: String = addresses
                            .iter()
                            .enumerate()
                            .map(|(i, a)| {
                                format!("- address: {a}\n  weight: {}\n", 1 + (i + n) % 3)
                            })
                            .collect();
                        let tmp = endpoints.with_extension("tmp");
                        if std::fs::write(&tmp, text).is_ok() {
                            let _ = std::fs::rename(&tmp, &endpoints);
                        }
                        n += 1;
                        std::thread::sleep(CHURN_INTERVAL);
                    }
                    n - 1
                })
            });
            let before = cpu();
            let result = load::run(&spec).await?;
            let used = cpu().saturating_sub(before);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(w) = writer {
                updates += w.join().unwrap_or(0);
            }
            if churn_on { &mut churning } else { &mut steady }.add(&result, used);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let ratio = churning.rps() / steady.rps().max(1.0);
    Ok(ScenarioReport {
        scenario: Scenario::Churn,
        figures: vec![steady, churning],
        note: format!("{updates} endpoint-set updates written; churn/steady throughput {ratio:.3}"),
    })
}

/// The markdown table of one scenario.
pub fn table(report: &ScenarioReport) -> String {
    let mut out = format!(
        "### {} — {}\n\n",
        report.scenario.name(),
        report.scenario.describe()
    );
    if !report.note.is_empty() {
        out.push_str(&format!("{}\n\n", report.note));
    }
    if report.scenario == Scenario::Idle {
        out.push_str("| peer | idle RSS | RSS with the idle connections | per connection |\n| --- | ---: | ---: | ---: |\n");
        for f in &report.figures {
            if let Some((before, with)) = f.idle_rss_kib {
                out.push_str(&format!(
                    "| {} | {before} KiB | {with} KiB | {:.0} B |\n",
                    f.label,
                    f.bytes_per_connection().unwrap_or(0.0)
                ));
            }
        }
        return out;
    }
    let skiff_cpu = report
        .figures
        .iter()
        .find(|f| f.label == PeerKind::SkiffRoundRobin.name() || f.label.starts_with("skiff-rr"))
        .and_then(Figures::cpu_per_request_us);
    out.push_str("| peer | req/s | p50 | p90 | p99 | p99.9 | max | errors | CPU/req | skiff-rr CPU ÷ peer | peak RSS |\n");
    out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for f in &report.figures {
        let lat = |p: f64| crate::report::latency(f.latencies.percentile(p));
        let cpu = f.cpu_per_request_us();
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            f.label,
            f.rps(),
            lat(50.0),
            lat(90.0),
            lat(99.0),
            lat(99.9),
            crate::report::latency(f.latencies.max()),
            f.errors,
            cpu.map(|c| format!("{c:.2} µs"))
                .unwrap_or_else(|| "—".into()),
            match (skiff_cpu, cpu) {
                (Some(s), Some(c)) => format!("{:.2}", s / c),
                _ => "—".into(),
            },
            if f.peak_rss_kib > 0 {
                format!("{} KiB", f.peak_rss_kib)
            } else {
                "—".into()
            },
        ));
    }
    out
}

/// Machine facts for the report header.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    // Count the machine's processors, not this (pinned) process's.
    let cores = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

/// Everything as JSON.
pub fn json(reports: &[ScenarioReport]) -> serde_json::Value {
    let scenarios: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            let peers: Vec<serde_json::Value> = r
                .figures
                .iter()
                .map(|f| {
                    json!({
                        "peer": f.label,
                        "requests": f.requests,
                        "errors": f.errors,
                        "requests_per_second": f.rps(),
                        "round_requests_per_second": f.round_rps,
                        "cpu_seconds": f.cpu.as_secs_f64(),
                        "cpu_per_request_us": f.cpu_per_request_us(),
                        "peak_rss_kib": f.peak_rss_kib,
                        "idle_rss_kib": f.idle_rss_kib.map(|(b, _)| b),
                        "idle_connections_rss_kib": f.idle_rss_kib.map(|(_, w)| w),
                        "bytes_per_idle_connection": f.bytes_per_connection(),
                        "latency_us": {
                            "p50": f.latencies.percentile(50.0).as_micros() as u64,
                            "p90": f.latencies.percentile(90.0).as_micros() as u64,
                            "p99": f.latencies.percentile(99.0).as_micros() as u64,
                            "p99_9": f.latencies.percentile(99.9).as_micros() as u64,
                            "max": f.latencies.max().as_micros() as u64,
                        },
                        "curve": f.latencies.curve().iter().map(|p| json!({"percentile": p.percentile, "latency_us": p.latency_us})).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({ "scenario": r.scenario.name(), "description": r.scenario.describe(), "note": r.note, "peers": peers })
        })
        .collect();
    json!({ "machine": machine(), "scenarios": scenarios })
}

/// Finds the repository root (the directory with `benches/peers`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// One SVG chart per scenario with latency curves: (scenario name, SVG).
pub fn charts(reports: &[ScenarioReport]) -> Vec<(&'static str, String)> {
    reports
        .iter()
        .filter_map(|r| {
            let results: Vec<LoadResult> =
                r.figures.iter().filter_map(|f| f.merged.clone()).collect();
            if results.is_empty() {
                return None;
            }
            crate::report::svg(&results)
                .ok()
                .map(|svg| (r.scenario.name(), svg))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(label: &str, requests: u64, cpu_ms: u64) -> Figures {
        let mut f = Figures::new(label);
        f.requests = requests;
        f.elapsed = Duration::from_secs(1);
        f.cpu = Duration::from_millis(cpu_ms);
        for i in 1..=100 {
            f.latencies.record(Duration::from_micros(i * 10));
        }
        f
    }

    #[test]
    fn cpu_per_request_and_ratios_are_computed_from_totals() {
        let skiff = figures("skiff-rr", 1000, 10);
        let haproxy = figures("haproxy", 1000, 20);
        assert_eq!(skiff.cpu_per_request_us(), Some(10.0));
        assert_eq!(figures("direct", 1000, 0).cpu_per_request_us(), None);
        let report = ScenarioReport {
            scenario: Scenario::Small,
            figures: vec![skiff, haproxy],
            note: String::new(),
        };
        let text = table(&report);
        assert!(text.contains("| skiff-rr | 1000 |"), "{text}");
        // skiff's CPU per request over HAProxy's: 10 / 20.
        assert!(text.contains("| 20.00 µs | 0.50 |"), "{text}");
        let json = json(&[report]);
        assert_eq!(json["scenarios"][0]["peers"][1]["cpu_per_request_us"], 20.0);
        assert_eq!(json["scenarios"][0]["peers"][0]["latency_us"]["max"], 1000);
    }

    #[test]
    fn idle_memory_is_per_connection() {
        let mut f = Figures::new("skiff-rr");
        f.idle_rss_kib = Some((1000, 1000 + IDLE_CONNECTIONS as u64));
        assert_eq!(f.bytes_per_connection(), Some(1024.0));
        let text = table(&ScenarioReport {
            scenario: Scenario::Idle,
            figures: vec![f],
            note: String::new(),
        });
        assert!(
            text.contains("| skiff-rr | 1000 KiB | 10000 KiB | 1024 B |"),
            "{text}"
        );
    }

    #[test]
    fn this_process_has_cpu_time_and_a_process_tree() {
        let pid = std::process::id();
        assert!(crate::peers::process_tree(pid).contains(&pid));
        // Burn CPU until /proc shows at least one clock tick of it.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut x = 0u64;
        while crate::peers::cpu_time(pid).is_zero() && Instant::now() < deadline {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert!(crate::peers::cpu_time(pid) > Duration::ZERO);
    }

    #[test]
    fn scenario_and_peer_names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::parse(s.name()), Some(s));
        }
        for p in PeerKind::ALL {
            assert_eq!(PeerKind::parse(p.name()), Some(p));
        }
    }
}
