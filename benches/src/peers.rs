//! The proxies a comparison puts under load, configured alike.
//!
//! Each peer listens on its own port and forwards to the same upstream
//! pool over HTTP/1.1 keep-alive, with one worker, no access log, and is
//! pinned to the proxy core with `taskset`. nginx and HAProxy come from
//! Debian (installed when missing); Pingora is the small crate in
//! `benches/peers/pingora-lb`, built here on first use so the workspace
//! build never pays for it. Their CPU time and peak RSS are read from
//! `/proc`, summed over the process and its children (nginx's workers).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A proxy (or none) under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerKind {
    /// No proxy: the load goes straight to one upstream.
    Direct,
    SkiffRoundRobin,
    SkiffLeastRequest,
    Nginx,
    Haproxy,
    Pingora,
}

impl PeerKind {
    pub const ALL: [PeerKind; 6] = [
        PeerKind::Direct,
        PeerKind::SkiffRoundRobin,
        PeerKind::SkiffLeastRequest,
        PeerKind::Nginx,
        PeerKind::Haproxy,
        PeerKind::Pingora,
    ];

    /// The name used in tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Direct => "direct",
            PeerKind::SkiffRoundRobin => "skiff-rr",
            PeerKind::SkiffLeastRequest => "skiff-lr",
            PeerKind::Nginx => "nginx",
            PeerKind::Haproxy => "haproxy",
            PeerKind::Pingora => "pingora",
        }
    }

    pub fn parse(name: &str) -> Option<PeerKind> {
        PeerKind::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn is_skiff(self) -> bool {
        matches!(
            self,
            PeerKind::SkiffRoundRobin | PeerKind::SkiffLeastRequest
        )
    }
}

impl fmt::Display for PeerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What went wrong starting a peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{peer}: {what}: {source}")]
    Io {
        peer: PeerKind,
        what: String,
        source: std::io::Error,
    },
    #[error("{peer}: {message}")]
    Failed { peer: PeerKind, message: String },
}

/// Where the peers' binaries are and how they are pinned.
#[derive(Debug, Clone)]
pub struct PeerSetup {
    /// The `skiff` binary to compare.
    pub skiff: PathBuf,
    /// The built Pingora balancer, if Pingora is compared.
    pub pingora: Option<PathBuf>,
    /// Scratch directory for configs and logs.
    pub workdir: PathBuf,
    /// CPU list the proxies are pinned to (`taskset -c`).
    pub proxy_cpus: String,
    pub upstreams: Vec<SocketAddr>,
    /// Accept h2c (HTTP/2 prior knowledge) from the load generator.
    pub h2c: bool,
    /// Arguments for `skiff run` besides the config (default `--threads 1`).
    pub skiff_args: Vec<String>,
}

