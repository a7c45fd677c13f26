//! An HTTP/2 request head from its decoded header fields (RFC 9113 §8.2
//! and §8.3): pseudo-header fields checked and turned into the method and
//! URI, regular fields into a `HeaderMap`, and what makes a request
//! malformed found as the fields arrive.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Uri, Version};

/// What a header block turned out to be.
// Made once per stream and taken apart at once: boxing the request would
// cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Head<B> {
    /// A request to forward.
    Request(Request<B>, Option<u64>),
    /// A well-formed request skiff answers itself: 431 or 400, why.
    Refuse(http::StatusCode, String),
    /// Malformed (RFC 9113 §8.1.1): the stream is reset.
    Malformed(&'static str),
}

/// Collects a block's fields; see [`Fields::field`].
pub(super) struct Fields {
    /// A trailer block: no pseudo-header fields allowed.
    trailers: bool,
    max_list: usize,
    max_fields: usize,
    size: usize,
    count: usize,
    method: Option<Method>,
    scheme: Option<Scheme>,
    /// `:authority` and `:path`, one after the other in `target` (one
    /// allocation for both, and the URI's clones share it).
    target: Vec<u8>,
    authority: Option<std::ops::Range<usize>>,
    path: Option<std::ops::Range<usize>>,
    regular: bool,
    pub(super) headers: HeaderMap,
    content_length: Option<u64>,
    cookies: usize,
    malformed: Option<&'static str>,
    too_large: bool,
    bad_name: Option<String>,
}

impl Fields {
    /// For a request head (`trailers` false) or trailers, within the
    /// listener's `max_header_bytes` (as HTTP/2 counts a header list:
    /// name, value and 32 per field) and `max_headers`.
    pub(super) fn new(trailers: bool, max_list: usize, max_fields: usize) -> Fields {
        Fields {
            trailers,
            max_list,
            max_fields,
            size: 0,
            count: 0,
            method: None,
            scheme: None,
            target: Vec::new(),
            authority: None,
            path: None,
            regular: false,
            // Room for three fields from the client and the three skiff
            // adds before forwarding: eight buckets, small enough for the
            // allocator's per-thread cache (a browser's dozen grows it).
            headers: HeaderMap::with_capacity(if trailers { 2 } else { 6 }),
            content_length: None,
            cookies: 0,
            malformed: None,
            too_large: false,
            bad_name: None,
        }
    }

    /// One decoded field. `Err` stops the decoder calling back (the block
    /// is still decoded, to keep its table right) once the answer is known.
    /// `never_indexed`: the client sent it as HPACK's "never indexed"
    /// literal; the value is marked sensitive, so that an HTTP/2 upstream
    /// gets it the same way (RFC 7541 §7.1.3).
    pub(super) fn field(
        &mut self,
        name: &[u8],
        value: &[u8],
        never_indexed: bool,
    ) -> Result<(), ()> {
        self.size += name.len() + value.len() + 32;
        if self.size > self.max_list {
            self.too_large = true;
            return Err(());
        }
        match self.check(name, value, never_indexed) {
            Ok(()) => Ok(()),
            Err(why) => {
                self.malformed = Some(why);
                Err(())
            }
        }
    }

