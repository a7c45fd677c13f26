//! The response on its way back to the client ([`ProxyBody`]: streamed
//! from the upstream, made by skiff, or a `101` that becomes a tunnel),
//! what finishing it does ([`Completion`]: the in-flight count ends, the
//! duration is recorded, a keep-alive connection goes back to its pool,
//! outlier detection hears how it went), and skiff's own answers (`404`,
//! `413`, the circuit breaker's `503`, redirects).

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::http1;

use super::access_log::AccessEntry;
use super::failure::Failure;
use super::headers::strip_hop_by_hop;
use super::send::Received;
use super::upgrade::Tunnel;
use crate::cluster::endpoint::InFlight;
use crate::cluster::Unavailable;
use crate::http::body::UpstreamBody;
use crate::http::h1::client;
use crate::http::BodyError;
use crate::proxy::route::RedirectTo;

/// `413` for a body past its route's `max_request_body`.
pub(super) fn too_large(limit: u64) -> Response<ProxyBody> {
    local(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "request body larger than {} (the route's max_request_body)\n",
            skiff_config::units::format_size(limit)
        ),
    )
}

/// The upstream's response, on its way to the client.
pub(super) fn respond(
    mut resp: Response<Received>,
    conn: Option<http1::SendRequest<UpstreamBody>>,
    (in_flight, cluster): (InFlight, Arc<crate::cluster::Cluster>),
    upgrade: bool,
    start: Instant,
    access: Option<Box<AccessEntry>>,
) -> Response<ProxyBody> {
    let switching = upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(resp.headers_mut(), switching);
    let upstream = switching.then(|| hyper::upgrade::on(&mut resp));
    let answered = !resp.status().is_server_error();
    if switching {
        cluster.record_outcome(&in_flight.endpoint, false);
    }
    let (parts, body) = resp.into_parts();
    let body = if let Some(upstream) = upstream {
        if let Some(entry) = access {
            entry.emit();
        }
        // The tunnel holds the in-flight count from here.
        ProxyBody::Upgrade(Tunnel::new(in_flight, upstream))
    } else {
        ProxyBody::Upstream(UpstreamResponse {
            inner: body,
            done: Some(Completion {
                in_flight,
                cluster,
                answered,
                start,
                conn,
                access,
            }),
        })
    };
    Response::from_parts(parts, body)
}

pub(super) static X_SKIFF_OVERFLOW: HeaderName = HeaderName::from_static("x-skiff-overflow");

/// A 503 from the circuit breaker, naming the limit in `x-skiff-overflow`.
pub(super) fn overflow(limit: &'static str, message: String) -> Response<ProxyBody> {
    let mut resp = local(StatusCode::SERVICE_UNAVAILABLE, message);
    resp.headers_mut()
        .insert(X_SKIFF_OVERFLOW.clone(), HeaderValue::from_static(limit));
    resp
}

