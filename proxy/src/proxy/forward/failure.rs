//! Why a request got no upstream response, and how skiff answers it
//! (`502`, `503` with `x-skiff-overflow`, `504`, `400` for the client's
//! own broken body) and counts it.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::cluster::endpoint::Endpoint;
use crate::cluster::pool::ConnectError;
use crate::cluster::Cluster;
use crate::http::BodyError;

/// Why a request got no upstream response.
pub(super) enum Failure {
    Connect(ConnectError),
    Timeout(Duration),
    Reset(BodyError),
    /// The client's request body broke while it was sent (malformed
    /// chunking, the client left mid-body): the client's fault, so never
    /// retried and never counted against the endpoint.
    ClientBody(BodyError),
}

impl Failure {
    /// The status skiff answers it with.
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Failure::Connect(ConnectError::Overflow(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Connect(ConnectError::Timeout(_)) | Failure::Timeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Failure::Connect(_) | Failure::Reset(_) => StatusCode::BAD_GATEWAY,
            Failure::ClientBody(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Whether the circuit breaker refused it before it reached the endpoint.
    pub(super) fn overflowed(&self) -> bool {
        matches!(self, Failure::Connect(ConnectError::Overflow(_)))
    }

    /// Counts an upstream's failure on its cluster's error counter and,
    /// unless it never reached the endpoint, on the endpoint's statuses
    /// and outlier detection. A client's own broken body counts nowhere.
    pub(super) fn count(&self, cluster: &Cluster, endpoint: &Arc<Endpoint>) {
        let errors = &cluster.stats.errors;
        let counter = match self {
            Failure::ClientBody(_) => {
                tracing::debug!(cluster = %cluster.name, "request failed: {}", self.message());
                return;
            }
            Failure::Connect(ConnectError::Overflow(_)) => &cluster.stats.overflow,
            Failure::Connect(ConnectError::Timeout(_)) => &errors.connect_timeout,
            Failure::Connect(_) => &errors.connect_failed,
            Failure::Timeout(_) => &errors.request_timeout,
            Failure::Reset(_) => &errors.reset,
        };
        counter.fetch_add(1, Relaxed);
        if !self.overflowed() {
            endpoint.requests.record(self.status().as_u16());
            cluster.record_outcome(endpoint, true);
        }
        tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, "upstream failure: {}", self.message());
    }

    pub(super) fn message(&self) -> String {
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
}
