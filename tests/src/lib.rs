//! Shared helpers for skiff's end-to-end tests: real upstream servers, a
//! real skiff process (or an in-process [`skiff::Proxy`]), real clients,
//! and waiting for conditions with a deadline instead of sleeping.

pub mod fake_kube;
pub mod netns;
pub mod raw_upstream;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Boxed body used by the test servers and clients.
pub type TestBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Wraps bytes as a [`TestBody`].
pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

/// An empty [`TestBody`].
pub fn empty() -> TestBody {
    full(Bytes::new())
}

/// A body of `len` bytes produced in 64 KiB chunks, never held whole.
pub fn generated(len: u64) -> TestBody {
    const CHUNK: usize = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let stream = futures_stream(len, chunk);
    StreamBody::new(stream).boxed()
}

fn futures_stream(
    len: u64,
    chunk: Bytes,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>
       + Send {
    struct Gen {
        left: u64,
        chunk: Bytes,
    }
    impl futures_core::Stream for Gen {
        type Item = Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            if self.left == 0 {
                return std::task::Poll::Ready(None);
            }
            let n = self.left.min(self.chunk.len() as u64) as usize;
            self.left -= n as u64;
            std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
        }
    }
    Gen { left: len, chunk }
}

/// How a test backend behaves.
#[derive(Debug, Default)]
pub struct BackendControl {
    /// Added to every response, in milliseconds.
    pub delay_ms: AtomicU64,
    /// Requests served.
    pub requests: AtomicU64,
    /// Requests in progress.
    pub in_flight: AtomicUsize,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Lets `/hold` requests answer; until set they wait.
    pub released: std::sync::atomic::AtomicBool,
    /// When not 0, the status of every response (a failing backend).
    pub status: std::sync::atomic::AtomicU16,
    /// How many of the next responses get `failure_status` (a backend
    /// that recovers after N failures, as the Gateway API suite's echo
    /// server does with `succeedAfter`).
    pub failures_left: AtomicU64,
    pub failure_status: std::sync::atomic::AtomicU16,
    /// The length of the last body `/sink` read.
    pub last_sink: AtomicU64,
    /// When not 0, the status of `/healthz` (200 otherwise).
    pub health_status: std::sync::atomic::AtomicU16,
    /// `/healthz` requests that identified themselves as skiff's checks
    /// (not counted in `requests`).
    pub health_checks: AtomicU64,
    /// Connections open now.
    pub open_connections: AtomicUsize,
}

/// A real HTTP server (HTTP/1.1 and h2c) on 127.0.0.1 that names itself.
///
/// Paths: `/echo` streams the request body back; `/bytes/N` sends N bytes;
/// `/headers` answers with the request's headers as JSON; `/trailers`
/// answers with a trailer `x-checksum: ok`; `/sink` reads the body and
/// answers its length; `/slow/MS` waits MS ms; `/hold` waits until
/// [`BackendControl::released`] is set; `/healthz` answers 200 (or
/// [`BackendControl::health_status`]) at once and is not counted; anything
/// else answers `name` after the configured delay.
pub struct Backend {
    pub name: String,
    pub address: SocketAddr,
    pub control: Arc<BackendControl>,
    task: tokio::task::JoinHandle<()>,
    /// Set to ask open connections to finish their requests and close.
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Starts a backend on a free port.
    pub async fn start(name: &str) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        Self::serve(name, listener)
    }

    /// Starts a backend on a given listener.
    pub fn serve(name: &str, listener: tokio::net::TcpListener) -> Backend {
        let address = listener.local_addr().expect("backend address");
        let control = Arc::new(BackendControl::default());
        let name_owned = name.to_string();
        let ctl = control.clone();
        let (shutdown, watch) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                ctl.connections.fetch_add(1, Relaxed);
                let name = name_owned.clone();
                let ctl = ctl.clone();
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    ctl.open_connections.fetch_add(1, Relaxed);
                    let service = {
                        let ctl = ctl.clone();
                        service_fn(move |req| {
                            let name = name.clone();
                            let ctl = ctl.clone();
                            async move { Ok::<_, Infallible>(backend_respond(req, &name, &ctl).await) }
                        })
                    };
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = async { watch.wait_for(|stop| *stop).await.map(|_| ()) } => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                    ctl.open_connections.fetch_sub(1, Relaxed);
                });
            }
        });
        Backend {
            name: name.to_string(),
            address,
            control,
            task,
            shutdown,
        }
    }

    /// A graceful stop, as a pod given SIGTERM: no new connections; open
    /// ones finish their requests in progress and close.
    pub fn shut_down_gracefully(&self) {
        self.task.abort();
        let _ = self.shutdown.send(true);
    }

    pub fn requests(&self) -> u64 {
        self.control.requests.load(Relaxed)
    }

    /// Stops accepting connections, as a killed pod does; connections
    /// already open finish what they have.
    pub fn stop_accepting(&self) {
        self.task.abort();
    }
}

