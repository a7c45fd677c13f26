//! Request bodies read from an HTTP/1.x client connection.
//!
//! [`RequestBody`] streams the body to the upstream frame by frame,
//! reading the client socket itself (the connection task only writes while
//! a body is out). When the body has been read to its last byte it hands
//! the connection's read buffer back, with any pipelined bytes that came
//! after it, so the connection can go on to the next request; a body
//! dropped before its end hands nothing back and the connection closes,
//! since where the next request starts is then unknown.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use crate::io::conn::Conn;
use crate::metrics::{ProtocolError, ProtocolErrors};

/// Bytes asked of the socket per read while a body streams.
const READ_CHUNK: usize = 16 * 1024;
/// Longest chunk-size line (size, extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;

/// A chunked body that breaks the rules of RFC 9112 §7.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkError(&'static str);

/// What the chunked decoder found next.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size {
        size: u64,
        digits: u32,
        line: usize,
    },
    /// After the size: extensions until the CRLF.
    Extension {
        size: u64,
        line: usize,
    },
    /// Read the CR ending a size line, the LF is next.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    Trailers,
    Done,
}

/// Decodes `Transfer-Encoding: chunked`, strictly: CRLF line ends only,
/// hex sizes without sign or overflow, bounded extension and trailer sizes.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size {
                size: 0,
                digits: 0,
                line: 0,
            },
        }
    }
}

impl ChunkedDecoder {
    /// Consumes what it can of `buf`; `Ok(None)` means more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, ChunkError> {
        loop {
            if let State::Data { left } = self.state {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let data = buf.split_to(n).freeze();
                let left = left - n as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { left }
                };
                return Ok(Some(Chunk::Data(data)));
            }
            if self.state == State::Trailers {
                return self.trailers(buf);
            }
            if self.state == State::Done {
                return Ok(Some(Chunk::End));
            }
            let Some(&b) = buf.first() else {
                return Ok(None);
            };
            buf.advance(1);
            self.state = match self.state {
                State::Size { size, digits, line } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if digits == 16 {
                            return Err(ChunkError("chunk size too large"));
                        }
                        let v = (b as char).to_digit(16).unwrap_or(0);
                        State::Size {
                            size: size << 4 | u64::from(v),
                            digits: digits + 1,
                            line: line + 1,
                        }
                    }
                    _ if digits == 0 => return Err(ChunkError("chunk size expected")),
                    b'\r' => State::SizeLf { size },
                    b';' | b' ' | b'\t' => State::Extension {
                        size,
                        line: line + 1,
                    },
                    _ => return Err(ChunkError("invalid chunk size")),
                },
                State::Extension { size, line } => match b {
                    b'\r' => State::SizeLf { size },
                    b'\n' => return Err(ChunkError("bare LF in chunk size line")),
                    _ if line >= MAX_CHUNK_LINE => {
                        return Err(ChunkError("chunk extension too long"))
                    }
                    _ => State::Extension {
                        size,
                        line: line + 1,
                    },
                },
                State::SizeLf { size } => match b {
                    b'\n' if size == 0 => State::Trailers,
                    b'\n' => State::Data { left: size },
                    _ => return Err(ChunkError("bare CR in chunk size line")),
                },
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    _ => return Err(ChunkError("chunk longer than its size")),
                },
                State::DataLf => match b {
                    b'\n' => State::Size {
                        size: 0,
                        digits: 0,
                        line: 0,
                    },
                    _ => return Err(ChunkError("bare CR after chunk data")),
                },
                State::Data { .. } | State::Trailers | State::Done => {
                    unreachable!("handled before reading a byte")
                }
            };
        }
    }

    /// The trailer section after the last chunk: empty (just CRLF) or
    /// header fields ending in an empty line.
    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, ChunkError> {
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
            self.state = State::Done;
            return Ok(Some(Chunk::End));
        }
        if buf.len() < 2 {
            return Ok(None);
        }
        let mut fields = [httparse::EMPTY_HEADER; 32];
        match httparse::parse_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete((n, fields))) => {
                let mut trailers = HeaderMap::with_capacity(fields.len());
                for f in fields.iter() {
                    let name = http::HeaderName::from_bytes(f.name.as_bytes())
                        .map_err(|_| ChunkError("invalid trailer name"))?;
                    let value = http::HeaderValue::from_bytes(f.value)
                        .map_err(|_| ChunkError("invalid trailer value"))?;
                    // Fields that frame or route a message have no place
                    // after it (RFC 9110 §6.5.1).
                    if !forbidden_trailer(&name) {
                        trailers.append(name, value);
                    }
                }
                buf.advance(n);
                self.state = State::Done;
                Ok(Some(Chunk::Trailers(trailers)))
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILERS => {
                Err(ChunkError("trailers too large"))
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(_) => Err(ChunkError("malformed trailers")),
        }
    }
}

fn forbidden_trailer(name: &http::HeaderName) -> bool {
    use http::header::*;
    [
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        HOST,
        CONNECTION,
        TE,
        TRAILER,
        CONTENT_TYPE,
        CONTENT_ENCODING,
        AUTHORIZATION,
        SET_COOKIE,
        CACHE_CONTROL,
        EXPECT,
    ]
    .contains(name)
}

