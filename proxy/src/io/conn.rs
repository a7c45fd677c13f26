//! Client connections as the listener sees them: the socket, whether it
//! is idle, and the per-listener registry that closes idle ones.
//!
//! An idle keep-alive connection should cost little more than its socket
//! (HAProxy and nginx hold about 1 KB each). So an idle connection's task
//! waits on socket readiness alone, with no timer and no drain future of
//! its own; the listener's [`Registry`] closes it instead, when it has
//! been idle too long or when the listener drains, by shutting down the
//! socket's read side, which wakes the task to an end of stream. Whether
//! the task or the registry gets to an idle connection first is decided by
//! one compare-and-swap, so a request that arrives just then is either
//! served or never read, never cut off midway.

use parking_lot::Mutex;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::clock::now_ms;
use crate::tls::session::Session;

/// `idle` while a request is being read or served.
const BUSY: u64 = 0;
/// `idle` once the registry has claimed the connection to close it.
const CLOSING: u64 = u64::MAX;

/// A client connection's socket, shared by its task, a request body that
/// reads from it, and (weakly) the listener's registry.
///
/// Reads and writes go through it, so the HTTP/1 server serves a TLS
/// connection (whose bytes pass through its [`Session`]) as it serves a
/// plaintext one.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    /// Boxed: a plaintext connection, idle by the ten thousand, pays a
    /// pointer for it.
    tls: Option<Box<Session>>,
    /// `BUSY`, `CLOSING`, or when it went idle (ms since the process's epoch, + 1: [`now_ms`]).
    idle: AtomicU64,
}

impl Conn {
    pub(crate) fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            tls: None,
            idle: AtomicU64::new(BUSY),
        }
    }

    /// A connection whose TLS handshake is done.
    pub(crate) fn tls(stream: TcpStream, session: Session) -> Conn {
        Conn {
            stream,
            tls: Some(Box::new(session)),
            idle: AtomicU64::new(BUSY),
        }
    }

    pub(crate) fn session(&self) -> Option<&Session> {
        self.tls.as_deref()
    }

    /// Reads what the client has sent into `buf`: `Ok(0)` at the end of
    /// the stream, `WouldBlock` when nothing has arrived yet.
    #[inline]
    pub(crate) fn read_available(&self, buf: &mut BytesMut) -> io::Result<usize> {
        match &self.tls {
            None => read_available(&self.stream, buf),
            Some(session) => session.read_available(&self.stream, buf),
        }
    }

    /// Ready when a read will not block: the socket has bytes, or the TLS
    /// session holds decrypted ones.
    #[inline]
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.tls.as_ref().is_some_and(|s| s.has_buffered()) {
            return Poll::Ready(Ok(()));
        }
        self.stream.poll_read_ready(cx)
    }

    pub(crate) async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_read_ready(cx)).await
    }

    /// Writes both slices whole, in order.
    #[inline]
    pub(crate) async fn write_all(&self, parts: [&[u8]; 2]) -> io::Result<()> {
        match &self.tls {
            None => write_all(&self.stream, parts).await,
            Some(session) => session.write_all(&self.stream, parts).await,
        }
    }

    /// Ends the sending side after what was written (TLS: `close_notify`
    /// first).
    pub(crate) fn close_write(&self) {
        if let Some(session) = &self.tls {
            session.close_notify(&self.stream);
        }
        let _ = socket2::SockRef::from(&self.stream).shutdown(std::net::Shutdown::Write);
    }

    /// Marks the connection idle: the registry may close it from now on.
    pub(crate) fn set_idle(&self) {
        self.idle.store(now_ms(), SeqCst);
    }

    /// Takes the connection back from idle to serve a request. False when
    /// the registry got there first and is closing it.
    pub(crate) fn claim(&self) -> bool {
        self.idle.swap(BUSY, SeqCst) != CLOSING
    }

    /// Closes the connection if it is idle (and, with `older_than`, idle
    /// for at least that long). Returns whether it did.
    fn close_if_idle(&self, older_than: Option<(u64, u64)>) -> bool {
        let since = self.idle.load(SeqCst);
        if since == BUSY || since == CLOSING {
            return false;
        }
        if let Some((now, limit)) = older_than {
            if now.saturating_sub(since) < limit {
                return false;
            }
        }
        if self
            .idle
            .compare_exchange(since, CLOSING, SeqCst, SeqCst)
            .is_err()
        {
            return false;
        }
        // Wakes the task waiting for readability to an end of stream.
        let _ = socket2::SockRef::from(&self.stream).shutdown(std::net::Shutdown::Both);
        true
    }
}

