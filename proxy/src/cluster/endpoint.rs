//! One endpoint's live state, shared by every snapshot it is in: its
//! weight (and slow-start ramp), active health, outlier ejection,
//! in-flight count, counters and connection pools. It outlives reloads and
//! endpoint updates, so no count is ever reset, and an endpoint removed
//! from the set finishes the requests already sent to it; when the last
//! [`InFlight`] on it ends, its pools close.

use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use skiff_config::endpoints::{EndpointSpec, Origin};

use super::pool::Pool;
use super::stats::ClusterStats;
use crate::clock::now_ms;
use crate::metrics::{CodeCounters, Histogram};

/// No active check is configured: the endpoint takes traffic.
pub(crate) const UNCHECKED: u8 = 0;
/// Waiting for its first check: no traffic yet.
pub const PENDING: u8 = 1;
pub(crate) const HEALTHY: u8 = 2;
pub(crate) const UNHEALTHY: u8 = 3;

/// The `/clusters` name of a health state.
pub(crate) fn state_name(state: u8) -> &'static str {
    match state {
        PENDING => "pending",
        HEALTHY => "healthy",
        UNHEALTHY => "unhealthy",
        _ => "unchecked",
    }
}

/// One backend address and everything skiff knows about it.
#[derive(Debug)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// The weight discovery gave it.
    pub(super) spec_weight: AtomicU32,
    /// What the balancer uses: `spec_weight × WEIGHT_SCALE`, less during
    /// slow start.
    pub(super) weight: AtomicU32,
    /// Active health: one of the `health::` states.
    pub(super) health: AtomicU8,
    /// Why the last active check failed, for `/clusters`.
    pub(super) health_failure: Mutex<Option<String>>,
    /// Start of the slow-start ramp in ms since [`epoch`]; 0 when not ramping.
    pub(super) ramp_from: AtomicU64,
    pub(super) in_flight: AtomicU64,
    /// Set when the endpoint left the set; it only finishes what it has.
    pub(super) draining: AtomicBool,
    /// Where discovery found it (Kubernetes slice, zone, conditions);
    /// updated in place when only that changes.
    pub(super) origin: ArcSwapOption<Origin>,
    /// Responses by status class (`skiff_endpoint_requests_total`).
    pub requests: CodeCounters,
    /// Request durations to this endpoint (for the dashboard's p99; not
    /// exported per endpoint, to keep series bounded).
    pub(crate) duration: Histogram,
    /// One connection pool per worker (see `workers`), so a worker only
    /// reuses connections its own runtime drives.
    pub(super) pools: Box<[Pool]>,
    /// The owning cluster's metrics, so a request holds one `Arc`, not two.
    pub(crate) cluster_stats: Arc<ClusterStats>,
    /// `cluster="…",endpoint="…"`, written once for every scrape to copy.
    pub(crate) metric_labels: Box<str>,
    /// 5xx responses and connect failures in a row (outlier detection).
    pub(super) failures: AtomicU32,
    /// When an ejection ends, in ms since [`epoch`]; 0 when not ejected.
    pub(super) ejected_until: AtomicU64,
    /// Times ejected, for the doubling ejection time; one is forgiven per
    /// `base_ejection_time` spent in rotation since (Envoy's decay).
    pub(super) ejections: AtomicU32,
    /// When the last ejection ended or was last forgiven (ms since the process's epoch: [`now_ms`]).
    pub(super) ejection_ended: AtomicU64,
}

impl Endpoint {
    pub(crate) fn new(spec: &EndpointSpec, cluster_stats: Arc<ClusterStats>) -> Endpoint {
        let metric_labels = format!(
            "{},{}",
            cluster_stats.metric_labels,
            crate::metrics::label("endpoint", &spec.address.to_string())
        )
        .into();
        Endpoint {
            cluster_stats,
            metric_labels,
            address: spec.address,
            spec_weight: AtomicU32::new(spec.weight),
            weight: AtomicU32::new(spec.weight.saturating_mul(WEIGHT_SCALE)),
            health: AtomicU8::new(UNCHECKED),
            health_failure: Mutex::new(None),
            ramp_from: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            origin: ArcSwapOption::new(spec.origin.clone()),
            requests: CodeCounters::default(),
            duration: Histogram::default(),
            pools: (0..crate::io::workers::count())
                .map(|_| Pool::default())
                .collect(),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            ejection_ended: AtomicU64::new(0),
        }
    }

    /// Whether outlier detection has taken it out of rotation.
    pub fn is_ejected(&self) -> bool {
        self.ejected_until.load(Relaxed) != 0
    }

