//! The `skiff` binary: parse the command line, build the runtime, run, drain.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use skiff::config::Config;
use skiff::Proxy;

/// skiff: a sidecar proxy and L7 load balancer for Kubernetes.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log filter, e.g. `info`, `debug`, or `skiff=debug,hyper=info`.
    #[arg(long, global = true, default_value = "info", env = "SKIFF_LOG")]
    log_level: String,
    /// Log line format: `text` or `json` (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SKIFF_LOG_FORMAT")]
    log_format: LogFormat,
    /// Worker threads (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Threading model: `per-core` (each worker thread has its own runtime,
    /// accept loop and upstream pools, as nginx and HAProxy do) or `shared`
    /// (one work-stealing runtime). See BENCHMARKS.md for the measurements.
    #[arg(long, global = true, value_enum, default_value_t = RuntimeModel::Shared)]
    runtime: RuntimeModel,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RuntimeModel {
    PerCore,
    Shared,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic. SIGHUP or a change to the file reloads the config;
    /// SIGTERM or SIGINT drains and exits.
    Run {
        /// The config file (YAML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a config file; prints every mistake as file:line:col: field: message.
    Check {
        /// The config file (YAML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run the e-commerce demo in this process: services, skiff, traffic and a live table.
    Demo {
        /// Stop after this long (e.g. 30s, 2m); runs until Ctrl-C without it.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Admin server address for the demo's skiff.
        #[arg(long, default_value = skiff::config::DEFAULT_ADMIN)]
        admin: std::net::SocketAddr,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    skiff_discovery::yaml::parse_duration(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let demo = matches!(cli.command, Command::Demo { .. });
    let format = match cli.log_format {
        LogFormat::Text => skiff::logging::Format::Text,
        LogFormat::Json => skiff::logging::Format::Json,
    };
    let ansi = !demo && std::io::IsTerminal::is_terminal(&std::io::stderr());
    if let Err(e) = skiff::logging::init(&cli.log_level, format, ansi) {
        eprintln!("skiff: {e}");
    }

    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listeners, {} clusters)",
                    config.display(),
                    c.listeners.len(),
                    c.clusters.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let loaded = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let threads = cli
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            // Per-core: the main thread runs only the control path; the
            // workers serve traffic. With one thread both models are the
            // same current-thread runtime.
            let (runtime, workers) = if cli.runtime == RuntimeModel::PerCore && threads > 1 {
                let workers = match skiff::workers::Workers::start(threads) {
                    Ok(w) => w,
                    Err(e) => {
                        eprintln!("skiff: cannot start the worker threads: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                (build_runtime(Some(1)), workers)
            } else {
                (
                    build_runtime(Some(threads)),
                    skiff::workers::Workers::none(),
                )
            };
            let runtime = match runtime {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("skiff: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(loaded, config, workers))
        }
        Command::Demo { duration, admin } => {
            let runtime = match build_runtime(cli.threads) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("skiff: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(skiff::demo::run(duration, admin)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("skiff demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn build_runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    // One thread needs no work-stealing: the current-thread scheduler has
    // no cross-thread queues or wakeups to pay for.
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all();
    if let Some(n) = threads.filter(|&n| n > 1) {
        builder.worker_threads(n);
    }
    builder.build()
}

async fn run(config: Config, path: PathBuf, workers: skiff::workers::Workers) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    let proxy = match Proxy::start_on(config, Some(path), workers).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skiff: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!("skiff: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = proxy.drain_requested() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                let _ = proxy.reload().await;
            }
        }
    }
    // A second signal skips the rest of the drain.
    tokio::select! {
        _ = proxy.shutdown() => {}
        _ = term.recv() => tracing::warn!("second signal: exiting without waiting"),
        _ = int.recv() => tracing::warn!("second signal: exiting without waiting"),
    }
    ExitCode::SUCCESS
}
