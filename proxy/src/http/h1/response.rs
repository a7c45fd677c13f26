//! skiff's one HTTP/1.x response head parser, for the upstream client
//! ([`super::client`]) and the health checker alike: the status, and the
//! body's framing and the connection's fate read strictly (RFC 9112 §6.3):
//! one valid `Content-Length` or a final `chunked` coding, else the body
//! runs to the connection's end; a length beside a coding is ignored and
//! the connection not trusted with another request.
//!
//! httparse checks the syntax. The fields stay in the caller's array, so
//! the client builds its header map from them without a second parse,
//! and a health check reads only what decides its answer.

use http::{StatusCode, Version};

/// Most header fields a response may carry.
pub const MAX_HEADERS: usize = 100;
/// Largest response head accepted.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes (0 for responses that carry none).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// A final response head.
#[derive(Debug)]
pub struct Head<'h, 'b> {
    /// Bytes of the head at the start of the buffer.
    pub len: usize,
    pub status: StatusCode,
    pub(crate) version: Version,
    pub framing: Framing,
    /// The upstream keeps the connection open after this response.
    pub keep_alive: bool,
    /// A `Content-Length` came beside a transfer coding: it is ignored,
    /// and must not be forwarded.
    pub drop_length: bool,
    /// The header fields, as sent.
    pub fields: &'h [httparse::Header<'b>],
}

/// What the start of a buffer holds.
#[derive(Debug)]
pub enum Parsed<'h, 'b> {
    /// Not a whole head yet.
    Partial,
    /// A 1xx response other than 101, `len` bytes long: the final one follows.
    Interim {
        len: usize,
    },
    Final(Head<'h, 'b>),
}

/// Parses the response head at the start of `buf` into `fields`. A
/// response to HEAD (`head_request`) has no body whatever it declares.
#[inline] // two callers; the client's is every response's path
pub fn parse<'h, 'b>(
    buf: &'b [u8],
    head_request: bool,
    fields: &'h mut [httparse::Header<'b>],
) -> Result<Parsed<'h, 'b>, &'static str> {
    let mut parsed = httparse::Response::new(fields);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err("response head too large")
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err("too many header fields"),
        Err(_) => return Err("invalid response head"),
    };
    if len > MAX_HEAD_BYTES {
        return Err("response head too large");
    }
    let status =
        StatusCode::from_u16(parsed.code.unwrap_or(0)).map_err(|_| "invalid status code")?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err("101 to a request that asked no upgrade");
        }
        return Ok(Parsed::Interim { len });
    }
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let fields: &'h [httparse::Header<'b>] = parsed.headers;
    let Declared {
        length,
        chunked,
        coded,
        mut close,
    } = Declared::read(fields, version)?;
    let no_body =
        head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let drop_length = coded && length.is_some() && !no_body;
    let framing = if no_body {
        Framing::Length(0)
    } else if coded {
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        length.map_or(Framing::Close, Framing::Length)
    };
    if drop_length || framing == Framing::Close {
        close = true;
    }
    Ok(Parsed::Final(Head {
        len,
        status,
        version,
        framing,
        keep_alive: !close,
        drop_length,
        fields,
    }))
}

/// What a response's fields say about its framing and its connection.
struct Declared {
    length: Option<u64>,
    /// The final transfer coding is chunked.
    chunked: bool,
    /// A transfer coding is named at all.
    coded: bool,
    /// The connection closes after this response.
    close: bool,
}

impl Declared {
    #[inline]
    fn read(fields: &[httparse::Header<'_>], version: Version) -> Result<Declared, &'static str> {
        let mut declared = Declared {
            length: None,
            chunked: false,
            coded: false,
            close: version == Version::HTTP_10,
        };
        for field in fields {
            let name = field.name.as_bytes();
            // By length first: most fields are none of the three.
            match name.len() {
                14 if name.eq_ignore_ascii_case(b"content-length") => {
                    let n = parse_length(field.value)?;
                    if declared.length.is_some_and(|l| l != n) {
                        return Err("conflicting content-length values");
                    }
                    declared.length = Some(n);
                }
                17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                    declared.coded = true;
                    // Only the final coding decides: chunked last means chunked.
                    declared.chunked = field
                        .value
                        .rsplit(|&b| b == b',')
                        .next()
                        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                }
                10 if name.eq_ignore_ascii_case(b"connection") => {
                    for token in field.value.split(|&b| b == b',') {
                        let token = token.trim_ascii();
                        if token.eq_ignore_ascii_case(b"close") {
                            declared.close = true;
                        } else if token.eq_ignore_ascii_case(b"keep-alive")
                            && version == Version::HTTP_10
                        {
                            declared.close = false;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(declared)
    }
}

/// A `Content-Length` value: digits only (a list of equal values is
/// refused too: an upstream has no reason to send one).
#[inline]
fn parse_length(value: &[u8]) -> Result<u64, &'static str> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err("invalid content-length");
    }
    Ok(digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The final head of `wire`, interim ones skipped: (status, framing,
    /// keep-alive, drop_length).
    fn head(
        wire: &[u8],
        head_request: bool,
    ) -> Result<Option<(u16, Framing, bool, bool)>, &'static str> {
        let mut at = 0;
        loop {
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match parse(&wire[at..], head_request, &mut fields)? {
                Parsed::Partial => return Ok(None),
                Parsed::Interim { len } => at += len,
                Parsed::Final(h) => {
                    return Ok(Some((
                        h.status.as_u16(),
                        h.framing,
                        h.keep_alive,
                        h.drop_length,
                    )))
                }
            }
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let ok = |wire: &[u8], head_request| head(wire, head_request).unwrap().unwrap();
        assert_eq!(
            ok(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", false),
            (200, Framing::Length(5), true, false)
        );
        assert_eq!(
            ok(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                false
            ),
            (200, Framing::Chunked, true, false)
        );
        assert_eq!(
            ok(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
                false
            ),
            (200, Framing::Chunked, false, true)
        );
        assert_eq!(
            ok(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
                false
            ),
            (200, Framing::Close, false, false)
        );
        assert_eq!(
            ok(b"HTTP/1.1 200 OK\r\n\r\n", false),
            (200, Framing::Close, false, false)
        );
        assert_eq!(
            ok(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false),
            (200, Framing::Length(1), false, false)
        );
        assert_eq!(
            ok(
                b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n",
                false
            ),
            (200, Framing::Length(1), true, false)
        );
        assert_eq!(
            ok(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true),
            (200, Framing::Length(0), true, false),
            "HEAD has no body"
        );
        assert_eq!(
            ok(
                b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                false
            )
            .1,
            Framing::Length(0)
        );
        assert!(
            !ok(
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                false
            )
            .2
        );
    }

    #[test]
    fn interim_responses_are_skipped() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(head(wire, false).unwrap().unwrap().0, 201);
    }

    #[test]
    fn bad_heads_are_refused() {
        for wire in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 999999 Nope\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n",
        ] {
            assert!(
                head(wire, false).is_err(),
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
        assert_eq!(head(b"HTTP/1.1 200 OK\r\ncontent-le", false), Ok(None));
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(head(huge.as_bytes(), false), Err("response head too large"));
    }
}
