//! The per-request path: route, pick, connect, send, stream back.
//!
//! Everything here runs once per request, so it loads snapshots (no locks),
//! bumps pre-resolved counters, and streams bodies frame by frame in both
//! directions without buffering them. The in-flight count of the picked
//! endpoint is held by [`InFlight`] until the response body ends, which is
//! what least-request balances on.

use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;

use crate::http::body::{BodyError, UpstreamBody};
use crate::http::h1::client;

use crate::cluster::pool::{ConnectError, PendingLimit, Pool, Sender};
use crate::cluster::{balance::random, InFlight, Unavailable};
use crate::proxy::route::ListenerRoutes;
use crate::proxy::route::{Found, Route};
use skiff_config::cluster::UpstreamProtocol;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static PROXY_AUTHENTICATE: HeaderName = HeaderName::from_static("proxy-authenticate");
static PROXY_AUTHORIZATION: HeaderName = HeaderName::from_static("proxy-authorization");

/// Proxies one request from `peer` arriving on `listener`.
///
/// `raw_head` is the request head as an HTTP/1 client sent it, when it
/// did: a retry re-reads it instead of every request paying for a copy.
///
/// This and the functions it awaits return `async move` blocks rather than
/// being `async fn`s: an `async fn`'s future keeps its parameters and a
/// second copy of them, and this future is moved and boxed per request.
#[allow(clippy::manual_async_fn)] // see above: the future stays smaller
pub fn handle<'a>(
    mut req: Request<UpstreamBody>,
    listener: &'a ListenerRoutes,
    peer: SocketAddr,
    raw_head: Option<RawHead>,
) -> impl std::future::Future<Output = Response<ProxyBody>> + 'a {
    async move {
        let start = Instant::now();
        let routes = listener.table.load();
        let host = request_host(&req);
        let access = routes
            .access_log
            .filter(|log| {
                log.sample >= 1.0 || (random() >> 11) as f64 <= log.sample * (1u64 << 53) as f64
            })
            .map(|_| AccessEntry::new(&req, host.unwrap_or("-"), &listener.name, start));
        let route = match routes.find(host, req.uri().path(), req.headers()) {
            Some(Found::Route(route)) => route,
            Some(Found::Redirect(redirect)) => {
                let resp = crate::proxy::rules::redirect(redirect, &req, host);
                log_local(access, &resp, None, 0);
                return resp;
            }
            None => {
                listener.unrouted.fetch_add(1, Relaxed);
                let resp = local(
                    StatusCode::NOT_FOUND,
                    "no route matches this host and path\n",
                );
                log_local(access, &resp, None, 0);
                return resp;
            }
        };
        let capped = match route.max_request_body {
            None => None,
            Some(limit) => match cap_body(&mut req, limit) {
                Ok(exceeded) => exceeded,
                Err(_) => {
                    let resp = too_large(limit);
                    route.requests.record(resp.status().as_u16());
                    log_local(access, &resp, None, 0);
                    return resp;
                }
            },
        };
        let raw_head = match &route.edits {
            None => raw_head,
            Some(edits) => {
                edits.apply(&mut req);
                // A retry must send the edited request, not re-read the client's.
                None
            }
        };
        let response = forward(req, route, peer, start, raw_head, access, capped).await;
        route.requests.record(response.status().as_u16());
        response
    }
}

/// Applies a route's `max_request_body`: a body that declares more is
/// refused with `413` before a byte of it is read; one of unknown length
/// is capped as it streams, and the flag returned says whether it went
/// past (Envoy's buffer limit answers the same way).
fn cap_body(
    req: &mut Request<UpstreamBody>,
    limit: u64,
) -> Result<Option<Arc<crate::http::capped::Exceeded>>, crate::http::capped::BodyTooLarge> {
    let hint = req.body().size_hint();
    if hint.lower() > limit {
        return Err(crate::http::capped::BodyTooLarge { limit });
    }
    if hint.upper().is_some_and(|n| n <= limit) {
        // Its framing already holds it to the limit (HTTP/1 and h2 both
        // refuse a body longer than its content-length).
        return Ok(None);
    }
    let body = std::mem::replace(req.body_mut(), UpstreamBody::Empty);
    let (capped, exceeded) = crate::http::capped::CappedBody::new(body, limit);
    *req.body_mut() = UpstreamBody::Capped(Box::new(capped));
    Ok(Some(exceeded))
}

