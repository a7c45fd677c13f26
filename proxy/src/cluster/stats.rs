//! A cluster's counters, held by the cluster so they survive reloads, and
//! shared by its endpoints (which count the cluster's in-flight requests
//! and durations as they go).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use super::budget::RetryBudget;
use crate::metrics::Histogram;

/// Errors answered locally, by kind, for `skiff_upstream_errors_total`.
#[derive(Debug, Default)]
pub struct ErrorCounters {
    pub(crate) connect_timeout: AtomicU64,
    pub(crate) connect_failed: AtomicU64,
    pub(crate) request_timeout: AtomicU64,
    pub reset: AtomicU64,
    pub(crate) no_endpoints: AtomicU64,
}

impl ErrorCounters {
    pub(crate) fn iter(&self) -> [(&'static str, u64); 5] {
        [
            ("connect_timeout", self.connect_timeout.load(Relaxed)),
            ("connect_failed", self.connect_failed.load(Relaxed)),
            ("request_timeout", self.request_timeout.load(Relaxed)),
            ("reset", self.reset.load(Relaxed)),
            ("no_endpoints", self.no_endpoints.load(Relaxed)),
        ]
    }
}

/// A cluster's metrics and request counts, held by the cluster so they
/// survive reloads.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Requests in flight over all endpoints (what `max_requests` limits);
    /// kept here too, not only per endpoint, so the limit is one load.
    pub active: AtomicUsize,
    /// Requests waiting for a new upstream connection (`max_pending`).
    pub pending: AtomicUsize,
    /// Requests refused by the circuit breaker.
    pub(crate) overflow: AtomicU64,
    /// Tries after the first (`skiff_retries_total`).
    pub(crate) retries: AtomicU64,
    /// Requests balanced in panic mode (`skiff_panic_total`).
    pub(crate) panic: AtomicU64,
    /// Outlier ejections (`skiff_ejections_total`).
    pub(crate) ejections: AtomicU64,
    /// Active health check results (`skiff_health_checks_total`).
    pub(crate) health_checks: CheckCounters,
    pub(crate) budget: RetryBudget,
    pub(crate) duration: Histogram,
    pub(crate) discovery_updates: AtomicU64,
    /// Failures of the cluster's discovery source, counted by the source.
    pub(crate) discovery_errors: Arc<AtomicU64>,
    pub errors: ErrorCounters,
    /// `cluster="…"`, escaped once for every scrape to copy.
    pub(crate) metric_labels: Box<str>,
}

/// Check results by kind (`skiff_health_checks_total{result}`).
#[derive(Debug, Default)]
pub(crate) struct CheckCounters {
    pub(crate) passed: AtomicU64,
    /// Answered with a status not expected.
    pub(crate) failed: AtomicU64,
    /// No answer within the timeout.
    pub(crate) timeout: AtomicU64,
    /// Connection refused or reset, or a malformed answer.
    pub(crate) error: AtomicU64,
}

impl CheckCounters {
    pub(crate) fn iter(&self) -> [(&'static str, u64); 4] {
        [
            ("passed", self.passed.load(Relaxed)),
            ("failed", self.failed.load(Relaxed)),
            ("timeout", self.timeout.load(Relaxed)),
            ("error", self.error.load(Relaxed)),
        ]
    }
}