    /// The balancing weight: the configured weight × [`WEIGHT_SCALE`],
    /// lowered while the endpoint is in slow start.
    #[inline]
    pub(crate) fn weight(&self) -> u32 {
        self.weight.load(Relaxed)
    }

    /// The weight discovery or the config gave it.
    pub(crate) fn spec_weight(&self) -> u32 {
        self.spec_weight.load(Relaxed)
    }

    /// Active health (`UNCHECKED`, `PENDING`, `HEALTHY`, `UNHEALTHY`).
    pub fn health(&self) -> u8 {
        self.health.load(Relaxed)
    }

    /// Why the last active check failed, while it is failing.
    pub fn health_failure(&self) -> Option<String> {
        self.health_failure.lock().clone()
    }

    /// Whether new requests may go to it outside panic mode.
    pub fn takes_traffic(&self) -> bool {
        !self.is_ejected() && matches!(self.health(), UNCHECKED | HEALTHY)
    }

    /// Ms left of its ejection (0 when not ejected), and how many times
    /// it has been ejected.
    pub fn ejection(&self) -> (u64, u32) {
        let until = self.ejected_until.load(Relaxed);
        (until.saturating_sub(now_ms()), self.ejections.load(Relaxed))
    }

    /// Whether slow start is still ramping its weight up.
    pub(crate) fn is_ramping(&self) -> bool {
        self.ramp_from.load(Relaxed) != 0
    }

    /// Sets the balancing weight for slow start at `now`; true when it
    /// changed (the snapshot must be rebuilt for round-robin).
    pub(super) fn ramp(&self, slow_start: &skiff_config::cluster::SlowStart, now: u64) -> bool {
        let full = self.spec_weight().saturating_mul(WEIGHT_SCALE);
        let from = self.ramp_from.load(Relaxed);
        let window = slow_start.window.as_millis() as u64;
        let weight = if from == 0 || window == 0 || now.saturating_sub(from) >= window {
            if from != 0 {
                self.ramp_from.store(0, Relaxed);
            }
            full
        } else {
            // Envoy: weight · max(min%, (t / window)^(1 / aggression)),
            // with t at least one second.
            let t = (now - from).max(1000) as f64 / window as f64;
            let factor = t
                .powf(1.0 / slow_start.aggression)
                .max(slow_start.min_weight_percent as f64 / 100.0)
                .min(1.0);
            ((full as f64 * factor) as u32).max(1)
        };
        self.weight.swap(weight, Relaxed) != weight
    }

    /// Requests sent to this endpoint whose response body has not ended.
    #[inline]
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Where discovery found the endpoint; `None` for static and file ones.
    pub(crate) fn origin(&self) -> Option<Arc<Origin>> {
        self.origin.load_full()
    }

    /// Takes a new weight and origin for the same address, in place.
    pub(super) fn refresh(&self, spec: &EndpointSpec) {
        if self.spec_weight.swap(spec.weight, Relaxed) != spec.weight && !self.is_ramping() {
            self.weight
                .store(spec.weight.saturating_mul(WEIGHT_SCALE), Relaxed);
        }
        let current = self.origin.load();
        let same = match (current.as_ref(), spec.origin.as_ref()) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.origin.store(spec.origin.clone());
        }
    }

    /// This worker's connection pool to the endpoint.
    #[inline]
    pub(crate) fn pool(&self) -> &Pool {
        &self.pools[crate::io::workers::current() % self.pools.len()]
    }

    /// Idle pooled connections over every worker.
    pub fn idle_connections(&self) -> usize {
        self.pools.iter().map(Pool::idle_count).sum()
    }

    /// Stops pooling on every worker: idle connections close now.
    pub(super) fn close_pools(&self) {
        self.pools.iter().for_each(Pool::close);
    }
}

/// Balancing weights are configured weights times this, so slow start can
/// give an endpoint a fraction of its share (≤ 10,000 × 100 fits a `u32`).
pub(crate) const WEIGHT_SCALE: u32 = 100;

/// One request counted against an endpoint and its cluster, from pick
/// until the response body ends (or the request fails). Dropping it ends
/// the count.
#[derive(Debug)]
pub struct InFlight {
    pub endpoint: Arc<Endpoint>,
}

impl InFlight {
    /// A second count on the same endpoint (tests hold several).
    #[cfg(test)]
    pub(super) fn another(&self) -> InFlight {
        self.endpoint.in_flight.fetch_add(1, Relaxed);
        self.endpoint.cluster_stats.active.fetch_add(1, Relaxed);
        InFlight {
            endpoint: self.endpoint.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Relaxed);
        self.endpoint.cluster_stats.active.fetch_sub(1, Relaxed);
    }
}
