//! The per-request path: route, pick, connect, send, stream back.
//!
//! Everything here runs once per request, so it loads snapshots (no locks),
//! bumps pre-resolved counters, and streams bodies frame by frame in both
//! directions without buffering them. The in-flight count of the picked
//! endpoint is held by [`InFlight`] until the response body ends, which is
//! what least-request balances on.

mod access_log;
mod failure;
mod headers;
pub(crate) mod mirror;
mod response;
mod retry;
mod send;
mod upgrade;

pub use headers::prepare_request;
pub(crate) use headers::request_host;
pub(crate) use response::{local, ProxyBody};
pub(crate) use retry::RawHead;
pub(crate) use upgrade::Tunnel;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Body;

use crate::http::body::{Exceeded, UpstreamBody};

use crate::cluster::balance::random;
use crate::cluster::endpoint::InFlight;
use crate::cluster::pool::PendingLimit;
use crate::cluster::Unavailable;
use crate::proxy::route::ListenerRoutes;
use crate::proxy::route::{Route, Target};
use skiff_route::Lookup;

use access_log::{log_local, AccessEntry};
use failure::Failure;
use headers::is_upgrade;
use response::{
    failure_response, grpc_local, grpc_status, is_grpc, respond, too_large, unavailable_response,
};
use retry::{admit, buffer_body, Tries};
use send::{send, Sent};
use upgrade::upgrade_request;

