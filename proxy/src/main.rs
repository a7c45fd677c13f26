//! The `skiff` binary: parse the command line, build the runtime, run, drain.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use skiff::tls::certs::TlsFiles;
use skiff::Proxy;
use skiff_config::Config;

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
        #[arg(short, long, required_unless_present_any = ["sidecar", "gateway", "ingress_class"])]
        config: Option<PathBuf>,
        /// Serve this Gateway API Gateway (its class's controllerName must
        /// be skiff.io/gateway-controller), read with its routes from the
        /// API server; without `-c`, with admin on 0.0.0.0:9901. The same
        /// as the config's `gateway_api: { gateway: ... }`.
        #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_gateway)]
        gateway: Option<skiff_config::gateway_api::GatewayApiConfig>,
        /// Serve the Ingress objects of this class (its IngressClass, if
        /// any, must name skiff.io/ingress-controller), read from the API
        /// server; without `-c`, with admin on 0.0.0.0:9901. The same as
        /// the config's `ingress: { class: ... }`.
        #[arg(long, value_name = "CLASS", value_parser = parse_ingress_class, conflicts_with = "gateway")]
        ingress_class: Option<skiff_config::ingress::IngressConfig>,
        /// Run as a pod's sidecar: without `-c`, with the sidecar defaults
        /// (capture listeners on 4143 and 4140, admin on 0.0.0.0:9901).
        #[arg(long)]
        sidecar: bool,
        /// With `--sidecar` and no `-c`: mTLS between sidecars, with this
        /// pod's certificate from DIR/tls.crt and DIR/tls.key and the mesh
        /// CA from DIR/ca.crt (a mounted Secret; `skiff inject --mesh`).
        #[arg(long, value_name = "DIR", requires = "sidecar")]
        mesh_dir: Option<PathBuf>,
    },
    /// Validate a config file; prints every mistake as file:line:col: field: message.
    /// With --manifests, check Kubernetes manifests offline instead: what
    /// each Gateway of skiff's class would serve, and every problem.
    Check {
        /// The config file (YAML).
        #[arg(short, long, required_unless_present = "manifests")]
        config: Option<PathBuf>,
        /// Gateway API manifests (files or directories of YAML), read as
        /// the gateway role reads the objects from the API server.
        #[arg(long, num_args = 1.., value_name = "PATH", conflicts_with = "config")]
        manifests: Vec<PathBuf>,
        /// The namespace of manifests' objects that name none (as
        /// `kubectl apply -n`).
        #[arg(short, long, default_value = "default", requires = "manifests")]
        namespace: String,
    },
    /// Run the e-commerce demo in this process: services, skiff, traffic and a live table.
    Demo {
        /// Stop after this long (e.g. 30s, 2m); runs until Ctrl-C without it.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Admin server address for the demo's skiff.
        #[arg(long, default_value_t = skiff_config::DEFAULT_ADMIN)]
        admin: std::net::SocketAddr,
    },
    /// Add the skiff sidecar to the workloads in Kubernetes YAML; prints the result.
    ///
    /// Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and
    /// CronJobs get the capture init container and skiff as a native
    /// sidecar; every other document is printed as it was.
    Inject(InjectArgs),
    /// Apply (or remove, or print) the nat rules that send the pod's TCP through skiff.
    Iptables(IptablesArgs),
}

#[derive(clap::Args)]
struct InjectArgs {
    /// YAML files with one or more documents; `-` (the default) is stdin.
    #[arg(short = 'f', long = "filename", default_value = "-")]
    files: Vec<PathBuf>,
    /// The skiff image the pods run.
    #[arg(long, default_value_t = skiff::cli::inject::default_image())]
    image: String,
    #[command(flatten)]
    skip: SkipArgs,
    /// A ConfigMap (in each pod's namespace) holding the sidecar's config
    /// as `skiff.yaml`; without it the sidecar runs the built-in defaults.
    #[arg(long)]
    config_map: Option<String>,
    /// mTLS between sidecars: mount each pod's mesh Secret (keys tls.crt,
    /// tls.key, ca.crt) at /var/run/skiff/mesh and run the sidecar with it.
    /// The Secret is `skiff-mesh-<serviceAccountName>` unless --mesh-secret
    /// names one. With --config-map, the config needs a `mesh:` section.
    #[arg(long)]
    mesh: bool,
    /// The mesh Secret of every pod (implies --mesh).
    #[arg(long)]
    mesh_secret: Option<String>,
}

/// What capture leaves alone, the same for `inject` and `iptables`.
#[derive(clap::Args)]
struct SkipArgs {
    /// Inbound ports never captured (comma-separated).
    #[arg(long, value_delimiter = ',')]
    skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports never captured (comma-separated).
    #[arg(long, value_delimiter = ',')]
    skip_outbound_ports: Vec<u16>,
    /// Outbound destination networks never captured (comma-separated CIDRs).
    #[arg(long, value_delimiter = ',')]
    skip_outbound_cidrs: Vec<skiff::cli::iptables::Cidr>,
}

