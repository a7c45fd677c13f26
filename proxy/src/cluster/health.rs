//! Active health checks (Envoy's semantics).
//!
//! One task per cluster follows its members and runs one check loop per
//! endpoint. A loop checks its endpoint at once, then after a random part
//! of the interval (so a thousand endpoints do not all fire together), then
//! every `interval` (`unhealthy_interval` while failing) plus up to `jitter`.
//! What a result changes (pending → healthy, the thresholds, ending an
//! outlier ejection) is [`Cluster::record_check`]'s business.
//!
//! HTTP checks on HTTP/1 clusters speak HTTP/1.1 themselves over one kept
//! connection per endpoint: a check is one write and one read, no task and
//! no channel, so checking a thousand endpoints a second stays cheap.
//! HTTP/2 clusters are checked over a kept HTTP/2 connection (hyper).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

use super::balance::random;
use super::endpoint::{Endpoint, UNHEALTHY};
use super::Cluster;
use super::Settings;
use crate::http::h1::body::{Chunk, ChunkedDecoder};
use crate::http::h1::response::{self, Framing};
use skiff_config::cluster::HealthCheck;
use skiff_config::cluster::HealthCheckKind;
use skiff_config::cluster::UpstreamProtocol;
use skiff_config::units::format_duration;

/// The identifying `user-agent` of check requests.
pub(crate) const USER_AGENT: &str = "skiff-health-check";

/// Why a check did not pass.
enum Failure {
    Status(u16),
    Timeout(Duration),
    Error(String),
}

impl Failure {
    fn describe(&self) -> String {
        match self {
            Failure::Status(s) => format!("answered {s}"),
            Failure::Timeout(t) => format!("no answer within {}", format_duration(*t)),
            Failure::Error(e) => e.clone(),
        }
    }
}

/// Follows `cluster`'s members and settings, keeping one check loop per
/// member while a check is configured. Runs until aborted; the loops stop
/// with it.
pub(crate) async fn run(cluster: Arc<Cluster>) {
    struct Loops(HashMap<SocketAddr, (Arc<Endpoint>, AbortHandle)>);
    impl Drop for Loops {
        fn drop(&mut self) {
            self.0.values().for_each(|(_, h)| h.abort());
        }
    }
    let mut loops = Loops(HashMap::new());
    loop {
        let configured = cluster.settings().health_check.is_some();
        let members = cluster.snapshot().members.clone();
        loops.0.retain(|_, (endpoint, handle)| {
            let keep = configured && members.iter().any(|m| Arc::ptr_eq(m, endpoint));
            if !keep {
                handle.abort();
            }
            keep
        });
        if configured {
            for endpoint in members.iter() {
                loops.0.entry(endpoint.address).or_insert_with(|| {
                    let check = check_loop(cluster.clone(), endpoint.clone());
                    let task = match checker_runtime() {
                        Some(runtime) => runtime.spawn(check),
                        None => tokio::spawn(check),
                    };
                    (endpoint.clone(), task.abort_handle())
                });
            }
        } else {
            cluster.clear_health();
        }
        cluster.changed.notified().await;
    }
}

/// The runtime the check loops run on: a thread of their own (as Envoy
/// runs checks on its main thread, not its workers), so a slot's burst of
/// checks never queues in front of requests. `None` if the thread could
/// not start; the checks then share the caller's runtime.
fn checker_runtime() -> Option<&'static tokio::runtime::Handle> {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Handle>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            let started = std::thread::Builder::new()
                .name("skiff-health".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => {
                            let _ = tx.send(Some(runtime.handle().clone()));
                            runtime.block_on(std::future::pending::<()>());
                        }
                        Err(e) => {
                            tracing::warn!("health checks share the main runtime: {e}");
                            let _ = tx.send(None);
                        }
                    }
                });
            match started {
                Ok(_) => rx.recv().ok().flatten(),
                Err(e) => {
                    tracing::warn!("health checks share the main runtime: {e}");
                    None
                }
            }
        })
        .as_ref()
}

