//! Serving a TLS client connection: the handshake, then HTTP/2 when ALPN
//! chose h2 (or, without ALPN, the client opens with the HTTP/2 preface),
//! else HTTP/1.1, served by skiff's own HTTP/1 server over the session
//! ([`crate::tls::session`]), as plaintext is.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::io::conn::Conn;
use crate::metrics::tls::Failure;
use crate::server::state::{ConnectionGuard, ListenerState};
use crate::tls::identity;
use crate::tls::server::ServerTls;
use crate::tls::session::Session;
use crate::tls::TlsPeer;
use skiff_config::limits::ListenerLimits;

/// Time a client gets to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one TLS client connection until it closes or the listener
/// drains, within the listener's `limits`.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    server: Arc<ServerTls>,
    state: Arc<ListenerState>,
    limits: Arc<ListenerLimits>,
    drain: watch::Receiver<bool>,
    guard: ConnectionGuard,
) {
    if let Some(done) = handshake(stream, peer, &server, &state.routes.name).await {
        serve_http(done, peer, state, limits, drain, guard).await;
    }
}

/// A finished handshake: the stream, what its requests carry, and the
/// protocol ALPN chose.
pub(crate) struct Handshaken {
    pub(crate) tls: tokio_rustls::server::TlsStream<TcpStream>,
    pub(crate) peer: Arc<TlsPeer>,
    pub(crate) alpn: Option<Vec<u8>>,
}

/// Runs the server handshake, counting it in `server`'s stats; a failed
/// one is logged (a refused client certificate as a warning) and `None`.
pub(crate) async fn handshake(
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
        peer: Arc::new(TlsPeer::new(identity)),
        alpn,
    })
}

/// Serves HTTP on a finished handshake: HTTP/2 when ALPN chose h2, else
/// skiff's own HTTP/1 server ([`crate::server::h1`]), which also tells HTTP/2
/// with prior knowledge by its preface when the client named no protocol.
/// The connection joins its listener's registry, which closes it when it
/// has been idle for `idle_timeout` or when the listener drains.
pub(crate) async fn serve_http(
    done: Handshaken,
    peer: SocketAddr,
    state: Arc<ListenerState>,
    limits: Arc<ListenerLimits>,
    drain: watch::Receiver<bool>,
    guard: ConnectionGuard,
) {
    let Handshaken {
        tls,
        peer: tls_peer,
        alpn,
    } = done;
    if alpn.as_deref() == Some(b"h2") {
        let _guard = guard;
        crate::server::h2::serve_io(
            tls,
            Bytes::new(),
            state,
            &limits,
            peer,
            drain,
            Some(tls_peer),
        )
        .await;
        return;
    }
    let (stream, session) = tls.into_inner();
    let session = Session::new(&stream, session, tls_peer);
    let conn = Arc::new(Conn::tls(stream, session));
    guard.register(&conn);
    crate::server::h1::serve(conn, state, limits, peer, drain, guard).await;
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