/// How the body is delimited.
#[derive(Debug)]
pub(crate) enum Kind {
    Length(u64),
    Chunked(ChunkedDecoder),
}

/// What a body that was read to its end hands back to its connection.
#[derive(Debug)]
pub(crate) struct Returned {
    /// The read buffer, holding whatever the client sent after the body.
    pub(crate) buf: BytesMut,
}

/// A client's request body, streamed from the socket as the upstream reads it.
#[derive(Debug)]
pub(crate) struct RequestBody {
    conn: Arc<Conn>,
    buf: BytesMut,
    kind: Kind,
    /// Trailers were sent; the end is next.
    ended: bool,
    back: Option<oneshot::Sender<Returned>>,
    /// Where a chunked body's framing errors are counted.
    errors: Option<Arc<ProtocolErrors>>,
}

impl RequestBody {
    /// A body delimited by `kind`, whose first bytes may already be in `buf`.
    pub(crate) fn new(
        conn: Arc<Conn>,
        buf: BytesMut,
        kind: Kind,
        back: oneshot::Sender<Returned>,
        errors: Option<Arc<ProtocolErrors>>,
    ) -> RequestBody {
        RequestBody {
            conn,
            buf,
            kind,
            ended: false,
            back: Some(back),
            errors,
        }
    }

    /// The whole body, when its length is known and every byte of it has
    /// arrived already (a small upload usually comes with its head); the
    /// connection's buffer goes back to it at once.
    pub(crate) fn take_whole(&mut self) -> Option<Bytes> {
        let Kind::Length(left) = self.kind else {
            return None;
        };
        let left = usize::try_from(left)
            .ok()
            .filter(|&n| n <= self.buf.len())?;
        let data = self.buf.split_to(left).freeze();
        self.kind = Kind::Length(0);
        self.ended = true;
        self.finish();
        Some(data)
    }

    fn finish(&mut self) {
        if let Some(back) = self.back.take() {
            let buf = std::mem::take(&mut self.buf);
            let _ = back.send(Returned { buf });
        }
    }

    /// Reads more from the client into the buffer.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.conn.poll_read_ready(cx))?;
            self.buf.reserve(READ_CHUNK);
            match self.conn.read_available(&mut self.buf) {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "client closed the connection before the request body ended",
                    )))
                }
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                this.finish();
                return Poll::Ready(None);
            }
            match &mut this.kind {
                Kind::Length(0) => {
                    this.ended = true;
                    continue;
                }
                Kind::Length(left) => {
                    if !this.buf.is_empty() {
                        let n = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(this.buf.len());
                        *left -= n as u64;
                        let data = this.buf.split_to(n).freeze();
                        if *left == 0 {
                            // Hand the buffer back now: the upstream may
                            // answer before it polls for the end.
                            this.ended = true;
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Kind::Chunked(decoder) => match decoder.decode(&mut this.buf) {
                    Ok(Some(Chunk::Data(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Some(Chunk::Trailers(t))) => {
                        this.ended = true;
                        this.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Ok(Some(Chunk::End)) => {
                        this.ended = true;
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        // Taken: a body that is polled again counts once.
                        if let Some(errors) = this.errors.take() {
                            errors.count(ProtocolError::Http1Malformed);
                        }
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            e,
                        ))));
                    }
                },
            }
            if let Err(e) = ready!(this.poll_fill(cx)) {
                return Poll::Ready(Some(Err(e)));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || matches!(self.kind, Kind::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.kind {
            Kind::Length(left) => SizeHint::with_exact(left),
            Kind::Chunked(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` to a decoder in pieces of `step` bytes.
    fn decode_all(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), ChunkError> {
        let mut d = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let (mut body, mut trailers) = (Vec::new(), None);
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Some(Chunk::Data(b)) => body.extend_from_slice(&b),
                Some(Chunk::Trailers(t)) => trailers = Some(t),
                Some(Chunk::End) => return Ok((body, trailers)),
                None => {
                    assert!(fed < wire.len(), "decoder wants more than the whole input");
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_in_any_split() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (body, trailers) = decode_all(wire, step).unwrap();
            assert_eq!(body, b"hello, world");
            assert!(trailers.is_none());
        }
    }

    #[test]
    fn trailers_are_read_and_framing_ones_dropped() {
        let wire = b"3\r\nabc\r\n0\r\nX-Checksum: ok\r\nContent-Length: 9\r\n\r\n";
        for step in [1, 5, wire.len()] {
            let (body, trailers) = decode_all(wire, step).unwrap();
            assert_eq!(body, b"abc");
            let t = trailers.expect("trailers");
            assert_eq!(t["x-checksum"], "ok");
            assert!(!t.contains_key("content-length"));
        }
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for wire in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
            b"fffffffffffffffff\r\n",
            b"5\rhello",
            b"zz\r\n",
        ] {
            assert!(
                decode_all(wire, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let long_ext = format!("1;{}\r\na\r\n0\r\n\r\n", "x".repeat(MAX_CHUNK_LINE + 1));
        assert_eq!(
            decode_all(long_ext.as_bytes(), 64).unwrap_err(),
            ChunkError("chunk extension too long")
        );
    }

    #[test]
    fn the_largest_chunk_size_does_not_overflow() {
        let mut d = ChunkedDecoder::default();
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nab"[..]);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Chunk::Data(Bytes::from_static(b"ab")))
        );
    }
}
