//! What skiff changes in a request's head on its way through: hop-by-hop
//! fields removed (RFC 9110 §7.6.1), the forwarding fields added
//! (`x-forwarded-for`, `x-forwarded-proto`, `x-request-id`), and the
//! request target and `Host` rewritten for the upstream's protocol.
//!
//! One pass over the field names finds what is present, so the common
//! request (no hop-by-hop fields, no forwarding fields yet) costs no hash
//! lookups beyond the three inserts.

use std::io::Write as _;
use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};
use skiff_config::cluster::UpstreamProtocol;

use crate::cluster::balance::random;

pub(super) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

pub(super) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

pub(super) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub(super) static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

pub(super) static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

pub(super) static PROXY_AUTHENTICATE: HeaderName = HeaderName::from_static("proxy-authenticate");

pub(super) static PROXY_AUTHORIZATION: HeaderName = HeaderName::from_static("proxy-authorization");

/// Whether this is an HTTP/1.1 request to switch protocols (WebSocket).
pub(super) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

pub(super) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// The host a request is for: the URI authority (HTTP/2, absolute-form)
/// or the Host header.
#[inline]
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok()),
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1) and adds the forwarding ones.
///
/// One pass over the header names finds what is present, so the common
/// request (no hop-by-hop headers, no forwarding headers yet) costs no
/// hash lookups beyond the three inserts.
pub fn prepare_request<B>(req: &mut Request<B>, peer: SocketAddr, upgrade: bool) {
    let host_to_come = req.uri().authority().is_some();
    let headers = req.headers_mut();
    let (mut hop, mut xff, mut xfp, mut rid) = (false, false, false, false);
    for name in headers.keys() {
        if is_hop_by_hop(name) {
            hop = true;
        } else if name == X_FORWARDED_FOR {
            xff = true;
        } else if name == X_FORWARDED_PROTO {
            xfp = true;
        } else if name == X_REQUEST_ID {
            rid = true;
        }
    }
    if hop || upgrade {
        let te_trailers = headers
            .get(header::TE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
        remove_hop_by_hop(headers, upgrade);
        if te_trailers {
            // The one TE value that means something end to end: gRPC needs it.
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }

    // Room for the three inserts below, and for the Host an HTTP/1.1
    // upstream gets from a URI's authority (HTTP/2 clients), so the map
    // grows at most once.
    headers.reserve(3 + usize::from(host_to_come));
    let ip = peer_ip(peer.ip());
    let value = match headers.get(&X_FORWARDED_FOR).filter(|_| xff) {
        Some(prior) => {
            let mut joined = Vec::with_capacity(prior.len() + 2 + ip.len());
            joined.extend_from_slice(prior.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(ip.as_bytes());
            HeaderValue::from_bytes(&joined)
        }
        None => Ok(ip),
    };
    if let Ok(v) = value {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !xfp {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if !rid {
        headers.insert(X_REQUEST_ID.clone(), new_request_id());
    }
}

/// The peer's IP as a header value. The last one formatted is kept per
/// thread: a sidecar's outbound requests all come from the app on
/// loopback, and a cloned value costs no allocation.
pub(super) fn peer_ip(ip: std::net::IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(std::net::IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((cached, value)) = &*last {
            if *cached == ip {
                return value.clone();
            }
        }
        // At most 45 bytes for IPv6, formatted on the stack.
        let mut text = [0u8; 64];
        let len = {
            let mut cursor = std::io::Cursor::new(&mut text[..]);
            let _ = write!(cursor, "{ip}");
            cursor.position() as usize
        };
        let value = HeaderValue::from_bytes(&text[..len])
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        *last = Some((ip, value.clone()));
        value
    })
}

/// Whether `name` is hop-by-hop by itself (headers named in `Connection`
/// are found by reading it).
#[inline]
pub(super) fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRANSFER_ENCODING
        || name == header::TRAILER
        || name == header::UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == PROXY_AUTHENTICATE
        || name == PROXY_AUTHORIZATION
}

/// Removes the headers that describe one connection, not the message.
/// With `upgrade`, `Upgrade` is kept and `Connection: upgrade` restored.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if upgrade || headers.keys().any(is_hop_by_hop) {
        remove_hop_by_hop(headers, upgrade);
    }
}

pub(super) fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Headers named by `Connection` go too. The values are cloned (a
    // reference count) so their tokens can be read while removing; a
    // lookup by `&str` does not allocate a name.
    let named: Vec<HeaderValue> = headers
        .get_all(header::CONNECTION)
        .iter()
        .cloned()
        .collect();
    for value in &named {
        let Ok(tokens) = value.to_str() else { continue };
        for token in tokens.split(',').map(str::trim) {
            let keep = token.is_empty() || (upgrade && token.eq_ignore_ascii_case("upgrade"));
            if !keep {
                headers.remove(token);
            }
        }
    }
    headers.remove(header::CONNECTION);
    headers.remove(&KEEP_ALIVE);
    headers.remove(header::TE);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::TRAILER);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(&PROXY_AUTHENTICATE);
    headers.remove(&PROXY_AUTHORIZATION);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Rewrites the URI for the upstream protocol: origin-form with a Host
/// header for HTTP/1.1, absolute with an authority for HTTP/2. True when
/// the request named no host and the endpoint's address was used: a
/// retry to another endpoint must not carry it.
pub(super) fn set_upstream_uri<B>(
    req: &mut Request<B>,
    protocol: UpstreamProtocol,
    tls: bool,
    endpoint: SocketAddr,
) -> bool {
    match protocol {
        UpstreamProtocol::Http1 => {
            // The Host header is what HTTP/1.1 routes on. A URI with an
            // authority (HTTP/2 clients, absolute-form) was routed by that
            // authority, so Host is made from it, replacing any Host sent
            // along (RFC 9112 §3.2.2): the upstream must see the host the
            // route saw. The common request (origin-form) parses nothing.
            if let Some(authority) = req.uri().authority() {
                let host = host_header(authority);
                *req.uri_mut() = origin_form(req.uri());
                if let Some(host) = host {
                    req.headers_mut().insert(header::HOST, host);
                }
            }
            let unnamed = !req.headers().contains_key(header::HOST);
            if unnamed {
                if let Ok(host) = HeaderValue::from_str(&endpoint.to_string()) {
                    req.headers_mut().insert(header::HOST, host);
                }
            }
            *req.version_mut() = Version::HTTP_11;
            unnamed
        }
        UpstreamProtocol::Http2 => {
            let authority = req.uri().authority().cloned().or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| h.parse().ok())
            });
            let mut parts = req.uri().clone().into_parts();
            parts.scheme = Some(if tls {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            });
            let unnamed = authority.is_none();
            parts.authority = Some(match authority {
                Some(a) => a,
                None => endpoint
                    .to_string()
                    .parse()
                    .expect("a socket address is a valid authority"),
            });
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            }
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
            req.headers_mut().remove(header::HOST);
            *req.version_mut() = Version::HTTP_2;
            unnamed
        }
    }
}

