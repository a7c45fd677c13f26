//! skiff's HTTP/2 server connection (RFC 9113): one task reads frames,
//! runs the streams' futures, frames their responses as flow control
//! allows, and sends what a wake-up produced in one write.
//!
//! Why not hyper's: on the h2 benchmark (100 concurrent streams) hyper's
//! server and the h2 crate under it spent about 25,000 of the 42,500
//! instructions skiff used per request, in stream bookkeeping shared
//! between tasks, a priority queue, and HPACK with a dynamic table on the
//! way out. Here a stream is an entry in one map, owned by the
//! connection's task; its future runs on that task (no task per request),
//! and responses are encoded without a dynamic table.
//!
//! What the connection defends against, and how it answers (SECURITY.md):
//! streams past `max_concurrent_streams` get `REFUSED_STREAM`; a header
//! list past `max_header_bytes` gets `431`; streams the client resets
//! before skiff has run them, past `max_pending_accept_reset_streams` in
//! one read (rapid reset), and streams skiff resets for the client's
//! errors, past `max_local_error_reset_streams`, get `GOAWAY`
//! `ENHANCE_YOUR_CALM`; a header block that grows past what any allowed
//! head needs, `GOAWAY` too. Frames that only ask for an answer (PING,
//! SETTINGS) stop being read while output waits to be sent, so a client
//! that does not read cannot make skiff buffer for it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{header, HeaderMap, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{self, flag, kind, setting, Reason};
use super::hpack;
use super::request::{Fields, Head};
use super::stream::{Out, Ready, RequestBody, Shared, Slot, StreamTask};
use super::Activity;
use crate::http::body::UpstreamBody;
use crate::metrics::{ProtocolError, ProtocolErrors};
use crate::tls::TlsPeer;
use skiff_config::limits::ListenerLimits;

/// The window each stream, and the connection, give the client for
/// request bodies not yet forwarded (hyper's and Envoy's order of size).
const RECV_WINDOW: u32 = 1 << 20;
/// Output waiting for the socket past which no more response frames are
/// made and nothing more is read.
const OUT_LIMIT: usize = 64 * 1024;
/// Read buffer space made free before each read.
const READ_CHUNK: usize = 16 * 1024;
/// DATA payloads smaller than this are copied out of the read buffer.
const COPY_BELOW: usize = 8 * 1024;
/// Rounds of reading, running streams and writing in one wake-up before
/// the task lets others run (what is left wakes it again).
const ROUNDS: usize = 4;
/// The dynamic table skiff's decoder keeps (the default; never raised).
const HEADER_TABLE_SIZE: usize = 4096;

/// Stream ids are unique per connection and need no hashing.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        // Spread the odd client ids over the table's low bits.
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type StreamMap = HashMap<u32, Stream, BuildHasherDefault<IdHasher>>;

/// A stream, as the connection sees it.
struct Stream {
    shared: Arc<Shared>,
    /// What the client lets skiff send on this stream.
    send_window: i64,
    /// What skiff lets the client send.
    recv_window: i64,
    /// Request bytes forwarded and not yet given back to `recv_window`.
    unacked: usize,
    /// The client's END_STREAM arrived.
    recv_closed: bool,
    /// The request body was dropped unread: what arrives is discarded.
    body_gone: bool,
    /// `content-length` of the request, and DATA bytes counted against it.
    expect: Option<u64>,
    received: u64,
    /// The read (see [`Connection::reads`]) that opened the stream.
    opened_in: u64,
    /// The response's END_STREAM was sent.
    send_closed: bool,
    /// In [`Connection::waiting`].
    waiting: bool,
}

/// How a new stream is answered: forwarded by the owner's task, or
/// refused by the connection itself with a status and a reason (which the
/// owner's task turns into its own kind of response).
// Moved once into the stream's future, which holds the request anyway:
// boxing it would cost an allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Answer {
    Forward(http::Request<UpstreamBody>),
    Local(StatusCode, String),
}

/// Makes a stream's future from its answer, the owner's context, the
/// client's address and the stream; a function, not a closure, so that
/// the connection can name the future's type and reuse its boxes.
pub(crate) type MakeTask<F, C> = fn(Answer, C, SocketAddr, Arc<Shared>) -> F;

/// A header block still waiting for its CONTINUATION frames.
struct Partial {
    stream: u32,
    end_stream: bool,
    self_dependent: bool,
    block: Vec<u8>,
}

