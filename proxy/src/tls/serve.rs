//! Serving a TLS client connection: the handshake, then HTTP/2 when ALPN
//! chose h2 (or, without ALPN, the client opens with the HTTP/2 preface),
//! else HTTP/1.1.
//!
//! HTTP/1.1 over TLS is served by hyper's server rather than skiff's own
//! ([`crate::h1`]): that one reads the socket by readiness, which a TLS
//! stream cannot offer, and its reason to exist (an idle connection costing
//! about its socket) does not hold here, where the TLS session alone keeps
//! tens of kilobytes of buffers. The plaintext path is untouched.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::identity;
use super::metrics::Failure;
use super::server::ServerTls;
use crate::body::UpstreamBody;
use crate::forward::{self, ProxyBody};
use crate::h2::Prefixed;
use crate::limits::ListenerLimits;
use crate::listener::{ConnectionGuard, ListenerState};

/// Time a client gets to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The smallest read buffer hyper's HTTP/1 server accepts (it asserts it).
const HYPER_MIN_BUF: usize = 8192;
/// What an HTTP/2 client with prior knowledge sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the bytes are the HTTP/2 preface or cannot be; returns
/// which. Everything read stays in `buf` for the server that takes over.
async fn starts_h2<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> std::io::Result<bool> {
    use tokio::io::AsyncReadExt as _;
    while buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        if stream.read_buf(buf).await? == 0 {
            break;
        }
    }
    Ok(buf.starts_with(H2_PREFACE))
}

static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// What every request of one TLS connection carries upstream.
#[derive(Debug)]
pub struct TlsPeer {
    /// The configured identity header and the client's identity, if it
    /// presented a certificate.
    identity: Option<(HeaderName, Option<HeaderValue>)>,
}

impl TlsPeer {
    /// Marks a request as arrived over TLS: `x-forwarded-proto: https`, and
    /// the verified client identity in its header (a value the client sent
    /// itself under that name is removed, never trusted).
    pub fn tag<B>(&self, req: &mut Request<B>) {
        let headers = req.headers_mut();
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
        if let Some((name, value)) = &self.identity {
            headers.remove(name);
            if let Some(value) = value {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}

/// Serves one TLS client connection until it closes or the listener
/// drains, within the listener's `limits`.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    server: Arc<ServerTls>,
    state: Arc<ListenerState>,
    limits: Arc<ListenerLimits>,
    drain: watch::Receiver<bool>,
    guard: ConnectionGuard,
) {
    let _guard = guard;
    if let Some(done) = handshake(stream, peer, &server, &state.name).await {
        serve_http(done, peer, state, &limits, drain).await;
    }
}

/// A finished handshake: the stream, what its requests carry, and the
/// protocol ALPN chose.
pub struct Handshaken {
    pub tls: tokio_rustls::server::TlsStream<TcpStream>,
    pub peer: Arc<TlsPeer>,
    pub alpn: Option<Vec<u8>>,
}

/// Runs the server handshake, counting it in `server`'s stats; a failed
/// one is logged (a refused client certificate as a warning) and `None`.
pub async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    server: &ServerTls,
    listener: &str,
) -> Option<Handshaken> {
    let acceptor = tokio_rustls::TlsAcceptor::from(server.current());
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            refused(server, listener, peer, &e);
            return None;
        }
        Err(_) => {
            server.stats.failed(Failure::Timeout);
            tracing::debug!(listener = %listener, %peer, "TLS handshake timed out");
            return None;
        }
    };
    server.stats.handshakes.fetch_add(1, Relaxed);
    let (_, session) = tls.get_ref();
    if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        server.stats.resumed.fetch_add(1, Relaxed);
    }
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let identity = server.identity_header.as_ref().map(|name| {
        let value = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| identity::names(leaf))
            .filter(|names| names.all().next().is_some())
            .and_then(|names| HeaderValue::from_str(&names.joined()).ok());
        (name.clone(), value)
    });
    Some(Handshaken {
        tls,
        peer: Arc::new(TlsPeer { identity }),
        alpn,
    })
}

