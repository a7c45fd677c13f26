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
mod response;
mod retry;
mod send;
mod upgrade;

pub use headers::{new_request_id, prepare_request, request_host, strip_hop_by_hop};
pub use response::{local, ProxyBody};
pub use retry::{RawHead, MAX_REPLAY_BODY};
pub use upgrade::Tunnel;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self};
use http::{Request, Response, StatusCode};
use hyper::body::Body;

use crate::http::body::UpstreamBody;
use crate::http::h1::client;

use crate::cluster::balance::random;
use crate::cluster::pool::{ConnectError, PendingLimit};
use crate::proxy::route::ListenerRoutes;
use crate::proxy::route::{Found, Route};
use skiff_config::cluster::UpstreamProtocol;

use access_log::{log_local, AccessEntry};
use failure::Failure;
use headers::{is_upgrade, origin_form, set_upstream_uri, X_REQUEST_ID};
use response::{failure_response, respond, too_large, unavailable_response};
use retry::{
    admit, backoff, buffer_body, is_idempotent, is_refused, marked_retryable, Replay, ReplayHead,
};
use send::send;
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
                let resp = response::redirect(redirect, &req, host);
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

#[allow(clippy::manual_async_fn)] // see above: the future stays smaller
fn forward<'a>(
    mut req: Request<UpstreamBody>,
    route: &'a Route,
    peer: SocketAddr,
    start: Instant,
    raw_head: Option<RawHead>,
    mut access: Option<Box<AccessEntry>>,
    capped: Option<Arc<crate::http::body::Exceeded>>,
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
                    let resp = failure_response(&failure);
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
                    let resp = failure_response(&failure);
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
