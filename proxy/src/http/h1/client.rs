//! skiff's own HTTP/1.1 client, for plaintext upstreams and requests whose
//! body is already whole (none, or read before sending for a retry).
//!
//! Why not hyper's client for these: hyper drives each connection on a
//! task of its own, so every request crosses a channel to that task and
//! its response comes back through a oneshot, and its send future is most
//! of the per-request future that is moved several times a request. Here
//! the request's own future writes the request and reads the response
//! head, and the response body reads the socket as the client side pulls
//! it: no task, no channel, one `write` and usually one `read`.
//!
//! Requests that stream their body (uploads, HTTP/2 client streams still
//! open) and TLS upstreams stay on hyper's client, whose connection task
//! can send and receive at once.
//!
//! Responses are read strictly (RFC 9112 §6.3): one valid `Content-Length`
//! or a final `chunked` coding, else the body runs to the connection's end.
//! A connection goes back to its pool only when its response ended exactly
//! where its framing said, with nothing after it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use hyper::body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;

use crate::http::body::UpstreamBody;
use crate::http::h1::body::{Chunk, ChunkedDecoder};
use crate::http::h1::write::chunk_size;
use crate::http::h1::{buffers, response};
use crate::io::conn::read_available;
use crate::io::conn::write_all;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// Most asked per read of a body whose length is known: a 64 KiB
/// response is then one read and one write on the client's side, not
/// four of each (hyper's read buffer grows the same way, to 400 KiB).
const BODY_READ_MAX: usize = 256 * 1024;
/// Body bytes copied next to the head; larger bodies go out by `writev`.
const COPY_LIMIT: usize = 4 * 1024;

/// An upstream connection this client speaks on.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: TcpStream,
    /// Read buffer, kept with the connection: by the time it carries its
    /// next request, the last response's slices of it are gone and its
    /// memory is reused.
    buf: BytesMut,
    /// Whether it carried a request before (a pooled keep-alive connection).
    reused: bool,
}

impl Connection {
    pub(crate) fn new(stream: TcpStream) -> Box<Connection> {
        Box::new(Connection {
            stream,
            buf: BytesMut::new(),
            reused: false,
        })
    }

    /// Whether a pooled connection can carry another request: the upstream
    /// has neither closed it nor sent anything unasked. Costs no system
    /// call unless the reactor has seen the socket become readable.
    pub(crate) fn is_usable(&self) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                // Readable: a close, stray bytes, or readiness left over
                // from the last read. Only "would block" means usable.
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("upstream connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("upstream closed the connection before responding")]
    Closed,
    #[error("malformed response from upstream: {0}")]
    Malformed(&'static str),
}

/// Why [`send`] got no response.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) error: Error,
    /// The request is safe to send again on another connection at once:
    /// a pooled connection that the upstream had closed (a keep-alive
    /// race), for a request that may go twice.
    pub(crate) resend: bool,
}

/// Whether this client can carry `req`: its body is whole already. A
/// body that has arrived whole with its head (in the HTTP/1 socket's
/// buffer, or the HTTP/2 stream's first DATA frame) is taken for it.
pub(crate) fn can_send(req: &mut Request<UpstreamBody>) -> bool {
    match req.body_mut() {
        UpstreamBody::Empty | UpstreamBody::Buffered { .. } => true,
        // Streamed under the route's body limit, or copied to mirrors as
        // it streams: hyper's client sends it.
        UpstreamBody::Capped(_) | UpstreamBody::Tee(_) => false,
        UpstreamBody::Http2(b) => match b.take_whole() {
            Some(data) => {
                *req.body_mut() = UpstreamBody::Buffered {
                    data: Some(data),
                    trailers: None,
                };
                true
            }
            None => false,
        },
        UpstreamBody::Http1(b) => match b.take_whole() {
            Some(data) => {
                *req.body_mut() = UpstreamBody::Buffered {
                    data: Some(data),
                    trailers: None,
                };
                true
            }
            None => false,
        },
    }
}

/// Sends `req` on `conn` and reads the response head. The response body
/// owns the connection and reads it as it is polled. `req` is only
/// borrowed: the caller keeps it for a retry, with no copy made.
///
/// Not an `async fn`: that would hold its parameters twice in its future.
#[allow(clippy::manual_async_fn)] // see above: the future stays smaller
pub(crate) fn send(
    mut conn: Box<Connection>,
    req: &Request<UpstreamBody>,
) -> impl std::future::Future<Output = Result<Response<ResponseBody>, Failed>> + '_ {
    async move {
        let mut out = buffers::write();
        let rest = encode(req, &mut out);
        let written = write_all(&conn.stream, [&out, rest.as_deref().unwrap_or(&[])]).await;
        buffers::give_write(out);
        let head_request = req.method() == Method::HEAD;
        // A reused connection the upstream closed just as it was picked: an
        // idempotent request goes again on a fresh one (what Go's client
        // does); the upstream may have seen it, but twice is harmless.
        let again = conn.reused && is_idempotent(req.method());
        if let Err(e) = written {
            // Nothing written was read: a closed pooled connection refuses the
            // first write, so the request is safe to send again.
            return Err(Failed {
                error: Error::Io(e),
                resend: conn.reused,
            });
        }
        let Connection { stream, buf, .. } = &mut *conn;
        match read_response(stream, buf, head_request).await {
            Ok((resp, kind, keep_alive)) => Ok(resp.map(|()| ResponseBody {
                conn: Some(conn),
                kind,
                keep_alive,
                ended: false,
            })),
            Err(Error::Closed) => Err(Failed {
                error: Error::Closed,
                resend: again,
            }),
            Err(error) => Err(Failed {
                error,
                resend: false,
            }),
        }
    }
}