    fn check(&mut self, name: &[u8], value: &[u8], sensitive: bool) -> Result<(), &'static str> {
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.trailers {
                return Err("pseudo-header field in trailers");
            }
            if self.regular {
                return Err("pseudo-header field after a regular field");
            }
            return self.pseudo(pseudo, value);
        }
        self.regular = true;
        self.count += 1;
        if name.iter().any(u8::is_ascii_uppercase) {
            return Err("uppercase field name");
        }
        match name {
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding"
            | b"upgrade" => return Err("connection-specific field"),
            b"te" if value != b"trailers" => return Err("te other than trailers"),
            _ => {}
        }
        if !is_token(name) {
            // HPACK carries names HTTP/1.1 cannot (`"`, `(`, ...): an
            // HTTP/1 upstream would read such a field some other way.
            if self.bad_name.is_none() {
                self.bad_name = Some(String::from_utf8_lossy(name).into_owned());
            }
            return Ok(());
        }
        if self.count > self.max_fields {
            return Ok(());
        }
        let name = HeaderName::from_bytes(name).map_err(|_| "invalid field name")?;
        let mut value = HeaderValue::from_bytes(value).map_err(|_| "invalid field value")?;
        value.set_sensitive(sensitive);
        if value
            .as_bytes()
            .first()
            .zip(value.as_bytes().last())
            .is_some_and(|(a, b)| matches!(a, b' ' | b'\t') || matches!(b, b' ' | b'\t'))
        {
            return Err("field value with surrounding whitespace");
        }
        if name == header::CONTENT_LENGTH {
            let n = std::str::from_utf8(value.as_bytes())
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or("invalid content-length")?;
            if self.content_length.is_some_and(|m| m != n) {
                return Err("conflicting content-length");
            }
            self.content_length = Some(n);
        } else if name == header::COOKIE {
            self.cookies += 1;
        }
        self.headers.append(name, value);
        Ok(())
    }

    fn pseudo(&mut self, name: &[u8], value: &[u8]) -> Result<(), &'static str> {
        match name {
            b"method" if self.method.is_none() => {
                self.method = Some(Method::from_bytes(value).map_err(|_| "invalid :method")?)
            }
            b"scheme" if self.scheme.is_none() => {
                self.scheme = Some(Scheme::try_from(value).map_err(|_| "invalid :scheme")?)
            }
            b"authority" if self.authority.is_none() => {
                self.authority = Some(self.keep(value));
            }
            b"path" if self.path.is_none() => self.path = Some(self.keep(value)),
            b"method" | b"scheme" | b"authority" | b"path" => {
                return Err("repeated pseudo-header field")
            }
            _ => return Err("unknown pseudo-header field"),
        }
        Ok(())
    }

    fn keep(&mut self, value: &[u8]) -> std::ops::Range<usize> {
        if self.target.is_empty() {
            self.target.reserve(64);
        }
        let start = self.target.len();
        self.target.extend_from_slice(value);
        start..self.target.len()
    }

    /// The trailers, or why they are malformed.
    pub(super) fn into_trailers(self) -> Result<HeaderMap, &'static str> {
        match self.malformed {
            Some(why) => Err(why),
            None if self.too_large => Err("trailers past the header list size"),
            None => Ok(self.headers),
        }
    }

    /// The request, with `body`.
    pub(super) fn into_request<B>(mut self, body: impl FnOnce(Option<u64>) -> B) -> Head<B> {
        use http::StatusCode;
        if self.too_large {
            let why = "request head larger than max_header_bytes\n";
            return Head::Refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, why.into());
        }
        if let Some(why) = self.malformed {
            return Head::Malformed(why);
        }
        let Some(method) = self.method.take() else {
            return Head::Malformed("no :method");
        };
        let target = Bytes::from(std::mem::take(&mut self.target));
        let authority = self.authority.take().map(|r| target.slice(r));
        let path = self.path.take().map(|r| target.slice(r));
        let uri = if method == Method::CONNECT {
            // RFC 9113 §8.5: only :authority.
            if self.scheme.is_some() || path.is_some() {
                return Head::Malformed(":scheme or :path in CONNECT");
            }
            match authority.map(Authority::from_maybe_shared) {
                Some(Ok(a)) => Uri::from(a),
                _ => return Head::Malformed("CONNECT without a valid :authority"),
            }
        } else {
            let (Some(scheme), Some(path)) = (self.scheme.take(), path) else {
                return Head::Malformed("no :scheme or :path");
            };
            if path.is_empty() {
                return Head::Malformed("empty :path");
            }
            let mut parts = http::uri::Parts::default();
            if path[0] == b'/' {
                match PathAndQuery::from_maybe_shared(path) {
                    Ok(p) => parts.path_and_query = Some(p),
                    Err(_) => return Head::Malformed("invalid :path"),
                }
            } else if &path[..] != b"*" || method != Method::OPTIONS {
                return Head::Malformed("invalid :path");
            } else {
                parts.path_and_query = Some(PathAndQuery::from_static("*"));
            }
            if let Some(authority) = authority {
                match Authority::from_maybe_shared(authority) {
                    Ok(a) => {
                        parts.scheme = Some(scheme);
                        parts.authority = Some(a);
                    }
                    Err(_) => return Head::Malformed("invalid :authority"),
                }
            }
            match Uri::from_parts(parts) {
                Ok(uri) => uri,
                Err(_) => return Head::Malformed("invalid request target"),
            }
        };
        if self.count > self.max_fields {
            let why = "too many header fields\n";
            return Head::Refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, why.into());
        }
        if method == Method::CONNECT {
            // As over HTTP/1.1: skiff makes no tunnels to any authority.
            let why = "CONNECT is not supported\n".to_string();
            return Head::Refuse(StatusCode::METHOD_NOT_ALLOWED, why);
        }
        if let Some(name) = self.bad_name.take() {
            return Head::Refuse(
                StatusCode::BAD_REQUEST,
                format!("invalid header name {name:?}\n"),
            );
        }
        if self.cookies > 1 {
            // RFC 9113 §8.2.3: crumbs are joined for HTTP/1.1 upstreams.
            join_cookies(&mut self.headers);
        }
        let length = self.content_length;
        let mut req = Request::new(body(length));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = self.headers;
        Head::Request(req, length)
    }
}