/// Proxies one request from `peer` arriving on `listener`.
///
/// `raw_head` is the request head as an HTTP/1 client sent it, when it
/// did: a retry re-reads it instead of every request paying for a copy.
///
/// This and the functions it awaits return `async move` blocks rather than
/// being `async fn`s: an `async fn`'s future keeps its parameters and a
/// second copy of them, and this future is moved and boxed per request.
#[allow(clippy::manual_async_fn)] // see above: the future stays smaller
pub(crate) fn handle<'a>(
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
        let route = match routes.find(&Lookup::of(&req, host)) {
            Some(Target::Route(route)) => route,
            Some(Target::Split(split)) => match split.pick() {
                Some(route) => route,
                None => {
                    // gRPC clients read UNAVAILABLE, as GRPCRoute asks.
                    let why = "this route has no backend that can take the request";
                    let resp = match is_grpc(&req) {
                        true => grpc_local(grpc_status::UNAVAILABLE, why),
                        false => local(StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n")),
                    };
                    log_local(access, &resp, None, 0);
                    return resp;
                }
            },
            Some(Target::Redirect(to)) => {
                let resp = response::redirect(to, &req, host, (routes.tls, routes.port));
                log_local(access, &resp, None, 0);
                return resp;
            }
            None => {
                listener.unrouted.fetch_add(1, Relaxed);
                let why = "no route matches this host and path";
                let resp = match is_grpc(&req) {
                    true => grpc_local(grpc_status::UNIMPLEMENTED, why),
                    false => local(StatusCode::NOT_FOUND, format!("{why}\n")),
                };
                log_local(access, &resp, None, 0);
                return resp;
            }
        };
        // A preflight from an allowed origin is answered here; the answer
        // to any other request from one is marked below. (Boxed: the
        // origin is kept across the await, and every request's future
        // would grow by a header value.)
        let cors_origin = match &route.cors {
            None => None,
            Some(policy) => match policy.allowed_origin(&req) {
                None => None,
                Some(origin) => {
                    if let Some(headers) = policy.preflight(&req, &origin) {
                        let mut resp = Response::new(ProxyBody::Local(None));
                        *resp.headers_mut() = headers;
                        route.record(resp.status().as_u16());
                        log_local(access, &resp, None, 0);
                        return resp;
                    }
                    Some(Box::new(origin))
                }
            },
        };
        let capped = match route.max_request_body {
            None => None,
            Some(limit) => match cap_body(&mut req, limit) {
                Ok(exceeded) => exceeded,
                Err(_) => {
                    let resp = too_large(limit);
                    route.record(resp.status().as_u16());
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
        if !route.mirrors.is_empty() {
            mirror::start(&route.mirrors, &mut req, peer);
        }
        let mut response = forward(req, route, peer, start, raw_head, access, capped).await;
        route.record(response.status().as_u16());
        if let Some(policy) = &route.cors {
            match cors_origin {
                Some(origin) => policy.mark(&origin, response.headers_mut()),
                // The answer depends on the origin all the same: a cache
                // must not give it to an allowed one.
                None => {
                    let vary = http::HeaderValue::from_static("origin");
                    response.headers_mut().append(http::header::VARY, vary);
                }
            }
        }
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
) -> Result<Option<Arc<crate::http::body::Exceeded>>, crate::http::body::BodyTooLarge> {
    let hint = req.body().size_hint();
    if hint.lower() > limit {
        return Err(crate::http::body::BodyTooLarge { limit });
    }
    if hint.upper().is_some_and(|n| n <= limit) {
        // Its framing already holds it to the limit (HTTP/1 and h2 both
        // refuse a body longer than its content-length).
        return Ok(None);
    }
    let body = std::mem::replace(req.body_mut(), UpstreamBody::Empty);
    let (capped, exceeded) = crate::http::body::CappedBody::new(body, limit);
    *req.body_mut() = UpstreamBody::Capped(Box::new(capped));
    Ok(Some(exceeded))
}

/// Sends a routed request to its cluster, trying again as its retry
/// policy allows, and returns the response on its way back.
#[allow(clippy::manual_async_fn)] // see above: the future stays smaller
fn forward<'a>(
    mut req: Request<UpstreamBody>,
    route: &'a Route,
    peer: SocketAddr,
    start: Instant,
    raw_head: Option<RawHead>,
    access: Option<Box<AccessEntry>>,
    capped: Option<Arc<Exceeded>>,
) -> impl std::future::Future<Output = Response<ProxyBody>> + 'a {
    async move {
        let cluster = &route.cluster;
        let settings = cluster.settings();
        let limits = settings.circuit_breaker;
        cluster.stats.budget.record_request(start);
        let upgrade = is_upgrade(&req);
        prepare_request(&mut req, peer, upgrade);
        let mut trip = Trip {
            route,
            start,
            upgrade,
            access,
            capped,
        };
        if let Some(entry) = trip.access.as_mut() {
            entry.routed(&cluster.name, &req);
        }
        let policy = retry::policy(route, &settings.retries);
        let retryable = retry::retryable(&mut req, &policy, upgrade);
        let mut replay_body = None;
        if retryable && !req.body().is_end_stream() {
            match buffer_body(&mut req, settings.timeouts.request).await {
                Ok(body) => replay_body = body,
                Err(resp) => return resp,
            }
        }
        let mut tries = Tries::new(
            &mut req,
            route,
            &settings,
            peer,
            raw_head,
            upgrade,
            retryable,
            replay_body,
            policy,
        );
        loop {
            let in_flight = match admit(cluster, limits.max_requests, tries.avoid) {
                Ok(in_flight) => in_flight,
                Err(unavailable) => return trip.unavailable(unavailable, &tries),
            };
            let endpoint = in_flight.endpoint.clone();
            let (result, back) = if upgrade {
                // Boxed: a rare path that would otherwise enlarge every request's future.
                let upgraded = Box::pin(upgrade_request(
                    req,
                    endpoint.address,
                    settings.connector.as_ref(),
                    settings.timeouts.connect,
                    tries.request_timeout,
                ))
                .await;
                (upgraded, None)
            } else {
                tries.aim(&mut req, &settings, endpoint.address);
                let pending = PendingLimit {
                    waiting: &cluster.stats.pending,
                    max: limits.max_pending,
                };
                let (pool, address) = (endpoint.pool(), endpoint.address);
                send(req, pool, address, pending, &settings, tries.per_try).await
            };
            let next = match result {
                Ok(sent) => trip.answered(&tries, sent, back, in_flight),
                Err(failure) => trip.failed(&tries, failure, back, in_flight),
            };
            req = match next {
                Next::Respond(resp) => return resp,
                Next::Again(again) => again,
            };
            cluster.stats.retries.fetch_add(1, Relaxed);
            tokio::time::sleep(tries.next(endpoint.address)).await;
        }
    }
}

/// What every try of one request shares.
struct Trip<'a> {
    route: &'a Route,
    start: Instant,
    upgrade: bool,
    access: Option<Box<AccessEntry>>,
    /// Set when a capped body went past the route's limit.
    capped: Option<Arc<Exceeded>>,
}

