//! skiff's own HTTP/1.x server connection.
//!
//! Why not hyper's: an idle keep-alive connection there keeps an 8 KiB
//! read buffer and an 8 KiB write buffer, about 20 KB a connection with
//! the task, where HAProxy and nginx hold about 1 KB. Here a connection
//! waiting for its next request holds no buffer at all (it waits for
//! readability, then allocates), and the per-request future lives in a box
//! that exists only while a request does, so 10,000 idle connections cost
//! little more than their sockets.
//!
//! One request at a time per connection: read and check the head
//! ([`parse`]), forward it with its body streaming from the socket
//! ([`body`]), write the response ([`write`]), then go on with the next
//! request, pipelined bytes included. A connection that opens with the
//! HTTP/2 preface is handed to [`crate::server::h2`]. While a request without a
//! body is out, the socket is watched: a client that goes away cancels the
//! upstream request, as hyper and Envoy do.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Response, StatusCode};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::http::body::UpstreamBody;
use crate::http::h1::body::{ChunkedDecoder, Kind, RequestBody};
use crate::http::h1::parse::{self, Framing, HeadError, HeadLimits, Parsed};
use crate::http::h1::{body, buffers, write};
use crate::http::h2::frame::PREFACE as H2_PREFACE;
use crate::io::conn::Conn;
use crate::metrics::ProtocolError;
use crate::proxy::forward::{self, ProxyBody};
use crate::server::state::{ConnectionGuard, ListenerState};
use skiff_config::limits::ListenerLimits;

/// After the response, how long the rest of the request body may take to
/// reach the upstream before the connection is given up.
const BODY_AFTER_RESPONSE: Duration = Duration::from_secs(5);

/// Serves one client connection until it closes or the listener drains,
/// within `limits` (the listener's, as of when the connection was accepted).
pub(crate) async fn serve(
    conn: Arc<Conn>,
    state: Arc<ListenerState>,
    limits: Arc<ListenerLimits>,
    peer: SocketAddr,
    drain: watch::Receiver<bool>,
    guard: ConnectionGuard,
) {
    let mut buf = BytesMut::new();
    let mut first = true;
    loop {
        if buf.is_empty() {
            // Idle: no buffer, no timer, no drain future; the listener's
            // registry closes the socket when the connection must go.
            buffers::give_read(std::mem::take(&mut buf));
            conn.set_idle();
            // After `set_idle`: a drain that began before it is seen here,
            // one that begins after it finds the connection idle.
            if *drain.borrow() {
                return;
            }
            let ready = conn.readable().await;
            if ready.is_err() || !conn.claim() {
                return;
            }
        }
        // Boxed: the connection's own future stays small while it idles,
        // and a request's state exists only while the request does.
        match Box::pin(request(
            &conn, &state, &limits, peer, &drain, &mut buf, first,
        ))
        .await
        {
            Next::KeepAlive => first = false,
            Next::Close => {
                conn.close_write();
                return;
            }
            Next::Gone => return,
            // Handed to tasks of their own (holding the connection's
            // guard), so this future needs no room for them.
            Next::Http2 => {
                if let Ok(conn) = Arc::try_unwrap(conn) {
                    let served = (state, limits, drain);
                    tokio::spawn(serve_h2(conn, buf.freeze(), served, peer, guard));
                }
                return;
            }
            Next::Upgrade(tunnel) => {
                if let Ok(conn) = Arc::try_unwrap(conn) {
                    tokio::spawn(tunnel_to(conn, tunnel, buf.freeze(), guard));
                }
                return;
            }
        }
    }
}

/// Serves a connection whose client opened with the HTTP/2 preface (over
/// TLS: without ALPN), `read` its bytes so far.
async fn serve_h2(
    conn: Conn,
    read: Bytes,
    (state, limits, drain): (
        Arc<ListenerState>,
        Arc<ListenerLimits>,
        watch::Receiver<bool>,
    ),
    peer: SocketAddr,
    _guard: ConnectionGuard,
) {
    match conn.session().map(|s| s.peer.clone()) {
        None => crate::server::h2::serve(conn.stream, read, state, limits, peer, drain).await,
        Some(tls) => {
            let stream = crate::io::conn::TlsStream::new(conn);
            let limits = &limits;
            crate::server::h2::serve_io(stream, read, state, limits, peer, drain, Some(tls)).await
        }
    }
}

/// Copies bytes both ways between an upgraded connection and its upstream,
/// `pending` what the client sent past the head.
async fn tunnel_to(conn: Conn, tunnel: forward::Tunnel, pending: Bytes, _guard: ConnectionGuard) {
    if conn.session().is_some() {
        let stream = crate::io::conn::TlsStream::new(conn);
        tunnel.run(stream, pending).await;
    } else {
        tunnel.run(conn.stream, pending).await;
    }
}