async fn backend_respond(
    req: Request<Incoming>,
    name: &str,
    ctl: &BackendControl,
) -> Response<TestBody> {
    if req.uri().path() == "/healthz" {
        let from_skiff = req
            .headers()
            .get("user-agent")
            .is_some_and(|v| v == "skiff-health-check");
        if from_skiff {
            ctl.health_checks.fetch_add(1, Relaxed);
        }
        let mut resp = Response::new(full("ok"));
        if let Ok(status) = http::StatusCode::from_u16(ctl.health_status.load(Relaxed)) {
            *resp.status_mut() = status;
        }
        return resp;
    }
    ctl.requests.fetch_add(1, Relaxed);
    ctl.in_flight.fetch_add(1, Relaxed);
    // Counted down however the request ends, cancelled ones included.
    struct Done<'a>(&'a AtomicUsize);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Relaxed);
        }
    }
    let _done = Done(&ctl.in_flight);
    let delay = ctl.delay_ms.load(Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let path = req.uri().path().to_string();
    let mut builder = Response::builder().header("x-backend", name);
    let resp = if path == "/echo" {
        builder.body(req.into_body().map_err(|e| e.into()).boxed())
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let n: u64 = n.parse().unwrap_or(0);
        builder = builder.header("content-length", n.to_string());
        builder.body(generated(n))
    } else if path == "/sink" {
        // Reads the whole body, keeping only its length.
        let mut body = req.into_body();
        let mut n: u64 = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => n += f.data_ref().map(|d| d.len() as u64).unwrap_or(0),
                Err(_) => break,
            }
        }
        ctl.last_sink.store(n, Relaxed);
        builder.body(full(n.to_string()))
    } else if path == "/headers" {
        let mut map = serde_json::Map::new();
        for name in req.headers().keys() {
            let values: Vec<&str> = req
                .headers()
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap_or(""))
                .collect();
            map.insert(name.to_string(), values.join(", ").into());
        }
        map.insert("x-uri".into(), req.uri().to_string().into());
        map.insert("x-version".into(), format!("{:?}", req.version()).into());
        builder.body(full(serde_json::to_vec(&map).unwrap_or_default()))
    } else if path == "/trailers" {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes().len())
            .unwrap_or(0);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", "ok".parse().expect("value"));
        trailers.insert("x-request-bytes", body.to_string().parse().expect("value"));
        let frames: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = vec![
            Ok(Frame::data(Bytes::from_static(b"with trailers"))),
            Ok(Frame::trailers(trailers)),
        ];
        builder.body(StreamBody::new(VecStream(frames.into())).boxed())
    } else if path == "/hold" {
        while !ctl.released.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        builder.body(full(name.to_string()))
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        builder.body(full(name.to_string()))
    } else {
        builder.body(full(name.to_string()))
    };
    let mut resp = resp.unwrap_or_else(|_| Response::new(empty()));
    let forced = ctl.status.load(Relaxed);
    if let Ok(status) = http::StatusCode::from_u16(forced) {
        *resp.status_mut() = status;
    }
    let failing = ctl
        .failures_left
        .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        let status = http::StatusCode::from_u16(ctl.failure_status.load(Relaxed));
        *resp.status_mut() = status.unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    }
    resp
}

struct VecStream<T>(std::collections::VecDeque<T>);