/// The Host header for a URI's authority: its host and port, without
/// userinfo (`user@`), which Host never carries; a port that is no port
/// is left out.
pub(super) fn host_header(authority: &http::uri::Authority) -> Option<HeaderValue> {
    let text = authority.as_str();
    let host = if authority.port().is_some() {
        // Already `host:port` after any userinfo: no string to build.
        text.rsplit_once('@')
            .map_or(text, |(_, host_port)| host_port)
    } else {
        authority.host()
    };
    HeaderValue::from_str(host).ok()
}

/// The request target for HTTP/1.1: the path and query, never empty.
/// (An HTTP/2 `:path` of only a fragment, `#x`, leaves the path empty,
/// and `GET  HTTP/1.1` is no request line: the fuzzer's `h2` target
/// found that one.)
pub(super) fn origin_form(uri: &Uri) -> Uri {
    let Some(pq) = uri.path_and_query() else {
        return Uri::from_static("/");
    };
    let target = Uri::from(pq.clone());
    if target.path().is_empty() {
        // Nothing at all (`as_str` says "/", but the target writes as "").
        Uri::from_static("/")
    } else if pq.as_str().starts_with('/') || pq.as_str() == "*" {
        target
    } else {
        // A query without a path (`?q`).
        format!("/{}", pq.as_str())
            .parse()
            .unwrap_or_else(|_| Uri::from_static("/"))
    }
}