/// Methods RFC 9110 §9.2.2 calls idempotent, safe to send twice.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ]
    .contains(method)
}

/// Encodes the request head into `out`, with a small body after it; a
/// larger body is returned to be written beside it.
fn encode(req: &Request<UpstreamBody>, out: &mut Vec<u8>) -> Option<Bytes> {
    let (data, trailers) = match req.body() {
        UpstreamBody::Buffered { data, trailers } => (data.clone(), trailers.clone()),
        _ => (None, None),
    };
    let data = data.filter(|d| !d.is_empty());
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let buffered = matches!(req.body(), UpstreamBody::Buffered { .. });
    let mut has_length = false;
    for (name, value) in req.headers() {
        if name == header::CONTENT_LENGTH {
            if buffered {
                // Written below from the body itself.
                continue;
            }
            has_length = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let len = data.as_ref().map_or(0, Bytes::len);
    if trailers.is_some() {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
        if len > 0 {
            chunk_size(out, len);
        }
    } else if buffered || (!has_length && carries_body(req.method())) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
    } else {
        out.extend_from_slice(b"\r\n");
    }
    let rest = match data {
        Some(d) if d.len() <= COPY_LIMIT || trailers.is_some() => {
            out.extend_from_slice(&d);
            None
        }
        other => other,
    };
    if let Some(trailers) = &trailers {
        if len > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        for (name, value) in trailers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
    rest
}

/// Methods whose requests say how long their (here empty) body is, as
/// hyper's client does.
fn carries_body(method: &Method) -> bool {
    *method == Method::POST || *method == Method::PUT || *method == Method::PATCH
}

/// How a response body is delimited.
#[derive(Debug)]
pub(crate) enum Kind {
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Until the upstream closes the connection.
    Close,
}

/// Reads a final response head (1xx interim responses are skipped) and
/// decides the body's framing and whether the connection stays open.
async fn read_response(
    stream: &TcpStream,
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<(Response<()>, Kind, bool), Error> {
    loop {
        if !buf.is_empty() {
            if let Some(parsed) = parse(buf, head_request)? {
                match parsed {
                    Parsed::Interim => continue,
                    Parsed::Final(resp, kind, keep_alive) => return Ok((resp, kind, keep_alive)),
                }
            }
        }
        buf.reserve(READ_CHUNK);
        loop {
            match read_available(stream, buf) {
                Ok(0) if buf.is_empty() => return Err(Error::Closed),
                Ok(0) => return Err(Error::Malformed("connection closed mid-head")),
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.readable().await?,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

enum Parsed {
    /// A 1xx response other than 101, consumed from the buffer.
    Interim,
    Final(Response<()>, Kind, bool),
}

/// Parses the response head at the start of `buf` ([`response::parse`]),
/// taking it off the buffer, into a response whose header values are
/// slices of one copy of the head.
fn parse(buf: &mut BytesMut, head_request: bool) -> Result<Option<Parsed>, Error> {
    let mut fields = [httparse::EMPTY_HEADER; response::MAX_HEADERS];
    let head = match response::parse(buf, head_request, &mut fields).map_err(Error::Malformed)? {
        response::Parsed::Partial => return Ok(None),
        response::Parsed::Interim { len } => {
            buf.advance(len);
            return Ok(Some(Parsed::Interim));
        }
        response::Parsed::Final(head) => head,
    };
    // One copy of the head, which the header values are slices of; the
    // read buffer stays whole and unshared for the body and later reads.
    let copy = Bytes::copy_from_slice(&buf[..head.len]);
    let slice = |part: &[u8]| {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        copy.slice(start..start + part.len())
    };
    // The fields read and one more: neither server adds to a response's
    // map (both write `date` straight into the head), but a route's
    // response edit does, and a map filled to its last slot grows (a
    // reallocation and a rehash, ~500 instructions, for 3 fields); a
    // small map stays within the allocator's per-thread cache.
    let mut headers = HeaderMap::with_capacity(head.fields.len() + 1);
    for field in head.fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Error::Malformed("invalid header name"))?;
        if head.drop_length && name == header::CONTENT_LENGTH {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(slice(field.value))
            .map_err(|_| Error::Malformed("invalid header value"))?;
        headers.append(name, value);
    }
    let kind = match head.framing {
        response::Framing::Length(n) => Kind::Length(n),
        response::Framing::Chunked => Kind::Chunked(ChunkedDecoder::default()),
        response::Framing::Close => Kind::Close,
    };
    let (len, keep_alive) = (head.len, head.keep_alive);
    let mut resp = Response::new(());
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = headers;
    buf.advance(len);
    Ok(Some(Parsed::Final(resp, kind, keep_alive)))
}

/// A response body, read from the upstream connection as it is polled.
#[derive(Debug)]
pub(crate) struct ResponseBody {
    /// The connection, until the body ends or breaks.
    conn: Option<Box<Connection>>,
    kind: Kind,
    /// The upstream keeps the connection open after this response.
    keep_alive: bool,
    ended: bool,
}

impl ResponseBody {
    /// The connection, once the body has ended where its framing said and
    /// the upstream sent nothing after it.
    pub(crate) fn take_reusable(&mut self) -> Option<Box<Connection>> {
        if !self.is_end_stream() || !self.keep_alive {
            return None;
        }
        let mut conn = self.conn.take().filter(|c| c.buf.is_empty())?;
        conn.reused = true;
        Some(conn)
    }

    fn end(&mut self) {
        self.ended = true;
        // Bytes past the end answer nothing that was asked.
        if !self.keep_alive || self.conn.as_ref().is_some_and(|c| !c.buf.is_empty()) {
            self.conn = None;
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(conn) = &mut self.conn else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let want = match self.kind {
            Kind::Length(left) => usize::try_from(left)
                .unwrap_or(usize::MAX)
                .clamp(READ_CHUNK, BODY_READ_MAX),
            _ => READ_CHUNK,
        };
        loop {
            ready!(conn.stream.poll_read_ready(cx))?;
            conn.buf.reserve(want);
            match read_available(&conn.stream, &mut conn.buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            if let Kind::Length(0) = this.kind {
                this.end();
                continue;
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(Some(Err(io::ErrorKind::NotConnected.into())));
            };
            let buf = &mut conn.buf;
            match &mut this.kind {
                Kind::Length(left) => {
                    if !buf.is_empty() {
                        let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                        *left -= n as u64;
                        let data = buf.split_to(n).freeze();
                        if *left == 0 {
                            this.end();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Kind::Chunked(decoder) => match decoder.decode(buf) {
                    Ok(Some(Chunk::Data(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Some(Chunk::Trailers(t))) => {
                        this.end();
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Ok(Some(Chunk::End)) => {
                        this.end();
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            e,
                        ))));
                    }
                },
                Kind::Close => {
                    if !buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(buf.split().freeze()))));
                    }
                }
            }
            match ready!(this.poll_fill(cx)) {
                Ok(0) if matches!(this.kind, Kind::Close) => {
                    this.conn = None;
                    this.ended = true;
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "upstream closed the connection before the response body ended",
                    ))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || matches!(self.kind, Kind::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.kind {
            Kind::Length(left) => SizeHint::with_exact(left),
            Kind::Chunked(_) | Kind::Close => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(wire: &[u8], head_request: bool) -> Result<Option<(Response<()>, Kind, bool)>, Error> {
        let mut buf = BytesMut::from(wire);
        loop {
            match parse(&mut buf, head_request)? {
                None => return Ok(None),
                Some(Parsed::Interim) => continue,
                Some(Parsed::Final(r, k, ka)) => return Ok(Some((r, k, ka))),
            }
        }
    }

    #[test]
    fn responses_keep_their_fields_but_an_ignored_length() {
        let (resp, kind, keep) = head(
            b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(kind, Kind::Chunked(_)) && !keep);
        assert_eq!(resp.headers()["x-a"], "1");
        assert!(!resp.headers().contains_key(header::CONTENT_LENGTH));
        let (resp, _, _) = head(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(resp.status(), 201);
        assert!(head(b"HTTP/1.1 200 OK\r\nx: \x01\r\n\r\n", false).is_err());
    }

    fn encoded(req: Request<UpstreamBody>) -> (String, Option<Bytes>) {
        let mut out = Vec::new();
        let rest = encode(&req, &mut out);
        (String::from_utf8(out).unwrap(), rest)
    }

    #[test]
    fn requests_encode_with_their_framing() {
        let req = Request::get("/a?b=1")
            .header("host", "shop")
            .body(UpstreamBody::Empty)
            .unwrap();
        let (text, _) = encoded(req);
        assert_eq!(text, "GET /a?b=1 HTTP/1.1\r\nhost: shop\r\n\r\n");

        let req = Request::post("/orders")
            .header("host", "shop")
            .body(UpstreamBody::Empty)
            .unwrap();
        assert!(encoded(req).0.ends_with("content-length: 0\r\n\r\n"));

        let req = Request::put("/x")
            .header("content-length", "2")
            .body(UpstreamBody::Buffered {
                data: Some(Bytes::from_static(b"hi")),
                trailers: None,
            })
            .unwrap();
        let (text, rest) = encoded(req);
        assert_eq!(text, "PUT /x HTTP/1.1\r\ncontent-length: 2\r\n\r\nhi");
        assert!(rest.is_none());

        let big = Bytes::from(vec![b'x'; COPY_LIMIT + 1]);
        let req = Request::put("/x")
            .body(UpstreamBody::Buffered {
                data: Some(big.clone()),
                trailers: None,
            })
            .unwrap();
        let (text, rest) = encoded(req);
        assert!(text.ends_with(&format!("content-length: {}\r\n\r\n", big.len())));
        assert_eq!(rest, Some(big));

        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let req = Request::post("/t")
            .body(UpstreamBody::Buffered {
                data: Some(Bytes::from_static(b"abc")),
                trailers: Some(trailers),
            })
            .unwrap();
        let (text, _) = encoded(req);
        assert_eq!(
            text,
            "POST /t HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\ngrpc-status: 0\r\n\r\n"
        );
    }
}