/// A connection error: GOAWAY with `reason`, then close.
#[derive(Debug)]
struct ConnError(Reason, &'static str);

type Result<T, E = ConnError> = std::result::Result<T, E>;

pub(crate) struct Connection<S, F, C> {
    io: S,
    rbuf: BytesMut,
    out: Vec<u8>,
    sent: usize,
    /// The client's preface has been read.
    preface: bool,
    /// The client's first SETTINGS has been read.
    settings: bool,
    read_closed: bool,
    decoder: hpack::Decoder,
    encoder: hpack::Encoder,
    /// Scratch for encoding a header block.
    block: Vec<u8>,
    continuation: Option<Partial>,
    streams: StreamMap,
    tasks: FuturesUnordered<StreamTask<F>>,
    /// Emptied boxes of finished streams, kept for the next ones: no
    /// more than the streams open when one finishes, and one once no
    /// stream is open.
    spare: Vec<Slot<F>>,
    make_task: MakeTask<F, C>,
    ready: Arc<Ready>,
    ready_ids: Vec<u32>,
    /// Streams with response bytes waiting for a window or for room in
    /// `out`.
    waiting: Vec<u32>,
    /// A window opened or `out` drained since `waiting` was last tried.
    retry_waiting: bool,
    /// The client's SETTINGS: largest frame and new streams' window.
    peer_max_frame: usize,
    peer_window: i64,
    send_window: i64,
    recv_window: i64,
    unacked: usize,
    /// The highest stream id the client has opened.
    max_seen: u32,
    /// GOAWAY sent, with this last stream id: no new streams.
    goaway: Option<u32>,
    /// A connection error was sent: flush and close.
    fatal: bool,
    /// The client sent GOAWAY: no new streams will come.
    peer_goaway: bool,
    /// Reads so far, and the count of streams reset by the client before
    /// their task ran in the current one.
    reads: u64,
    polled_reads: u64,
    pending_resets: u32,
    local_resets: u32,
    limits: Limits,
    /// What the owner's tasks are given with each stream.
    context: C,
    /// Where what the client does wrong is counted.
    errors: Arc<ProtocolErrors>,
    peer: SocketAddr,
    tls: Option<Arc<TlsPeer>>,
    activity: Arc<Activity>,
}

/// The listener limits the connection enforces.
#[derive(Clone, Copy)]
struct Limits {
    max_list: usize,
    max_fields: usize,
    max_block: usize,
    max_streams: usize,
    max_pending_resets: u32,
    max_local_resets: u32,
}

impl<S, F, C> Connection<S, F, C>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: std::future::Future<Output = ()>,
    C: Clone,
{
    #[allow(clippy::too_many_arguments)] // each is the connection's own
    pub(crate) fn new(
        io: S,
        read: Bytes,
        (context, errors): (C, Arc<ProtocolErrors>),
        limits: &ListenerLimits,
        peer: SocketAddr,
        tls: Option<Arc<TlsPeer>>,
        activity: Arc<Activity>,
        make_task: MakeTask<F, C>,
    ) -> Connection<S, F, C> {
        let max_list = limits.max_header_bytes as usize;
        let limits = Limits {
            max_list,
            max_fields: limits.max_headers as usize,
            // HPACK makes a list smaller, never much larger: a block past
            // twice the list limit (and a frame) is no head to answer.
            max_block: 2 * max_list + frame::DEFAULT_MAX_FRAME,
            max_streams: limits.http2.max_concurrent_streams as usize,
            max_pending_resets: limits.http2.max_pending_accept_reset_streams,
            max_local_resets: limits.http2.max_local_error_reset_streams,
        };
        let mut out = Vec::with_capacity(4096);
        frame::settings(
            &mut out,
            &[
                (setting::MAX_CONCURRENT_STREAMS, limits.max_streams as u32),
                (setting::INITIAL_WINDOW_SIZE, RECV_WINDOW),
                (setting::MAX_HEADER_LIST_SIZE, max_list as u32),
                (setting::ENABLE_PUSH, 0),
            ],
        );
        let extra = RECV_WINDOW - frame::DEFAULT_WINDOW as u32;
        frame::window_update(&mut out, 0, extra);
        let mut rbuf = BytesMut::with_capacity(read.len().max(READ_CHUNK));
        rbuf.extend_from_slice(&read);
        Connection {
            io,
            rbuf,
            out,
            sent: 0,
            preface: false,
            settings: false,
            read_closed: false,
            decoder: hpack::Decoder::new(HEADER_TABLE_SIZE),
            encoder: hpack::Encoder::new(),
            block: Vec::new(),
            continuation: None,
            streams: StreamMap::default(),
            tasks: FuturesUnordered::new(),
            spare: Vec::new(),
            make_task,
            ready: Arc::new(Ready::default()),
            ready_ids: Vec::new(),
            waiting: Vec::new(),
            retry_waiting: false,
            peer_max_frame: frame::DEFAULT_MAX_FRAME,
            peer_window: frame::DEFAULT_WINDOW,
            send_window: frame::DEFAULT_WINDOW,
            recv_window: i64::from(RECV_WINDOW),
            unacked: 0,
            max_seen: 0,
            goaway: None,
            fatal: false,
            peer_goaway: false,
            reads: 0,
            polled_reads: 0,
            pending_resets: 0,
            local_resets: 0,
            limits,
            context,
            errors,
            peer,
            tls,
            activity,
        }
    }

    /// Sends GOAWAY (`NO_ERROR`): streams already opened finish, no new
    /// one is taken, and the connection closes when the last is done.
    pub(crate) fn go_away(&mut self) {
        if self.goaway.is_none() {
            self.goaway = Some(self.max_seen);
            frame::goaway(&mut self.out, self.max_seen, Reason::NO_ERROR, b"");
        }
    }

    /// After GOAWAY and the write side's close: reads and drops what the
    /// client still sends (its last WINDOW_UPDATEs, say) until it closes.
    /// Closing a socket with unread input makes the kernel send RST, which
    /// can destroy the last response and the GOAWAY before the client
    /// reads them.
    pub(crate) fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            self.rbuf.clear();
            self.rbuf.reserve(READ_CHUNK);
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Runs the connection until it is done.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.ready.register(cx.waker());
        for _ in 0..ROUNDS {
            let mut progress = false;
            let reading = !self.fatal && !self.read_closed;
            // Not read while output waits: once it is sent, this round
            // must read (no read waker is registered until then).
            let held = reading && self.out.len() - self.sent >= OUT_LIMIT;
            if reading && !held {
                match self.poll_read(cx) {
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if !self.fatal {
                if !self.tasks.is_empty() {
                    while let Poll::Ready(Some(slot)) = self.tasks.poll_next_unpin(cx) {
                        if let Some(slot) = slot.filter(|_| self.spare.len() <= self.streams.len())
                        {
                            self.spare.push(slot);
                        }
                    }
                }
                self.polled_reads = self.reads;
                self.pending_resets = 0;
                progress |= self.serve_ready();
            }
            match self.poll_flush(cx) {
                Poll::Ready(Ok(())) => progress |= held,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            if self.done() {
                return Pin::new(&mut self.io).poll_shutdown(cx);
            }
            if !progress && !self.retry_waiting {
                return Poll::Pending;
            }
        }
        // More to do than one turn should take: let other tasks run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Whether nothing is left: a connection error was sent, the client
    /// closed its side (as the h2 crate does, open streams are reset: a
    /// request body can no longer arrive, nor a window for a response), or
    /// no stream can come any more and none is open.
    fn done(&self) -> bool {
        self.fatal
            || self.read_closed
            || (self.streams.is_empty() && (self.goaway.is_some() || self.peer_goaway))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out[self.sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.sent > 0 {
            self.out.clear();
            self.sent = 0;
            self.retry_waiting |= !self.waiting.is_empty();
            if self.streams.is_empty() && self.out.capacity() > OUT_LIMIT {
                // A burst's buffer is not kept by an idle connection.
                self.out = Vec::with_capacity(4096);
            }
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// One read, and every whole frame in what has arrived.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The bytes taken with the preface come first.
        if self.reads > 0 || self.rbuf.is_empty() {
            self.rbuf.reserve(READ_CHUNK);
            let n = match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
            {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            if n == 0 {
                self.read_closed = true;
                return Poll::Ready(Ok(()));
            }
        }
        self.reads += 1;
        if let Err(ConnError(reason, why)) = self.frames() {
            tracing::debug!(peer = %self.peer, "HTTP/2 connection error {reason:?}: {why}");
            self.errors.count(if reason == Reason::ENHANCE_YOUR_CALM {
                ProtocolError::Http2Flood
            } else {
                ProtocolError::Http2Connection
            });
            let last = self.max_seen;
            frame::goaway(&mut self.out, last, reason, why.as_bytes());
            self.fatal = true;
            self.goaway = Some(last);
        }
        Poll::Ready(Ok(()))
    }

    fn frames(&mut self) -> Result<()> {
        if !self.preface {
            let n = self.rbuf.len().min(frame::PREFACE.len());
            if self.rbuf[..n] != frame::PREFACE[..n] {
                return Err(ConnError(Reason::PROTOCOL_ERROR, "no HTTP/2 preface"));
            }
            if n < frame::PREFACE.len() {
                return Ok(());
            }
            self.rbuf.advance(n);
            self.preface = true;
        }
        let mut buf = std::mem::take(&mut self.rbuf);
        let result = self.frames_in(&mut buf);
        self.rbuf = buf;
        result
    }

    fn frames_in(&mut self, buf: &mut BytesMut) -> Result<()> {
        while let Some(head) = frame::Head::parse(buf) {
            if head.len > frame::DEFAULT_MAX_FRAME {
                return Err(ConnError(
                    Reason::FRAME_SIZE_ERROR,
                    "frame larger than allowed",
                ));
            }
            if buf.len() < frame::HEAD_LEN + head.len {
                break;
            }
            buf.advance(frame::HEAD_LEN);
            if head.kind == kind::DATA {
                // A large payload is handed on as a slice of the read
                // buffer; a small one is copied, so that it cannot keep a
                // whole read's buffer alive (many small frames would hold
                // far more memory than the window they count against).
                let payload = if head.len >= COPY_BELOW {
                    buf.split_to(head.len).freeze()
                } else {
                    let payload = Bytes::copy_from_slice(&buf[..head.len]);
                    buf.advance(head.len);
                    payload
                };
                self.on_data(head, payload)?;
            } else {
                self.on_frame(head, &buf[..head.len])?;
                buf.advance(head.len);
            }
            if self.fatal {
                break;
            }
        }
        Ok(())
    }

    fn on_frame(&mut self, head: frame::Head, payload: &[u8]) -> Result<()> {
        if !self.settings && head.kind != kind::SETTINGS {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "first frame is not SETTINGS",
            ));
        }
        if self.continuation.is_some() && head.kind != kind::CONTINUATION {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "header block interrupted",
            ));
        }
        match head.kind {
            kind::HEADERS => self.on_headers(head, payload),
            kind::CONTINUATION => self.on_continuation(head, payload),
            kind::PRIORITY => {
                if head.stream == 0 {
                    return Err(ConnError(Reason::PROTOCOL_ERROR, "PRIORITY on stream 0"));
                }
                // A stream error, but never a reset of an idle stream
                // (RFC 9113 §5.1): there the frame is only ignored.
                if payload.len() != 5 && head.stream <= self.max_seen {
                    self.reset(head.stream, Reason::FRAME_SIZE_ERROR)?;
                }
                Ok(())
            }
            kind::RST_STREAM => self.on_rst_stream(head, payload),
            kind::SETTINGS => self.on_settings(head, payload),
            kind::PING => {
                if head.stream != 0 {
                    return Err(ConnError(Reason::PROTOCOL_ERROR, "PING on a stream"));
                }
                if payload.len() != 8 {
                    return Err(ConnError(Reason::FRAME_SIZE_ERROR, "PING not 8 bytes"));
                }
                if head.flags & flag::ACK == 0 {
                    frame::ping_ack(&mut self.out, payload);
                }
                Ok(())
            }
            kind::GOAWAY => {
                if head.stream != 0 {
                    return Err(ConnError(Reason::PROTOCOL_ERROR, "GOAWAY on a stream"));
                }
                if payload.len() < 8 {
                    return Err(ConnError(Reason::FRAME_SIZE_ERROR, "GOAWAY too short"));
                }
                self.peer_goaway = true;
                Ok(())
            }
            kind::WINDOW_UPDATE => self.on_window_update(head, payload),
            kind::PUSH_PROMISE => Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "PUSH_PROMISE from a client",
            )),
            // Unknown frame types are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }

    fn on_settings(&mut self, head: frame::Head, payload: &[u8]) -> Result<()> {
        if head.stream != 0 {
            return Err(ConnError(Reason::PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        if head.flags & flag::ACK != 0 {
            if !payload.is_empty() {
                return Err(ConnError(
                    Reason::FRAME_SIZE_ERROR,
                    "SETTINGS ack with a payload",
                ));
            }
            return Ok(());
        }
        if !payload.len().is_multiple_of(6) {
            return Err(ConnError(
                Reason::FRAME_SIZE_ERROR,
                "SETTINGS not in 6-byte entries",
            ));
        }
        self.settings = true;
        for entry in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([entry[0], entry[1]]);
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            match id {
                setting::HEADER_TABLE_SIZE => self.encoder.set_peer_table_size(value as usize),
                setting::ENABLE_PUSH if value > 1 => {
                    return Err(ConnError(Reason::PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1"));
                }
                setting::INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > frame::MAX_WINDOW {
                        return Err(ConnError(
                            Reason::FLOW_CONTROL_ERROR,
                            "INITIAL_WINDOW_SIZE too large",
                        ));
                    }
                    let delta = value - self.peer_window;
                    self.peer_window = value;
                    for stream in self.streams.values_mut() {
                        stream.send_window += delta;
                        if stream.send_window > frame::MAX_WINDOW {
                            return Err(ConnError(
                                Reason::FLOW_CONTROL_ERROR,
                                "stream window past 2^31-1",
                            ));
                        }
                    }
                    self.retry_waiting = true;
                }
                setting::MAX_FRAME_SIZE => {
                    if !(frame::DEFAULT_MAX_FRAME as u32..1 << 24).contains(&value) {
                        return Err(ConnError(
                            Reason::PROTOCOL_ERROR,
                            "MAX_FRAME_SIZE out of range",
                        ));
                    }
                    self.peer_max_frame = value as usize;
                }
                // MAX_CONCURRENT_STREAMS bounds pushes, which skiff never
                // makes; MAX_HEADER_LIST_SIZE is advisory; others are
                // ignored as unknown.
                _ => {}
            }
        }
        frame::settings_ack(&mut self.out);
        Ok(())
    }

    fn on_window_update(&mut self, head: frame::Head, payload: &[u8]) -> Result<()> {
        if payload.len() != 4 {
            return Err(ConnError(
                Reason::FRAME_SIZE_ERROR,
                "WINDOW_UPDATE not 4 bytes",
            ));
        }
        let increment = i64::from(
            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff,
        );
        if head.stream == 0 {
            if increment == 0 {
                return Err(ConnError(Reason::PROTOCOL_ERROR, "WINDOW_UPDATE of 0"));
            }
            self.send_window += increment;
            if self.send_window > frame::MAX_WINDOW {
                return Err(ConnError(
                    Reason::FLOW_CONTROL_ERROR,
                    "connection window past 2^31-1",
                ));
            }
            self.retry_waiting = true;
            return Ok(());
        }
        self.check_not_idle(head.stream)?;
        let Some(stream) = self.streams.get_mut(&head.stream) else {
            return Ok(());
        };
        if increment == 0 {
            return self.reset(head.stream, Reason::PROTOCOL_ERROR);
        }
        stream.send_window += increment;
        if stream.send_window > frame::MAX_WINDOW {
            return self.reset(head.stream, Reason::FLOW_CONTROL_ERROR);
        }
        // A stream that waited for this is in `waiting`.
        self.retry_waiting = true;
        Ok(())
    }

    fn on_rst_stream(&mut self, head: frame::Head, payload: &[u8]) -> Result<()> {
        if head.stream == 0 {
            return Err(ConnError(Reason::PROTOCOL_ERROR, "RST_STREAM on stream 0"));
        }
        if payload.len() != 4 {
            return Err(ConnError(
                Reason::FRAME_SIZE_ERROR,
                "RST_STREAM not 4 bytes",
            ));
        }
        self.check_not_idle(head.stream)?;
        let Some(stream) = self.streams.remove(&head.stream) else {
            return Ok(());
        };
        self.closed(&stream, "reset by the client");
        if stream.opened_in > self.polled_reads {
            // Opened and reset before skiff ran it: rapid reset.
            self.pending_resets += 1;
            if self.pending_resets > self.limits.max_pending_resets {
                return Err(ConnError(
                    Reason::ENHANCE_YOUR_CALM,
                    "too many streams reset before they were accepted",
                ));
            }
        }
        Ok(())
    }

    /// A frame other than HEADERS or PRIORITY for a stream the client
    /// never opened is a connection error (RFC 9113 §5.1).
    fn check_not_idle(&self, id: u32) -> Result<()> {
        if id > self.max_seen {
            return Err(ConnError(Reason::PROTOCOL_ERROR, "frame on an idle stream"));
        }
        Ok(())
    }

    fn on_data(&mut self, head: frame::Head, payload: Bytes) -> Result<()> {
        if !self.settings {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "first frame is not SETTINGS",
            ));
        }
        if self.continuation.is_some() {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "header block interrupted",
            ));
        }
        if head.stream == 0 {
            return Err(ConnError(Reason::PROTOCOL_ERROR, "DATA on stream 0"));
        }
        self.check_not_idle(head.stream)?;
        // The whole frame, padding included, counts against the windows.
        let len = payload.len();
        self.recv_window -= len as i64;
        if self.recv_window < 0 {
            return Err(ConnError(
                Reason::FLOW_CONTROL_ERROR,
                "DATA past the connection window",
            ));
        }
        let end = head.flags & flag::END_STREAM != 0;
        let Some(stream) = self.streams.get_mut(&head.stream) else {
            // Closed: what was in flight when it closed is dropped.
            self.credit(len);
            return Ok(());
        };
        if stream.recv_closed {
            self.credit(len);
            return self.reset(head.stream, Reason::STREAM_CLOSED);
        }
        stream.recv_window -= len as i64;
        if stream.recv_window < 0 {
            self.credit(len);
            return self.reset(head.stream, Reason::FLOW_CONTROL_ERROR);
        }
        let data = match frame::unpad(&payload, head.flags) {
            Some(data) => payload.slice_ref(data),
            None => return Err(ConnError(Reason::PROTOCOL_ERROR, "padding past the frame")),
        };
        let padding = len - data.len();
        stream.received += data.len() as u64;
        let declared = stream.expect;
        if declared.is_some_and(|n| stream.received > n || (end && stream.received != n)) {
            self.credit(len);
            return self.reset_malformed(head.stream);
        }
        stream.recv_closed = end;
        let n = data.len();
        let kept = !stream.body_gone && stream.shared.recv_data(data, end);
        if !kept {
            stream.body_gone = true;
        }
        let given_back = padding + if kept { 0 } else { n };
        if given_back > 0 {
            self.credit_stream(head.stream, given_back);
        }
        if end {
            self.maybe_close(head.stream);
        }
        Ok(())
    }

    /// Gives `n` bytes back to the connection's window.
    fn credit(&mut self, n: usize) {
        self.unacked += n;
        if self.unacked >= RECV_WINDOW as usize / 2 {
            frame::window_update(&mut self.out, 0, self.unacked as u32);
            self.recv_window += self.unacked as i64;
            self.unacked = 0;
        }
    }

    /// Gives `n` bytes back to the connection's and the stream's windows.
    fn credit_stream(&mut self, id: u32, n: usize) {
        self.credit(n);
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if stream.recv_closed {
            return;
        }
        stream.unacked += n;
        if stream.unacked >= RECV_WINDOW as usize / 2 {
            frame::window_update(&mut self.out, id, stream.unacked as u32);
            stream.recv_window += stream.unacked as i64;
            stream.unacked = 0;
        }
    }

    fn on_headers(&mut self, head: frame::Head, payload: &[u8]) -> Result<()> {
        if head.stream == 0 {
            return Err(ConnError(Reason::PROTOCOL_ERROR, "HEADERS on stream 0"));
        }
        let mut self_dependent = false;
        let mut block = frame::unpad(payload, head.flags)
            .ok_or(ConnError(Reason::PROTOCOL_ERROR, "padding past the frame"))?;
        if head.flags & flag::PRIORITY != 0 {
            let Some((priority, rest)) = block.split_first_chunk::<5>() else {
                return Err(ConnError(
                    Reason::FRAME_SIZE_ERROR,
                    "HEADERS priority cut short",
                ));
            };
            let depends = u32::from_be_bytes([priority[0], priority[1], priority[2], priority[3]])
                & 0x7fff_ffff;
            // A stream error (RFC 9113 §5.3.1), once the block is decoded.
            self_dependent = depends == head.stream;
            block = rest;
        }
        let end_stream = head.flags & flag::END_STREAM != 0;
        if head.flags & flag::END_HEADERS == 0 {
            if block.len() > self.limits.max_block {
                return Err(ConnError(
                    Reason::ENHANCE_YOUR_CALM,
                    "header block too large",
                ));
            }
            self.continuation = Some(Partial {
                stream: head.stream,
                end_stream,
                self_dependent,
                block: block.to_vec(),
            });
            return Ok(());
        }
        self.on_block(head.stream, end_stream, self_dependent, block)
    }

    fn on_continuation(&mut self, head: frame::Head, payload: &[u8]) -> Result<()> {
        let Some(partial) = &mut self.continuation else {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "CONTINUATION without HEADERS",
            ));
        };
        if partial.stream != head.stream {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "CONTINUATION on another stream",
            ));
        }
        if partial.block.len() + payload.len() > self.limits.max_block {
            return Err(ConnError(
                Reason::ENHANCE_YOUR_CALM,
                "header block too large",
            ));
        }
        partial.block.extend_from_slice(payload);
        if head.flags & flag::END_HEADERS == 0 {
            return Ok(());
        }
        let Some(partial) = self.continuation.take() else {
            return Ok(());
        };
        self.on_block(
            partial.stream,
            partial.end_stream,
            partial.self_dependent,
            &partial.block,
        )
    }

    /// A whole header block: a new request, or a request's trailers.
    fn on_block(
        &mut self,
        id: u32,
        end_stream: bool,
        self_dependent: bool,
        block: &[u8],
    ) -> Result<()> {
        let trailers = self.streams.contains_key(&id) || id <= self.max_seen;
        let mut fields = Fields::new(trailers, self.limits.max_list, self.limits.max_fields);
        // Every block is decoded, even one that is then ignored: the
        // decoder's table must follow the client's encoder.
        self.decoder
            .decode(block, |name, value, never| fields.field(name, value, never))
            .map_err(|e| ConnError(Reason::COMPRESSION_ERROR, e.0))?;
        if self_dependent {
            if id % 2 == 1 && id > self.max_seen {
                self.max_seen = id;
            }
            return self.reset(id, Reason::PROTOCOL_ERROR);
        }
        if trailers {
            return self.on_trailers(id, end_stream, fields);
        }
        if id.is_multiple_of(2) {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "even stream id from a client",
            ));
        }
        self.max_seen = id;
        if self.goaway.is_some() {
            // Past the last stream GOAWAY named: not processed.
            return Ok(());
        }
        if self.streams.len() >= self.limits.max_streams {
            frame::rst_stream(&mut self.out, id, Reason::REFUSED_STREAM);
            self.errors.count(ProtocolError::Http2Refused);
            return Ok(());
        }
        let shared = Shared::new(id, self.ready.clone());
        let body_shared = shared.clone();
        let head = fields.into_request(|length| {
            if end_stream {
                UpstreamBody::Empty
            } else {
                UpstreamBody::Http2(RequestBody::new(body_shared, length))
            }
        });
        let (answer, expect) = match head {
            Head::Malformed(why) => {
                tracing::debug!(peer = %self.peer, "HTTP/2 request malformed: {why}");
                return self.reset_malformed(id);
            }
            Head::Refuse(status, why) => {
                let error = ProtocolError::of_status(true, status.as_u16());
                self.errors.count(error);
                (Answer::Local(status, why), None)
            }
            Head::Request(mut req, expect) => {
                if end_stream && expect.is_some_and(|n| n > 0) {
                    // The content-length promised DATA that END_STREAM denies.
                    return self.reset_malformed(id);
                }
                if let Some(tls) = &self.tls {
                    tls.tag(&mut req);
                }
                (Answer::Forward(req), expect)
            }
        };
        self.open(id, shared, answer, expect, end_stream);
        Ok(())
    }

    /// Starts stream `id`: its task (in a reused box when there is one)
    /// and its entry in the connection's map.
    fn open(
        &mut self,
        id: u32,
        shared: Arc<Shared>,
        answer: Answer,
        expect: Option<u64>,
        end_stream: bool,
    ) {
        // A request answered by skiff itself has no body reader: what
        // the client sends is given back at once.
        let body_gone = matches!(answer, Answer::Local(..));
        let task = (self.make_task)(answer, self.context.clone(), self.peer, shared.clone());
        let slot = match self.spare.pop() {
            Some(mut slot) => {
                slot.set(Some(task));
                slot
            }
            None => Box::pin(Some(task)),
        };
        self.tasks.push(StreamTask::new(slot, shared.clone()));
        self.activity.open();
        self.streams.insert(
            id,
            Stream {
                shared,
                send_window: self.peer_window,
                recv_window: i64::from(RECV_WINDOW),
                unacked: 0,
                recv_closed: end_stream,
                body_gone,
                expect,
                received: 0,
                opened_in: self.reads,
                send_closed: false,
                waiting: false,
            },
        );
    }

    fn on_trailers(&mut self, id: u32, end_stream: bool, fields: Fields) -> Result<()> {
        let Some(stream) = self.streams.get_mut(&id) else {
            // A stream already closed (reset, or answered and reset): what
            // was in flight is ignored (RFC 9113 §5.1).
            return Ok(());
        };
        if stream.recv_closed {
            return self.reset(id, Reason::STREAM_CLOSED);
        }
        if !end_stream {
            // Trailers must end the stream (RFC 9113 §8.1).
            return self.reset_malformed(id);
        }
        let trailers = match fields.into_trailers() {
            Ok(t) => t,
            Err(why) => {
                tracing::debug!(peer = %self.peer, "HTTP/2 trailers malformed: {why}");
                return self.reset_malformed(id);
            }
        };
        if stream.expect.is_some_and(|n| n != stream.received) {
            return self.reset_malformed(id);
        }
        stream.recv_closed = true;
        if !stream.body_gone {
            stream.shared.recv_trailers(trailers);
        }
        self.maybe_close(id);
        Ok(())
    }

    /// Resets a stream for the client's error.
    fn reset(&mut self, id: u32, reason: Reason) -> Result<()> {
        self.reset_counted(id, reason, ProtocolError::Http2Stream)
    }

    /// Resets a stream whose request is malformed (RFC 9113 §8.1.1).
    fn reset_malformed(&mut self, id: u32) -> Result<()> {
        self.reset_counted(id, Reason::PROTOCOL_ERROR, ProtocolError::Http2Malformed)
    }

    fn reset_counted(&mut self, id: u32, reason: Reason, error: ProtocolError) -> Result<()> {
        frame::rst_stream(&mut self.out, id, reason);
        if let Some(stream) = self.streams.remove(&id) {
            self.closed(&stream, "reset for a protocol error");
        }
        let limited = self.count_local_reset();
        if limited.is_ok() {
            // The reset that passes the limit is counted as the flood.
            self.errors.count(error);
        }
        limited
    }

    fn count_local_reset(&mut self) -> Result<()> {
        self.local_resets += 1;
        if self.local_resets > self.limits.max_local_resets {
            return Err(ConnError(
                Reason::ENHANCE_YOUR_CALM,
                "too many streams reset for errors",
            ));
        }
        Ok(())
    }

    /// A stream left the map: its task and body are told, and the
    /// connection may go idle.
    fn closed(&mut self, stream: &Stream, why: &'static str) {
        // The task ends when it next runs (woken by the reset), dropping
        // its upstream request; what the body will never read is given
        // back to the connection's window now.
        let credit = stream.shared.reset(why);
        if credit > 0 {
            self.credit(credit);
        }
        self.activity.close();
        // A connection with no stream open keeps one box, not one per
        // stream of its last burst. Not trimmed to the open streams while
        // busy: under load their count dips as a batch closes before the
        // next opens, and the boxes would be freed and made again.
        if self.streams.is_empty() {
            self.spare.truncate(1);
        }
    }

    /// Drops a stream whose response is whole.
    fn maybe_close(&mut self, id: u32) {
        if !self.streams.get(&id).is_some_and(|s| s.send_closed) {
            return;
        }
        let Some(stream) = self.streams.remove(&id) else {
            return;
        };
        if !stream.recv_closed {
            // The response is whole while the request is not: the client
            // may stop sending it (RFC 9113 §8.1).
            frame::rst_stream(&mut self.out, id, Reason::NO_ERROR);
        }
        self.closed(&stream, "response sent before the request was whole");
    }

    /// Streams the tasks or the request bodies marked: credits what the
    /// bodies forwarded and frames what the tasks produced.
    fn serve_ready(&mut self) -> bool {
        let mut ids = std::mem::take(&mut self.ready_ids);
        self.ready.take(&mut ids);
        let any = !ids.is_empty();
        for &id in &ids {
            let Some(stream) = self.streams.get_mut(&id) else {
                continue;
            };
            let (consumed, gone) = stream.shared.take_consumed();
            stream.body_gone |= gone;
            if consumed > 0 {
                self.credit_stream(id, consumed);
            }
            self.send(id);
        }
        self.ready_ids = ids;
        if self.retry_waiting && self.out.len() - self.sent < OUT_LIMIT {
            self.retry_waiting = false;
            let waiting = std::mem::take(&mut self.waiting);
            for id in waiting {
                if let Some(stream) = self.streams.get_mut(&id) {
                    stream.waiting = false;
                    self.send(id);
                }
            }
        }
        any
    }

    /// Frames stream `id`'s queued response as far as the windows and
    /// `out` allow; the rest waits.
    fn send(&mut self, id: u32) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let out = &mut self.out;
        let block = &mut self.block;
        let encoder = &mut self.encoder;
        let send_window = &mut self.send_window;
        let max_frame = self.peer_max_frame;
        let room = OUT_LIMIT.saturating_sub(out.len() - self.sent);
        let window = &mut stream.send_window;
        let send_closed = &mut stream.send_closed;
        let sent_before = out.len();
        let outcome = stream.shared.with_out(|queue| {
            let mut taken = 0;
            while let Some(next) = queue.front_mut() {
                match next {
                    Out::Head(response, data, end) => {
                        let data = data.take().filter(|d| !d.is_empty());
                        let end = *end;
                        encode_head(encoder, block, response);
                        frame::headers(out, id, block, end && data.is_none(), max_frame);
                        if let Some(data) = data {
                            // The body goes on as DATA, as flow control allows.
                            *next = Out::Data(data, end);
                            continue;
                        }
                        *send_closed = end;
                    }
                    Out::Data(data, end) => {
                        if !data.is_empty() {
                            let allowed = (*send_window).min(*window).max(0) as usize;
                            let n = data.len().min(max_frame).min(allowed);
                            if n == 0 || out.len() - sent_before >= room {
                                return (Sent::Blocked, taken);
                            }
                            let last = n == data.len();
                            frame::data(out, id, &data[..n], last && *end);
                            *send_window -= n as i64;
                            *window -= n as i64;
                            taken += n;
                            if !last {
                                data.advance(n);
                                continue;
                            }
                        } else if *end {
                            frame::data(out, id, &[], true);
                        }
                        *send_closed = *end;
                    }
                    Out::Trailers(trailers) => {
                        block.clear();
                        encoder.begin_block(block);
                        encode_fields(encoder, block, trailers);
                        frame::headers(out, id, block, true, max_frame);
                        *send_closed = true;
                    }
                    Out::Reset => return (Sent::Reset, taken),
                }
                queue.pop();
            }
            (Sent::All, taken)
        });
        match outcome {
            Sent::All => {
                if stream.send_closed {
                    self.maybe_close(id);
                }
            }
            Sent::Blocked => {
                if !stream.waiting {
                    stream.waiting = true;
                    self.waiting.push(id);
                }
            }
            Sent::Reset => {
                frame::rst_stream(&mut self.out, id, Reason::INTERNAL_ERROR);
                if let Some(stream) = self.streams.remove(&id) {
                    self.closed(&stream, "response failed");
                }
            }
        }
    }
}