#[derive(clap::Args)]
struct IptablesArgs {
    /// Remove skiff's rules instead of applying them.
    #[arg(long)]
    remove: bool,
    /// Print the iptables commands instead of running them.
    #[arg(long)]
    dry_run: bool,
    /// skiff's uid; its own connections are never captured.
    #[arg(long, default_value_t = skiff_config::sidecar::PROXY_UID)]
    proxy_uid: u32,
    /// The port captured inbound connections go to.
    #[arg(long, default_value_t = skiff_config::sidecar::INBOUND_PORT)]
    inbound_port: u16,
    /// The port captured outbound connections go to.
    #[arg(long, default_value_t = skiff_config::sidecar::OUTBOUND_PORT)]
    outbound_port: u16,
    /// skiff's admin port, never captured.
    #[arg(long, default_value_t = skiff_config::sidecar::ADMIN_PORT)]
    admin_port: u16,
    #[command(flatten)]
    skip: SkipArgs,
    /// Capture only outbound connections.
    #[arg(long)]
    no_inbound: bool,
    /// Write IPv6 rules too: `auto` does when the host has IPv6.
    #[arg(long, value_enum, default_value_t = Ipv6::Auto)]
    ipv6: Ipv6,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Ipv6 {
    Auto,
    On,
    Off,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    skiff_config::units::parse_duration(s)
}

fn parse_ingress_class(s: &str) -> Result<skiff_config::ingress::IngressConfig, String> {
    skiff_config::ingress::IngressConfig::parse_class(s)
}

fn parse_gateway(s: &str) -> Result<skiff_config::gateway_api::GatewayApiConfig, String> {
    skiff_config::gateway_api::GatewayApiConfig::parse_reference(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let demo = matches!(cli.command, Command::Demo { .. });
    match cli.command {
        Command::Inject(args) => return inject(args),
        Command::Iptables(args) => return iptables(args),
        _ => {}
    }
    let format = match cli.log_format {
        LogFormat::Text => skiff::logging::Format::Text,
        LogFormat::Json => skiff::logging::Format::Json,
    };
    let ansi = !demo && std::io::IsTerminal::is_terminal(&std::io::stderr());
    if let Err(e) = skiff::logging::init(&cli.log_level, format, ansi) {
        eprintln!("skiff: {e}");
    }

    match cli.command {
        Command::Check {
            config: None,
            manifests,
            namespace,
        } => match skiff::cli::manifests::check(&manifests, &namespace) {
            Ok((text, ok)) => {
                print!("{text}");
                if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("skiff: {e}");
                ExitCode::from(2)
            }
        },
        Command::Check {
            config: Some(config),
            ..
        } => match Config::load(&config, &TlsFiles) {
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
        Command::Run {
            config,
            sidecar,
            mesh_dir,
            gateway,
            ingress_class,
        } => {
            if config.is_some() && mesh_dir.is_some() {
                eprintln!("skiff: --mesh-dir is for the sidecar defaults; with -c, give the config file a `mesh:` section");
                return ExitCode::FAILURE;
            }
            let loaded = match &config {
                Some(path) => Config::load(path, &TlsFiles),
                None if !sidecar => {
                    // The gateway (or ingress) role alone: admin where
                    // probes reach it.
                    let text = "admin: { listen: 0.0.0.0:9901 }\n";
                    let base = std::path::Path::new(".");
                    Config::parse_checked(text, "<gateway defaults>", base, &TlsFiles)
                        .map_err(skiff_config::ConfigError::Invalid)
                }
                None => {
                    let mut text = skiff_config::sidecar::default_config_text(
                        skiff::cli::iptables::host_has_ipv6(),
                    );
                    if let Some(dir) = &mesh_dir {
                        text.push_str(&skiff_config::sidecar::mesh_config_text(dir));
                    }
                    let base = std::path::Path::new(".");
                    Config::parse_checked(&text, "<sidecar defaults>", base, &TlsFiles)
                        .map_err(skiff_config::ConfigError::Invalid)
                }
            };
            let mut loaded = match loaded {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Some(gateway) = gateway {
                loaded.gateway_api = Some(gateway);
                loaded.ingress = None;
            }
            if let Some(ingress) = ingress_class {
                loaded.ingress = Some(ingress);
                loaded.gateway_api = None;
            }
            if sidecar && !loaded.listeners.iter().any(|l| l.capture.is_some()) {
                tracing::warn!("--sidecar with a config that has no capture listener");
            }
            let threads = cli
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            // Per-core: the main thread runs only the control path; the
            // workers serve traffic. With one thread both models are the
            // same current-thread runtime.
            let (runtime, workers) = if cli.runtime == RuntimeModel::PerCore && threads > 1 {
                let workers = match skiff::io::workers::Workers::start(threads) {
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
                    skiff::io::workers::Workers::none(),
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
            match runtime.block_on(skiff::cli::demo::run(duration, admin)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("skiff demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Inject(_) | Command::Iptables(_) => ExitCode::SUCCESS,
    }
}

fn inject(args: InjectArgs) -> ExitCode {
    use std::io::{Read, Write};
    let options = skiff::cli::inject::Options {
        image: args.image,
        skip_inbound_ports: args.skip.skip_inbound_ports,
        skip_outbound_ports: args.skip.skip_outbound_ports,
        skip_outbound_cidrs: args
            .skip
            .skip_outbound_cidrs
            .iter()
            .map(|c| c.to_string())
            .collect(),
        config_map: args.config_map,
        mesh: args.mesh || args.mesh_secret.is_some(),
        mesh_secret: args.mesh_secret,
    };
    let mut out = String::new();
    for file in &args.files {
        let (name, text) = if file.as_os_str() == "-" {
            let mut text = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut text) {
                eprintln!("skiff inject: cannot read stdin: {e}");
                return ExitCode::FAILURE;
            }
            ("<stdin>".to_string(), text)
        } else {
            match std::fs::read_to_string(file) {
                Ok(text) => (file.display().to_string(), text),
                Err(e) => {
                    eprintln!("skiff inject: cannot read {}: {e}", file.display());
                    return ExitCode::FAILURE;
                }
            }
        };
        match skiff::cli::inject::inject(&text, &options) {
            Ok(done) => {
                if !out.is_empty() {
                    if !out.ends_with('\n') {
                        out.push('\n');
                    }
                    if !done.yaml.starts_with("---") {
                        out.push_str("---\n");
                    }
                }
                out.push_str(&done.yaml);
                for w in &done.injected {
                    eprintln!("{name}: {w}: injected");
                }
                for w in &done.skipped {
                    eprintln!("{name}: {w}: skipped");
                }
            }
            Err(e) => {
                eprintln!("skiff inject: {name}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Err(e) = std::io::stdout().write_all(out.as_bytes()) {
        eprintln!("skiff inject: cannot write the output: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn iptables(args: IptablesArgs) -> ExitCode {
    use skiff::cli::iptables as ipt;
    let rules = ipt::Rules {
        proxy_uid: args.proxy_uid,
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        admin_port: args.admin_port,
        skip_inbound_ports: args.skip.skip_inbound_ports,
        skip_outbound_ports: args.skip.skip_outbound_ports,
        skip_outbound_cidrs: args.skip.skip_outbound_cidrs,
        inbound: !args.no_inbound,
        ipv6: match args.ipv6 {
            Ipv6::On => true,
            Ipv6::Off => false,
            Ipv6::Auto => ipt::host_has_ipv6(),
        },
    };
    let steps = if args.remove {
        ipt::remove_steps(&rules)
    } else {
        ipt::apply_steps(&rules)
    };
    if args.dry_run {
        for s in &steps {
            println!("{s}");
        }
        return ExitCode::SUCCESS;
    }
    match ipt::run(&steps) {
        Ok(()) => {
            let done = if args.remove { "removed" } else { "applied" };
            eprintln!("skiff iptables: rules {done}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("skiff iptables: {e}");
            ExitCode::FAILURE
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

async fn run(
    config: Config,
    path: Option<PathBuf>,
    workers: skiff::io::workers::Workers,
) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    let proxy = match Proxy::start_on(config, path, workers).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skiff: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(release_heap_after_bursts(proxy.clone()));
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

/// How often open connections are compared with their peak.
const HEAP_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How many connections must have gone since the peak before freed heap
/// is handed back: a burst worth a few megabytes (a slowloris attack).
const HEAP_RELEASE_AFTER: i64 = 256;

/// Hands freed heap back to the OS after a burst of connections has
/// closed. glibc keeps memory freed in the middle of its heaps, so after
/// an attack's thousand connections are gone the process would stay at
/// its peak; `malloc_trim` returns those pages, as HAProxy does when its
/// pools shrink (`trim_all_pools`). Steady traffic never triggers it.
async fn release_heap_after_bursts(proxy: Proxy) {
    let mut every = tokio::time::interval(HEAP_CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut again = false;
    loop {
        every.tick().await;
        let (now, peak) = proxy.registry().connections_now_and_peak();
        let burst_ended = peak - now >= HEAP_RELEASE_AFTER;
        // Once more on the tick after: connections that closed just
        // before the first trim may still have been freeing memory.
        if burst_ended || again {
            let _ = tokio::task::spawn_blocking(release_free_heap).await;
        }
        again = burst_ended;
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_heap() {
    extern "C" {
        /// glibc: returns free memory of every arena to the OS.
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim takes no pointers and only walks glibc's own
    // free lists, under the arenas' locks; any thread may call it.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_heap() {}