/// Checks one endpoint for as long as it is a member.
async fn check_loop(cluster: Arc<Cluster>, endpoint: Arc<Endpoint>) {
    let mut conn = Connection::None;
    let mut request = RequestCache::default();
    let (mut passes, mut failures) = (0u32, 0u32);
    let mut first = true;
    loop {
        let settings = cluster.settings_full();
        let Some(check) = settings.health_check.as_ref() else {
            return;
        };
        let probe = probe(check, &settings, &endpoint, &mut conn, &mut request);
        let failure = match tokio::time::timeout(check.timeout, probe).await {
            Ok(result) => result.err(),
            Err(_) => Some(Failure::Timeout(check.timeout)),
        };
        let counters = &cluster.stats.health_checks;
        match &failure {
            None => &counters.passed,
            Some(Failure::Status(_)) => &counters.failed,
            Some(Failure::Timeout(_)) => &counters.timeout,
            Some(Failure::Error(_)) => &counters.error,
        }
        .fetch_add(1, Relaxed);
        let in_a_row = if failure.is_none() {
            failures = 0;
            passes += 1;
            passes
        } else {
            // A failing endpoint gets a fresh connection next time.
            conn = Connection::None;
            passes = 0;
            failures += 1;
            failures
        };
        cluster.record_check(&endpoint, failure.map(|f| f.describe()), in_a_row, check);

        let base = if endpoint.health() == UNHEALTHY {
            check.unhealthy_interval
        } else {
            check.interval
        };
        let delay = if first {
            // Spread the cluster's checks over the interval.
            first = false;
            base.mul_f64(fraction())
        } else {
            base + check.jitter.mul_f64(fraction())
        };
        tokio::time::sleep_until(slot_after(delay, check.interval)).await;
    }
}

/// `now + delay`, rounded to a slot of a twentieth of the interval (at
/// most 50 ms): the checks due in one slot wake the runtime once and their
/// answers come back in one poll, instead of a wakeup per check.
fn slot_after(delay: Duration, interval: Duration) -> tokio::time::Instant {
    let slot = (interval / 20).clamp(Duration::from_millis(1), Duration::from_millis(50));
    let slot_ms = slot.as_millis() as u64;
    let due = crate::clock::now_ms() + delay.as_millis() as u64;
    // To the nearest slot, so intervals stay right on average.
    let aligned = (due + slot_ms / 2) / slot_ms * slot_ms;
    tokio::time::Instant::now()
        + Duration::from_millis(aligned - crate::clock::now_ms().min(aligned))
}

/// A uniform draw from [0, 1).
fn fraction() -> f64 {
    (random() >> 11) as f64 / (1u64 << 53) as f64
}

/// What a check loop keeps between checks.
enum Connection {
    None,
    Http1(Stream, BytesMut),
    Http2(hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>),
}

/// A check's connection: TLS when the cluster's endpoints speak it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }

    async fn read_some(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => read_some(s, buf).await,
            Stream::Tls(s) => {
                if buf.capacity() - buf.len() < 512 {
                    buf.reserve(4096);
                }
                tokio::io::AsyncReadExt::read_buf(s, buf).await
            }
        }
    }
}

/// Connects to `address`, with the cluster's TLS when it has one.
async fn dial(address: SocketAddr, settings: &Settings) -> Result<Stream, Failure> {
    let stream = connect(address).await?;
    match &settings.connector {
        None => Ok(Stream::Plain(stream)),
        Some(connector) => connector
            .connect(address, stream)
            .await
            .map(|s| Stream::Tls(Box::new(s)))
            .map_err(|e| Failure::Error(format!("TLS handshake: {e}"))),
    }
}

/// The HTTP/1.1 request bytes, rebuilt when the settings change.
#[derive(Default)]
struct RequestCache {
    for_settings: Option<Arc<Settings>>,
    bytes: Vec<u8>,
}