/// What one try comes to.
enum Next {
    /// The response to send the client.
    Respond(Response<ProxyBody>),
    /// The request to try again.
    Again(Request<UpstreamBody>),
}

impl Trip<'_> {
    /// No endpoint could take the request: answered by skiff.
    fn unavailable(&mut self, unavailable: Unavailable, tries: &Tries) -> Response<ProxyBody> {
        let cluster = &self.route.cluster;
        let max_requests = cluster.settings().circuit_breaker.max_requests;
        let resp = unavailable_response(cluster, unavailable, max_requests);
        cluster.stats.duration.observe(self.start.elapsed());
        log_local(self.access.take(), &resp, None, tries.retried);
        resp
    }

    /// An upstream answered: its response goes to the client unless it is
    /// a 5xx that may be tried again.
    #[inline] // one caller, on every request's path
    fn answered(
        &mut self,
        tries: &Tries,
        (mut resp, conn): Sent,
        back: Option<Request<UpstreamBody>>,
        in_flight: InFlight,
    ) -> Next {
        let cluster = &self.route.cluster;
        let endpoint = &in_flight.endpoint;
        let status = resp.status();
        endpoint.requests.record(status.as_u16());
        if status.is_server_error() {
            cluster.record_outcome(endpoint, true);
        }
        // A success is recorded when the body has ended whole
        // (`Completion::finish`): one broken mid-body is a failure.
        if let Some(again) = tries.again_after(status, back, (&cluster.stats.budget, self.route)) {
            // The answer is dropped unread, and its connection with it.
            drop((resp, conn, in_flight));
            return Next::Again(again);
        }
        if let Some(entry) = self.access.as_mut() {
            entry.answered(endpoint.address, status.as_u16(), tries.retried);
        }
        // The route's response edits apply to what its backends answer,
        // not to skiff's own answers (502, 503, 504).
        if let Some(ops) = &self.route.response {
            ops.apply(resp.headers_mut());
        }
        let done = (in_flight, cluster.clone());
        Next::Respond(respond(
            resp,
            conn,
            done,
            self.upgrade,
            self.start,
            self.access.take(),
        ))
    }

    /// No response came: skiff answers, unless the request may go again.
    fn failed(
        &mut self,
        tries: &Tries,
        failure: Failure,
        back: Option<Request<UpstreamBody>>,
        in_flight: InFlight,
    ) -> Next {
        let cluster = &self.route.cluster;
        let address = in_flight.endpoint.address;
        // The client's body went past the route's limit and the upstream
        // request was aborted (however its protocol reported it): the
        // client's doing, neither retried nor counted.
        if self.capped.as_ref().is_some_and(|c| c.get()) {
            drop(in_flight);
            let resp = too_large(self.route.max_request_body.unwrap_or(0));
            log_local(self.access.take(), &resp, Some(address), tries.retried);
            return Next::Respond(resp);
        }
        failure.count(cluster, &in_flight.endpoint);
        drop(in_flight);
        if let Some(again) = tries.again_failed(&failure, back, &cluster.stats.budget) {
            return Next::Again(again);
        }
        if !matches!(failure, Failure::ClientBody(_)) {
            cluster.stats.duration.observe(self.start.elapsed());
        }
        let resp = failure_response(&failure);
        log_local(self.access.take(), &resp, Some(address), tries.retried);
        Next::Respond(resp)
    }
}
