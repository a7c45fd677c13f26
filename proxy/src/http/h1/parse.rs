//! Reading an HTTP/1.x request head.
//!
//! httparse checks the syntax; the framing rules of RFC 9112 §6 are then
//! decided here once, strictly: a request whose length could be read two
//! ways (`Content-Length` with `Transfer-Encoding`, conflicting lengths, a
//! coding other than a lone `chunked`) is refused rather than guessed at,
//! because the upstream re-reads what skiff forwards and the two must never
//! disagree on where a request ends. Header values are slices of one copy
//! of the head, so parsing costs one allocation plus the header map.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};

/// Header slots parsed into on the stack: the default limit. A listener
/// that allows more parses into the heap, and only for a request that
/// has more.
const INLINE_HEADERS: usize = skiff_config::limits::DEFAULT_MAX_HEADERS as usize;

/// How large a request head may be (a listener's `limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Request line and fields, in bytes.
    pub(crate) max_bytes: usize,
    /// Header fields.
    pub(crate) max_headers: usize,
}

impl HeadLimits {
    /// A listener's head limits.
    pub(crate) fn of(limits: &skiff_config::limits::ListenerLimits) -> HeadLimits {
        HeadLimits {
            max_bytes: limits.max_header_bytes as usize,
            max_headers: limits.max_headers as usize,
        }
    }
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits::of(&skiff_config::limits::ListenerLimits::default())
    }
}

/// How the request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A request head, ready to forward.
#[derive(Debug)]
pub struct Parsed {
    pub(crate) request: Request<()>,
    pub framing: Framing,
    /// Whether the client wants the connection kept after the response.
    pub(crate) keep_alive: bool,
    /// The client sent `Expect: 100-continue` and waits for a go-ahead.
    pub(crate) expect_continue: bool,
    /// Bytes of the buffer the head took.
    pub head_len: usize,
    /// The head as received (header values are slices of it).
    pub(crate) head: Bytes,
}

/// A request head skiff refuses, with the status it answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct HeadError {
    pub(crate) status: StatusCode,
    pub(crate) reason: &'static str,
}

impl HeadError {
    fn bad(reason: &'static str) -> HeadError {
        HeadError {
            status: StatusCode::BAD_REQUEST,
            reason,
        }
    }
}

pub(crate) const TOO_LARGE: HeadError = HeadError {
    status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    reason: "request head too large",
};

pub(crate) const TOO_MANY: HeadError = HeadError {
    status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    reason: "too many header fields",
};

/// Parses the head at the start of `buf` within `limits`: `Ok(None)` when
/// more bytes are needed.
pub fn parse(buf: &[u8], limits: HeadLimits) -> Result<Option<Parsed>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; INLINE_HEADERS];
    let inline = limits.max_headers.min(INLINE_HEADERS);
    match parse_into(buf, &mut fields[..inline], limits.max_bytes) {
        Err(e) if e == TOO_MANY && limits.max_headers > INLINE_HEADERS => {
            let mut fields = vec![httparse::EMPTY_HEADER; limits.max_headers];
            parse_into(buf, &mut fields, limits.max_bytes)
        }
        parsed => parsed,
    }
}

/// [`parse`] with room for `fields.len()` header fields.
fn parse_into<'b>(
    buf: &'b [u8],
    fields: &mut [httparse::Header<'b>],
    max_bytes: usize,
) -> Result<Option<Parsed>, HeadError> {
    let mut req = httparse::Request::new(fields);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_bytes => return Err(TOO_LARGE),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(TOO_MANY),
        Err(httparse::Error::Version) => return Err(HeadError::bad("unsupported HTTP version")),
        Err(httparse::Error::HeaderName) => return Err(HeadError::bad("invalid header name")),
        Err(httparse::Error::HeaderValue) => return Err(HeadError::bad("invalid header value")),
        Err(httparse::Error::Token) => return Err(HeadError::bad("invalid method")),
        Err(_) => return Err(HeadError::bad("malformed request head")),
    };
    if head_len > max_bytes {
        return Err(TOO_LARGE);
    }
    // One copy of the head; every value below is a slice of it.
    let head = Bytes::copy_from_slice(&buf[..head_len]);
    let slice = |part: &[u8]| {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        head.slice(start..start + part.len())
    };

    let (method, version, target) = request_line(&req)?;
    let uri = Uri::from_maybe_shared(slice(target.as_bytes()))
        .map_err(|_| HeadError::bad("invalid request target"))?;

    let mut headers = HeaderMap::with_capacity(req.headers.len() + 3);
    let mut scan = Scan::default();
    for field in req.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| HeadError::bad("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(slice(field.value))
            .map_err(|_| HeadError::bad("invalid header value"))?;
        scan.observe(&name, &value)?;
        if name == header::EXPECT {
            // Answered here, not forwarded: the upstream gets the body anyway.
            continue;
        }
        headers.append(name, value);
    }

    let framing = scan.framing(version)?;
    if let (Some(n), true) = (scan.length, scan.length_repeated) {
        // Agreeing values, but forwarded as one field: an upstream that
        // reads `5, 5` or two fields another way must not get the chance.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    let keep_alive = match version {
        Version::HTTP_11 => !scan.close,
        _ => scan.keep_alive && !scan.close,
    };

    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(Parsed {
        request,
        framing,
        keep_alive,
        expect_continue: scan.expect_continue && framing != Framing::Empty,
        head_len,
        head,
    }))
}