async fn probe(
    check: &HealthCheck,
    settings: &Arc<Settings>,
    endpoint: &Endpoint,
    conn: &mut Connection,
    request: &mut RequestCache,
) -> Result<(), Failure> {
    let address = endpoint.address;
    match &check.kind {
        HealthCheckKind::Tcp => connect(address).await.map(drop),
        HealthCheckKind::Http {
            path,
            host,
            expected_statuses,
        } => {
            let host = host.as_deref().unwrap_or(&settings.name);
            let status = match settings.protocol {
                UpstreamProtocol::Http1 => {
                    if !request
                        .for_settings
                        .as_ref()
                        .is_some_and(|s| Arc::ptr_eq(s, settings))
                    {
                        request.bytes = format!(
                            "GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: {USER_AGENT}\r\naccept: */*\r\n\r\n"
                        )
                        .into_bytes();
                        request.for_settings = Some(settings.clone());
                    }
                    http1(address, settings, conn, &request.bytes).await?
                }
                UpstreamProtocol::Http2 => http2(address, settings, conn, host, path).await?,
            };
            if expected_statuses
                .iter()
                .any(|&(lo, hi)| (lo..=hi).contains(&status))
            {
                Ok(())
            } else {
                Err(Failure::Status(status))
            }
        }
    }
}

async fn connect(address: SocketAddr) -> Result<TcpStream, Failure> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| Failure::Error(format!("connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// One HTTP/1.1 check on the kept connection (a new one when there is
/// none, or when the kept one turns out closed before answering).
async fn http1(
    address: SocketAddr,
    settings: &Settings,
    conn: &mut Connection,
    request: &[u8],
) -> Result<u16, Failure> {
    let reused = matches!(conn, Connection::Http1(..));
    let mut result = exchange(address, settings, conn, request).await;
    if reused && matches!(result, Err(Exchange::ClosedBeforeAnswer)) {
        *conn = Connection::None;
        result = exchange(address, settings, conn, request).await;
    }
    result.map_err(|e| {
        *conn = Connection::None;
        e.into_failure()
    })
}

enum Exchange {
    /// The connection closed before any byte of an answer: a kept
    /// connection the server timed out, worth one fresh try.
    ClosedBeforeAnswer,
    Failed(Failure),
}

impl Exchange {
    fn into_failure(self) -> Failure {
        match self {
            Exchange::ClosedBeforeAnswer => {
                Failure::Error("connection closed before an answer".into())
            }
            Exchange::Failed(f) => f,
        }
    }
}

impl From<Failure> for Exchange {
    fn from(f: Failure) -> Self {
        Exchange::Failed(f)
    }
}

/// Reads what has arrived, waiting for it if nothing has; a short read
/// clears the socket's readiness, so the next check does not pay a read
/// that finds nothing (see `h1::read_available`).
async fn read_some(stream: &TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 512 {
        buf.reserve(4096);
    }
    loop {
        stream.readable().await?;
        match crate::io::conn::read_available(stream, buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            result => return result,
        }
    }
}

fn io_failure(e: std::io::Error) -> Exchange {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
            Exchange::ClosedBeforeAnswer
        }
        _ => Exchange::Failed(Failure::Error(format!("connection: {e}"))),
    }
}