impl<T: Unpin> futures_core::Stream for VecStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        std::task::Poll::Ready(self.0.pop_front())
    }
}

/// A keep-alive HTTP client connection (HTTP/1.1 or h2c prior knowledge).
pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<TestBody>),
    H2(hyper::client::conn::http2::SendRequest<TestBody>),
}

impl Client {
    /// Connects with HTTP/1.1.
    pub async fn h1(address: SocketAddr) -> std::io::Result<Client> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn.with_upgrades());
        Ok(Client::H1(tx))
    }

    /// Connects with HTTP/2 over cleartext (prior knowledge).
    pub async fn h2(address: SocketAddr) -> std::io::Result<Client> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(Client::H2(tx))
    }

    /// Sends a request; `path` may be a path (host `test.local` is used) or an absolute URL.
    pub async fn send(
        &mut self,
        mut req: Request<TestBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Client::H1(tx) => {
                if !req.headers().contains_key("host") {
                    req.headers_mut()
                        .insert("host", "test.local".parse().expect("host"));
                }
                tx.ready().await?;
                tx.send_request(req).await
            }
            Client::H2(tx) => {
                if req.uri().authority().is_none() {
                    let uri = format!("http://test.local{}", req.uri());
                    *req.uri_mut() = uri.parse().expect("uri");
                }
                tx.ready().await?;
                tx.send_request(req).await
            }
        }
    }

    /// GETs `path` and returns status, the `x-backend` header and the body.
    pub async fn get(&mut self, path: &str) -> Result<(StatusCode, String, Bytes), hyper::Error> {
        let req = Request::get(path).body(empty()).expect("request");
        let resp = self.send(req).await?;
        let status = resp.status();
        let backend = resp
            .headers()
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, backend, body))
    }
}

/// A listener that never accepts, with its accept queue already full: the
/// kernel drops further SYNs, so a connect to it hangs until it times out.
/// Connects hang for as long as the returned [`Unanswered`] lives.
pub async fn unanswered_listener() -> (SocketAddr, Unanswered) {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = socket.local_addr().expect("addr");
    let socket = socket2::Socket::from(socket);
    socket.listen(0).expect("listen");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(address),
        )
        .await
        {
            fillers.push(s);
        }
    }
    (
        address,
        Unanswered {
            _socket: socket,
            _fillers: fillers,
        },
    )
}

/// Holds an [`unanswered_listener`] and the connections filling its queue.
pub struct Unanswered {
    _socket: socket2::Socket,
    _fillers: Vec<tokio::net::TcpStream>,
}

/// Waits until `check` holds, polling every 20 ms, failing after `limit`.
pub async fn wait_for<F: FnMut() -> bool>(what: &str, limit: Duration, mut check: F) {
    let deadline = Instant::now() + limit;
    while !check() {
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`wait_for`], with an async check.
pub async fn wait_for_async<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port that refuses connections for as long as the returned socket
/// lives: bound, so no other test can take it, but never listening.
/// (A port from [`free_port`] is only free until someone binds it, and a
/// server another test starts may get it.)
pub fn refusing_port() -> (socket2::Socket, u16) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind a port");
    let port = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.port())
        .expect("its port");
    (socket, port)
}

/// A port that was free a moment ago (bind, read, release).
///
/// Never the same port twice in one test process: the kernel may hand a
/// just-released port out again, and two callers (a listener and an admin
/// address) would then collide.
pub fn free_port() -> u16 {
    static GIVEN: parking_lot::Mutex<Vec<u16>> = parking_lot::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut given = GIVEN.lock();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The `skiff` binary, built on first use with the same profile as the tests.
pub fn skiff_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/deps/<test-binary>
        let exe = std::env::current_exe().expect("test binary path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "skiff", "--bin", "skiff"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build for the skiff binary");
        assert!(status.success(), "building the skiff binary failed");
        profile_dir.join("skiff")
    })
    .clone()
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "skiff-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes a file atomically (write to a temp name, then rename), as
    /// config management tools do, so a reader never sees half a file.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write temp file");
        std::fs::rename(&tmp, &path).expect("rename into place");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `skiff run` process; killed on drop.