/// Reads what the socket has. A read that comes back short has drained
/// it, so the socket's readiness is cleared then and there: the next wait
/// sleeps until new bytes arrive instead of first paying for a `recv`
/// that can only fail with `EAGAIN`, as tokio would otherwise do. (One
/// syscall of the five per proxied request; HAProxy makes four.)
///
/// Race-free: tokio clears readiness only as of the readiness event seen
/// before the read, so bytes arriving after the read still wake the task.
pub(crate) fn read_available(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let room = buf.capacity() - buf.len();
    let mut read = 0;
    let result = stream.try_io(tokio::io::Interest::READABLE, || {
        read = stream.try_read_buf(buf)?;
        if read > 0 && read < room {
            // Drained: report it as "would block" so tokio clears readiness.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(read)
    });
    match result {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && read > 0 => Ok(read),
        result => result,
    }
}

/// Writes both slices whole to a plaintext socket, in order, with as few
/// syscalls as the socket allows.
pub(crate) async fn write_all(stream: &TcpStream, mut parts: [&[u8]; 2]) -> io::Result<()> {
    loop {
        if parts[0].is_empty() {
            parts = [parts[1], &[]];
            if parts[0].is_empty() {
                return Ok(());
            }
        }
        let result = if parts[1].is_empty() {
            stream.try_write(parts[0])
        } else {
            stream.try_write_vectored(&[IoSlice::new(parts[0]), IoSlice::new(parts[1])])
        };
        match result {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(mut n) => {
                for part in parts.iter_mut() {
                    let take = n.min(part.len());
                    *part = &part[take..];
                    n -= take;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
}

/// A TLS client connection as a byte stream, for what the HTTP/1 server
/// hands on: a WebSocket tunnel, or HTTP/2 spoken without ALPN.
#[derive(Debug)]
pub(crate) struct TlsStream {
    conn: Conn,
}

impl TlsStream {
    pub(crate) fn new(conn: Conn) -> TlsStream {
        TlsStream { conn }
    }

    fn session(&self) -> &Session {
        self.conn.session().expect("a TLS stream has a session")
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.session().poll_read(&this.conn.stream, cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.session()
            .poll_write_vectored(&this.conn.stream, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.session().poll_flush(&this.conn.stream, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.session().poll_shutdown(&this.conn.stream, cx)
    }
}

/// The open client connections of one listener.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    conns: Mutex<Vec<Weak<Conn>>>,
}

impl Registry {
    /// Adds a new connection.
    pub(crate) fn register(&self, conn: &Arc<Conn>) {
        self.lock().push(Arc::downgrade(conn));
    }

    /// Closes connections idle longer than `limit` and forgets closed ones.
    pub(crate) fn sweep(&self, limit: Duration) -> usize {
        let (now, limit) = (now_ms(), limit.as_millis() as u64);
        let mut closed = 0;
        self.lock().retain(|weak| match weak.upgrade() {
            Some(conn) => {
                closed += usize::from(conn.close_if_idle(Some((now, limit))));
                true
            }
            None => false,
        });
        closed
    }

    /// Closes every idle connection now (draining).
    pub(crate) fn close_idle(&self) -> usize {
        let mut closed = 0;
        for conn in self.lock().iter().filter_map(Weak::upgrade) {
            closed += usize::from(conn.close_if_idle(None));
        }
        closed
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Vec<Weak<Conn>>> {
        self.conns.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (Arc<Conn>, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (Arc::new(Conn::new(server)), client)
    }

    #[tokio::test]
    async fn only_idle_connections_are_closed_and_a_claim_wins_once() {
        let registry = Registry::default();
        let (busy, _c1) = pair().await;
        let (idle, _c2) = pair().await;
        registry.register(&busy);
        registry.register(&idle);
        idle.set_idle();
        assert_eq!(
            registry.sweep(Duration::from_secs(3600)),
            0,
            "not idle long enough"
        );
        assert_eq!(registry.close_idle(), 1);
        assert!(!idle.claim(), "the registry closed it first");
        assert!(busy.claim());
        // Closed connections are forgotten at the next sweep.
        drop(idle);
        registry.sweep(Duration::from_secs(3600));
        assert_eq!(registry.lock().len(), 1);
    }

    #[tokio::test]
    async fn a_claimed_connection_is_not_closed() {
        let registry = Registry::default();
        let (conn, _c) = pair().await;
        registry.register(&conn);
        conn.set_idle();
        assert!(conn.claim());
        assert_eq!(registry.close_idle(), 0);
        assert_eq!(registry.sweep(Duration::ZERO), 0);
    }
}