async fn exchange(
    address: SocketAddr,
    settings: &Settings,
    conn: &mut Connection,
    request: &[u8],
) -> Result<u16, Exchange> {
    if !matches!(conn, Connection::Http1(..)) {
        *conn = Connection::Http1(
            dial(address, settings).await?,
            BytesMut::with_capacity(1024),
        );
    }
    let Connection::Http1(stream, buf) = conn else {
        unreachable!("set just above");
    };
    buf.clear();
    stream.write_all(request).await.map_err(io_failure)?;
    let (status, head_len, framing, keep) = loop {
        if stream.read_some(buf).await.map_err(io_failure)? == 0 {
            // (`http1` drops the connection on any error.)
            return Err(if buf.is_empty() {
                Exchange::ClosedBeforeAnswer
            } else {
                Failure::Error("connection closed inside the answer's head".into()).into()
            });
        }
        let mut fields = [httparse::EMPTY_HEADER; response::MAX_HEADERS];
        match response::parse(buf, false, &mut fields) {
            Ok(response::Parsed::Final(head)) => {
                break (
                    head.status.as_u16(),
                    head.len,
                    head.framing,
                    head.keep_alive,
                )
            }
            Ok(response::Parsed::Interim { len }) => {
                // An interim answer; the real one follows.
                buf.advance(len);
                continue;
            }
            Ok(response::Parsed::Partial) => {}
            Err(why) => return Err(Failure::Error(format!("malformed answer: {why}")).into()),
        }
    };
    buf.advance(head_len);
    match framing {
        Framing::Length(n) => discard(stream, buf, n).await?,
        Framing::Chunked => discard_chunked(stream, buf).await?,
        Framing::Close => {
            while stream.read_some(buf).await.map_err(io_failure)? != 0 {
                buf.clear();
            }
        }
    }
    if !keep {
        *conn = Connection::None;
    }
    Ok(status)
}

async fn fill(stream: &mut Stream, buf: &mut BytesMut) -> Result<(), Exchange> {
    if stream.read_some(buf).await.map_err(io_failure)? == 0 {
        return Err(Failure::Error("connection closed inside the answer's body".into()).into());
    }
    Ok(())
}

async fn discard(stream: &mut Stream, buf: &mut BytesMut, mut n: u64) -> Result<(), Exchange> {
    loop {
        let take = (buf.len() as u64).min(n);
        buf.advance(take as usize);
        n -= take;
        if n == 0 {
            return Ok(());
        }
        fill(stream, buf).await?;
    }
}

async fn discard_chunked(stream: &mut Stream, buf: &mut BytesMut) -> Result<(), Exchange> {
    // The same decoder, and limits, as request bodies from clients.
    let mut decoder = ChunkedDecoder::default();
    loop {
        match decoder.decode(buf) {
            Ok(Some(Chunk::End)) => return Ok(()),
            Ok(Some(Chunk::Data(_) | Chunk::Trailers(_))) => {}
            Ok(None) => fill(stream, buf).await?,
            Err(e) => return Err(Failure::Error(format!("malformed chunked answer: {e}")).into()),
        }
    }
}

async fn http2(
    address: SocketAddr,
    settings: &Settings,
    conn: &mut Connection,
    host: &str,
    path: &str,
) -> Result<u16, Failure> {
    use hyper::client::conn::http2;
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

    let ready = matches!(conn, Connection::Http2(s) if s.is_ready());
    if !ready {
        let builder = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .clone();
        let failed = |e: hyper::Error| Failure::Error(format!("HTTP/2 handshake: {e}"));
        let sender = match dial(address, settings).await? {
            Stream::Plain(s) => {
                let (sender, driver) = builder.handshake(TokioIo::new(s)).await.map_err(failed)?;
                tokio::spawn(async move {
                    let _ = driver.await;
                });
                sender
            }
            Stream::Tls(s) => {
                let (sender, driver) = builder.handshake(TokioIo::new(s)).await.map_err(failed)?;
                tokio::spawn(async move {
                    let _ = driver.await;
                });
                sender
            }
        };
        *conn = Connection::Http2(sender);
    }
    let Connection::Http2(sender) = conn else {
        unreachable!("set just above");
    };
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let request = http::Request::get(format!("{scheme}://{host}{path}"))
        .header(http::header::USER_AGENT, USER_AGENT)
        .body(http_body_util::Empty::new())
        .map_err(|e| Failure::Error(format!("request: {e}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| Failure::Error(format!("HTTP/2: {e}")))?;
    let status = response.status().as_u16();
    http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|e| Failure::Error(format!("HTTP/2 body: {e}")))?;
    Ok(status)
}