/// How far [`Connection::send`] got with a stream's queue.
enum Sent {
    All,
    /// The rest waits for a window or for room in the output.
    Blocked,
    /// The response failed: the stream is reset.
    Reset,
}

impl<S, F, C> Drop for Connection<S, F, C> {
    fn drop(&mut self) {
        // Request bodies read elsewhere (an HTTP/2 upstream's connection)
        // learn that no more is coming.
        for stream in self.streams.values() {
            let _ = stream.shared.reset("client connection closed");
        }
    }
}

/// Fields HTTP/2 forbids (RFC 9113 §8.2.2); HTTP/1.1 upstreams send them.
fn connection_specific(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    )
}

fn encode_head(encoder: &mut hpack::Encoder, block: &mut Vec<u8>, response: &Response<()>) {
    block.clear();
    encoder.begin_block(block);
    encoder.status(response.status().as_u16(), block);
    encode_fields(encoder, block, response.headers());
    if !response.headers().contains_key(header::DATE) {
        // RFC 9110 §6.6.1: a recipient forwarding a response without a
        // Date adds one.
        let mut date = [0u8; 29];
        let value = crate::http::h1::write::date::get(&mut date);
        encoder.field(b"date", value, false, block);
    }
}

fn encode_fields(encoder: &mut hpack::Encoder, block: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        if connection_specific(name) || (name == header::TE && value != "trailers") {
            continue;
        }
        encoder.field(
            name.as_str().as_bytes(),
            value.as_bytes(),
            value.is_sensitive(),
            block,
        );
    }
}