/// `413` for a body past its route's `max_request_body`.
fn too_large(limit: u64) -> Response<ProxyBody> {
    local(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "request body larger than {} (the route's max_request_body)\n",
            skiff_config::units::format_size(limit)
        ),
    )
}

/// One access log line, filled in as the request goes and written when
/// its response ends (only for requests the listener's sample picks).
#[derive(Debug)]
pub struct AccessEntry {
    listener: std::sync::Arc<str>,
    method: http::Method,
    authority: String,
    path: String,
    request_id: String,
    /// The request body's declared length (0 without a body).
    bytes_in: u64,
    bytes_out: u64,
    cluster: Option<std::sync::Arc<str>>,
    endpoint: Option<SocketAddr>,
    status: u16,
    retries: u32,
    start: Instant,
}

impl AccessEntry {
    fn new<B: Body>(
        req: &Request<B>,
        host: &str,
        listener: &std::sync::Arc<str>,
        start: Instant,
    ) -> Box<AccessEntry> {
        Box::new(AccessEntry {
            listener: listener.clone(),
            method: req.method().clone(),
            authority: host.to_string(),
            path: req.uri().path().to_string(),
            request_id: String::new(),
            bytes_in: req.body().size_hint().exact().unwrap_or(0),
            bytes_out: 0,
            cluster: None,
            endpoint: None,
            status: 0,
            retries: 0,
            start,
        })
    }

    fn emit(&self) {
        tracing::info!(
            target: crate::logging::ACCESS_TARGET,
            listener = %self.listener,
            method = %self.method,
            authority = %self.authority,
            path = %self.path,
            status = self.status,
            cluster = self.cluster.as_deref().unwrap_or("-"),
            endpoint = %self.endpoint.map_or_else(|| "-".to_string(), |e| e.to_string()),
            duration_ms = self.start.elapsed().as_secs_f64() * 1e3,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            retries = self.retries,
            request_id = %self.request_id,
        );
    }
}