/// Serves HTTP on a finished handshake: HTTP/2 when ALPN chose h2 (or,
/// without ALPN, the client opens with the preface), else HTTP/1.1.
pub async fn serve_http(
    done: Handshaken,
    peer: SocketAddr,
    state: Arc<ListenerState>,
    limits: &ListenerLimits,
    mut drain: watch::Receiver<bool>,
) {
    let Handshaken {
        mut tls,
        peer: tls_peer,
        alpn,
    } = done;
    let (h2, read) = match alpn.as_deref() {
        Some(b"h2") => (true, Bytes::new()),
        Some(_) => (false, Bytes::new()),
        // No ALPN: HTTP/2 with prior knowledge is told by its preface, as
        // on a plaintext port.
        None => {
            let mut buf = BytesMut::new();
            // The first bytes tell HTTP/1 from HTTP/2: part of the head.
            let first_bytes = limits.request_head_timeout;
            match tokio::time::timeout(first_bytes, starts_h2(&mut tls, &mut buf)).await {
                Ok(Ok(h2)) => (h2, buf.freeze()),
                _ => return,
            }
        }
    };
    if h2 {
        crate::h2::serve_io(tls, read, state, limits, peer, drain, Some(tls_peer)).await;
        return;
    }

    let service = service_fn(move |mut req: Request<Incoming>| {
        let state = state.clone();
        let tls_peer = tls_peer.clone();
        async move {
            tls_peer.tag(&mut req);
            let client_upgrade = req
                .headers()
                .contains_key(http::header::UPGRADE)
                .then(|| hyper::upgrade::on(&mut req));
            let req = req.map(UpstreamBody::Http2);
            let mut resp = forward::handle(req, &state, peer, None).await;
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let ProxyBody::Upgrade(tunnel) =
                    std::mem::replace(resp.body_mut(), ProxyBody::empty())
                {
                    if let Some(client) = client_upgrade {
                        tokio::spawn(async move {
                            if let Ok(client) = client.await {
                                tunnel.run(TokioIo::new(client), Bytes::new()).await;
                            }
                        });
                    }
                }
            }
            Ok::<_, Infallible>(resp)
        }
    });
    // With the timer, hyper's header read timeout (`request_head_timeout`)
    // also closes a keep-alive connection idle that long (nginx's
    // keepalive_timeout: 75 s); hyper has no idle timeout of its own.
    // Its read buffer is the head limit, but no less than hyper's minimum.
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_head_timeout)
        .max_headers(limits.max_headers as usize)
        .max_buf_size((limits.max_header_bytes as usize).max(HYPER_MIN_BUF))
        .serve_connection(TokioIo::new(Prefixed::new(read, tls)), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, "HTTPS connection ended: {e}");
            }
            return;
        }
        _ = drain.wait_for(|d| *d) => {}
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, "HTTPS connection ended while draining: {e}");
    }
}

/// Counts and logs a failed handshake. A refused client certificate is
/// logged as a warning naming the peer and the identity it presented.
fn refused(server: &ServerTls, listener: &str, peer: SocketAddr, e: &std::io::Error) {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::NoCertificatesPresented) => {
            server.stats.failed(Failure::ClientCert);
            tracing::warn!(listener = %listener, %peer, "TLS client refused: it presented no client certificate");
        }
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(why))) => {
            server.stats.failed(Failure::ClientCert);
            tracing::warn!(listener = %listener, %peer, "TLS client refused: {}", why.0);
        }
        Some(rustls::Error::InvalidCertificate(why)) => {
            server.stats.failed(Failure::ClientCert);
            tracing::warn!(listener = %listener, %peer, "TLS client refused: {why}");
        }
        _ => {
            server.stats.failed(Failure::Handshake);
            tracing::debug!(listener = %listener, %peer, "TLS handshake failed: {e}");
        }
    }
}