/// The method, version and request target of a parsed request line
/// (origin form, `*`, or absolute with an http(s) scheme; never CONNECT).
#[inline]
fn request_line<'b>(
    req: &httparse::Request<'_, 'b>,
) -> Result<(Method, Version, &'b str), HeadError> {
    let method = match req.method {
        Some(m) => {
            Method::from_bytes(m.as_bytes()).map_err(|_| HeadError::bad("invalid method"))?
        }
        None => return Err(HeadError::bad("malformed request line")),
    };
    if method == Method::CONNECT {
        return Err(HeadError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            reason: "CONNECT is not supported",
        });
    }
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(HeadError::bad("unsupported HTTP version")),
    };
    let target = req.path.unwrap_or_default();
    if !(target.starts_with('/') || target == "*" || has_http_scheme(target)) {
        return Err(HeadError::bad("invalid request target"));
    }
    Ok((method, version, target))
}

fn has_http_scheme(target: &str) -> bool {
    let lower = |n: usize| target.get(..n).map(|s| s.to_ascii_lowercase());
    lower(7).as_deref() == Some("http://") || lower(8).as_deref() == Some("https://")
}

/// What the header fields say about framing and the connection.
#[derive(Default)]
struct Scan {
    length: Option<u64>,
    /// Content-length came as a list or in more than one field.
    length_repeated: bool,
    chunked: bool,
    hosts: u32,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

impl Scan {
    /// The body's framing (RFC 9112 §6), and the Host rule (§3.2: HTTP/1.1
    /// needs exactly one; none is ever two).
    #[inline]
    fn framing(&self, version: Version) -> Result<Framing, HeadError> {
        let framing = match (self.chunked, self.length) {
            (true, Some(_)) => {
                return Err(HeadError::bad(
                    "both content-length and transfer-encoding are present",
                ))
            }
            (true, None) if version == Version::HTTP_10 => {
                return Err(HeadError::bad("transfer-encoding in an HTTP/1.0 request"))
            }
            (true, None) => Framing::Chunked,
            (false, Some(0)) | (false, None) => Framing::Empty,
            (false, Some(n)) => Framing::Length(n),
        };
        if self.hosts > 1 {
            return Err(HeadError::bad("more than one host header"));
        }
        if version == Version::HTTP_11 && self.hosts == 0 {
            return Err(HeadError::bad("missing host header"));
        }
        Ok(framing)
    }

    fn observe(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<(), HeadError> {
        if name == header::CONTENT_LENGTH {
            // A list or repeated field is accepted only when every value
            // agrees (RFC 9110 §8.6); anything else could be read two ways.
            for part in value.as_bytes().split(|&b| b == b',') {
                let n =
                    content_length(trim(part)).ok_or(HeadError::bad("invalid content-length"))?;
                if let Some(prior) = self.length {
                    if prior != n {
                        return Err(HeadError::bad("conflicting content-length values"));
                    }
                    self.length_repeated = true;
                }
                self.length = Some(n);
            }
        } else if name == header::TRANSFER_ENCODING {
            for coding in value.as_bytes().split(|&b| b == b',').map(trim) {
                if coding.is_empty() {
                    continue;
                }
                if !coding.eq_ignore_ascii_case(b"chunked") || self.chunked {
                    return Err(HeadError {
                        status: StatusCode::NOT_IMPLEMENTED,
                        reason: "transfer-encoding other than a single chunked",
                    });
                }
                self.chunked = true;
            }
            if !self.chunked {
                return Err(HeadError::bad("empty transfer-encoding"));
            }
        } else if name == header::HOST {
            self.hosts += 1;
        } else if name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                }
            }
        } else if name == header::EXPECT {
            if !trim(value.as_bytes()).eq_ignore_ascii_case(b"100-continue") {
                return Err(HeadError {
                    status: StatusCode::EXPECTATION_FAILED,
                    reason: "only 100-continue can be expected",
                });
            }
            self.expect_continue = true;
        }
        Ok(())
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `1*DIGIT`, no sign, no overflow.
fn content_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> Parsed {
        parse(raw.as_bytes(), HeadLimits::default())
            .expect("valid")
            .expect("complete")
    }

    fn refused(raw: &str) -> HeadError {
        parse(raw.as_bytes(), HeadLimits::default()).expect_err("refused")
    }