#[allow(clippy::manual_async_fn)] // see above: the future stays smaller
fn forward<'a>(
    mut req: Request<UpstreamBody>,
    route: &'a Route,
    peer: SocketAddr,
    start: Instant,
    raw_head: Option<RawHead>,
    mut access: Option<Box<AccessEntry>>,
    capped: Option<Arc<crate::http::capped::Exceeded>>,
) -> impl std::future::Future<Output = Response<ProxyBody>> + 'a {
    async move {
        let cluster = &route.cluster;
        let settings = cluster.settings();
        let limits = settings.circuit_breaker;
        let policy = settings.retries;
        cluster.stats.budget.record_request(start);
        let upgrade = is_upgrade(&req);
        prepare_request(&mut req, peer, upgrade);
        if let Some(entry) = access.as_mut() {
            entry.cluster = Some(cluster.name.clone());
            if let Some(id) = req
                .headers()
                .get(&X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
            {
                entry.request_id = id.to_string();
            }
        }
        // What a retry after a response or a reset sends again: idempotent
        // (or marked) requests, with their body when it is at most
        // MAX_REPLAY_BODY long; that body is read whole before the first try.
        // (A request that was never sent, after a connect failure, comes back
        // whole and can always be retried.)
        let retryable = policy.attempts > 0
            && !upgrade
            && (is_idempotent(req.method()) || marked_retryable(&mut req));
        let mut replay_body = None;
        if retryable && !req.body().is_end_stream() {
            match buffer_body(&mut req, settings.timeouts.request).await {
                Ok(body) => replay_body = body,
                Err(resp) => return resp,
            }
        }
        // A refused HTTP/2 stream was not processed, so any request can go
        // again; keeping an HTTP/1 client's raw head for it costs nothing.
        let refusable = policy.attempts > 0
            && !upgrade
            && settings.protocol == UpstreamProtocol::Http2
            && raw_head.is_some();
        let replay_whole = req.body().is_end_stream() || replay_body.is_some();
        let replay = if (retryable || refusable) && replay_whole {
            match raw_head {
                // skiff's own HTTP/1 client hands the request back; it
                // carries what `can_send` allows, as `send` will ask (a
                // body that is whole becomes `Buffered` either way),
                // and hyper's client takes the rest.
                None if !upgrade
                    && settings.protocol == UpstreamProtocol::Http1
                    && settings.tls.is_none()
                    && client::can_send(&mut req) =>
                {
                    Replay::Returned
                }
                Some(head) => Replay::Raw {
                    head,
                    peer,
                    // The id skiff made (a client's own is in the head). Kept
                    // as bytes: cloning the value would allocate per request.
                    request_id: req
                        .headers()
                        .get(&X_REQUEST_ID)
                        .and_then(|v| <[u8; 36]>::try_from(v.as_bytes()).ok()),
                },
                None => Replay::Copy(Box::new(ReplayHead::of(&req))),
            }
        } else {
            Replay::No
        };
        let request_timeout = route.timeout.unwrap_or(settings.timeouts.request);
        let per_try = if policy.per_try_timeout.is_zero() {
            request_timeout
        } else {
            policy.per_try_timeout
        };
        let mut avoid = None;
        let mut retried = 0;
        // The request sent last named its endpoint as its host.
        let mut endpoint_named_host = false;
        loop {
            let in_flight = match admit(cluster, limits.max_requests, avoid) {
                Ok(in_flight) => in_flight,
                Err(unavailable) => {
                    let resp = unavailable_response(cluster, unavailable, limits.max_requests);
                    cluster.stats.duration.observe(start.elapsed());
                    log_local(access, &resp, None, retried);
                    return resp;
                }
            };
            let endpoint = in_flight.endpoint.clone();
            let (result, back) = if upgrade {
                // Boxed: a rare path that would otherwise enlarge every request's future.
                let upgraded = Box::pin(upgrade_request(
                    req,
                    endpoint.address,
                    settings.connector.as_ref(),
                    settings.timeouts.connect,
                    request_timeout,
                ))
                .await;
                (upgraded, None)
            } else {
                if std::mem::take(&mut endpoint_named_host) {
                    // The last try's endpoint named itself as the host.
                    req.headers_mut().remove(header::HOST);
                    *req.uri_mut() = origin_form(req.uri());
                }
                endpoint_named_host = set_upstream_uri(
                    &mut req,
                    settings.protocol,
                    settings.tls.is_some(),
                    endpoint.address,
                );
                let pending = PendingLimit {
                    waiting: &cluster.stats.pending,
                    max: limits.max_pending,
                };
                send(
                    req,
                    endpoint.pool(),
                    endpoint.address,
                    pending,
                    &settings,
                    per_try,
                )
                .await
            };
            let may_retry = retried < policy.attempts;

            let next = match result {
                Ok((resp, conn)) => {
                    let status = resp.status();
                    endpoint.requests.record(status.as_u16());
                    if status.is_server_error() {
                        cluster.record_outcome(&endpoint, true);
                    }
                    // A success is recorded when the body has ended whole
                    // (`Completion::finish`): one broken mid-body is a failure.
                    let retry = may_retry
                        && matches!(status.as_u16(), 502..=504)
                        && retryable
                        && replay.allowed()
                        && cluster
                            .stats
                            .budget
                            .try_retry(policy.budget_percent, policy.min_per_second);
                    let again = if retry {
                        replay.again(back, &replay_body)
                    } else {
                        None
                    };
                    let Some(again) = again else {
                        if let Some(entry) = access.as_mut() {
                            entry.endpoint = Some(endpoint.address);
                            entry.status = status.as_u16();
                            entry.retries = retried;
                        }
                        let done = (in_flight, cluster.clone());
                        return respond(resp, conn, done, upgrade, start, access);
                    };
                    // The answer is dropped unread, and its connection with it.
                    drop((resp, conn, in_flight));
                    again
                }
                // The client's body went past the route's limit and the
                // upstream request was aborted (however its protocol reported
                // it): the client's doing, neither retried nor counted.
                Err(_) if capped.as_ref().is_some_and(|c| c.get()) => {
                    drop(in_flight);
                    let resp = too_large(route.max_request_body.unwrap_or(0));
                    log_local(access, &resp, Some(endpoint.address), retried);
                    return resp;
                }
                Err(failure @ Failure::ClientBody(_)) => {
                    tracing::debug!(cluster = %cluster.name, "request failed: {}", failure.message());
                    drop(in_flight);
                    let resp = failure.response();
                    log_local(access, &resp, Some(endpoint.address), retried);
                    return resp;
                }
                Err(failure) => {
                    let counter = match &failure {
                        Failure::Connect(ConnectError::Overflow(_)) => &cluster.stats.overflow,
                        Failure::Connect(ConnectError::Timeout(_)) => {
                            &cluster.stats.errors.connect_timeout
                        }
                        Failure::Connect(_) => &cluster.stats.errors.connect_failed,
                        Failure::Timeout(_) => &cluster.stats.errors.request_timeout,
                        Failure::Reset(_) | Failure::ClientBody(_) => &cluster.stats.errors.reset,
                    };
                    counter.fetch_add(1, Relaxed);
                    let overflowed = matches!(failure, Failure::Connect(ConnectError::Overflow(_)));
                    let resp = failure.response();
                    if !overflowed {
                        // An overflow never reached the endpoint.
                        endpoint.requests.record(resp.status().as_u16());
                        cluster.record_outcome(&endpoint, true);
                    }
                    tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, "upstream failure: {}", failure.message());
                    drop(in_flight);
                    let again = match (&failure, back) {
                        _ if !may_retry || overflowed => None,
                        (Failure::Connect(_), Some(unsent)) => Some(unsent),
                        (Failure::Reset(e), back) if is_refused(e) => {
                            replay.again(back, &replay_body)
                        }
                        (_, back) if retryable => replay.again(back, &replay_body),
                        _ => None,
                    };
                    match again {
                        Some(again)
                            if cluster
                                .stats
                                .budget
                                .try_retry(policy.budget_percent, policy.min_per_second) =>
                        {
                            again
                        }
                        _ => {
                            cluster.stats.duration.observe(start.elapsed());
                            log_local(access, &resp, Some(endpoint.address), retried);
                            return resp;
                        }
                    }
                }
            };
            retried += 1;
            cluster.stats.retries.fetch_add(1, Relaxed);
            avoid = Some(endpoint.address);
            req = next;
            tokio::time::sleep(backoff(policy.backoff, retried)).await;
        }
    }
}

