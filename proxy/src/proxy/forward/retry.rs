//! Sending a request again (Envoy's retry policy within Linkerd's retry
//! budget): which requests may go again (idempotent methods, those marked
//! `x-skiff-retryable`, any refused with `REFUSED_STREAM`), what is kept
//! to send them again without copying every request (an HTTP/1 client's
//! raw head, the request skiff's own client hands back, a copy for
//! hyper's clients; a body up to [`MAX_REPLAY_BODY`]), the backoff, and a
//! pick that avoids the endpoint that just failed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Body;

use http::header;
use skiff_config::cluster::{Retries, UpstreamProtocol};

use super::failure::Failure;
use super::headers::{origin_form, prepare_request, set_upstream_uri, X_REQUEST_ID};
use super::response::{local, ProxyBody};
use crate::cluster::budget::RetryBudget;
use crate::cluster::endpoint::InFlight;
use crate::cluster::{balance::random, Settings, Unavailable};
use crate::http::body::UpstreamBody;
use crate::http::h1::client::{self, is_idempotent};
use crate::http::BodyError;
use crate::proxy::route::Route;

/// Picks an endpoint, trying twice more for one other than `avoid` (the
/// endpoint a retried request just failed on).
pub(super) fn admit(
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

pub(super) static X_SKIFF_RETRYABLE: HeaderName = HeaderName::from_static("x-skiff-retryable");

/// Whether the client marked a request safe to send twice
/// (`x-skiff-retryable: true`). The header is for skiff and is removed.
/// Looked at only for methods that are not idempotent, so the common
/// request pays nothing for it.
pub(super) fn marked_retryable<B>(req: &mut Request<B>) -> bool {
    req.headers_mut()
        .remove(&X_SKIFF_RETRYABLE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
}

/// Whether an HTTP/2 upstream refused the stream (`REFUSED_STREAM`): it
/// did not process the request, so it is safe to send again (RFC 9113 §8.7).
pub(super) fn is_refused(e: &BodyError) -> bool {
    e.downcast_ref::<hyper::Error>()
        .and_then(std::error::Error::source)
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .and_then(h2::Error::reason)
        == Some(h2::Reason::REFUSED_STREAM)
}

/// The wait before retry `n` (1-based): fully jittered, exponential from
/// `base`, at most ten times `base` (Envoy's backoff).
pub(super) fn backoff(base: Duration, n: u32) -> Duration {
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
pub(crate) struct RawHead {
    pub(crate) bytes: Bytes,
    pub(crate) tls: Option<Arc<crate::tls::TlsPeer>>,
}

/// How a request is sent again.
pub(super) enum Replay {
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
    pub(super) fn allowed(&self) -> bool {
        !matches!(self, Replay::No)
    }

    /// The request to send again, if it may be: the one `send` gave back
    /// (prepared, its body still in it), else one made from the replay.
    pub(super) fn again(
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
    pub(super) fn request(&self, body: &Option<UpstreamBody>) -> Option<Request<UpstreamBody>> {
        let mut req = self.head()?;
        if let Some(UpstreamBody::Buffered { data, trailers }) = body {
            *req.body_mut() = UpstreamBody::Buffered {
                data: data.clone(),
                trailers: trailers.clone(),
            };
        }
        Some(req)
    }

    pub(super) fn head(&self) -> Option<Request<UpstreamBody>> {
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
pub(crate) const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// Reads a retryable request's body whole when its length is known and at
/// most [`MAX_REPLAY_BODY`], so a retry can send it again; returns a copy
/// for the retries. A longer body, or one of unknown length, streams as
/// before and is not retried after it left.
pub(super) async fn buffer_body(
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
pub(super) struct ReplayHead {
    method: http::Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl ReplayHead {
    pub(super) fn of<B>(req: &Request<B>) -> ReplayHead {
        ReplayHead {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        }
    }

    pub(super) fn request(&self) -> Request<UpstreamBody> {
        let mut req = Request::new(UpstreamBody::Empty);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Whether a retry may send `req` again after it left: idempotent (or
/// marked) requests, on a cluster that retries, and never an upgrade. (A
/// request that was never sent, after a connect failure, comes back whole
/// and can always go again.)
pub(super) fn retryable(req: &mut Request<UpstreamBody>, policy: &Retries, upgrade: bool) -> bool {
    policy.attempts > 0 && !upgrade && (is_idempotent(req.method()) || marked_retryable(req))
}

/// The retry policy of a request to `route`: the cluster's, with what
/// the route overrides (attempts, backoff, per-try timeout).
#[inline]
pub(super) fn policy(route: &Route, cluster: &Retries) -> Retries {
    let mut policy = *cluster;
    if let Some(r) = &route.retries {
        policy.attempts = r.attempts;
        policy.backoff = r.backoff.unwrap_or(policy.backoff);
    }
    if let Some(t) = route.per_try_timeout {
        policy.per_try_timeout = t;
    }
    policy
}

/// Whether an answer with `status` is tried again: the route's statuses,
/// else 502, 503 and 504.
fn retried_status(route_codes: Option<&[u16]>, status: StatusCode) -> bool {
    match route_codes {
        Some(codes) if !codes.is_empty() => codes.contains(&status.as_u16()),
        _ => matches!(status.as_u16(), 502..=504),
    }
}

/// How one request is tried and tried again: what a retry sends, the
/// limits of each try, and what the tries so far have left.
pub(super) struct Tries {
    policy: Retries,
    retryable: bool,
    replay: Replay,
    /// A retryable request's body, read whole before the first try.
    replay_body: Option<UpstreamBody>,
    /// To response headers, over all tries.
    pub(super) request_timeout: Duration,
    /// To response headers, each try.
    pub(super) per_try: Duration,
    /// The endpoint the last try failed on.
    pub(super) avoid: Option<SocketAddr>,
    pub(super) retried: u32,
    /// The request sent last named its endpoint as its host.
    endpoint_named_host: bool,
}

impl Tries {
    /// Plans the tries of `req`, prepared to go to `route`'s cluster:
    /// `retryable` and `replay_body` as [`retryable`] and [`buffer_body`]
    /// found them, `raw_head` an HTTP/1 client's head when it had one.
    #[allow(clippy::too_many_arguments)] // each is the request's own
    #[inline] // one caller: built in place in its future, not copied in
    pub(super) fn new(
        req: &mut Request<UpstreamBody>,
        route: &Route,
        settings: &Settings,
        peer: SocketAddr,
        raw_head: Option<RawHead>,
        upgrade: bool,
        retryable: bool,
        replay_body: Option<UpstreamBody>,
        policy: Retries,
    ) -> Tries {
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
                    && client::can_send(req) =>
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
                None => Replay::Copy(Box::new(ReplayHead::of(req))),
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
        Tries {
            policy,
            retryable,
            replay,
            replay_body,
            request_timeout,
            per_try,
            avoid: None,
            retried: 0,
            endpoint_named_host: false,
        }
    }

    /// Points `req` at `endpoint` in the cluster's protocol (a host the
    /// last try's endpoint lent it is taken back first).
    pub(super) fn aim(
        &mut self,
        req: &mut Request<UpstreamBody>,
        settings: &Settings,
        endpoint: SocketAddr,
    ) {
        if std::mem::take(&mut self.endpoint_named_host) {
            req.headers_mut().remove(header::HOST);
            *req.uri_mut() = origin_form(req.uri());
        }
        self.endpoint_named_host =
            set_upstream_uri(req, settings.protocol, settings.tls.is_some(), endpoint);
    }

    /// The request to send again after an answer with `status`, if it may
    /// go (a 502, 503 or 504, within the tries and the budget). `back` is
    /// the request the client handed back, if it did.
    pub(super) fn again_after(
        &self,
        status: StatusCode,
        back: Option<Request<UpstreamBody>>,
        (budget, route): (&RetryBudget, &Route),
    ) -> Option<Request<UpstreamBody>> {
        let codes = route.retries.as_ref().map(|r| r.status_codes.as_slice());
        let retry = self.retried < self.policy.attempts
            && retried_status(codes, status)
            && self.retryable
            && self.replay.allowed()
            && budget.try_retry(self.policy.budget_percent, self.policy.min_per_second);
        if retry {
            self.replay.again(back, &self.replay_body)
        } else {
            None
        }
    }

    /// The request to send again after `failure`, if it may go: one never
    /// sent, one refused unprocessed, or a retryable one, within the tries
    /// and the budget; never after the circuit breaker refused it.
    pub(super) fn again_failed(
        &self,
        failure: &Failure,
        back: Option<Request<UpstreamBody>>,
        budget: &RetryBudget,
    ) -> Option<Request<UpstreamBody>> {
        let again = match (failure, back) {
            _ if self.retried >= self.policy.attempts || failure.overflowed() => None,
            (Failure::ClientBody(_), _) => None,
            (Failure::Connect(_), Some(unsent)) => Some(unsent),
            (Failure::Reset(e), back) if is_refused(e) => {
                self.replay.again(back, &self.replay_body)
            }
            (_, back) if self.retryable => self.replay.again(back, &self.replay_body),
            _ => None,
        };
        again.filter(|_| budget.try_retry(self.policy.budget_percent, self.policy.min_per_second))
    }

    /// Counts a retry away from `failed`; returns the backoff before it.
    pub(super) fn next(&mut self, failed: SocketAddr) -> Duration {
        self.retried += 1;
        self.avoid = Some(failed);
        backoff(self.policy.backoff, self.retried)
    }
}