/// Reads one request head and serves the request, or refuses it.
async fn request(
    conn: &Arc<Conn>,
    state: &ListenerState,
    limits: &ListenerLimits,
    peer: SocketAddr,
    drain: &watch::Receiver<bool>,
    buf: &mut BytesMut,
    first: bool,
) -> Next {
    if buf.capacity() == 0 {
        *buf = buffers::read();
    }
    let parsed = match read_head(conn, buf, first, limits).await {
        Ok(Head::Request(parsed)) => parsed,
        Ok(Head::Http2) => return Next::Http2,
        Ok(Head::Closed) => return Next::Gone,
        Err(ReadError::Head(e)) => {
            tracing::debug!(%peer, "refused request: {e}");
            let error = ProtocolError::of_status(false, e.status.as_u16());
            state.protocol_errors.count(error);
            refuse(conn, e.status, e.reason).await;
            return Next::Gone;
        }
        Err(ReadError::Timeout) => {
            state.protocol_errors.count(ProtocolError::Http1Timeout);
            refuse(conn, StatusCode::REQUEST_TIMEOUT, "request head timeout").await;
            return Next::Gone;
        }
        Err(ReadError::Io(e)) => {
            tracing::debug!(%peer, "connection ended mid-head: {e}");
            return Next::Gone;
        }
    };
    exchange(conn, state, peer, drain, parsed, buf).await
}

/// What the connection does after a request.
enum Next {
    KeepAlive,
    /// Close after what was written.
    Close,
    /// Already closed, or nothing more to say.
    Gone,
    /// The client spoke HTTP/2: serve the connection with skiff's HTTP/2 server.
    Http2,
    /// Switch to a tunnel; bytes the client sent past the head are in the buffer.
    Upgrade(forward::Tunnel),
}

/// Forwards one request and writes its response.
///
/// Not an `async fn`: the head is taken apart before the future is made,
/// so the future holds its parts once (an `async fn` would hold the
/// parameter and the parts).
#[allow(clippy::manual_async_fn)] // see above: the future stays smaller
fn exchange<'a>(
    conn: &'a Arc<Conn>,
    state: &'a ListenerState,
    peer: SocketAddr,
    drain: &'a watch::Receiver<bool>,
    parsed: Parsed,
    buf: &'a mut BytesMut,
) -> impl std::future::Future<Output = Next> + 'a {
    let Parsed {
        mut request,
        framing,
        keep_alive,
        expect_continue,
        head_len,
        head,
    } = parsed;
    async move {
        buf.advance(head_len);
        let asked_head = request.method() == Method::HEAD;
        let version = request.version();
        let (body, returned) = match framing {
            Framing::Empty => (UpstreamBody::Empty, None),
            Framing::Length(n) => body_from(conn, buf, Kind::Length(n), None),
            Framing::Chunked => body_from(
                conn,
                buf,
                Kind::Chunked(ChunkedDecoder::default()),
                Some(state.protocol_errors.clone()),
            ),
        };
        if expect_continue
            && !too_large_for_its_route(state, &request, framing)
            && write::flush(conn, &mut b"HTTP/1.1 100 Continue\r\n\r\n".to_vec())
                .await
                .is_err()
        {
            return Next::Close;
        }

        // A retry re-reads the client's head, and adds again what TLS adds.
        let tls = conn.session().map(|session| {
            session.peer.tag(&mut request);
            session.peer.clone()
        });
        let raw_head = Some(forward::RawHead { bytes: head, tls });
        // In this (boxed) future, not a box of its own.
        let mut handling = std::pin::pin!(forward::handle(
            request.map(|()| body),
            &state.routes,
            peer,
            raw_head
        ));
        let response = if returned.is_none() {
            match watched(handling, conn, buf).await {
                Some(response) => response,
                None => return Next::Close,
            }
        } else {
            (&mut handling).await
        };
        let asked = write::Asked {
            head: asked_head,
            version,
            keep_alive: keep_alive && !*drain.borrow(),
        };
        // Taken apart here, not moved whole into another future.
        let (mut parts, mut body) = response.into_parts();
        let mut out = buffers::write();
        let framing = write::head(&mut parts, &body, asked, &mut out);
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            return switch(conn, &mut body, &mut out, returned.is_none()).await;
        }
        let sent = Sent {
            framing,
            asked,
            peer,
        };
        respond(conn, sent, &mut out, &mut body, returned, buf).await
    }
}

/// Waits for the response while nothing reads the socket: a client that
/// goes away ends the wait (`None`; dropping the request cancels it
/// upstream), and a pipelined request waits its turn in `buf`.
async fn watched<F: std::future::Future>(
    mut handling: std::pin::Pin<&mut F>,
    conn: &Conn,
    buf: &mut BytesMut,
) -> Option<F::Output> {
    let mut watching = true;
    loop {
        tokio::select! {
            biased;
            response = &mut handling => return Some(response),
            ready = conn.readable(), if watching => {
                ready.ok()?;
                buf.reserve(buffers::READ);
                match conn.read_available(buf) {
                    Ok(0) => return None,
                    Ok(_) => watching = false,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return None,
                }
            }
        }
    }
}

/// How a response head was written, for the body that follows it.
struct Sent {
    framing: write::Framing,
    asked: write::Asked,
    peer: SocketAddr,
}