/// Writes the access line of a request skiff answered itself.
fn log_local(
    access: Option<Box<AccessEntry>>,
    resp: &Response<ProxyBody>,
    endpoint: Option<SocketAddr>,
    retries: u32,
) {
    if let Some(mut entry) = access {
        entry.status = resp.status().as_u16();
        entry.endpoint = endpoint;
        entry.retries = retries;
        entry.bytes_out = resp.body().size_hint().exact().unwrap_or(0);
        entry.emit();
    }
}

/// Picks an endpoint, trying twice more for one other than `avoid` (the
/// endpoint a retried request just failed on).
fn admit(
    cluster: &crate::cluster::Cluster,
    max_requests: u32,
    avoid: Option<SocketAddr>,
) -> Result<InFlight, Unavailable> {
    let mut picked = cluster.admit(max_requests)?;
    if let Some(avoid) = avoid {
        for _ in 0..2 {
            if picked.endpoint.address != avoid {
                break;
            }
            match cluster.admit(max_requests) {
                Ok(other) => picked = other,
                Err(_) => break,
            }
        }
    }
    Ok(picked)
}

fn unavailable_response(
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

/// The upstream's response, on its way to the client.
fn respond(
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
        ProxyBody::Upgrade(Tunnel {
            in_flight,
            upstream,
        })
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

static X_SKIFF_RETRYABLE: HeaderName = HeaderName::from_static("x-skiff-retryable");

/// Whether the client marked a request safe to send twice
/// (`x-skiff-retryable: true`). The header is for skiff and is removed.
/// Looked at only for methods that are not idempotent, so the common
/// request pays nothing for it.
fn marked_retryable<B>(req: &mut Request<B>) -> bool {
    req.headers_mut()
        .remove(&X_SKIFF_RETRYABLE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
}

/// Whether an HTTP/2 upstream refused the stream (`REFUSED_STREAM`): it
/// did not process the request, so it is safe to send again (RFC 9113 §8.7).
fn is_refused(e: &BodyError) -> bool {
    e.downcast_ref::<hyper::Error>()
        .and_then(std::error::Error::source)
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .and_then(h2::Error::reason)
        == Some(h2::Reason::REFUSED_STREAM)
}

/// Methods RFC 9110 §9.2.2 calls idempotent, safe to send twice.
fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
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

/// The wait before retry `n` (1-based): fully jittered, exponential from
/// `base`, at most ten times `base` (Envoy's backoff).
fn backoff(base: Duration, n: u32) -> Duration {
    let ceiling = base.saturating_mul((1u32 << n.min(16)) - 1).min(base * 10);
    let nanos = ceiling.as_nanos() as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(random() % (nanos + 1))
}

/// An HTTP/1 client's request head as it arrived, and what TLS added to
/// the request, if it came over TLS.
#[derive(Debug)]
pub struct RawHead {
    pub bytes: Bytes,
    pub tls: Option<Arc<crate::tls::TlsPeer>>,
}

/// How a request is sent again.
enum Replay {
    /// Not retried after it left (not idempotent, or it has a body).
    No,
    /// Re-read from the client's HTTP/1 head, and prepared as before.
    Raw {
        head: RawHead,
        peer: SocketAddr,
        request_id: Option<[u8; 36]>,
    },
    /// A copy of the prepared head (HTTP/2 clients, to hyper's clients).
    Copy(Box<ReplayHead>),
    /// The request itself, which skiff's own HTTP/1 client gives back
    /// (HTTP/2 clients): nothing is copied before it is needed.
    Returned,
}

impl Replay {
    /// Whether the request may be sent again after it left.
    fn allowed(&self) -> bool {
        !matches!(self, Replay::No)
    }

    /// The request to send again, if it may be: the one `send` gave back
    /// (prepared, its body still in it), else one made from the replay.
    fn again(
        &self,
        back: Option<Request<UpstreamBody>>,
        body: &Option<UpstreamBody>,
    ) -> Option<Request<UpstreamBody>> {
        if !self.allowed() {
            return None;
        }
        back.or_else(|| self.request(body))
    }

    /// The request to send again, if it may be, with `body` when it had one.
    fn request(&self, body: &Option<UpstreamBody>) -> Option<Request<UpstreamBody>> {
        let mut req = self.head()?;
        if let Some(UpstreamBody::Buffered { data, trailers }) = body {
            *req.body_mut() = UpstreamBody::Buffered {
                data: data.clone(),
                trailers: trailers.clone(),
            };
        }
        Some(req)
    }

    fn head(&self) -> Option<Request<UpstreamBody>> {
        match self {
            Replay::No | Replay::Returned => None,
            Replay::Copy(head) => Some(head.request()),
            Replay::Raw {
                head: RawHead { bytes: head, tls },
                peer,
                request_id,
            } => {
                // The head passed its listener's limits once; only its framing matters now.
                let limits = crate::http::h1::parse::HeadLimits {
                    max_bytes: head.len(),
                    max_headers: skiff_config::limits::MAX_HEADERS_ACCEPTED,
                };
                let parsed = crate::http::h1::parse::parse(head, limits).ok()??;
                let mut req = parsed.request.map(|()| UpstreamBody::Empty);
                req.headers_mut().remove(&X_SKIFF_RETRYABLE);
                if let Some(id) = request_id.and_then(|id| HeaderValue::from_bytes(&id).ok()) {
                    // The same id as the first try, not a new one.
                    req.headers_mut().insert(X_REQUEST_ID.clone(), id);
                }
                if let Some(tls) = tls {
                    tls.tag(&mut req);
                }
                prepare_request(&mut req, *peer, false);
                Some(req)
            }
        }
    }
}

/// Largest request body kept for a retry (Envoy's default buffer limit).
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// Reads a retryable request's body whole when its length is known and at
/// most [`MAX_REPLAY_BODY`], so a retry can send it again; returns a copy
/// for the retries. A longer body, or one of unknown length, streams as
/// before and is not retried after it left.
async fn buffer_body(
    req: &mut Request<UpstreamBody>,
    limit: Duration,
) -> Result<Option<UpstreamBody>, Response<ProxyBody>> {
    if req
        .body()
        .size_hint()
        .upper()
        .is_none_or(|n| n > MAX_REPLAY_BODY)
    {
        return Ok(None);
    }
    let body = std::mem::replace(req.body_mut(), UpstreamBody::Empty);
    let read = http_body_util::BodyExt::collect(body);
    let collected = match tokio::time::timeout(limit.max(Duration::from_millis(1)), read).await {
        Ok(Ok(collected)) => collected,
        Ok(Err(e)) => {
            return Err(local(
                StatusCode::BAD_REQUEST,
                format!("request body could not be read: {e}\n"),
            ))
        }
        Err(_) => {
            return Err(local(
                StatusCode::REQUEST_TIMEOUT,
                "request body did not arrive in time\n",
            ))
        }
    };
    let trailers = collected.trailers().cloned();
    let data = collected.to_bytes();
    *req.body_mut() = UpstreamBody::Buffered {
        data: Some(data.clone()),
        trailers: trailers.clone(),
    };
    Ok(Some(UpstreamBody::Buffered {
        data: Some(data),
        trailers,
    }))
}

/// A prepared request head, copied to send again.
struct ReplayHead {
    method: http::Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl ReplayHead {
    fn of<B>(req: &Request<B>) -> ReplayHead {
        ReplayHead {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        }
    }

    fn request(&self) -> Request<UpstreamBody> {
        let mut req = Request::new(UpstreamBody::Empty);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Why a request got no upstream response.
enum Failure {
    Connect(ConnectError),
    Timeout(Duration),
    Reset(BodyError),
    /// The client's request body broke while it was sent (malformed
    /// chunking, the client left mid-body): the client's fault, so never
    /// retried and never counted against the endpoint.
    ClientBody(BodyError),
}

impl Failure {
    fn message(&self) -> String {
        match self {
            Failure::Connect(ConnectError::Timeout(d)) => {
                format!("upstream connect timeout: no connection after {d:?}\n")
            }
            Failure::Connect(ConnectError::Overflow(_)) => {
                "upstream overflow: too many requests already wait for a new upstream connection (max_pending)\n".to_string()
            }
            Failure::Connect(e) => format!("upstream connect error: {e}\n"),
            Failure::Timeout(d) => {
                format!("upstream request timeout: no response headers after {d:?}\n")
            }
            Failure::Reset(e) => {
                // hyper's own words are terse ("connection error"); the
                // cause (a TLS alert, say) is what tells the user why.
                let mut text = format!("upstream reset before response headers: {e}");
                let mut source = std::error::Error::source(&**e);
                while let Some(cause) = source {
                    text.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                text.push('\n');
                text
            }
            Failure::ClientBody(e) => match std::error::Error::source(&**e) {
                Some(cause) => format!("bad request body: {cause}\n"),
                None => format!("bad request body: {e}\n"),
            },
        }
    }

    fn response(&self) -> Response<ProxyBody> {
        if let Failure::Connect(ConnectError::Overflow(_)) = self {
            return overflow("max_pending", self.message());
        }
        let status = match self {
            Failure::Connect(ConnectError::Timeout(_)) | Failure::Timeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Failure::Connect(_) | Failure::Reset(_) => StatusCode::BAD_GATEWAY,
            Failure::ClientBody(_) => StatusCode::BAD_REQUEST,
        };
        local(status, self.message())
    }
}

type Sent = (Response<Received>, Option<http1::SendRequest<UpstreamBody>>);

/// Sends `req` on a pooled or new connection and waits for response
/// headers. Gives the request back whenever it was not consumed: never
/// sent (the connection failed), or sent by skiff's own HTTP/1 client,
/// which only borrows it; hyper's clients take it.
///
/// A plain function returning an `async move` block: an `async fn` would
/// keep its parameters and a second copy of them in its future, and this
/// future is part of every request's (moved, and boxed, per request).
#[allow(clippy::manual_async_fn)] // see above: the future stays smaller
fn send<'a>(
    mut req: Request<UpstreamBody>,
    pool: &'a Pool,
    address: SocketAddr,
    pending: PendingLimit<'a>,
    settings: &'a crate::cluster::Settings,
    request_timeout: Duration,
) -> impl std::future::Future<Output = (Result<Sent, Failure>, Option<Request<UpstreamBody>>)> + 'a
{
    async move {
        let tls = settings.connector.as_ref();
        let (protocol, connect_timeout) = (settings.protocol, settings.timeouts.connect);
        let own =
            protocol == UpstreamProtocol::Http1 && tls.is_none() && client::can_send(&mut req);
        // A pooled keep-alive connection can be closed by the upstream just as
        // we pick it; hyper hands the request back unsent in that case, and
        // then it is safe to try once more on a fresh connection.
        for attempt in 0..2 {
            let sender = match pool
                .checkout(address, pending, protocol, tls, connect_timeout, own)
                .await
            {
                Ok(sender) => sender,
                // Never sent: the request goes back for a retry elsewhere.
                Err(e) => return (Err(Failure::Connect(e)), Some(req)),
            };
            let error = match sender {
                Sender::Own(conn) => {
                    // Pinned where it is made: the timeout then holds a
                    // pointer, and the future is not copied into it.
                    let sent = {
                        let fut = std::pin::pin!(client::send(conn, &req));
                        limited(request_timeout, fut).await
                    };
                    let result = match sent {
                        Err(_) => Err(Failure::Timeout(request_timeout)),
                        Ok(Ok(resp)) => Ok((resp.map(Received::Own), None)),
                        Ok(Err(failed)) if failed.resend && attempt == 0 => continue,
                        Ok(Err(failed)) => Err(Failure::Reset(Box::new(failed.error))),
                    };
                    return (result, Some(req));
                }
                Sender::Http1(mut tx) => {
                    let fut = std::pin::pin!(tx.try_send_request(req));
                    let Ok(sent) = limited(request_timeout, fut).await else {
                        return (Err(Failure::Timeout(request_timeout)), None);
                    };
                    match sent {
                        Ok(resp) => return (Ok((resp.map(Received::Hyper), Some(tx))), None),
                        Err(mut e) => match e.take_message() {
                            Some(back) if attempt == 0 => {
                                req = back;
                                continue;
                            }
                            _ => e.into_error(),
                        },
                    }
                }
                Sender::Http2(mut tx) => {
                    let fut = std::pin::pin!(tx.try_send_request(req));
                    let Ok(sent) = limited(request_timeout, fut).await else {
                        return (Err(Failure::Timeout(request_timeout)), None);
                    };
                    match sent {
                        Ok(resp) => return (Ok((resp.map(Received::Hyper), None)), None),
                        Err(mut e) => match e.take_message() {
                            Some(back) if attempt == 0 => {
                                req = back;
                                continue;
                            }
                            _ => e.into_error(),
                        },
                    }
                }
            };
            // A user error is the request body skiff streams from the client.
            let failure = if error.is_user() {
                Failure::ClientBody(Box::new(error))
            } else {
                Failure::Reset(Box::new(error))
            };
            return (Err(failure), None);
        }
        unreachable!("the loop returns on its second attempt")
    }
}

/// `fut` bounded by `limit` (zero: unbounded, in practice). A timeout
/// itself, not an `async fn` around one, which would hold `fut` twice.
fn limited<F: std::future::Future>(limit: Duration, fut: F) -> tokio::time::Timeout<F> {
    // Far enough never to fire; tokio clamps it to its timer's range.
    const UNBOUNDED: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    tokio::time::timeout(if limit.is_zero() { UNBOUNDED } else { limit }, fut)
}

async fn with_timeout<F: std::future::Future>(
    limit: Duration,
    fut: F,
) -> Result<F::Output, Failure> {
    if limit.is_zero() {
        return Ok(fut.await);
    }
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| Failure::Timeout(limit))
}

/// Sends an HTTP/1.1 upgrade request (WebSocket) on a dedicated upstream
/// connection, which becomes a [`Tunnel`] if the upstream agrees.
async fn upgrade_request(
    mut req: Request<UpstreamBody>,
    address: SocketAddr,
    tls: Option<&crate::tls::client::Connector>,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<Sent, Failure> {
    *req.uri_mut() = origin_form(req.uri());
    let mut tx = Pool::connect_upgradable(address, tls, connect_timeout)
        .await
        .map_err(Failure::Connect)?;
    let resp = with_timeout(request_timeout, tx.send_request(req))
        .await?
        .map_err(|e| Failure::Reset(Box::new(e)))?;
    Ok((resp.map(Received::Hyper), None))
}

/// An upgraded connection (WebSocket) to an upstream, waiting for the
/// client side; holds the endpoint's in-flight count while it lasts.
#[derive(Debug)]
pub struct Tunnel {
    in_flight: InFlight,
    upstream: hyper::upgrade::OnUpgrade,
}

impl Tunnel {
    /// Copies bytes both ways between `client` and the upstream until
    /// either side closes; `pending` is what the client sent early.
    pub async fn run<C>(self, mut client: C, pending: Bytes)
    where
        C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::AsyncWriteExt as _;
        let address = self.in_flight.endpoint.address;
        let upstream = match self.upstream.await {
            Ok(upstream) => upstream,
            Err(e) => {
                tracing::debug!(%address, "upgrade failed: {e}");
                return;
            }
        };
        let mut upstream = hyper_util::rt::TokioIo::new(upstream);
        if !pending.is_empty() && upstream.write_all(&pending).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}

/// Whether this is an HTTP/1.1 request to switch protocols (WebSocket).
fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// The host a request is for: the URI authority (HTTP/2, absolute-form)
/// or the Host header.
#[inline]
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
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
fn peer_ip(ip: std::net::IpAddr) -> HeaderValue {
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
fn is_hop_by_hop(name: &HeaderName) -> bool {
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
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if upgrade || headers.keys().any(is_hop_by_hop) {
        remove_hop_by_hop(headers, upgrade);
    }
}

fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
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
fn set_upstream_uri<B>(
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
fn host_header(authority: &http::uri::Authority) -> Option<HeaderValue> {
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
fn origin_form(uri: &Uri) -> Uri {
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
pub fn new_request_id() -> HeaderValue {
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

static X_SKIFF_OVERFLOW: HeaderName = HeaderName::from_static("x-skiff-overflow");

/// A 503 from the circuit breaker, naming the limit in `x-skiff-overflow`.
fn overflow(limit: &'static str, message: String) -> Response<ProxyBody> {
    let mut resp = local(StatusCode::SERVICE_UNAVAILABLE, message);
    resp.headers_mut()
        .insert(X_SKIFF_OVERFLOW.clone(), HeaderValue::from_static(limit));
    resp
}

/// A short plain-text response made by skiff itself.
pub fn local(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::Local(Some(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// What finishing a response does: ends the in-flight count, records the
/// duration, and returns a keep-alive connection to its pool.
#[derive(Debug)]
struct Completion {
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
enum Ended {
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
    fn finish(self, ended: Ended, own: Option<Box<client::Connection>>) {
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

/// A response body as an upstream client delivers it.
#[derive(Debug)]
pub enum Received {
    Hyper(Incoming),
    Own(client::ResponseBody),
}

impl Received {
    /// skiff's own client's connection, once the body ended cleanly.
    fn take_reusable(&mut self) -> Option<Box<client::Connection>> {
        match self {
            Received::Hyper(_) => None,
            Received::Own(body) => body.take_reusable(),
        }
    }
}

impl Body for Received {
    type Data = Bytes;
    type Error = BodyError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Received::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Received::Own(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            Received::Hyper(b) => b.is_end_stream(),
            Received::Own(b) => b.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match self {
            Received::Hyper(b) => b.size_hint(),
            Received::Own(b) => b.size_hint(),
        }
    }
}

/// An upstream response body on its way to the client.
#[derive(Debug)]
pub struct UpstreamResponse {
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
pub enum ProxyBody {
    /// Streamed from an upstream.
    Upstream(UpstreamResponse),
    /// Made by skiff (errors, admin pages).
    Local(Option<Bytes>),
    /// A `101 Switching Protocols`: no body, the connection becomes a tunnel.
    Upgrade(Tunnel),
}

impl ProxyBody {
    pub fn empty() -> ProxyBody {
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