/// A running peer.
pub struct Peer {
    pub kind: PeerKind,
    pub address: SocketAddr,
    child: Option<Child>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // The whole group: killing nginx's master alone orphans its
            // worker, which keeps the port and the report's pipe open.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Peer {
    /// Starts `kind` on `port` and waits until it accepts connections.
    pub fn start(kind: PeerKind, port: u16, setup: &PeerSetup) -> Result<Peer, PeerError> {
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let io = |what: &str| {
            let what = what.to_string();
            move |source| PeerError::Io {
                peer: kind,
                what,
                source,
            }
        };
        let dir = &setup.workdir;
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", &setup.proxy_cpus]);
        // Its own process group, so stopping it stops nginx's worker too.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        // Not the report's stdout: a straggler would hold a reader's pipe open.
        cmd.stdout(std::process::Stdio::null());
        let child = match kind {
            PeerKind::Direct => {
                return Ok(Peer {
                    kind,
                    address: setup.upstreams[0],
                    child: None,
                })
            }
            PeerKind::SkiffRoundRobin | PeerKind::SkiffLeastRequest => {
                let lb = if kind == PeerKind::SkiffRoundRobin {
                    "round_robin"
                } else {
                    "least_request"
                };
                let path = dir.join(format!("{}.yaml", kind.name()));
                std::fs::write(&path, skiff_config(address, lb, &setup.upstreams))
                    .map_err(io("write config"))?;
                cmd.arg(&setup.skiff)
                    .arg("run")
                    .args(&setup.skiff_args)
                    .args(["--log-level", "warn", "-c"])
                    .arg(&path);
                cmd.stderr(log_file(dir, kind).map_err(io("log file"))?);
                cmd.spawn().map_err(io("start skiff"))?
            }
            PeerKind::Nginx => {
                let path = dir.join("nginx.conf");
                std::fs::write(
                    &path,
                    nginx_config(address, &setup.upstreams, dir, setup.h2c),
                )
                .map_err(io("write config"))?;
                cmd.args(["nginx", "-c"]).arg(&path);
                cmd.stderr(log_file(dir, kind).map_err(io("log file"))?);
                cmd.spawn().map_err(io("start nginx"))?
            }
            PeerKind::Haproxy => {
                let path = dir.join("haproxy.cfg");
                std::fs::write(&path, haproxy_config(address, &setup.upstreams, setup.h2c))
                    .map_err(io("write config"))?;
                cmd.args(["haproxy", "-db", "-f"]).arg(&path);
                cmd.stderr(log_file(dir, kind).map_err(io("log file"))?);
                cmd.spawn().map_err(io("start haproxy"))?
            }
            PeerKind::Pingora => {
                let Some(bin) = &setup.pingora else {
                    return Err(PeerError::Failed {
                        peer: kind,
                        message: "not built".into(),
                    });
                };
                let conf = dir.join("pingora.yaml");
                std::fs::write(&conf, format!("---\nversion: 1\nthreads: 1\npid_file: {}/pingora.pid\nupgrade_sock: {}/pingora.sock\n", dir.display(), dir.display()))
                    .map_err(io("write config"))?;
                cmd.arg(bin).arg("-c").arg(&conf);
                cmd.env("PINGORA_LISTEN", address.to_string());
                cmd.env(
                    "PINGORA_UPSTREAMS",
                    setup
                        .upstreams
                        .iter()
                        .map(|u| u.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                );
                if setup.h2c {
                    cmd.env("PINGORA_H2C", "1");
                }
                cmd.stderr(log_file(dir, kind).map_err(io("log file"))?);
                cmd.spawn().map_err(io("start pingora"))?
            }
        };
        let mut peer = Peer {
            kind,
            address,
            child: Some(child),
        };
        peer.wait_accepting(Duration::from_secs(30), dir)?;
        Ok(peer)
    }

    fn wait_accepting(&mut self, limit: Duration, dir: &Path) -> Result<(), PeerError> {
        let deadline = Instant::now() + limit;
        loop {
            if std::net::TcpStream::connect(self.address).is_ok() {
                return Ok(());
            }
            if let Some(child) = &mut self.child {
                if let Ok(Some(status)) = child.try_wait() {
                    let log =
                        std::fs::read_to_string(dir.join(format!("{}.log", self.kind.name())))
                            .unwrap_or_default();
                    return Err(PeerError::Failed {
                        peer: self.kind,
                        message: format!("exited with {status} before listening:\n{log}"),
                    });
                }
            }
            if Instant::now() > deadline {
                return Err(PeerError::Failed {
                    peer: self.kind,
                    message: format!("not accepting on {} after {limit:?}", self.address),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process and its children (empty for `direct`).
    pub fn pids(&self) -> Vec<u32> {
        match &self.child {
            Some(child) => process_tree(child.id()),
            None => Vec::new(),
        }
    }

    /// CPU time (user + system) of the peer's processes so far.
    pub fn cpu_time(&self) -> Duration {
        self.pids().into_iter().map(cpu_time).sum()
    }

    /// Peak resident memory (VmHWM) summed over the peer's processes, KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.pids()
            .into_iter()
            .map(|p| status_kib(p, "VmHWM:"))
            .sum()
    }

    /// Current resident memory (VmRSS) summed over the peer's processes, KiB.
    pub fn rss_kib(&self) -> u64 {
        self.pids()
            .into_iter()
            .map(|p| status_kib(p, "VmRSS:"))
            .sum()
    }
}

fn log_file(dir: &Path, kind: PeerKind) -> std::io::Result<std::fs::File> {
    std::fs::File::create(dir.join(format!("{}.log", kind.name())))
}

/// `pid` and every descendant, from `/proc/PID/task/*/children`.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for task in tasks.flatten() {
                let children =
                    std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
                out.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        i += 1;
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Clock ticks per second for `/proc/PID/stat` times (`getconf CLK_TCK`).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

/// utime + stime of one process, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Installs nginx and HAProxy from Debian when they are missing.
pub fn ensure_installed() -> Result<(), String> {
    let missing: Vec<&str> = [("nginx", "nginx"), ("haproxy", "haproxy")]
        .into_iter()
        .filter(|(bin, _)| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(_, pkg)| pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {} from Debian", missing.join(" "));
    let ok = Command::new("sh")
        .args([
            "-c",
            &format!(
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {} >/dev/null",
                missing.join(" ")
            ),
        ])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "apt-get install {} failed (run as root?)",
            missing.join(" ")
        ))
    }
}

/// Builds the Pingora balancer (release) and returns its binary. It needs
/// cmake for a compression dependency; that is installed when missing.
pub fn build_pingora(repo_root: &Path) -> Result<PathBuf, String> {
    let dir = repo_root.join("benches/peers/pingora-lb");
    let bin = dir.join("target/release/pingora-lb");
    let has_cmake = Command::new("sh")
        .args(["-c", "command -v cmake"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_cmake {
        let _ = Command::new("sh")
            .args([
                "-c",
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null",
            ])
            .status();
    }
    eprintln!("building the Pingora peer (first time takes a few minutes)");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .status()
        .map_err(|e| format!("run cargo for pingora-lb: {e}"))?;
    if status.success() && bin.exists() {
        Ok(bin)
    } else {
        Err(format!("building {} failed", dir.display()))
    }
}

fn skiff_config(listen: SocketAddr, lb: &str, upstreams: &[SocketAddr]) -> String {
    let list: Vec<String> = upstreams.iter().map(|u| u.to_string()).collect();
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         shutdown: {{ drain_delay: 0s, grace_period: 1s }}\n\
         listeners:\n  - name: bench\n    listen: {listen}\n    routes:\n      - cluster: upstream\n\
         clusters:\n  - name: upstream\n    lb: {lb}\n    endpoints: [{}]\n",
        list.join(", ")
    )
}

fn nginx_config(listen: SocketAddr, upstreams: &[SocketAddr], dir: &Path, h2c: bool) -> String {
    let servers: String = upstreams
        .iter()
        .map(|u| format!("    server {u};\n"))
        .collect();
    let http2 = if h2c { " http2" } else { "" };
    format!(
        "worker_processes 1;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 20000; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  http2_max_concurrent_streams 128;\n\
         \x20 client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
         \x20 upstream app {{\n{servers}    keepalive 256;\n    keepalive_requests 1000000;\n  }}\n\
         \x20 server {{\n    listen {listen}{http2};\n    location / {{\n      proxy_pass http://app;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering on;\n    }}\n  }}\n}}\n",
        dir = dir.display()
    )
}

fn haproxy_config(listen: SocketAddr, upstreams: &[SocketAddr], h2c: bool) -> String {
    let servers: String = upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| format!("  server s{i} {u}\n"))
        .collect();
    let proto = if h2c { " proto h2" } else { "" };
    format!(
        "global\n  nbthread 1\n  maxconn 9900\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n  http-reuse always\n\
         frontend bench\n  bind {listen}{proto}\n  default_backend app\n\
         backend app\n  balance roundrobin\n{servers}"
    )
}