/// A random UUID (version 4) for `x-request-id`.
pub(crate) fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&random().to_le_bytes());
    bytes[8..].copy_from_slice(&random().to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut out = [0u8; 36];
    let mut o = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[o] = b'-';
            o += 1;
        }
        out[o] = HEX[(b >> 4) as usize];
        out[o + 1] = HEX[(b & 0xf) as usize];
        o += 2;
    }
    HeaderValue::from_bytes(&out).expect("hex and dashes are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_named_ones_with_them() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("proxy-authorization", HeaderValue::from_static("x"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn forwarding_headers_are_added_and_te_trailers_kept() {
        let mut req = Request::new(());
        req.headers_mut()
            .insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        req.headers_mut()
            .insert("te", HeaderValue::from_static("trailers, deflate"));
        prepare_request(&mut req, "192.0.2.7:5000".parse().unwrap(), false);
        let h = req.headers();
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-request-id"].len(), 36);
    }

    #[test]
    fn request_id_is_kept_when_present() {
        let mut req = Request::new(());
        req.headers_mut()
            .insert("x-request-id", HeaderValue::from_static("abc"));
        prepare_request(&mut req, "127.0.0.1:1".parse().unwrap(), false);
        assert_eq!(req.headers()["x-request-id"], "abc");
    }

    #[test]
    fn host_header_is_the_authority_without_userinfo() {
        for (given, expected) in [
            ("shop.example:8080", "shop.example:8080"),
            ("shop.example", "shop.example"),
            ("user:secret@shop.example:8080", "shop.example:8080"),
            ("user@shop.example", "shop.example"),
            ("[::1]:80", "[::1]:80"),
            ("[::1]", "[::1]"),
        ] {
            let authority: http::uri::Authority = given.parse().unwrap();
            assert_eq!(host_header(&authority).unwrap(), expected, "{given}");
        }
    }

    #[test]
    fn origin_form_is_never_empty() {
        for (given, expected) in [
            ("http://shop/a?b", "/a?b"),
            ("http://shop", "/"),
            ("/a", "/a"),
            ("*", "*"),
        ] {
            let uri: Uri = given.parse().unwrap();
            assert_eq!(origin_form(&uri).to_string(), expected, "{given}");
        }
        // An URI with an empty path (what `:path: #` could become).
        let parts = http::uri::Parts::from(Uri::from_static("http://shop/"));
        let mut parts = parts;
        parts.path_and_query = Some("?q".parse().unwrap());
        if let Ok(uri) = Uri::from_parts(parts) {
            assert_eq!(origin_form(&uri).to_string(), "/?q");
        }
        let empty = http::uri::Builder::new()
            .scheme("http")
            .authority("shop")
            .path_and_query("")
            .build();
        if let Ok(uri) = empty {
            assert!(origin_form(&uri).to_string().starts_with('/'));
        }
    }

    #[test]
    fn request_ids_look_like_uuid_v4() {
        let id = new_request_id();
        let s = id.to_str().unwrap();
        assert_eq!(s.as_bytes()[14], b'4');
        assert_eq!(s.matches('-').count(), 4);
        assert_ne!(new_request_id(), id);
    }
}
