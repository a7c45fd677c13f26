//! Writing a response to an HTTP/1.x client.
//!
//! The head is encoded into the connection's write buffer and sent
//! together with whatever body frames are ready at once, so a small
//! response costs one `write`. Large frames go out with `writev` next to
//! the buffered bytes instead of being copied. Framing is chosen from the
//! response: its `Content-Length` (or a body of known size), else chunked
//! for HTTP/1.1 clients, else the end of the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::response::Parts;
use http::{StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};

use crate::http::BodyError;
use crate::io::conn::Conn;

/// Frames larger than this are written in place, not copied into the buffer.
const COPY_LIMIT: usize = 4 * 1024;
/// Buffered bytes that are written out without waiting for more frames.
const FLUSH_AT: usize = 64 * 1024;

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body may follow (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 clients, unknown length).
    Close,
}

/// What the client asked, as far as the response's shape depends on it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asked {
    pub(crate) head: bool,
    pub(crate) version: Version,
    pub(crate) keep_alive: bool,
}

/// Encodes the response head into `out` and returns the body framing.
/// `Framing::Close` means the connection must close after the body.
pub(crate) fn head<B: Body>(
    parts: &mut Parts,
    body: &B,
    asked: Asked,
    out: &mut Vec<u8>,
) -> Framing {
    let status = parts.status;
    let headers = &mut parts.headers;
    let framing = if asked.head || status == StatusCode::NOT_MODIFIED {
        Framing::None
    } else if status.is_informational() || status == StatusCode::NO_CONTENT {
        headers.remove(header::CONTENT_LENGTH);
        Framing::None
    } else {
        match declared_length(headers) {
            Some(n) => Framing::Length(n),
            None => {
                headers.remove(header::CONTENT_LENGTH);
                match body.size_hint().exact() {
                    Some(n) => {
                        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                        Framing::Length(n)
                    }
                    None if asked.version == Version::HTTP_11 => Framing::Chunked,
                    None => Framing::Close,
                }
            }
        }
    };
    let keep_alive = asked.keep_alive && framing != Framing::Close;

    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers.iter() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !keep_alive && status != StatusCode::SWITCHING_PROTOCOLS {
        out.extend_from_slice(b"connection: close\r\n");
    } else if keep_alive && asked.version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !headers.contains_key(header::DATE) {
        // RFC 9110 §6.6.1: a recipient forwarding a response without a
        // Date adds one.
        out.extend_from_slice(b"date: ");
        date::append(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// The response's `Content-Length`, when it has exactly one valid value.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()?.trim().parse().ok()
}

/// Writes the buffered head and then the body. Returns whether the body
/// was written completely in its framing, so the connection can be reused.
pub(crate) async fn body<B>(
    conn: &Conn,
    out: &mut Vec<u8>,
    framing: Framing,
    body: &mut B,
) -> io::Result<bool>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    if framing == Framing::None {
        flush(conn, out).await?;
        // Read the upstream body to its end (empty for HEAD), so the
        // upstream connection goes back to its pool.
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                return Ok(true);
            }
        }
        return Ok(true);
    }
    let mut written = 0u64;
    let mut trailers = None;
    loop {
        let frame = match poll_once(body).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                // Nothing more is ready: send what is buffered, then wait.
                flush(conn, out).await?;
                body.frame().await
            }
        };
        let frame: Frame<Bytes> = match frame {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                // What came before the break goes out first (the head, at
                // least), so the client sees a response cut short rather
                // than none; the connection then closes.
                flush(conn, out).await?;
                return Err(io::Error::other(e));
            }
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        match framing {
            Framing::Length(n) => {
                written += data.len() as u64;
                if written > n {
                    return Err(io::Error::other(
                        "upstream body longer than its content-length",
                    ));
                }
                push(conn, out, &data).await?;
            }
            Framing::Chunked => {
                chunk_size(out, data.len());
                push(conn, out, &data).await?;
                out.extend_from_slice(b"\r\n");
            }
            Framing::Close | Framing::None => push(conn, out, &data).await?,
        }
    }
    let complete = match framing {
        Framing::Chunked => {
            out.extend_from_slice(b"0\r\n");
            for (name, value) in trailers.iter().flatten() {
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
            true
        }
        Framing::Length(n) => written == n,
        Framing::Close | Framing::None => true,
    };
    flush(conn, out).await?;
    Ok(complete)
}