pub struct SkiffProcess {
    pub child: Child,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl SkiffProcess {
    /// Starts `skiff run -c config` and waits until `/live` answers.
    pub async fn start(config: &Path, admin: SocketAddr) -> SkiffProcess {
        Self::start_with_args(config, admin, &[]).await
    }

    /// Like [`SkiffProcess::start`], with extra `skiff run` arguments.
    pub async fn start_with_args(config: &Path, admin: SocketAddr, extra: &[&str]) -> SkiffProcess {
        Self::start_with_env(config, admin, extra, &[]).await
    }

    /// Like [`SkiffProcess::start_with_args`], with extra environment
    /// variables (`KUBECONFIG`, say).
    pub async fn start_with_env(
        config: &Path,
        admin: SocketAddr,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> SkiffProcess {
        let log = config.with_extension("log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(skiff_bin())
            .args(["run", "-c"])
            .arg(config)
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args([
                "--log-level",
                &std::env::var("SKIFF_TEST_LOG").unwrap_or_else(|_| "info".into()),
            ])
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start skiff");
        let process = SkiffProcess { child, admin, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((status, _)) = admin_get(admin, "/live").await {
                if status == StatusCode::OK {
                    break;
                }
            }
            if Instant::now() > deadline {
                panic!("skiff did not start; log:\n{}", process.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        process
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`kill -SIG pid`).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for `/ready` to answer 200.
    pub async fn wait_ready(&self) {
        let admin = self.admin;
        wait_for_async("skiff /ready", Duration::from_secs(20), || async move {
            matches!(admin_get(admin, "/ready").await, Ok((StatusCode::OK, _)))
        })
        .await;
    }
}

impl Drop for SkiffProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// GETs an admin path; returns status and body text.
pub async fn admin_get(admin: SocketAddr, path: &str) -> std::io::Result<(StatusCode, String)> {
    admin_request(admin, Request::get(path).body(empty()).expect("request")).await
}

/// `POST path` (no body) on the admin server.
pub async fn admin_post(admin: SocketAddr, path: &str) -> std::io::Result<(StatusCode, String)> {
    admin_request(admin, Request::post(path).body(empty()).expect("request")).await
}

/// A whole response body.
pub async fn collect_body(body: Incoming) -> Bytes {
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default()
}

async fn admin_request(
    admin: SocketAddr,
    req: Request<TestBody>,
) -> std::io::Result<(StatusCode, String)> {
    let mut client = Client::h1(admin).await?;
    let resp = client.send(req).await.map_err(std::io::Error::other)?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Reads one sample's value from Prometheus text, matching all `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Runs a load loop of sequential GETs on `connections` keep-alive
/// connections until `stop` is set; returns (ok, failed) with failures listed.
pub struct Load {
    pub ok: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    pub errors: Arc<parking_lot::Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `connections` clients GETting `path` through `address`.
    pub fn start(address: SocketAddr, path: &'static str, connections: usize, h2: bool) -> Load {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..connections)
            .map(|_| {
                let (ok, failed, errors, stop) =
                    (ok.clone(), failed.clone(), errors.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut client = None;
                    while !stop.load(Relaxed) {
                        if client.is_none() {
                            let c = if h2 {
                                Client::h2(address).await
                            } else {
                                Client::h1(address).await
                            };
                            match c {
                                Ok(c) => client = Some(c),
                                Err(e) => {
                                    failed.fetch_add(1, Relaxed);
                                    errors.lock().push(format!("connect: {e}"));
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                    continue;
                                }
                            }
                        }
                        let c = client.as_mut().expect("client");
                        match c.get(path).await {
                            Ok((status, _, _)) if status == StatusCode::OK => {
                                ok.fetch_add(1, Relaxed);
                            }
                            Ok((status, _, body)) => {
                                failed.fetch_add(1, Relaxed);
                                errors
                                    .lock()
                                    .push(format!("{status}: {}", String::from_utf8_lossy(&body)));
                            }
                            Err(e) => {
                                failed.fetch_add(1, Relaxed);
                                errors.lock().push(format!("request: {e}"));
                                client = None;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            ok,
            failed,
            errors,
            stop,
            tasks,
        }
    }

    /// Stops the clients and returns (ok, failed, errors).
    pub async fn stop(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let errors = self.errors.lock().clone();
        (self.ok.load(Relaxed), self.failed.load(Relaxed), errors)
    }
}

/// A config for `skiff run` with one listener `web` routing `/` to cluster
/// `app` over `backends` (a YAML endpoints list is written inline).
pub fn simple_config(
    listen: SocketAddr,
    admin: SocketAddr,
    lb: &str,
    endpoints_yaml: &str,
) -> String {
    format!(
        "admin: {{ listen: {admin} }}\n\
         shutdown: {{ drain_delay: 0s, grace_period: 10s }}\n\
         listeners:\n  - name: web\n    listen: {listen}\n    routes:\n      - match: {{ path_prefix: / }}\n        cluster: app\n\
         clusters:\n  - name: app\n    lb: {lb}\n    {endpoints_yaml}\n"
    )
}

/// Starts an in-process proxy from YAML config text (use port 0 for
/// listeners and admin); returns it with the `web` listener's address.
pub async fn start_proxy(yaml: &str) -> (skiff::Proxy, SocketAddr) {
    let config = skiff_config::Config::parse_checked(
        yaml,
        "test.yaml",
        Path::new("."),
        &skiff::tls::certs::TlsFiles,
    )
    .unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
    let proxy = skiff::Proxy::start(config, None)
        .await
        .expect("start proxy");
    let address = proxy.listener_address("web").expect("listener web");
    (proxy, address)
}

/// A Python peer (gRPC or WebSocket server) from `tests/py`; killed on drop.
pub struct PyPeer {
    child: Child,
    pub port: u16,
}

/// Path of a script in `tests/py`.
pub fn py_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py").join(name)
}

/// Fails with a clear message when a Python module the test needs is missing.
pub fn require_python_module(module: &str, package: &str) {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 module `{module}` is missing: pip install {package} (.ci/run installs it)"
    );
}

impl PyPeer {
    /// Starts `script server` and reads the port it prints.
    pub fn server(script: &str) -> PyPeer {
        PyPeer::server_with(script, &[])
    }

    /// Starts `script server ARGS...` and reads the port it prints.
    pub fn server_with(script: &str, args: &[&str]) -> PyPeer {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .arg(py_script(script))
            .arg("server")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python peer");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{script} printed {line:?}, not a port"));
        PyPeer { child, port }
    }
}

impl Drop for PyPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `script client ARGS...` to completion; returns (success, output).
pub async fn py_client(script: &str, args: &[&str]) -> (bool, String) {
    let mut all = vec!["client"];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = py_run(script, &all).await;
    let text = format!("{stdout}{stderr}");
    (ok && text.contains("OK"), text)
}

/// Runs `script ARGS...` to completion; returns (success, stdout, stderr).
pub async fn py_run(script: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new("python3")
        .arg(py_script(script))
        .args(args)
        .output()
        .await
        .expect("run python client");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Reads a response body to its end, counting bytes without keeping them.
pub async fn drain_body(mut body: Incoming) -> Result<u64, hyper::Error> {
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        n += frame?.data_ref().map(|d| d.len() as u64).unwrap_or(0);
    }
    Ok(n)
}

/// Samples a process's VmRSS every `every` in the background and keeps the peak (KiB).
pub struct RssPeak {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssPeak {
    pub fn start(pid: u32, every: Duration) -> RssPeak {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                p.fetch_max(rss_kib(pid), Relaxed);
                tokio::time::sleep(every).await;
            }
        });
        RssPeak { peak, task }
    }

    /// Stops sampling and returns the peak.
    pub fn stop(self) -> u64 {
        self.task.abort();
        self.peak.load(Relaxed)
    }
}

/// Runs `kubernetes-validate --strict` over every YAML file in `dir`
/// (relative to the workspace root) and fails with its output unless it
/// accepts them all; returns the files, sorted.
pub fn validate_manifests(dir: &str) -> Vec<PathBuf> {
    require_python_module("kubernetes_validate", "kubernetes-validate");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    files
}
