//! HTTP/2 client connections (h2c with prior knowledge, or h2 by ALPN),
//! served by skiff's own HTTP/2 server codec ([`crate::http::h2`]), whose
//! streams are answered by the proxy ([`stream_future`]).
//!
//! [`crate::server::h1`] reads the first bytes of every connection; when they are
//! the HTTP/2 preface it hands the socket over here, with those bytes.
//! TLS connections that chose h2 by ALPN come here straight from the
//! handshake ([`serve_io`]). Draining sends GOAWAY and lets open streams
//! finish, and so does a connection without streams for the listener's
//! `idle_timeout` (Envoy's idle timeout).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::http::h2::conn::{Answer, Connection};
use crate::http::h2::stream::{self, Shared};
use crate::http::h2::Activity;
use crate::proxy::forward;
use crate::server::state::ListenerState;
use crate::tls::TlsPeer;
use skiff_config::limits::ListenerLimits;

/// How long an idle connection may take to finish once it has sent
/// GOAWAY (its streams are done; what is left is the write) before it is
/// closed anyway.
const IDLE_GOAWAY_GRACE: Duration = Duration::from_secs(5);
/// How long a connection closed after its GOAWAY goes on reading (and
/// dropping) what the client still sends, so that closing it does not
/// reset what the client has not read yet.
const LINGER: Duration = Duration::from_secs(1);

/// Serves an HTTP/2 connection whose first bytes, `read`, were already taken.
pub(crate) async fn serve(
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
pub(crate) async fn serve_io<S>(
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
    let errors = state.protocol_errors.clone();
    let mut conn = Connection::new(
        stream,
        read,
        (state, errors),
        limits,
        peer,
        tls,
        activity.clone(),
        stream_future,
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

/// What a stream runs: the proxy's answer (or skiff's refusal), then the
/// response into the stream. One future type for both kinds of answer, so
/// every stream's future fits the same reusable box.
async fn stream_future(
    answer: Answer,
    state: Arc<ListenerState>,
    peer: SocketAddr,
    shared: Arc<Shared>,
) {
    let response = match answer {
        Answer::Forward(req) => forward::handle(req, &state.routes, peer, None).await,
        Answer::Local(status, why) => forward::local(status, why),
    };
    stream::respond(&shared, response).await
}