    #[test]
    fn simple_get_parses_with_its_headers() {
        let p = ok("GET /a/b?c=d HTTP/1.1\r\nHost: shop.local\r\nX-One: 1\r\n\r\nrest");
        assert_eq!(p.request.method(), Method::GET);
        assert_eq!(p.request.uri().path(), "/a/b");
        assert_eq!(p.request.uri().query(), Some("c=d"));
        assert_eq!(p.request.headers()["x-one"], "1");
        assert_eq!(p.framing, Framing::Empty);
        assert!(p.keep_alive);
        assert_eq!(
            p.head_len,
            "GET /a/b?c=d HTTP/1.1\r\nHost: shop.local\r\nX-One: 1\r\n\r\n".len()
        );
    }

    #[test]
    fn incomplete_head_asks_for_more() {
        assert!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\n", HeadLimits::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn lengths_and_chunked_are_told_apart() {
        let p = ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(p.framing, Framing::Length(12));
        let p = ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(p.framing, Framing::Chunked);
        let p =
            ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(p.framing, Framing::Length(5));
        let lengths: Vec<_> = p
            .request
            .headers()
            .get_all("content-length")
            .iter()
            .collect();
        assert_eq!(lengths, ["5"], "agreeing lengths are forwarded as one");
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let e = refused(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e =
            refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n");
        assert_eq!(e.reason, "conflicting content-length values");
        for bad in ["+3", "-1", "3 3", "0x10", "", "99999999999999999999999"] {
            let raw = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {bad}\r\n\r\n");
            assert_eq!(refused(&raw).reason, "invalid content-length", "{bad:?}");
        }
        let e = refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(e.status, StatusCode::NOT_IMPLEMENTED);
        let e = refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(e.status, StatusCode::NOT_IMPLEMENTED);
        let e = refused("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(e.reason, "transfer-encoding in an HTTP/1.0 request");
    }

    #[test]
    fn host_is_required_once_in_http11() {
        assert_eq!(
            refused("GET / HTTP/1.1\r\n\r\n").reason,
            "missing host header"
        );
        assert_eq!(
            refused("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").reason,
            "more than one host header"
        );
        assert!(ok("GET / HTTP/1.0\r\n\r\n").request.headers().is_empty());
    }

    #[test]
    fn malformed_heads_are_refused() {
        for raw in [
            "GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET\x01 / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
            "GET example.com HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            let e = refused(raw);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{raw:?}: {e}");
        }
        let e = refused("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n");
        assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
    }

    /// A head with `n` header fields (`Host` among them).
    fn with_fields(n: usize) -> String {
        let mut raw = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 1..n {
            raw.push_str(&format!("x-{i}: 1\r\n"));
        }
        raw.push_str("\r\n");
        raw
    }

    #[test]
    fn oversized_heads_get_431() {
        let defaults = HeadLimits::default();
        assert_eq!(
            ok(&with_fields(defaults.max_headers))
                .request
                .headers()
                .len(),
            100
        );
        assert_eq!(refused(&with_fields(defaults.max_headers + 1)), TOO_MANY);
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}",
            "a".repeat(defaults.max_bytes)
        );
        assert_eq!(refused(&big), TOO_LARGE);
    }

    #[test]
    fn head_limits_are_the_listeners() {
        let small = HeadLimits {
            max_bytes: 1024,
            max_headers: 5,
        };
        assert!(parse(with_fields(5).as_bytes(), small).unwrap().is_some());
        assert_eq!(
            parse(with_fields(6).as_bytes(), small).unwrap_err(),
            TOO_MANY
        );
        let long = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "a".repeat(1000)
        );
        assert_eq!(parse(long.as_bytes(), small).unwrap_err(), TOO_LARGE);
        let partial = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "a".repeat(1024));
        assert_eq!(parse(partial.as_bytes(), small).unwrap_err(), TOO_LARGE);

        // More than the inline slots: parsed on the heap, to the limit.
        let many = HeadLimits {
            max_bytes: 64 * 1024,
            max_headers: 300,
        };
        let parsed = parse(with_fields(300).as_bytes(), many).unwrap().unwrap();
        assert_eq!(parsed.request.headers().len(), 300);
        assert_eq!(
            parse(with_fields(301).as_bytes(), many).unwrap_err(),
            TOO_MANY
        );
    }

    #[test]
    fn absolute_form_keeps_its_authority() {
        let p = ok("GET http://shop.local:8080/x HTTP/1.1\r\nHost: other\r\n\r\n");
        assert_eq!(p.request.uri().authority().unwrap(), "shop.local:8080");
        assert_eq!(p.request.uri().path(), "/x");
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        assert!(!ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!ok("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(ok("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn expect_continue_is_answered_not_forwarded() {
        let p =
            ok("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
        assert!(p.expect_continue);
        assert!(!p.request.headers().contains_key("expect"));
        let p = ok("GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n");
        assert!(!p.expect_continue, "no body, nothing to wait for");
        let e = refused("PUT / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n");
        assert_eq!(e.status, StatusCode::EXPECTATION_FAILED);
    }
}
