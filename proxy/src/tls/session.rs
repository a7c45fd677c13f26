//! A finished TLS session driven by hand over the socket's readiness, so
//! that skiff's own HTTP/1 server serves HTTPS as it serves plaintext: reads return what the socket has, decrypted, without a
//! syscall that can only fail with `EAGAIN`; a response's head and body go
//! into one TLS record where they fit, and out in one `write`.
//!
//! The rustls state sits behind a mutex because a request body streaming
//! to the upstream reads the connection while the response is written to
//! it; the two never wait on each other for long, since the lock is held
//! only around non-blocking calls.
//!
//! A client that closes its TCP connection without a `close_notify` alert
//! is taken as a plain end of stream, as for plaintext: HTTP's framing,
//! not TLS, tells a whole message from a cut one.

use parking_lot::{Mutex, MutexGuard};
use std::io::{self, IoSlice, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use rustls::ServerConnection;
use tokio::io::{Interest, ReadBuf};
use tokio::net::TcpStream;

use super::TlsPeer;

/// The TLS half of a client connection.
#[derive(Debug)]
pub(crate) struct Session {
    tls: Mutex<ServerConnection>,
    /// rustls holds decrypted bytes (or the end of the stream) not yet
    /// read: a wait for the socket must not begin. Set by every read.
    buffered: AtomicBool,
    /// What every request on this connection carries upstream.
    pub(crate) peer: Arc<TlsPeer>,
}

impl Session {
    /// Takes over a session whose handshake is done. Anything the
    /// handshake left to send (TLS 1.3 session tickets) goes out with the
    /// first write if the socket cannot take it now.
    pub(crate) fn new(
        stream: &TcpStream,
        mut tls: ServerConnection,
        peer: Arc<TlsPeer>,
    ) -> Session {
        let _ = send(&mut tls, stream);
        // The handshake may have read records past its end (a request sent
        // with the client's Finished) that no socket readiness will announce.
        let buffered = tls.process_new_packets().is_err() || has_plaintext(&mut tls);
        Session {
            tls: Mutex::new(tls),
            buffered: AtomicBool::new(buffered),
            peer,
        }
    }

    fn lock(&self) -> MutexGuard<'_, ServerConnection> {
        self.tls.lock()
    }

    /// Reads what the client has sent, decrypted, into `buf`: the same
    /// contract as a plaintext socket's read (`Ok(0)` at the end of the
    /// stream, `WouldBlock` when nothing has arrived).
    pub(crate) fn read_available(
        &self,
        stream: &TcpStream,
        buf: &mut BytesMut,
    ) -> io::Result<usize> {
        self.read_into(stream, buf)
    }

    fn read_into(&self, stream: &TcpStream, dst: &mut impl Destination) -> io::Result<usize> {
        let mut tls = self.lock();
        let result = Self::read_locked(&mut tls, stream, dst);
        self.buffered.store(has_plaintext(&mut tls), Relaxed);
        result
    }

    fn read_locked(
        tls: &mut ServerConnection,
        stream: &TcpStream,
        dst: &mut impl Destination,
    ) -> io::Result<usize> {
        loop {
            if let Some(delivered) = deliver(tls, dst) {
                return delivered;
            }
            let mut got = None;
            let result = stream.try_io(Interest::READABLE, || {
                let mut socket = SocketRead {
                    stream,
                    short: false,
                };
                let n = tls.read_tls(&mut socket)?;
                got = Some(n);
                if n > 0 && socket.short {
                    // Drained: clear the readiness now, as the plaintext
                    // path does, so the next wait costs no failed `recv`.
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match (result, got) {
                (Ok(_), _) => {}
                (Err(e), Some(_)) if e.kind() == io::ErrorKind::WouldBlock => {}
                (Err(e), _) => return Err(e),
            }
            if let Err(e) = tls.process_new_packets() {
                // rustls queued an alert saying why; it goes if it can.
                let _ = send(tls, stream);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if tls.wants_write() {
                // A reply the protocol owes (a key update): sent now if the
                // socket takes it, else with the next response.
                send(tls, stream)?;
            }
        }
    }

    /// Whether decrypted bytes (or the end of the stream) wait to be read,
    /// so that waiting for the socket would be wrong.
    #[inline]
    pub(crate) fn has_buffered(&self) -> bool {
        self.buffered.load(Relaxed)
    }

    /// Encrypts and writes both slices whole, in order: one TLS record
    /// (and one `write`) when they fit in one.
    pub(crate) async fn write_all(
        &self,
        stream: &TcpStream,
        mut parts: [&[u8]; 2],
    ) -> io::Result<()> {
        loop {
            let sent = {
                let mut tls = self.lock();
                while !parts[0].is_empty() || !parts[1].is_empty() {
                    let slices = [IoSlice::new(parts[0]), IoSlice::new(parts[1])];
                    let mut n = encrypt(&mut tls, &slices)?;
                    if n == 0 {
                        // rustls' send buffer is full: write it out first.
                        break;
                    }
                    for part in parts.iter_mut() {
                        let take = n.min(part.len());
                        *part = &part[take..];
                        n -= take;
                    }
                }
                send(&mut tls, stream)?
            };
            if sent && parts[0].is_empty() && parts[1].is_empty() {
                return Ok(());
            }
            if !sent {
                stream.writable().await?;
            }
        }
    }

    /// Says `close_notify` before the connection closes, if the socket
    /// takes it now.
    pub(crate) fn close_notify(&self, stream: &TcpStream) {
        let mut tls = self.lock();
        tls.send_close_notify();
        let _ = send(&mut tls, stream);
    }

    /// Reads decrypted bytes into `buf` (`AsyncRead` over the session).
    pub(crate) fn poll_read(
        &self,
        stream: &TcpStream,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !self.has_buffered() {
                ready!(stream.poll_read_ready(cx))?;
            }
            match self.read_into(stream, buf) {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Encrypts what it can of `bufs` and sends it at once, as the socket
    /// takes it: a tunnel's bytes are not held back for a flush that may
    /// be late to come (`AsyncWrite` over the session).
    pub(crate) fn poll_write_vectored(
        &self,
        stream: &TcpStream,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        loop {
            let mut tls = self.lock();
            let n = encrypt(&mut tls, bufs)?;
            let sent = send(&mut tls, stream)?;
            drop(tls);
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
            if !sent {
                ready!(stream.poll_write_ready(cx))?;
            }
        }
    }

    /// Sends what rustls holds.
    pub(crate) fn poll_flush(
        &self,
        stream: &TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if send(&mut self.lock(), stream)? {
                return Poll::Ready(Ok(()));
            }
            ready!(stream.poll_write_ready(cx))?;
        }
    }

    /// Says `close_notify`, sends it, and ends the socket's sending side.
    pub(crate) fn poll_shutdown(
        &self,
        stream: &TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        self.lock().send_close_notify();
        ready!(self.poll_flush(stream, cx))?;
        socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write)?;
        Poll::Ready(Ok(()))
    }
}

/// Hands plaintext to rustls to encrypt; returns how much it took. One
/// slice goes as one: rustls collects several into a vector first.
fn encrypt(tls: &mut ServerConnection, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let mut filled = bufs.iter().filter(|b| !b.is_empty());
    match (filled.next(), filled.next()) {
        (None, _) => Ok(0),
        (Some(only), None) => tls.writer().write(only),
        _ => tls.writer().write_vectored(bufs),
    }
}

/// Writes out what rustls has to send. `Ok(false)` when the socket would
/// block first.
fn send(tls: &mut ServerConnection, stream: &TcpStream) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(&mut SocketWrite { stream }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Where decrypted bytes go: the server's read buffer, or a tunnel's.
trait Destination {
    /// Bytes it takes now (more than 0).
    fn room(&self) -> usize;
    fn put(&mut self, bytes: &[u8]);
}

impl Destination for BytesMut {
    /// Its spare capacity; a full buffer grows.
    fn room(&self) -> usize {
        match self.capacity() - self.len() {
            0 => usize::MAX,
            spare => spare,
        }
    }
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Destination for ReadBuf<'_> {
    fn room(&self) -> usize {
        self.remaining()
    }
    fn put(&mut self, bytes: &[u8]) {
        self.put_slice(bytes);
    }
}

/// Moves the decrypted bytes rustls holds into `dst`, as many as it has
/// room for; `None` when it holds none and the stream goes on.
fn deliver(tls: &mut ServerConnection, dst: &mut impl Destination) -> Option<io::Result<usize>> {
    let mut reader = tls.reader();
    let (mut room, mut total) = (dst.room(), 0);
    loop {
        match io::BufRead::fill_buf(&mut reader) {
            // The end of the stream; a read after these bytes says so.
            Ok([]) => return Some(Ok(total)),
            Ok(chunk) => {
                let n = room.min(chunk.len());
                dst.put(&chunk[..n]);
                io::BufRead::consume(&mut reader, n);
                (room, total) = (room - n, total + n);
                if room == 0 {
                    return Some(Ok(total));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return (total > 0).then_some(Ok(total));
            }
            // The TCP stream ended without `close_notify`.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Some(Ok(total)),
            Err(_) if total > 0 => return Some(Ok(total)),
            Err(e) => return Some(Err(e)),
        }
    }
}

/// Whether a read would return without the socket: decrypted bytes, the
/// end of the stream, or an error to report.
fn has_plaintext(tls: &mut ServerConnection) -> bool {
    !matches!(io::BufRead::fill_buf(&mut tls.reader()), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// The socket as rustls reads it: non-blocking, noting a short read.
struct SocketRead<'a> {
    stream: &'a TcpStream,
    short: bool,
}

impl Read for SocketRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.try_read(buf)?;
        self.short = n < buf.len();
        Ok(n)
    }
}

/// The socket as rustls writes to it: non-blocking, vectored.
struct SocketWrite<'a> {
    stream: &'a TcpStream,
}

impl Write for SocketWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.stream.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
