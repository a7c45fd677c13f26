//! HTTP/2 client connections (h2c with prior knowledge), served by hyper.
//!
//! [`crate::h1`] reads the first bytes of every connection; when they are
//! the HTTP/2 preface it hands the socket over here, with those bytes, and
//! hyper's HTTP/2 server takes it from there. Draining sends GOAWAY and
//! lets open streams finish, and so does a connection without streams for
//! the listener's `idle_timeout` (Envoy's idle timeout, which hyper has
//! not: skiff counts the streams itself). TLS connections that chose h2 by ALPN come
//! here straight from the handshake ([`serve_io`]).
//! [`driver`] runs the connection's task: what hyper writes leaves once
//! per wake-up, not once per response, and on a current-thread runtime
//! the streams run on that task rather than one task each.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::Request;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::UpstreamBody;
use crate::forward::ProxyBody;
use crate::limits::ListenerLimits;
use crate::listener::ListenerState;
use crate::tls::TlsPeer;

mod driver;

/// How long an idle connection's GOAWAY may take to be acknowledged
/// before the connection is closed anyway.
const IDLE_GOAWAY_GRACE: Duration = Duration::from_secs(5);

/// Serves an HTTP/2 connection whose first bytes, `read`, were already taken.
pub async fn serve(
    stream: TcpStream,
    read: Bytes,
    state: Arc<ListenerState>,
    limits: Arc<ListenerLimits>,
    peer: SocketAddr,
    drain: watch::Receiver<bool>,
) {
    serve_io(stream, read, state, &limits, peer, drain, None).await
}

/// Like [`serve`], on any stream: a TLS one passes `tls`, which marks
/// each request with what the handshake established.
///
/// The listener's limits become the connection's HTTP/2 settings: its
/// `max_header_bytes` is `SETTINGS_MAX_HEADER_LIST_SIZE` (h2 answers a
/// larger header list with 431, as Envoy sizes it from
/// `max_request_headers_kb`), and requests with more than `max_headers`
/// fields get 431 here.
pub async fn serve_io<S>(
    stream: S,
    read: Bytes,
    state: Arc<ListenerState>,
    limits: &ListenerLimits,
    peer: SocketAddr,
    mut drain: watch::Receiver<bool>,
    tls: Option<Arc<TlsPeer>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let streams = driver::Streams::new();
    let (io, mut driver) = driver::driver(read, stream, &streams, activity.clone());
    let io = TokioIo::new(io);
    let max_headers = limits.max_headers as usize;
    let open_streams = activity.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        let state = state.clone();
        let open = OpenStream::new(&open_streams);
        if let Some(tls) = &tls {
            tls.tag(&mut req);
        }
        // Boxed: hyper moves each stream's future several times (into a
        // task of its own, or a box), and the request's future is
        // kilobytes; a box is one copy and a pointer.
        Box::pin(async move {
            let resp = if req.headers().len() > max_headers {
                crate::forward::local(
                    http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "too many header fields\n",
                )
            } else if let Some(name) = req.headers().keys().find(|n| !is_token(n.as_str())) {
                // HTTP/2 allows names HTTP/1.1 does not (`"`, `(`, ...): an
                // HTTP/1 upstream would read such a field some other way.
                let reason = format!("invalid header name {:?}\n", name.as_str());
                crate::forward::local(http::StatusCode::BAD_REQUEST, reason)
            } else {
                let req = req.map(UpstreamBody::Http2);
                crate::forward::handle(req, &state, peer, None).await
            };
            // The stream is open until its response body is done.
            Ok::<_, Infallible>(resp.map(|body| Tracked { body, _open: open }))
        })
    });
    let conn = http2::Builder::new(streams)
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes)
        .max_concurrent_streams(limits.http2.max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.http2.max_pending_accept_reset_streams as usize)
        .max_local_error_reset_streams(limits.http2.max_local_error_reset_streams as usize)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let idle = tokio::select! {
        result = driver.run(conn.as_mut()) => {
            if let Err(e) = result {
                tracing::debug!(%peer, "HTTP/2 connection ended: {e}");
            }
            return;
        }
        _ = drain.wait_for(|d| *d) => false,
        _ = activity.idle(limits.idle_timeout) => true,
    };
    if idle {
        tracing::debug!(%peer, "HTTP/2 connection idle past idle_timeout: GOAWAY");
        conn.as_mut().graceful_shutdown();
        // hyper's GOAWAY waits for the client to answer a PING; one that
        // never does must not keep the connection after all.
        let closing = driver.run(conn);
        if let Ok(Err(e)) = tokio::time::timeout(IDLE_GOAWAY_GRACE, closing).await {
            tracing::debug!(%peer, "HTTP/2 connection ended while going idle: {e}");
        }
        return;
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = driver.run(conn).await {
        tracing::debug!(%peer, "HTTP/2 connection ended while draining: {e}");
    }
}

/// How many streams an HTTP/2 connection has open, and since when none.
#[derive(Debug)]
struct Activity {
    start: Instant,
    open: AtomicUsize,
    /// Milliseconds from `start` to when the last stream closed.
    idle_since: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            open: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Resolves once the connection has had no stream for `timeout`.
    async fn idle(&self, timeout: Duration) {
        let limit = timeout.as_millis() as u64;
        loop {
            let wait = if self.open.load(SeqCst) > 0 {
                limit
            } else {
                let idle = self.now().saturating_sub(self.idle_since.load(SeqCst));
                if idle >= limit {
                    return;
                }
                limit - idle
            };
            tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
        }
    }
}

/// Held while a stream's request and response live.
struct OpenStream(Arc<Activity>);

impl OpenStream {
    fn new(activity: &Arc<Activity>) -> OpenStream {
        activity.open.fetch_add(1, SeqCst);
        OpenStream(activity.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        // Stamped before the count drops, so a watcher that sees no
        // stream open also sees when the last one closed.
        self.0.idle_since.store(self.0.now(), SeqCst);
        self.0.open.fetch_sub(1, SeqCst);
    }
}

/// A response body that keeps its stream counted as open.
struct Tracked {
    body: ProxyBody,
    _open: OpenStream,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = crate::body::BodyError;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::body::BodyError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Whether `name` is an HTTP field name (RFC 9110 §5.1: a token).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A socket whose first bytes were already read into `read`.
pub(crate) struct Prefixed<S> {
    read: Bytes,
    stream: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(read: Bytes, stream: S) -> Prefixed<S> {
        Prefixed { read, stream }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