pub(crate) fn chunk_size(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(HEX[(len >> (i * 4)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
}

/// Adds `data` after the buffered bytes: copied when small, else written
/// out together with them.
async fn push(conn: &Conn, out: &mut Vec<u8>, data: &[u8]) -> io::Result<()> {
    if data.len() <= COPY_LIMIT {
        out.extend_from_slice(data);
        if out.len() >= FLUSH_AT {
            flush(conn, out).await?;
        }
        return Ok(());
    }
    conn.write_all([out, data]).await?;
    out.clear();
    Ok(())
}

/// Polls the body once: its next frame if ready now, else `Pending`.
fn poll_once<B>(
    body: &mut B,
) -> impl Future<Output = Poll<Option<Result<Frame<Bytes>, BodyError>>>> + '_
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    std::future::poll_fn(move |cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx)))
}

pub(crate) async fn flush(conn: &Conn, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        conn.write_all([out, &[]]).await?;
        out.clear();
    }
    Ok(())
}

/// The `Date` value, formatted once a second per thread.
pub(crate) mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }

    /// The value in `buf` (an HTTP date is 29 bytes).
    pub(crate) fn get(buf: &mut [u8; 29]) -> &[u8] {
        let n = with(|date| {
            let n = date.len().min(29);
            buf[..n].copy_from_slice(&date[..n]);
            n
        });
        &buf[..n]
    }

    pub(crate) fn append(out: &mut Vec<u8>) {
        with(|date| out.extend_from_slice(date));
    }

    fn with<R>(f: impl FnOnce(&[u8]) -> R) -> R {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.0 != second || cache.1.is_empty() {
                *cache = (second, httpdate::fmt_http_date(now));
            }
            f(cache.1.as_bytes())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;

    /// A response with a whole body, as skiff's own answers have.
    fn local(status: StatusCode, body: &'static str) -> Response<http_body_util::Full<Bytes>> {
        let mut resp = Response::new(http_body_util::Full::new(Bytes::from_static(
            body.as_bytes(),
        )));
        *resp.status_mut() = status;
        resp
    }

    fn encode<B: Body>(resp: Response<B>, asked: Asked) -> (String, Framing) {
        let (mut parts, body) = resp.into_parts();
        let mut out = Vec::new();
        let framing = head(&mut parts, &body, asked, &mut out);
        (String::from_utf8(out).unwrap(), framing)
    }

    const GET_11: Asked = Asked {
        head: false,
        version: Version::HTTP_11,
        keep_alive: true,
    };

    #[test]
    fn local_bodies_get_a_content_length() {
        let (text, framing) = encode(local(StatusCode::NOT_FOUND, "gone\n"), GET_11);
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("content-length: 5\r\n"), "{text}");
        assert!(text.contains("\r\ndate: "), "{text}");
        assert!(!text.contains("connection:"), "{text}");
        assert!(text.ends_with("\r\n\r\n"));
        assert_eq!(framing, Framing::Length(5));
    }

    #[test]
    fn closing_and_http10_connections_say_so() {
        let asked = Asked {
            keep_alive: false,
            ..GET_11
        };
        let (text, _) = encode(local(StatusCode::OK, "x"), asked);
        assert!(text.contains("connection: close\r\n"), "{text}");
        let asked = Asked {
            version: Version::HTTP_10,
            ..GET_11
        };
        let (text, _) = encode(local(StatusCode::OK, "x"), asked);
        assert!(text.contains("connection: keep-alive\r\n"), "{text}");
    }

    #[test]
    fn no_body_statuses_and_head_requests_send_none() {
        let mut resp = local(StatusCode::NO_CONTENT, "");
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        let (text, framing) = encode(resp, GET_11);
        assert_eq!(framing, Framing::None);
        assert!(!text.contains("content-length"), "{text}");
        let mut resp = local(StatusCode::OK, "");
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(42));
        let (text, framing) = encode(
            resp,
            Asked {
                head: true,
                ..GET_11
            },
        );
        assert_eq!(framing, Framing::None);
        assert!(
            text.contains("content-length: 42\r\n"),
            "HEAD keeps the length: {text}"
        );
    }

    #[test]
    fn chunk_sizes_are_lowercase_hex() {
        for (len, hex) in [
            (1, "1"),
            (15, "f"),
            (16, "10"),
            (1024, "400"),
            (65535, "ffff"),
        ] {
            let mut out = Vec::new();
            chunk_size(&mut out, len);
            assert_eq!(out, format!("{hex}\r\n").as_bytes());
        }
    }
}
