//! Network namespaces for the sidecar tests: pods with their own network
//! stack, iptables rules and addresses, wired to one bridge.
//!
//! Everything lives in namespaces the test creates and deletes: a `hub`
//! holding the bridge, and one namespace per pod with an `eth0` on it.
//! Addresses come from 198.18.0.0/15 (reserved for benchmarking, RFC 2544)
//! and no namespace has a route anywhere else, so nothing leaves the test.
//!
//! The test process stays in its own namespace; a socket is made inside a
//! pod's by a short-lived thread that enters it (`setns`) just to create
//! the socket, which keeps the namespace it was made in for life. Processes
//! (skiff) run in a pod through `ip netns exec`.
//!
//! These tests need root, `ip` (iproute2), `iptables` and `setpriv`
//! (util-linux). Each starts with [`require_netns`], which fails the test,
//! saying what is missing, when they are not there: a test that did not run
//! must not look like one that passed. To skip them on purpose (a laptop
//! without root), set `SKIFF_SKIP_ROOT_TESTS=1`; each then prints
//! `SKIPPED <test>: <why> (SKIFF_SKIP_ROOT_TESTS is set)` and returns.
//!
//! The sidecar runs as its own uid (2102), which may not be able to enter
//! the checkout (cloned under `/root` or a `mktemp -d` folder), so it runs
//! a copy of the skiff binary in a directory any uid can enter
//! ([`skiff_bin_for_any_uid`]), and [`Netns::skiff`] checks first that the
//! uid can run it and read the paths it is given.

use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

/// Set to `1` to skip the tests that need root instead of failing them.
pub const SKIP_ROOT_TESTS: &str = "SKIFF_SKIP_ROOT_TESTS";

/// Why these tests cannot run here, or `None` if they can: they need root,
/// `ip netns`, iptables and setpriv.
pub fn unavailable() -> Option<String> {
    let mut missing = Vec::new();
    // The owner of /proc/self is this process's effective uid.
    let uid = std::fs::metadata("/proc/self").map_or(u32::MAX, |m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    if uid != 0 {
        missing.push(format!("root (this runs as uid {uid})"));
    }
    for (tool, args, package) in [
        ("ip", &["netns", "list"][..], "iproute2"),
        ("iptables", &["--version"][..], "iptables"),
        ("setpriv", &["--version"][..], "util-linux"),
    ] {
        let ok = Command::new(tool)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            missing.push(format!("`{tool}` (Debian package {package})"));
        }
    }
    if missing.is_empty() {
        return None;
    }
    Some(format!(
        "needs {} for network namespaces and iptables; run as root after \
         `apt-get install iproute2 iptables util-linux` (.ci/run installs them)",
        missing.join(", ")
    ))
}

/// Whether the calling root test can run: panics naming `test` and what
/// is missing when namespaces are unavailable, unless
/// `SKIFF_SKIP_ROOT_TESTS=1`, when it prints `SKIPPED ...` (past the test
/// harness's capture, so it shows) and returns false:
/// `if !require_netns("name") { return; }`.
pub fn require_netns(test: &str) -> bool {
    let Some(why) = unavailable() else {
        return true;
    };
    if std::env::var(SKIP_ROOT_TESTS).is_ok_and(|v| v == "1") {
        // Straight to stderr: `eprintln!` in a passing test is swallowed.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: {why} ({SKIP_ROOT_TESTS} is set)"
        );
        return false;
    }
    panic!("{test} {why}; or set {SKIP_ROOT_TESTS}=1 to skip the tests that need root");
}

/// The skiff binary, hard-linked or copied (once per test process) into a
/// fresh directory under the temp dir that any uid can enter, so the
/// sidecar's uid can run it wherever the checkout is. Removed at exit; ones
/// left by killed test processes are removed by the next.
pub fn skiff_bin_for_any_uid() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let built = crate::skiff_bin();
        let tmp = std::env::temp_dir();
        remove_stale_bin_dirs(&tmp);
        let dir = tmp.join(format!("skiff-bin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mode = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(&dir, mode.clone()).expect("chmod the binary's directory");
        let bin = dir.join("skiff");
        if std::fs::hard_link(&built, &bin).is_err() {
            std::fs::copy(&built, &bin)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", built.display(), bin.display()));
        }
        std::fs::set_permissions(&bin, mode).expect("chmod the binary");
        extern "C" fn remove() {
            if let Some(bin) = BIN.get().and_then(|b| b.parent()) {
                let _ = std::fs::remove_dir_all(bin);
            }
        }
        // SAFETY: registers a function with no preconditions to run at exit.
        unsafe { libc::atexit(remove) };
        bin
    })
    .clone()
}

/// Removes `skiff-bin-<pid>` directories whose process is gone.
fn remove_stale_bin_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| n.strip_prefix("skiff-bin-"));
        let gone = |pid: &str| pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists();
        if pid.is_some_and(gone) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Panics, saying exactly what is wrong, unless `uid` can execute `bin`
