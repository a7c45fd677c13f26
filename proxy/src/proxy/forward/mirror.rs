//! Request mirroring (the Gateway API's `RequestMirror`, Envoy's request
//! shadowing): a copy of a share of a route's requests goes to each of
//! its mirror clusters, fire and forget. The copy is sent once the
//! request's body has been read whole (copied as it streams to the real
//! upstream, up to [`MAX_MIRROR_BODY`]), on its own task; its answer is
//! read and dropped, counted in `skiff_requests_total` under the mirror
//! cluster. Nothing a mirror does (slow, down, full) reaches the request
//! itself: copying never waits, and a mirror that falls behind is given
//! up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Uri, Version};
use hyper::body::Body;

use super::headers::{prepare_request, set_upstream_uri};
use super::send::send;
use crate::cluster::balance::random;
use crate::cluster::pool::PendingLimit;
use crate::cluster::Cluster;
use crate::http::body::{Copied, TeeBody, UpstreamBody};
use crate::metrics::CodeCounters;

/// The largest request body copied; a request with a longer one is not
/// mirrored.
pub(crate) const MAX_MIRROR_BODY: usize = 64 * 1024;
/// How long a copy may take, answer read, when its cluster sets no
/// request timeout: a hung mirror must not keep tasks and connections.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

/// A cluster that gets copies of a route's requests.
#[derive(Debug)]
pub(crate) struct Mirror {
    pub(crate) cluster: Arc<Cluster>,
    /// `skiff_requests_total{listener, cluster}` of the mirror.
    pub(crate) requests: Arc<CodeCounters>,
    /// Of every million requests, how many are copied.
    pub(crate) per_million: u32,
}

/// The request head, as each mirror sends it.
#[derive(Debug, Clone)]
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

/// Starts mirroring `req` to those of `mirrors` whose share it falls in;
/// a body is copied as `req`'s streams.
pub(super) fn start(mirrors: &[Mirror], req: &mut Request<UpstreamBody>, peer: SocketAddr) {
    let chosen: Vec<(Arc<Cluster>, Arc<CodeCounters>)> = mirrors
        .iter()
        .filter(|m| m.per_million >= 1_000_000 || random() % 1_000_000 < u64::from(m.per_million))
        .map(|m| (m.cluster.clone(), m.requests.clone()))
        .collect();
    if chosen.is_empty() {
        return;
    }
    let head = Head {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
    };
    let copies = if req.body().is_end_stream() {
        None
    } else if req.body().size_hint().lower() > MAX_MIRROR_BODY as u64 {
        return;
    } else {
        let body = std::mem::replace(req.body_mut(), UpstreamBody::Empty);
        let (tee, copies) = TeeBody::new(body, MAX_MIRROR_BODY);
        *req.body_mut() = UpstreamBody::Tee(Box::new(tee));
        Some(copies)
    };
    tokio::spawn(async move {
        let body = match copies {
            None => None,
            Some(copies) => match collect(copies).await {
                Some(body) => Some(body),
                // Too long, too slow, or the request broke: not mirrored.
                None => return,
            },
        };
        for (cluster, requests) in chosen {
            tokio::spawn(send_copy(
                cluster,
                requests,
                head.clone(),
                body.clone(),
                peer,
            ));
        }
    });
}

/// The copied body, once whole.
async fn collect(
    mut copies: tokio::sync::mpsc::Receiver<Copied>,
) -> Option<(Bytes, Option<HeaderMap>)> {
    let mut data = BytesMut::new();
    let mut trailers = None;
    loop {
        match copies.recv().await? {
            Copied::Data(d) => data.extend_from_slice(&d),
            Copied::Trailers(t) => trailers = Some(t),
            Copied::End => return Some((data.freeze(), trailers)),
        }
    }
}

/// Sends one copy to one endpoint of `cluster`, reads the answer and
/// drops it; a connection read to its end goes back to its pool.
async fn send_copy(
    cluster: Arc<Cluster>,
    requests: Arc<CodeCounters>,
    head: Head,
    body: Option<(Bytes, Option<HeaderMap>)>,
    peer: SocketAddr,
) {
    let settings = cluster.settings();
    let limits = settings.circuit_breaker;
    let Ok(in_flight) = cluster.admit(limits.max_requests) else {
        requests.record(503);
        return;
    };
    let endpoint = in_flight.endpoint.clone();
    let body = match body {
        None => UpstreamBody::Empty,
        Some((data, trailers)) => UpstreamBody::Buffered {
            data: Some(data),
            trailers,
        },
    };
    let mut req = Request::new(body);
    *req.method_mut() = head.method;
    *req.uri_mut() = head.uri;
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers;
    prepare_request(&mut req, peer, false);
    set_upstream_uri(
        &mut req,
        settings.protocol,
        settings.tls.is_some(),
        endpoint.address,
    );
    let pending = PendingLimit {
        waiting: &cluster.stats.pending,
        max: limits.max_pending,
    };
    let timeout = match settings.timeouts.request {
        t if t.is_zero() => MIRROR_TIMEOUT,
        t => t,
    };
    let (result, _) = send(
        req,
        endpoint.pool(),
        endpoint.address,
        pending,
        &settings,
        timeout,
    )
    .await;
    let Ok((resp, conn)) = result else {
        requests.record(502);
        return;
    };
    requests.record(resp.status().as_u16());
    let mut body = resp.into_body();
    let whole = tokio::time::timeout(timeout, async {
        while let Some(frame) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {
            if frame.is_err() {
                return false;
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    if whole {
        if let Some(conn) = conn {
            endpoint.pool().checkin(conn);
        }
        if let Some(own) = body.take_reusable() {
            endpoint.pool().checkin_own(own);
        }
    }
    drop(in_flight);
}