/// Finishes a `101 Switching Protocols`: a tunnel when the upstream gave
/// one and no request body is still being read, else the connection ends.
async fn switch(conn: &Conn, body: &mut ProxyBody, out: &mut Vec<u8>, bodyless: bool) -> Next {
    match std::mem::replace(body, ProxyBody::empty()) {
        ProxyBody::Upgrade(tunnel) if bodyless => {
            if write::flush(conn, out).await.is_err() {
                return Next::Close;
            }
            Next::Upgrade(tunnel)
        }
        _ => Next::Close,
    }
}

/// Writes the response body after its head, and takes back the read
/// buffer from a request body that was still being read; says what the
/// connection does next.
async fn respond(
    conn: &Conn,
    sent: Sent,
    out: &mut Vec<u8>,
    body: &mut ProxyBody,
    returned: Option<oneshot::Receiver<body::Returned>>,
    buf: &mut BytesMut,
) -> Next {
    let complete = match write::body(conn, out, sent.framing, body).await {
        Ok(complete) => complete,
        Err(e) => {
            tracing::debug!(peer = %sent.peer, "response ended early: {e}");
            return Next::Close;
        }
    };
    *body = ProxyBody::empty();
    buffers::give_write(std::mem::take(out));
    if let Some(returned) = returned {
        // The body must have been read to its end to know where the next
        // request starts; it usually has, by the time the response is out.
        match tokio::time::timeout(BODY_AFTER_RESPONSE, returned).await {
            Ok(Ok(back)) => *buf = back.buf,
            _ => return Next::Close,
        }
    }
    if complete && sent.asked.keep_alive && sent.framing != write::Framing::Close {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// Whether the route of a request that waits for `100 Continue` will
/// refuse its body by its declared length (`max_request_body`): then the
/// client is not invited to send it and gets the 413 instead. A second
/// route lookup, for `Expect` requests only.
fn too_large_for_its_route(
    state: &ListenerState,
    req: &http::Request<()>,
    framing: Framing,
) -> bool {
    let Framing::Length(length) = framing else {
        return false;
    };
    let routes = state.routes.table.load();
    let host = forward::request_host(req);
    matches!(
        routes.find(&skiff_route::Lookup::of(req, host)),
        Some(crate::proxy::route::Target::Route(route))
            if route.max_request_body.is_some_and(|max| length > max)
    )
}

/// A request body reading from the socket, taking the buffered bytes with
/// it; a chunked one counts its framing errors in `errors`.
fn body_from(
    conn: &Arc<Conn>,
    buf: &mut BytesMut,
    kind: Kind,
    errors: Option<Arc<crate::metrics::ProtocolErrors>>,
) -> (UpstreamBody, Option<oneshot::Receiver<body::Returned>>) {
    let (back, returned) = oneshot::channel();
    let body = RequestBody::new(conn.clone(), std::mem::take(buf), kind, back, errors);
    (UpstreamBody::Http1(body), Some(returned))
}

/// Answers a request skiff will not forward, and closes.
async fn refuse(conn: &Conn, status: StatusCode, reason: &str) {
    let resp: Response<ProxyBody> = forward::local(status, format!("{reason}\n"));
    let (mut parts, mut body) = resp.into_parts();
    let asked = write::Asked {
        head: false,
        version: http::Version::HTTP_11,
        keep_alive: false,
    };
    let mut out = Vec::with_capacity(256);
    let framing = write::head(&mut parts, &body, asked, &mut out);
    let _ = write::body(conn, &mut out, framing, &mut body).await;
    conn.close_write();
}

// Moved once per request; boxing it would cost an allocation each time.
#[allow(clippy::large_enum_variant)]
enum Head {
    Request(Parsed),
    Http2,
    /// The client closed between requests.
    Closed,
}

enum ReadError {
    Head(HeadError),
    Timeout,
    Io(io::Error),
}

/// Reads until a whole request head is buffered, within the listener's
/// `max_header_bytes`, `max_headers` and `request_head_timeout`.
async fn read_head(
    conn: &Conn,
    buf: &mut BytesMut,
    first: bool,
    limits: &ListenerLimits,
) -> Result<Head, ReadError> {
    let deadline = Instant::now() + limits.request_head_timeout;
    let head_limits = HeadLimits::of(limits);
    loop {
        if !buf.is_empty() {
            if first && H2_PREFACE.starts_with(&buf[..buf.len().min(H2_PREFACE.len())]) {
                if buf.len() >= H2_PREFACE.len() {
                    return Ok(Head::Http2);
                }
            } else if let Some(parsed) = parse::parse(buf, head_limits).map_err(ReadError::Head)? {
                return Ok(Head::Request(parsed));
            }
        }
        buf.reserve(buffers::READ);
        let read = tokio::time::timeout_at(deadline, read_some(conn, buf))
            .await
            .map_err(|_| ReadError::Timeout)?;
        match read {
            Ok(0) if buf.is_empty() => return Ok(Head::Closed),
            Ok(0) => {
                return Err(ReadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client closed mid-head",
                )))
            }
            Ok(_) => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

async fn read_some(conn: &Conn, buf: &mut BytesMut) -> io::Result<usize> {
    loop {
        match conn.read_available(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.readable().await?,
            result => return result,
        }
    }
}