/// and read each path in `paths` (and enter those that are directories):
/// otherwise the sidecar would exit at once and the test would only time
/// out waiting for it.
fn check_access(uid: u32, bin: &Path, paths: &[&Path]) {
    let can = |test: &[&str], path: &Path| {
        Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .args(["--clear-groups", "test"])
            .args(test)
            .arg(path)
            .status()
            .is_ok_and(|s| s.success())
    };
    let fix = "every directory on the way needs o+x, the file o+r (o+x for the binary); \
               is TMPDIR or the umask private?";
    assert!(
        can(&["-x"], bin),
        "uid {uid} cannot execute {}: {fix}",
        bin.display()
    );
    for path in paths {
        let dir = path.is_dir();
        let ok = can(&["-r"], path) && (!dir || can(&["-x"], path));
        assert!(ok, "uid {uid} cannot read {}: {fix}", path.display());
    }
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates a namespace with its loopback up.
    pub fn new(tag: &str) -> Netns {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "skiff-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip -n <ns> args...`, panicking with its output on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `program args...` inside the namespace and returns its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    /// Like [`Netns::exec`], panicking with the output on failure.
    pub fn exec_ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.exec(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} in {}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a thread that has entered this namespace.
    fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("open the namespace");
                // SAFETY: setns on a namespace fd affects only this thread,
                // which exits when `f` returns.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread inside the namespace")
        })
    }

    /// A listening socket inside the namespace.
    pub fn listen(&self, address: SocketAddr) -> tokio::net::TcpListener {
        let std = self.inside(|| {
            let l = std::net::TcpListener::bind(address);
            l.and_then(|l| l.set_nonblocking(true).map(|()| l))
        });
        let std = std.unwrap_or_else(|e| panic!("bind {address} in {}: {e}", self.name));
        tokio::net::TcpListener::from_std(std).expect("register the listener")
    }

    /// A TCP connection from inside the namespace, by the test's own uid
    /// (so, in a pod with capture rules, an app's connection).
    pub async fn connect(&self, address: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let socket = self.inside(|| {
            socket2::Socket::new(
                socket2::Domain::for_address(address),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )
        })?;
        socket.set_nonblocking(true)?;
        let std: std::net::TcpStream = socket.into();
        let stream = tokio::net::TcpSocket::from_std_stream(std)
            .connect(address)
            .await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .expect("run a command");
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pods on one bridge: `pods[i]` has `eth0` with its address on the /16
/// of 198.18.0.0 and a route for the rest of 198.18.0.0/15 (where the tests
/// put Service ClusterIPs) through that link.
pub struct Network {
    pub hub: Netns,
    pub pods: Vec<Netns>,
}

impl Network {
    /// Creates one namespace per address in `addresses` (each in 198.18.0.0/16).
    pub fn new(addresses: &[&str]) -> Network {
        let hub = Netns::new("hub");
        hub.ip(&["link", "add", "br0", "type", "bridge"]);
        hub.ip(&["link", "set", "br0", "up"]);
        let mut pods = Vec::new();
        for (i, address) in addresses.iter().enumerate() {
            let pod = Netns::new(&format!("pod{i}"));
            let veth = format!("veth{i}");
            hub.ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
            ]);
            hub.ip(&["link", "set", &veth, "master", "br0", "up"]);
            pod.ip(&["addr", "add", &format!("{address}/16"), "dev", "eth0"]);
            pod.ip(&["link", "set", "eth0", "up"]);
            pod.ip(&["route", "add", "198.19.0.0/16", "dev", "eth0"]);
            pods.push(pod);
        }
        Network { hub, pods }
    }
}

impl Netns {
    /// An HTTP/1.1 keep-alive client connected from inside the namespace.
    pub async fn h1(&self, address: SocketAddr) -> std::io::Result<crate::Client> {
        let stream = self.connect(address).await?;
        let (tx, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(crate::Client::H1(tx))
    }

    /// An HTTP/2 (prior knowledge) client connected from inside the namespace.
    pub async fn h2(&self, address: SocketAddr) -> std::io::Result<crate::Client> {
        let stream = self.connect(address).await?;
        let (tx, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(crate::Client::H2(tx))
    }

    /// GETs `path` on `address` from inside the namespace: status and body.
    pub async fn get(
        &self,
        address: SocketAddr,
        path: &str,
    ) -> std::io::Result<(http::StatusCode, String)> {
        let mut client = self.h1(address).await?;
        let (status, _, body) = client.get(path).await.map_err(std::io::Error::other)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Starts `skiff args...` inside the namespace as `uid` (the sidecar's
    /// uid, so its capture rules leave its own connections alone), from
    /// [`skiff_bin_for_any_uid`], after checking `uid` can run it and read
    /// the absolute paths in `env` and `args`.
    pub fn skiff(
        &self,
        uid: u32,
        env: &[(&str, &str)],
        args: &[&str],
        log: &std::path::Path,
    ) -> SkiffInNetns {
        let bin = skiff_bin_for_any_uid();
        // The files it is pointed at (config, kubeconfig, certificates).
        let paths: Vec<&Path> = env
            .iter()
            .map(|(_, v)| *v)
            .chain(args.iter().copied())
            .map(Path::new)
            .filter(|p| p.is_absolute() && p.exists())
            .collect();
        check_access(uid, &bin, &paths);
        let file = std::fs::File::create(log).expect("create the log");
        let err = file.try_clone().expect("clone the log");
        let mut command = self.command("setpriv");
        command
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg("env");
        for (k, v) in env {
            command.arg(format!("{k}={v}"));
        }
        let child = command
            .arg(bin)
            .args(args)
            // Not the checkout, which the uid may not be able to enter.
            .current_dir("/")
            .stdout(file)
            .stderr(err)
            .spawn()
            .expect("start skiff in the namespace");
        SkiffInNetns {
            child,
            log: log.to_path_buf(),
        }
    }
}

/// A skiff process in a namespace; killed on drop.
pub struct SkiffInNetns {
    pub child: std::process::Child,
    pub log: std::path::PathBuf,
}

impl SkiffInNetns {
    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SkiffInNetns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
