//! `skiff-bench compare`: runs the peer comparison ([`skiff_bench::compare`])
//! and writes its report.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use skiff_bench::compare::{self, Options, Scenario};
use skiff_bench::peers::{self, PeerKind};

use super::parse_duration;

const ABOUT: &str = "\
Puts the same load through the direct path, skiff (round-robin and \
least-request), nginx, HAProxy and a minimal Pingora load balancer, in turn \
and interleaved over several rounds, and reports requests per second, \
latency percentiles, the proxy's CPU time per request (from /proc) and its \
peak RSS, with the ratios skiff/peer.

The proxies are pinned to core 0 and this process (load generator) and the \
upstream pool to core 1; every proxy runs one worker with keep-alive to the \
upstreams and no access log. nginx and HAProxy are installed from Debian \
when missing (needs root); Pingora is built from benches/peers/pingora-lb on \
first use (a few minutes). Run as root for those installs, with an \
open-file limit of at least 20,000 for the idle scenario.

Scenarios: 1k, 64k (HTTP/1.1 responses of that size), h2 (h2c in, 100 \
streams over 2 connections), fixed-rate (open loop at half the slowest \
proxy's 1k peak), idle (9,000 idle keep-alive connections: memory per \
connection), churn (skiff's endpoint set rewritten every 100 ms under load).";

/// Compare skiff against nginx, HAProxy and Pingora under the same load.
#[derive(clap::Args)]
#[command(long_about = ABOUT)]
pub struct Args {
    /// Peers to compare, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,skiff-rr,skiff-lr,nginx,haproxy,pingora"
    )]
    peers: Vec<String>,
    /// Scenarios to run, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1k,64k,h2,fixed-rate,idle,churn"
    )]
    scenarios: Vec<String>,
    /// Rounds; every peer runs once per round, interleaved.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured time of each run.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Unrecorded load before each run.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Client connections for the HTTP/1.1 scenarios.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// The skiff binary (default: build it with cargo --release).
    #[arg(long)]
    skiff: Option<PathBuf>,
    /// Rate for fixed-rate when 1k is not run (requests/s; half is used).
    #[arg(long)]
    rate: Option<f64>,
    /// Where the report goes (report.md, report.json, one SVG per scenario).
    #[arg(long, default_value = "target/bench-report")]
    out: PathBuf,
    /// Do not pin processes to cores.
    #[arg(long)]
    no_pin: bool,
    /// Arguments for `skiff run` besides the config, space separated.
    #[arg(long, default_value = "--threads 1", allow_hyphen_values = true)]
    skiff_args: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let peers: Vec<PeerKind> = args
        .peers
        .iter()
        .map(|p| PeerKind::parse(p).with_context(|| format!("unknown peer {p:?}")))
        .collect::<anyhow::Result<_>>()?;
    let scenarios: Vec<Scenario> = args
        .scenarios
        .iter()
        .map(|s| Scenario::parse(s).with_context(|| format!("unknown scenario {s:?}")))
        .collect::<anyhow::Result<_>>()?;
    let self_exe = std::env::current_exe().context("find this binary")?;
    if !args.no_pin && std::env::var_os("SKIFF_BENCH_PINNED").is_none() {
        // Re-run pinned to core 1; everything started from here inherits it.
        let status = std::process::Command::new("taskset")
            .args(["-c", "1"])
            .arg(&self_exe)
            .args(std::env::args_os().skip(1))
            .env("SKIFF_BENCH_PINNED", "1")
            .status()
            .context("re-run under taskset")?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let root = compare::repo_root();
    if peers
        .iter()
        .any(|p| matches!(p, PeerKind::Nginx | PeerKind::Haproxy))
    {
        peers::ensure_installed().map_err(anyhow::Error::msg)?;
    }
    let pingora = if peers.contains(&PeerKind::Pingora) {
        Some(peers::build_pingora(&root).map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    let skiff = match args.skiff {
        Some(p) => p,
        None => build_skiff(&root)?,
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let workdir = std::env::temp_dir().join(format!("skiff-compare-{}", std::process::id()));
    let opts = Options {
        peers,
        scenarios,
        rounds: args.rounds.max(1),
        duration: args.duration,
        warmup: args.warmup,
        connections: args.connections,
        skiff,
        pingora,
        workdir: workdir.clone(),
        proxy_cpus: if args.no_pin {
            "0-1".into()
        } else {
            "0".into()
        },
        self_exe,
        rate: args.rate,
        skiff_args: args
            .skiff_args
            .split_whitespace()
            .map(String::from)
            .collect(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("start the runtime")?;
    let reports = runtime.block_on(compare::run(&opts))?;
    let _ = std::fs::remove_dir_all(&workdir);

    let mut md = format!(
        "## skiff-bench compare — {}\n\nMachine: {}. Rounds: {}, {:?} each after {:?} warmup, {} connections (HTTP/1.1). Proxies pinned to core {}, load generator and upstreams to core 1.\n\n",
        date(),
        compare::machine(),
        opts.rounds,
        opts.duration,
        opts.warmup,
        opts.connections,
        opts.proxy_cpus
    );
    for r in &reports {
        md.push_str(&compare::table(r));
        md.push('\n');
    }
    std::fs::write(args.out.join("report.md"), &md)?;
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&compare::json(&reports))?,
    )?;
    for (name, svg) in compare::charts(&reports) {
        std::fs::write(args.out.join(format!("latency-{name}.svg")), svg)?;
    }
    println!("{md}");
    println!("report written to {}", args.out.display());
    Ok(())
}

fn date() -> String {
    std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn build_skiff(root: &std::path::Path) -> anyhow::Result<PathBuf> {
    eprintln!("building skiff (release)");
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "skiff",
                "--bin",
                "skiff",
                "--manifest-path",
            ])
            .arg(root.join("Cargo.toml"))
            .status()
            .context("run cargo")?;
    if !status.success() {
        bail!("building skiff failed");
    }
    Ok(root.join("target/release/skiff"))
}
