//! Upstream connection pools, one per endpoint.
//!
//! HTTP/1.1: stacks of idle keep-alive connections (skiff's own client's,
//! and hyper's for TLS upstreams and streamed request bodies); a connection goes back
//! on the stack when its response body has been read to the end (a response
//! abandoned midway closes its connection, since the rest of the body would
//! still be on the wire). HTTP/2: one multiplexed connection, shared by
//! cloning its sender, re-dialled when it closes.
//!
//! The locks here guard a `Vec` push/pop or an `Option` clone and are never
//! held across an await.

use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::http::body::UpstreamBody;
use crate::http::h1::client::Connection;
use crate::tls::client::Connector;
use skiff_config::cluster::UpstreamProtocol;

/// A connection ready to carry one request.
pub(crate) enum Sender {
    /// skiff's own HTTP/1.1 client (plaintext, request body whole).
    Own(Box<Connection>),
    Http1(http1::SendRequest<UpstreamBody>),
    Http2(http2::SendRequest<UpstreamBody>),
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0} requests already wait for a new connection (max_pending)")]
    Overflow(u32),
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
    #[error("TLS handshake with {address} failed: {source}")]
    Tls {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// A cluster's requests waiting for a new upstream connection, and the
/// most it allows (the circuit breaker's `max_pending`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingLimit<'a> {
    pub(crate) waiting: &'a AtomicUsize,
    pub(crate) max: u32,
}

impl<'a> PendingLimit<'a> {
    /// Counts one more waiting request, or refuses it past the limit.
    fn enter(self) -> Result<Waiting<'a>, ConnectError> {
        if self.waiting.load(Relaxed) >= self.max as usize {
            return Err(ConnectError::Overflow(self.max));
        }
        self.waiting.fetch_add(1, Relaxed);
        Ok(Waiting(self.waiting))
    }
}

/// One request waiting for a connection; the count ends when it drops.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    since: Instant,
}

/// An endpoint's connections.
#[derive(Default)]
pub(crate) struct Pool {
    /// skiff's own client's idle connections, and when each went idle.
    own: Mutex<Vec<(Box<Connection>, Instant)>>,
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<http2::SendRequest<UpstreamBody>>>,
    /// Held while an HTTP/2 connection is being dialled, so requests that
    /// arrive together share one connection instead of each dialling.
    h2_dial: tokio::sync::Mutex<()>,
    /// Set when the endpoint left its cluster: nothing is pooled any more.
    closed: AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.idle_count())
            .field("closed", &self.closed.load(Relaxed))
            .finish()
    }
}

impl Pool {
    /// A connection to `address`: pooled when one is free, else a new one.
    /// `own`: for skiff's own HTTP/1.1 client (plaintext only).
    pub(crate) async fn checkout(
        &self,
        address: SocketAddr,
        pending: PendingLimit<'_>,
        protocol: UpstreamProtocol,
        tls: Option<&Connector>,
        connect_timeout: Duration,
        own: bool,
    ) -> Result<Sender, ConnectError> {
        match protocol {
            UpstreamProtocol::Http1 if own && tls.is_none() => {
                while let Some(conn) = self.pop_own() {
                    if conn.is_usable() {
                        return Ok(Sender::Own(conn));
                    }
                }
                let _waiting = pending.enter()?;
                Box::pin(Self::connect_own(address, connect_timeout)).await
            }
            UpstreamProtocol::Http1 => {
                while let Some(mut sender) = self.pop_idle() {
                    if sender.is_closed() {
                        continue;
                    }
                    // Its last response ended, so the connection is ready or
                    // about to be; a connection that closed meanwhile errors.
                    if sender.ready().await.is_ok() {
                        return Ok(Sender::Http1(sender));
                    }
                }
                // Boxed: dialling is the rare path, and its futures would
                // otherwise make every request's future (moved several
                // times per request) kilobytes larger.
                let _waiting = pending.enter()?;
                Box::pin(Self::connect_http1(address, tls, connect_timeout)).await
            }
            UpstreamProtocol::Http2 => {
                if let Some(sender) = self.shared_h2() {
                    return Ok(Sender::Http2(sender));
                }
                let _waiting = pending.enter()?;
                Box::pin(self.connect_http2(address, tls, connect_timeout)).await
            }
        }
    }