fn join_cookies(headers: &mut HeaderMap) {
    let mut joined = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(joined)) {
        headers.insert(header::COOKIE, value);
    }
}

/// Whether `name` is an HTTP field name (RFC 9110 §5.1: a token).
pub(super) fn is_token(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(fields: &[(&str, &str)]) -> Head<()> {
        let mut f = Fields::new(false, 16 * 1024, 100);
        for (n, v) in fields {
            if f.field(n.as_bytes(), v.as_bytes(), false).is_err() {
                break;
            }
        }
        f.into_request(|_| ())
    }

    const GET: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "shop.example:8443"),
        (":path", "/cart?id=7"),
    ];

    #[test]
    fn pseudo_header_fields_become_the_method_and_uri() {
        let mut fields = GET.to_vec();
        fields.extend([
            ("accept", "*/*"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("content-length", "0"),
        ]);
        let Head::Request(req, length) = head(&fields) else {
            panic!("not a request");
        };
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "https://shop.example:8443/cart?id=7");
        assert_eq!(req.version(), Version::HTTP_2);
        assert_eq!(req.headers()["cookie"], "a=1; b=2");
        assert_eq!(length, Some(0));
    }

    #[test]
    fn malformed_heads_are_told_apart_from_refused_ones() {
        let malformed = |fields: &[(&str, &str)]| matches!(head(fields), Head::Malformed(_));
        assert!(malformed(&GET[1..]), "no :method");
        assert!(malformed(&[GET[0], GET[1], GET[2]]), "no :path");
        assert!(malformed(&[
            GET[0],
            GET[1],
            GET[2],
            GET[3],
            ("x", "1"),
            (":path", "/")
        ]));
        assert!(
            malformed(&[GET[0], GET[0], GET[1], GET[2], GET[3]]),
            "repeated"
        );
        assert!(
            malformed(&[GET[0], GET[1], GET[2], GET[3], ("X-Up", "1")]),
            "uppercase"
        );
        assert!(malformed(&[
            GET[0],
            GET[1],
            GET[2],
            GET[3],
            ("connection", "close")
        ]));
        assert!(malformed(&[GET[0], GET[1], GET[2], GET[3], ("te", "gzip")]));
        assert!(malformed(&[
            GET[0],
            GET[1],
            GET[2],
            GET[3],
            ("x", "a\r\nb")
        ]));
        assert!(malformed(&[
            GET[0],
            GET[1],
            GET[2],
            GET[3],
            (":protocol", "websocket")
        ]));
        assert!(!malformed(&[
            GET[0],
            GET[1],
            GET[2],
            GET[3],
            ("te", "trailers")
        ]));
        let refused = |fields: &[(&str, &str)]| match head(fields) {
            Head::Refuse(status, _) => status.as_u16(),
            _ => 0,
        };
        assert_eq!(
            refused(&[GET[0], GET[1], GET[2], GET[3], ("x-a\"", "1")]),
            400
        );
        let big = "v".repeat(20 * 1024);
        assert_eq!(refused(&[GET[0], GET[1], GET[2], GET[3], ("x", &big)]), 431);
    }

    #[test]
    fn a_never_indexed_field_stays_sensitive() {
        let mut f = Fields::new(false, 16 * 1024, 100);
        for (n, v) in GET {
            assert!(f.field(n.as_bytes(), v.as_bytes(), false).is_ok());
        }
        assert!(f.field(b"authorization", b"Bearer x", true).is_ok());
        assert!(f.field(b"accept", b"*/*", false).is_ok());
        let Head::Request(req, _) = f.into_request(|_| ()) else {
            panic!("not a request");
        };
        assert!(req.headers()["authorization"].is_sensitive());
        assert!(!req.headers()["accept"].is_sensitive());
    }

    #[test]
    fn connect_has_only_an_authority_and_is_refused() {
        let refused = head(&[(":method", "CONNECT"), (":authority", "db:5432")]);
        assert!(matches!(
            refused,
            Head::Refuse(http::StatusCode::METHOD_NOT_ALLOWED, _)
        ));
        assert!(matches!(
            head(&[
                (":method", "CONNECT"),
                (":authority", "db:5432"),
                (":path", "/")
            ]),
            Head::Malformed(_)
        ));
    }

    #[test]
    fn trailers_take_no_pseudo_header_fields() {
        let mut f = Fields::new(true, 1024, 100);
        assert!(f.field(b"grpc-status", b"0", false).is_ok());
        assert_eq!(f.into_trailers().expect("trailers")["grpc-status"], "0");
        let mut f = Fields::new(true, 1024, 100);
        let _ = f.field(b":status", b"200", false);
        assert!(f.into_trailers().is_err());
    }
}