/// A short plain-text response made by skiff itself.
pub(crate) fn local(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::Local(Some(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Whether a request is a gRPC call (`application/grpc`, `+proto`,
/// `+json`); gRPC-Web is not: its errors travel in its own framing.
pub(crate) fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .map(HeaderValue::as_bytes)
        .and_then(|v| v.strip_prefix(b"application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
}

/// gRPC status codes skiff answers with itself.
pub(crate) mod grpc_status {
    pub(crate) const UNIMPLEMENTED: u8 = 12;
    pub(crate) const UNAVAILABLE: u8 = 14;
}

/// A gRPC call answered by skiff itself, as gRPC clients read it: a
/// trailers-only response (HTTP 200, one header block with
/// `grpc-status` and the percent-encoded `grpc-message`).
pub(crate) fn grpc_local(code: u8, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::Local(None));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(u16::from(code)));
    let mut encoded = String::with_capacity(message.len());
    for b in message.bytes() {
        match b {
            b' '..=b'~' if b != b'%' => encoded.push(b as char),
            _ => encoded.push_str(&format!("%{b:02X}")),
        }
    }
    if let Ok(v) = HeaderValue::from_str(&encoded) {
        h.insert("grpc-message", v);
    }
    resp
}

/// What finishing a response does: ends the in-flight count, records the
/// duration, and returns a keep-alive connection to its pool.
#[derive(Debug)]
pub(super) struct Completion {
    in_flight: InFlight,
    /// For outlier detection, which hears of the request when its body ends.
    cluster: Arc<crate::cluster::Cluster>,
    /// The status was not a 5xx (those were counted as failures already).
    answered: bool,
    start: Instant,
    conn: Option<http1::SendRequest<UpstreamBody>>,
    /// The access log line, when this request is logged.
    access: Option<Box<AccessEntry>>,
}

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// Read to its end: the connection may be reused.
    Whole,
    /// The upstream broke it (reset, closed short, malformed framing): a
    /// failure of the endpoint, as one before the headers would be.
    Broken,
    /// Empty, and dropped without being read to its end.
    Empty,
    /// Dropped early: the client went away.
    Dropped,
}

impl Completion {
    /// `own`: skiff's own client's connection, when the body ended where
    /// its framing said.
    pub(super) fn finish(self, ended: Ended, own: Option<Box<client::Connection>>) {
        let Completion {
            in_flight,
            cluster,
            answered,
            start,
            conn,
            access,
        } = self;
        match ended {
            Ended::Whole => {
                if let Some(conn) = conn {
                    in_flight.endpoint.pool().checkin(conn);
                }
                if let Some(own) = own {
                    in_flight.endpoint.pool().checkin_own(own);
                }
                if answered {
                    cluster.record_outcome(&in_flight.endpoint, false);
                }
            }
            Ended::Empty => {
                if let Some(own) = own {
                    in_flight.endpoint.pool().checkin_own(own);
                }
                if answered {
                    cluster.record_outcome(&in_flight.endpoint, false);
                }
            }
            Ended::Broken => {
                cluster.stats.errors.reset.fetch_add(1, Relaxed);
                if answered {
                    cluster.record_outcome(&in_flight.endpoint, true);
                }
            }
            Ended::Dropped => {}
        }
        let elapsed = start.elapsed();
        in_flight.endpoint.cluster_stats.duration.observe(elapsed);
        in_flight.endpoint.duration.observe(elapsed);
        if let Some(entry) = access {
            entry.emit();
        }
    }
}

/// An upstream response body on its way to the client.
#[derive(Debug)]
pub(crate) struct UpstreamResponse {
    inner: Received,
    done: Option<Completion>,
}

impl Drop for UpstreamResponse {
    fn drop(&mut self) {
        // Dropped before its end: the client went away or the stream broke.
        if let Some(done) = self.done.take() {
            // An empty body may go unpolled (HTTP/2 ends the stream with
            // the headers): a whole answer all the same.
            if self.inner.is_end_stream() {
                let own = self.inner.take_reusable();
                done.finish(Ended::Empty, own);
            } else {
                done.finish(Ended::Dropped, None);
            }
        }
    }
}

/// The body of every response skiff sends.
#[derive(Debug)]
pub(crate) enum ProxyBody {
    /// Streamed from an upstream.
    Upstream(UpstreamResponse),
    /// Made by skiff (errors, admin pages).
    Local(Option<Bytes>),
    /// A `101 Switching Protocols`: no body, the connection becomes a tunnel.
    Upgrade(Tunnel),
}

impl ProxyBody {
    pub(crate) fn empty() -> ProxyBody {
        ProxyBody::Local(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ProxyBody::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Upgrade(_) => Poll::Ready(None),
            ProxyBody::Upstream(up) => {
                let polled = Pin::new(&mut up.inner).poll_frame(cx);
                if let (Poll::Ready(Some(Ok(frame))), Some(done)) = (&polled, up.done.as_mut()) {
                    if let (Some(entry), Some(data)) = (done.access.as_mut(), frame.data_ref()) {
                        entry.bytes_out += data.len() as u64;
                    }
                }
                match &polled {
                    Poll::Ready(None) => {
                        if let Some(done) = up.done.take() {
                            done.finish(Ended::Whole, up.inner.take_reusable());
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(done) = up.done.take() {
                            done.finish(Ended::Broken, None);
                        }
                    }
                    Poll::Ready(Some(Ok(_))) if up.inner.is_end_stream() => {
                        if let Some(done) = up.done.take() {
                            done.finish(Ended::Whole, up.inner.take_reusable());
                        }
                    }
                    _ => {}
                }
                polled
            }
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Local(data) => data.is_none(),
            ProxyBody::Upgrade(_) => true,
            ProxyBody::Upstream(up) => up.inner.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Local(Some(d)) => SizeHint::with_exact(d.len() as u64),
            ProxyBody::Local(None) | ProxyBody::Upgrade(_) => SizeHint::with_exact(0),
            ProxyBody::Upstream(up) => up.inner.size_hint(),
        }
    }
}

/// How skiff answers a request that got no upstream response.
pub(super) fn failure_response(failure: &Failure) -> Response<ProxyBody> {
    if failure.overflowed() {
        return overflow("max_pending", failure.message());
    }
    local(failure.status(), failure.message())
}

pub(super) fn unavailable_response(
    cluster: &crate::cluster::Cluster,
    unavailable: Unavailable,
    max_requests: u32,
) -> Response<ProxyBody> {
    match unavailable {
        Unavailable::NoEndpoints => {
            cluster.stats.errors.no_endpoints.fetch_add(1, Relaxed);
            local(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream: the cluster has no endpoints\n",
            )
        }
        Unavailable::Overflow => {
            cluster.stats.overflow.fetch_add(1, Relaxed);
            overflow(
                "max_requests",
                format!(
                    "upstream overflow: {max_requests} requests already in flight to cluster {} (max_requests)\n",
                    cluster.name
                ),
            )
        }
    }
}

/// The redirect `to` makes of `req` (whose host is `host`) on a listener
/// clients reach as `(tls, port)`, by the Gateway API's rule: the scheme
/// given or the request's; the host given or the request's without its
/// port; the port given, else the scheme's default when a scheme is
/// given, else the listener's; a scheme's default port never written;
/// the path kept, replaced or its prefix replaced; the query kept.
pub(super) fn redirect<B>(
    to: &RedirectTo,
    req: &Request<B>,
    host: Option<&str>,
    (tls, listener_port): (bool, u16),
) -> http::Response<ProxyBody> {
    let redirect = &to.redirect;
    let scheme = redirect
        .scheme
        .as_deref()
        .unwrap_or(if tls { "https" } else { "http" });
    let requested = host.unwrap_or("");
    // Strip a port, keeping IPv6 brackets.
    let bare = match requested.rfind(':') {
        Some(i) if !requested[i..].contains(']') => &requested[..i],
        _ => requested,
    };
    let host = redirect.host.as_deref().unwrap_or(bare);
    let port = match (redirect.port, &redirect.scheme) {
        (Some(port), _) => port,
        (None, Some(_)) => default_port(scheme),
        (None, None) => listener_port,
    };
    let uri = req.uri();
    let path = match &redirect.path {
        Some(rewrite) => skiff_route::rewrite::new_path(uri.path(), &to.matched, rewrite)
            .unwrap_or_else(|| uri.path().to_string()),
        None => uri.path().to_string(),
    };
    let mut location = format!("{scheme}://{host}");
    if port != default_port(scheme) {
        location.push_str(&format!(":{port}"));
    }
    location.push_str(&path);
    if let Some(query) = uri.query() {
        location.push('?');
        location.push_str(query);
    }
    let status = StatusCode::from_u16(redirect.code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    let mut resp = local(status, format!("redirecting to {location}\n"));
    if let Ok(value) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(http::header::LOCATION, value);
    }
    resp
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" {
        443
    } else {
        80
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_config::route::{PathMatch, PathRewrite};

    fn to(scheme: Option<&str>, host: Option<&str>, port: Option<u16>) -> RedirectTo {
        RedirectTo {
            redirect: skiff_config::route::Redirect {
                scheme: scheme.map(str::to_string),
                host: host.map(str::to_string),
                port,
                path: None,
                code: 301,
            },
            matched: PathMatch::Prefix("/".into()),
        }
    }

    fn location(to: &RedirectTo, host: &str, listener: (bool, u16)) -> String {
        let req = Request::get("/cart?id=1").body(()).unwrap();
        let resp = redirect(to, &req, Some(host), listener);
        resp.headers()["location"].to_str().unwrap().to_string()
    }

    #[test]
    fn redirects_keep_host_and_path_and_drop_the_port() {
        let https = to(Some("https"), None, None);
        let http80 = (false, 80);
        assert_eq!(
            location(&https, "shop.example.com:8080", http80),
            "https://shop.example.com/cart?id=1"
        );
        let https8443 = to(Some("https"), None, Some(8443));
        assert_eq!(
            location(&https8443, "[::1]:80", http80),
            "https://[::1]:8443/cart?id=1"
        );
    }

    /// Conformance's HTTPRouteRedirectPortAndScheme, case by case.
    #[test]
    fn redirect_ports_follow_the_gateway_api() {
        let h = "example.org:9999";
        let cases = [
            (
                to(None, None, None),
                (false, 80),
                "http://example.org/cart?id=1",
            ),
            (
                to(None, None, None),
                (false, 8080),
                "http://example.org:8080/cart?id=1",
            ),
            (
                to(Some("https"), None, None),
                (false, 8080),
                "https://example.org/cart?id=1",
            ),
            (
                to(None, None, Some(8080)),
                (false, 80),
                "http://example.org:8080/cart?id=1",
            ),
            (
                to(None, None, None),
                (true, 443),
                "https://example.org/cart?id=1",
            ),
            (
                to(Some("http"), None, None),
                (true, 443),
                "http://example.org/cart?id=1",
            ),
            (
                to(Some("https"), None, Some(8443)),
                (false, 80),
                "https://example.org:8443/cart?id=1",
            ),
            (
                to(None, Some("other.org"), None),
                (false, 80),
                "http://other.org/cart?id=1",
            ),
        ];
        for (to, listener, want) in cases {
            assert_eq!(
                location(&to, h, listener),
                want,
                "{:?} {listener:?}",
                to.redirect
            );
        }
    }

    #[test]
    fn redirect_paths_are_replaced_whole_or_by_prefix() {
        let mut r = to(None, None, None);
        r.matched = PathMatch::SeparatedPrefix("/cart".into());
        r.redirect.path = Some(PathRewrite::Prefix("/basket".into()));
        assert_eq!(location(&r, "a", (false, 80)), "http://a/basket?id=1");
        r.redirect.path = Some(PathRewrite::Full("/".into()));
        r.redirect.code = 302;
        assert_eq!(location(&r, "a", (false, 80)), "http://a/?id=1");
    }
}