    async fn connect_own(
        address: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<Sender, ConnectError> {
        match dial(address, None, connect_timeout).await? {
            Dialed::Plain(io) => Ok(Sender::Own(Connection::new(io.into_inner()))),
            Dialed::Tls(_) => unreachable!("dialled without TLS"),
        }
    }

    async fn connect_http1(
        address: SocketAddr,
        tls: Option<&Connector>,
        connect_timeout: Duration,
    ) -> Result<Sender, ConnectError> {
        let sender = match dial(address, tls, connect_timeout).await? {
            Dialed::Plain(io) => http1_handshake(address, io, false).await?,
            Dialed::Tls(io) => http1_handshake(address, io, false).await?,
        };
        Ok(Sender::Http1(sender))
    }

    async fn connect_http2(
        &self,
        address: SocketAddr,
        tls: Option<&Connector>,
        connect_timeout: Duration,
    ) -> Result<Sender, ConnectError> {
        let _dialing = self.h2_dial.lock().await;
        // Another request may have connected while this one waited.
        if let Some(sender) = self.shared_h2() {
            return Ok(Sender::Http2(sender));
        }
        let sender = match dial(address, tls, connect_timeout).await? {
            Dialed::Plain(io) => http2_handshake(address, io).await?,
            Dialed::Tls(io) => http2_handshake(address, io).await?,
        };
        if !self.closed.load(Relaxed) {
            *self.h2.lock() = Some(sender.clone());
        }
        Ok(Sender::Http2(sender))
    }

    /// A new HTTP/1.1 connection that can be upgraded (WebSocket); never pooled.
    pub(crate) async fn connect_upgradable(
        address: SocketAddr,
        tls: Option<&Connector>,
        connect_timeout: Duration,
    ) -> Result<http1::SendRequest<UpstreamBody>, ConnectError> {
        Ok(match dial(address, tls, connect_timeout).await? {
            Dialed::Plain(io) => http1_handshake(address, io, true).await?,
            Dialed::Tls(io) => http1_handshake(address, io, true).await?,
        })
    }

    fn pop_own(&self) -> Option<Box<Connection>> {
        self.own.lock().pop().map(|(conn, _)| conn)
    }

    /// Returns one of skiff's own client's connections, its response
    /// read to the end.
    pub(crate) fn checkin_own(&self, conn: Box<Connection>) {
        if self.closed.load(Relaxed) {
            return;
        }
        self.own.lock().push((conn, Instant::now()));
    }

    fn pop_idle(&self) -> Option<http1::SendRequest<UpstreamBody>> {
        self.idle.lock().pop().map(|i| i.sender)
    }

    fn shared_h2(&self) -> Option<http2::SendRequest<UpstreamBody>> {
        let mut slot = self.h2.lock();
        match &*slot {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                *slot = None;
                None
            }
            None => None,
        }
    }

    /// Returns an HTTP/1.1 connection whose response has fully ended.
    pub(crate) fn checkin(&self, sender: http1::SendRequest<UpstreamBody>) {
        if self.closed.load(Relaxed) || sender.is_closed() {
            return;
        }
        self.idle.lock().push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Closes connections idle for longer than `max_idle`.
    pub(crate) fn evict_idle(&self, max_idle: Duration) {
        let now = Instant::now();
        self.idle
            .lock()
            .retain(|i| !i.sender.is_closed() && now.duration_since(i.since) < max_idle);
        self.own
            .lock()
            .retain(|(_, since)| now.duration_since(*since) < max_idle);
    }

    /// Stops pooling: idle connections close now, busy ones when they finish.
    pub(crate) fn close(&self) {
        self.closed.store(true, Relaxed);
        self.idle.lock().clear();
        self.own.lock().clear();
        self.h2.lock().take();
    }

    /// Idle HTTP/1.1 connections held.
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().len() + self.own.lock().len()
    }
}

/// A new upstream connection, plain or TLS.
// Moved once, straight into hyper's connection, which holds it anyway.
#[allow(clippy::large_enum_variant)]
enum Dialed {
    Plain(TokioIo<TcpStream>),
    Tls(TokioIo<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Connects to `address`, and runs the TLS handshake when the cluster has
/// TLS; `timeout` bounds both.
async fn dial(
    address: SocketAddr,
    tls: Option<&Connector>,
    timeout: Duration,
) -> Result<Dialed, ConnectError> {
    let connect = async {
        let stream = TcpStream::connect(address).await?;
        // Small requests and responses must not wait for Nagle.
        stream.set_nodelay(true)?;
        Ok::<_, ConnectError>(match tls {
            None => Dialed::Plain(TokioIo::new(stream)),
            Some(tls) => Dialed::Tls(TokioIo::new(
                tls.connect(address, stream)
                    .await
                    .map_err(|source| ConnectError::Tls { address, source })?,
            )),
        })
    };
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
}

/// An HTTP/1.1 client connection on `io`, its driver spawned.
async fn http1_handshake<I>(
    address: SocketAddr,
    io: I,
    upgradable: bool,
) -> Result<http1::SendRequest<UpstreamBody>, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new().handshake(io).await?;
    tokio::spawn(async move {
        let result = if upgradable {
            conn.with_upgrades().await
        } else {
            conn.await
        };
        if let Err(e) = result {
            tracing::debug!(%address, "upstream connection ended: {e}");
        }
    });
    Ok(sender)
}

/// An HTTP/2 client connection on `io`, its driver spawned.
async fn http2_handshake<I>(
    address: SocketAddr,
    io: I,
) -> Result<http2::SendRequest<UpstreamBody>, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%address, "upstream h2 connection ended: {e}");
        }
    });
    Ok(sender)
}
