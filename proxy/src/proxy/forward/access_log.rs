//! The access log: one `skiff::access` line per request the listener's
//! sample picks, filled in as the request goes and written when its
//! response ends (or when skiff answers it itself).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Body;

use super::headers::X_REQUEST_ID;

/// One access log line, filled in as the request goes and written when
/// its response ends (only for requests the listener's sample picks).
#[derive(Debug)]
pub(crate) struct AccessEntry {
    pub(super) listener: std::sync::Arc<str>,
    pub(super) method: http::Method,
    pub(super) authority: String,
    pub(super) path: String,
    pub(super) request_id: String,
    /// The request body's declared length (0 without a body).
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) cluster: Option<std::sync::Arc<str>>,
    pub(super) endpoint: Option<SocketAddr>,
    pub(super) status: u16,
    pub(super) retries: u32,
    pub(super) start: Instant,
}

impl AccessEntry {
    pub(super) fn new<B: Body>(
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

    /// Notes the cluster a request was routed to, and its request id.
    pub(super) fn routed<B>(&mut self, cluster: &Arc<str>, req: &Request<B>) {
        self.cluster = Some(cluster.clone());
        if let Some(id) = req
            .headers()
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
        {
            self.request_id = id.to_string();
        }
    }

    /// Notes the endpoint that answered, how, and after how many retries.
    pub(super) fn answered(&mut self, endpoint: SocketAddr, status: u16, retries: u32) {
        self.endpoint = Some(endpoint);
        self.status = status;
        self.retries = retries;
    }

    pub(super) fn emit(&self) {
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

/// Writes the access line of a request skiff answered itself.
pub(super) fn log_local<B: Body>(
    access: Option<Box<AccessEntry>>,
    resp: &Response<B>,
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
