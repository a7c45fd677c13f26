//! HTTP/2 client connections (h2c with prior knowledge, or h2 by ALPN),
//! served by skiff's own HTTP/2 server ([`server`]).
//!
//! [`crate::server::h1`] reads the first bytes of every connection; when they are
//! the HTTP/2 preface it hands the socket over here, with those bytes.
//! TLS connections that chose h2 by ALPN come here straight from the
//! handshake ([`serve_io`]). Draining sends GOAWAY and lets open streams
//! finish, and so does a connection without streams for the listener's
//! `idle_timeout` (Envoy's idle timeout).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::server::listener::ListenerState;
use crate::tls::TlsPeer;
use skiff_config::limits::ListenerLimits;

mod frame;
mod hpack;
mod request;
mod server;
mod stream;

pub use stream::RequestBody;

/// How long an idle connection may take to finish once it has sent
/// GOAWAY (its streams are done; what is left is the write) before it is
/// closed anyway.
const IDLE_GOAWAY_GRACE: Duration = Duration::from_secs(5);
/// How long a connection closed after its GOAWAY goes on reading (and
/// dropping) what the client still sends, so that closing it does not
/// reset what the client has not read yet.
const LINGER: Duration = Duration::from_secs(1);

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
/// `max_header_bytes` is `SETTINGS_MAX_HEADER_LIST_SIZE` (a larger header
/// list is answered with 431, as Envoy sizes it from
/// `max_request_headers_kb`), and requests with more than `max_headers`
/// fields get 431 too.
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
    let mut conn = server::Connection::new(
        stream,
        read,
        state,
        limits,
        peer,
        tls,
        activity.clone(),
        server::stream_future,
    );
    let idle = tokio::select! {
        result = std::future::poll_fn(|cx| conn.poll(cx)) => {
            if let Err(e) = result {
                tracing::debug!(%peer, "HTTP/2 connection ended: {e}");
            }
            return;
        }
        _ = drain.wait_for(|d| *d) => false,
        _ = activity.idle(limits.idle_timeout) => true,
    };
    conn.go_away();
    let closing = std::future::poll_fn(|cx| conn.poll(cx));
    let closed = if idle {
        tracing::debug!(%peer, "HTTP/2 connection idle past idle_timeout: GOAWAY");
        match tokio::time::timeout(IDLE_GOAWAY_GRACE, closing).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "HTTP/2 connection ended while going idle: {e}");
                false
            }
            Err(_) => false,
        }
    } else {
        match closing.await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(%peer, "HTTP/2 connection ended while draining: {e}");
                false
            }
        }
    };
    if closed {
        let linger = std::future::poll_fn(|cx| conn.poll_linger(cx));
        let _ = tokio::time::timeout(LINGER, linger).await;
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

    /// A stream opened.
    fn open(&self) {
        self.open.fetch_add(1, SeqCst);
    }

    /// A stream closed.
    fn close(&self) {
        // Stamped before the count drops, so a watcher that sees no
        // stream open also sees when the last one closed.
        self.idle_since.store(self.now(), SeqCst);
        self.open.fetch_sub(1, SeqCst);
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
