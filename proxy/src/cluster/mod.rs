//! Clusters and their endpoints: the live state the request path reads.
//!
//! A [`Cluster`] owns an `ArcSwap<Snapshot>`: an immutable list of the
//! endpoints that take new requests plus the balancer built for them. The
//! control path (discovery updates, config reloads) builds a new snapshot
//! and swaps it in; the request path only loads it.
//!
//! Per-endpoint live state (in-flight count, counters, connection pool)
//! sits in an `Arc<Endpoint>` that is reused across snapshots, so an update
//! never resets a count, and an endpoint removed from the set keeps serving
//! the requests already sent to it; when the last of them ends, the `Arc`
//! goes and its pooled connections close with it.

pub mod balance;
pub(crate) mod budget;
pub mod endpoint;
pub mod health;
pub(crate) mod pool;
pub mod stats;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use skiff_config::endpoints::{EndpointSpec, Source};
use skiff_discovery::EndpointSet;

use crate::clock::now_ms;
use crate::tls::client::Connector;
use crate::tls::TlsError;
use balance::Balancer;
use endpoint::{Endpoint, InFlight};
use skiff_config::cluster::{ClusterConfig, UpstreamProtocol};
use stats::ClusterStats;

/// What the request path reads: the endpoints that take new requests, and
/// how to pick among them.
#[derive(Debug)]
pub struct Snapshot {
    /// What picks choose from: the members not ejected, or all of them in
    /// panic mode.
    pub endpoints: Box<[Arc<Endpoint>]>,
    pub(crate) balancer: Balancer,
    /// Every member, in the order of the set last applied.
    pub members: Box<[Arc<Endpoint>]>,
    /// Too few members take traffic: balancing over all of them.
    pub panic: bool,
}

impl Snapshot {
    fn empty() -> Snapshot {
        Snapshot {
            endpoints: Box::new([]),
            balancer: Balancer::RoundRobin(None),
            members: Box::new([]),
            panic: false,
        }
    }
}

/// The control path's view of a cluster's members.
#[derive(Debug, Default)]
struct Members {
    by_address: HashMap<SocketAddr, Arc<Endpoint>>,
    /// The set the snapshot was built from, when it lists each of the
    /// snapshot's endpoints at the same position (no address twice).
    applied: Option<EndpointSet>,
}

/// A cluster's settings in force: its config, and the connector built
/// from its `tls` section (or given, for the mesh's destinations).
/// Derefs to the config.
#[derive(Debug)]
pub struct Settings {
    config: ClusterConfig,
    /// TLS to the endpoints; none: plaintext.
    pub(crate) connector: Option<Connector>,
}

impl std::ops::Deref for Settings {
    type Target = ClusterConfig;

    fn deref(&self) -> &ClusterConfig {
        &self.config
    }
}

impl Settings {
    /// `config` with the connector its `tls` section asks for: the
    /// `previous` settings' when the TLS settings are the same (it reloads
    /// changed files itself), else a new one (the files are read now).
    pub fn new(config: ClusterConfig, previous: Option<&Settings>) -> Result<Settings, TlsError> {
        let same = previous.filter(|p| p.tls == config.tls && p.protocol == config.protocol);
        let connector = match (same, &config.tls) {
            (Some(previous), _) => previous.connector.clone(),
            (None, None) => None,
            (None, Some(tls)) => {
                let http2 = config.protocol == UpstreamProtocol::Http2;
                Some(Connector::for_cluster(tls, http2)?)
            }
        };
        Ok(Settings { config, connector })
    }
}

/// A named group of endpoints with one balancing policy.
#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    settings: ArcSwap<Settings>,
    snapshot: ArcSwap<Snapshot>,
    /// Round-robin position; outlives snapshots so churn does not restart it.
    cursor: AtomicUsize,
    pub stats: Arc<ClusterStats>,
    /// Set once the source has delivered its first endpoint set.
    primed: AtomicBool,
    /// Set once the first set's endpoints have all been checked once.
    warmed: AtomicBool,
    /// Control-path view of the current members.
    members: Mutex<Members>,
    /// Removed endpoints that still had requests in flight.
    draining: Mutex<Vec<Arc<Endpoint>>>,
    /// Signalled when the members or settings change (the health checker
    /// follows it).
    pub(crate) changed: tokio::sync::Notify,
}

/// Endpoints of a cluster by state, for `skiff_endpoints`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EndpointCounts {
    /// Taking traffic.
    pub healthy: usize,
    /// Failing active checks, or waiting for their first.
    pub(crate) unhealthy: usize,
    /// Taken out by outlier detection.
    pub ejected: usize,
    /// Removed from the set, finishing their requests.
    pub draining: usize,
}

impl Cluster {
    /// A cluster of `config`, with the connector its `tls` section asks
    /// for (the certificate files are read now).
    pub fn new(config: ClusterConfig) -> Result<Cluster, TlsError> {
        Ok(Cluster::from_settings(Settings::new(config, None)?))
    }

    /// A cluster of `config` whose endpoints are dialled with `connector`
    /// (the mesh's, which verifies the peer's identity).
    pub(crate) fn with_connector(config: ClusterConfig, connector: Option<Connector>) -> Cluster {
        Cluster::from_settings(Settings { config, connector })
    }

    /// A cluster of settings already built.
    pub(crate) fn from_settings(settings: Settings) -> Cluster {
        let stats = ClusterStats {
            metric_labels: crate::metrics::label("cluster", &settings.name).into(),
            ..ClusterStats::default()
        };
        Cluster {
            name: settings.name.as_str().into(),
            settings: ArcSwap::from_pointee(settings),
            snapshot: ArcSwap::from_pointee(Snapshot::empty()),
            cursor: AtomicUsize::new(0),
            stats: Arc::new(stats),
            primed: AtomicBool::new(false),
            warmed: AtomicBool::new(false),
            members: Mutex::default(),
            draining: Mutex::new(Vec::new()),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// The cluster's current settings.
    #[inline]
    pub fn settings(&self) -> arc_swap::Guard<Arc<Settings>> {
        self.settings.load()
    }

    /// Picks an endpoint for one request and counts it as in flight until
    /// the returned guard drops. `None` when the cluster has no endpoints.
    #[inline]
    pub fn pick(&self) -> Option<InFlight> {
        let snapshot = self.snapshot.load();
        let i = snapshot.balancer.pick(&snapshot.endpoints, &self.cursor)?;
        let endpoint = snapshot.endpoints[i].clone();
        endpoint.in_flight.fetch_add(1, Relaxed);
        endpoint.cluster_stats.active.fetch_add(1, Relaxed);
        if snapshot.panic {
            self.stats.panic.fetch_add(1, Relaxed);
        }
        Some(InFlight { endpoint })
    }

    /// [`Cluster::pick`] behind the circuit breaker: refused when
    /// `max_requests` are already in flight. (Checked, then counted, as
    /// Envoy does: concurrent requests may pass the limit by a few.)
    #[inline]
    pub(crate) fn admit(&self, max_requests: u32) -> Result<InFlight, Unavailable> {
        if self.stats.active.load(Relaxed) >= max_requests as usize {
            return Err(Unavailable::Overflow);
        }
        self.pick().ok_or(Unavailable::NoEndpoints)
    }

    /// Requests in flight over all endpoints, draining ones included.
    pub fn in_flight(&self) -> u64 {
        self.endpoints_for_display()
            .iter()
            .map(|e| e.in_flight())
            .sum()
    }

    /// The current settings as an `Arc`, for holding across awaits.
    pub fn settings_full(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Forgets active health when checks are turned off: every member
    /// takes traffic again.
    pub(crate) fn clear_health(&self) {
        let _members = self.members.lock();
        let current = self.snapshot.load_full();
        let mut changed = false;
        for e in current.members.iter() {
            changed |= e.health.swap(endpoint::UNCHECKED, Relaxed) != endpoint::UNCHECKED;
            *e.health_failure.lock() = None;
        }
        if changed {
            self.publish(current.members.to_vec());
        }
    }

    /// The snapshot the request path reads (a lock-free `ArcSwap` load).
    #[inline]
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// Whether the source has delivered its first set.
    pub(crate) fn is_primed(&self) -> bool {
        self.primed.load(Relaxed)
    }

    /// Applies new settings from a reload; the endpoints and their state stay.
    pub fn update_settings(&self, settings: Settings) {
        let old = self.settings.load_full();
        let republish = old.lb != settings.lb
            || old.panic_threshold != settings.panic_threshold
            || old.health_check.is_some() != settings.health_check.is_some();
        self.settings.store(Arc::new(settings));
        if republish {
            // Held so a concurrent `apply` cannot publish in between.
            let _members = self.members.lock();
            self.publish(self.snapshot.load().members.to_vec());
        }
        self.changed.notify_one();
    }

    /// Replaces the endpoint set. Endpoints present before keep their
    /// state; removed ones stop getting requests, finish what they have,
    /// and close their idle connections now and the rest as they finish.
    ///
    /// A new set usually differs from the last in one place (one slice of
    /// a Service, one line of a file), so the endpoints it shares with the
    /// current snapshot at its start and end are matched by position, and
    /// only the part in between is looked up by address: an update costs
    /// hashing in proportion to what changed, not to the cluster's size.
    /// The matched endpoints are refreshed only where their spec differs
    /// from the one at the same position in the set applied last (a plain
    /// comparison; a shared origin compares by pointer). What stays O(N) is
    /// the new snapshot: its array of endpoint pointers and its balancer.
    pub fn apply(&self, set: &EndpointSet) {
        let mut guard = self.members.lock();
        let Members {
            by_address: members,
            applied,
        } = &mut *guard;
        let current = self.snapshot.load_full();
        let old: &[Arc<Endpoint>] = &current.members;
        let applied = applied.take();
        let old_specs = applied.as_deref().filter(|specs| specs.len() == old.len());
        let refresh = |at: usize, endpoint: &Endpoint, spec: &EndpointSpec| {
            if old_specs.is_none_or(|specs| specs[at] != *spec) {
                endpoint.refresh(spec);
            }
        };
        let same = |(e, s): (&Arc<Endpoint>, &EndpointSpec)| e.address == s.address;
        let prefix = old.iter().zip(set.iter()).take_while(|p| same(*p)).count();
        let suffix = old[prefix..]
            .iter()
            .rev()
            .zip(set[prefix..].iter().rev())
            .take_while(|p| same(*p))
            .count();
        let (old_middle, new_middle) = (
            &old[prefix..old.len() - suffix],
            &set[prefix..set.len() - suffix],
        );

        let mut ordered = Vec::with_capacity(set.len());
        for (at, (endpoint, spec)) in old[..prefix].iter().zip(&set[..prefix]).enumerate() {
            refresh(at, endpoint, spec);
            ordered.push(endpoint.clone());
        }
        let mut replaced: HashMap<SocketAddr, Arc<Endpoint>> = old_middle
            .iter()
            .filter_map(|e| members.remove_entry(&e.address))
            .collect();
        for spec in new_middle {
            let endpoint = match replaced.remove(&spec.address) {
                Some(existing) => {
                    existing.refresh(spec);
                    existing
                }
                // Listed twice: the first listing stands.
                None if members.contains_key(&spec.address) => continue,
                None => Arc::new(self.new_endpoint(spec, current.members.is_empty())),
            };
            members.insert(spec.address, endpoint.clone());
            ordered.push(endpoint);
        }
        let suffix_at = old.len() - suffix;
        for (i, (endpoint, spec)) in old[suffix_at..]
            .iter()
            .zip(&set[set.len() - suffix..])
            .enumerate()
        {
            refresh(suffix_at + i, endpoint, spec);
            ordered.push(endpoint.clone());
        }
        let removed: Vec<Arc<Endpoint>> = replaced.into_values().collect();
        guard.applied = (ordered.len() == set.len()).then(|| set.clone());
        self.publish(ordered);
        drop(guard);

        let mut draining = self.draining.lock();
        for endpoint in removed {
            endpoint.draining.store(true, Relaxed);
            endpoint.close_pools();
            draining.push(endpoint);
        }
        draining.retain(|e| e.in_flight() > 0);
        self.stats.discovery_updates.fetch_add(1, Relaxed);
        self.primed.store(true, Relaxed);
        self.changed.notify_one();
    }

    /// An endpoint joining the set: with active checks it waits for its
    /// first pass; after the first set, slow start ramps its weight (as
    /// Envoy, endpoints of a cluster's first set start at full weight).
    fn new_endpoint(&self, spec: &EndpointSpec, first_set: bool) -> Endpoint {
        let endpoint = Endpoint::new(spec, self.stats.clone());
        let settings = self.settings.load();
        if settings.health_check.is_some() {
            endpoint.health.store(endpoint::PENDING, Relaxed);
        }
        if !settings.slow_start.window.is_zero() && !first_set && self.is_primed() {
            endpoint.ramp_from.store(now_ms(), Relaxed);
            endpoint.ramp(&settings.slow_start, now_ms());
        }
        endpoint
    }

    /// Builds and stores the snapshot for `members`: picks go to those
    /// healthy and not ejected, unless fewer than the panic threshold are
    /// (then to all but those still waiting for their first check).
    fn publish(&self, members: Vec<Arc<Endpoint>>) {
        let settings = self.settings.load();
        let checked = settings.health_check.is_some();
        let taking: Vec<Arc<Endpoint>> = members
            .iter()
            .filter(|e| e.takes_traffic() || (!checked && !e.is_ejected()))
            .cloned()
            .collect();
        let known: Vec<Arc<Endpoint>> = if checked {
            members
                .iter()
                .filter(|e| e.health() != endpoint::PENDING)
                .cloned()
                .collect()
        } else {
            members.clone()
        };
        let panic = !known.is_empty()
            && taking.len() * 100 < known.len() * settings.panic_threshold as usize;
        let endpoints = if panic { known } else { taking };
        let balancer = Balancer::new(settings.lb, &endpoints);
        self.snapshot.store(Arc::new(Snapshot {
            endpoints: endpoints.into_boxed_slice(),
            balancer,
            members: members.into_boxed_slice(),
            panic,
        }));
    }

    /// Outlier detection's input: the outcome of a request to `endpoint`.
    /// `failed` is a 5xx response or a connect failure.
    #[inline]
    pub fn record_outcome(&self, endpoint: &Arc<Endpoint>, failed: bool) {
        if !failed {
            if endpoint.failures.load(Relaxed) != 0 {
                endpoint.failures.store(0, Relaxed);
            }
            return;
        }
        let detection = self.settings.load().outlier_detection;
        if detection.consecutive_failures == 0 {
            return;
        }
        let failures = endpoint.failures.fetch_add(1, Relaxed) + 1;
        if failures >= detection.consecutive_failures {
            self.eject(endpoint, detection);
        }
    }

    /// Takes `endpoint` out of rotation for its ejection time, unless the
    /// cluster already has its share of ejected endpoints.
    fn eject(&self, endpoint: &Arc<Endpoint>, detection: skiff_config::cluster::OutlierDetection) {
        let _members = self.members.lock();
        let current = self.snapshot.load_full();
        if endpoint.is_ejected() || !current.members.iter().any(|m| Arc::ptr_eq(m, endpoint)) {
            return;
        }
        let ejected = current.members.iter().filter(|e| e.is_ejected()).count();
        let cap = (current.members.len() * detection.max_ejection_percent as usize / 100).max(1);
        if ejected >= cap {
            return;
        }
        let times = endpoint.ejections.fetch_add(1, Relaxed).min(16);
        let time = detection
            .base_ejection_time
            .saturating_mul(1 << times)
            .min(detection.max_ejection_time);
        endpoint
            .ejected_until
            .store(now_ms() + time.as_millis() as u64, Relaxed);
        endpoint.failures.store(0, Relaxed);
        self.stats.ejections.fetch_add(1, Relaxed);
        tracing::warn!(cluster = %self.name, endpoint = %endpoint.address, "ejected for {time:?} after {} failures in a row", detection.consecutive_failures);
        self.publish(current.members.to_vec());
    }

    /// Returns endpoints whose ejection time is over to rotation, and
    /// moves slow-start ramps on.
    fn end_ejections(&self) {
        let _members = self.members.lock();
        let current = self.snapshot.load_full();
        let now = now_ms();
        let settings = self.settings.load();
        let slow_start = settings.slow_start;
        let forgive_after = settings.outlier_detection.base_ejection_time.as_millis() as u64;
        let mut changed = false;
        for e in current.members.iter() {
            let until = e.ejected_until.load(Relaxed);
            if until != 0 && until <= now {
                e.ejected_until.store(0, Relaxed);
                e.ejection_ended.store(now, Relaxed);
                tracing::info!(cluster = %self.name, endpoint = %e.address, "ejection over");
                changed = true;
            } else if until == 0
                && e.ejections.load(Relaxed) > 0
                && now.saturating_sub(e.ejection_ended.load(Relaxed)) >= forgive_after
            {
                // In rotation for a whole base time: the next ejection is shorter.
                e.ejections.fetch_sub(1, Relaxed);
                e.ejection_ended.store(now, Relaxed);
            }
            if e.is_ramping() {
                changed |= e.ramp(&slow_start, now);
            }
        }
        if changed {
            self.publish(current.members.to_vec());
        }
    }

    /// Active health checking's input: one check of `endpoint` and what
    /// the check loop counted in a row. Publishes a new snapshot when the
    /// endpoint's health changes; a pass also ends an outlier ejection.
    /// Public so the balancer fuzz target can flip health as checks do.
    pub fn record_check(
        &self,
        endpoint: &Arc<Endpoint>,
        failure: Option<String>,
        in_a_row: u32,
        check: &skiff_config::cluster::HealthCheck,
    ) {
        let state = endpoint.health();
        let next = match (state, &failure) {
            (endpoint::PENDING | endpoint::UNCHECKED, None) => endpoint::HEALTHY,
            (endpoint::PENDING, Some(_)) => endpoint::UNHEALTHY,
            (endpoint::UNHEALTHY, None) if in_a_row >= check.healthy_threshold => endpoint::HEALTHY,
            (endpoint::HEALTHY | endpoint::UNCHECKED, Some(_))
                if in_a_row >= check.unhealthy_threshold =>
            {
                endpoint::UNHEALTHY
            }
            _ => state,
        };
        let unejects = failure.is_none() && endpoint.is_ejected();
        *endpoint.health_failure.lock() = failure.clone();
        if next == state && !unejects {
            return;
        }
        let _members = self.members.lock();
        let current = self.snapshot.load_full();
        if !current.members.iter().any(|m| Arc::ptr_eq(m, endpoint)) {
            return;
        }
        endpoint.health.store(next, Relaxed);
        if unejects {
            endpoint.ejected_until.store(0, Relaxed);
            endpoint.ejection_ended.store(now_ms(), Relaxed);
            tracing::info!(cluster = %self.name, endpoint = %endpoint.address, "health check passed: ejection over");
        }
        match (state, next) {
            (endpoint::PENDING, endpoint::HEALTHY) => {
                tracing::debug!(cluster = %self.name, endpoint = %endpoint.address, "first health check passed")
            }
            (_, endpoint::HEALTHY) => {
                tracing::info!(cluster = %self.name, endpoint = %endpoint.address, "healthy after {in_a_row} passed checks");
                let settings = self.settings.load();
                if !settings.slow_start.window.is_zero() {
                    endpoint.ramp_from.store(now_ms(), Relaxed);
                    endpoint.ramp(&settings.slow_start, now_ms());
                }
            }
            (_, endpoint::UNHEALTHY) => tracing::warn!(
                cluster = %self.name,
                endpoint = %endpoint.address,
                "unhealthy after {in_a_row} failed checks: {}",
                failure.as_deref().unwrap_or("failed")
            ),
            _ => {}
        }
        self.publish(current.members.to_vec());
    }

    /// Periodic upkeep: closes idle connections past the idle timeout and
    /// forgets drained endpoints.
    pub fn sweep(&self) {
        self.end_ejections();
        let idle = self.settings.load().timeouts.idle;
        for endpoint in self.snapshot.load().members.iter() {
            endpoint.pools.iter().for_each(|p| p.evict_idle(idle));
        }
        self.draining.lock().retain(|e| e.in_flight() > 0);
    }

    /// Current endpoints followed by draining ones, for `/clusters` and metrics.
    pub fn endpoints_for_display(&self) -> Vec<Arc<Endpoint>> {
        let mut all: Vec<Arc<Endpoint>> = self.snapshot.load().members.to_vec();
        let draining = self.draining.lock();
        all.extend(draining.iter().filter(|e| e.in_flight() > 0).cloned());
        all
    }

    /// Calls `f` with each endpoint [`endpoints_for_display`] lists, in the
    /// same order, without collecting them (a scrape visits every one).
    ///
    /// [`endpoints_for_display`]: Cluster::endpoints_for_display
    pub(crate) fn for_each_endpoint_for_display(&self, mut f: impl FnMut(&Endpoint)) {
        for e in self.snapshot.load().members.iter() {
            f(e);
        }
        let draining = self.draining.lock();
        for e in draining.iter().filter(|e| e.in_flight() > 0) {
            f(e);
        }
    }

    /// The members by state, and the draining endpoints.
    pub fn endpoint_counts(&self) -> EndpointCounts {
        let snapshot = self.snapshot.load();
        let mut counts = EndpointCounts::default();
        for e in snapshot.members.iter() {
            if e.is_ejected() {
                counts.ejected += 1;
            } else if matches!(e.health(), endpoint::UNCHECKED | endpoint::HEALTHY) {
                counts.healthy += 1;
            } else {
                counts.unhealthy += 1;
            }
        }
        counts.draining = self
            .draining
            .lock()
            .iter()
            .filter(|e| e.in_flight() > 0)
            .count();
        counts
    }

    /// Primed, and once no member was waiting for its first health check
    /// (Envoy's cluster warming): what `/ready` waits for. Only the first
    /// set counts: endpoints joining later do not make skiff unready.
    pub(crate) fn is_warm(&self) -> bool {
        if self.warmed.load(Relaxed) {
            return true;
        }
        let warm = self.is_primed()
            && !self
                .snapshot
                .load()
                .members
                .iter()
                .any(|e| e.health() == endpoint::PENDING);
        if warm {
            self.warmed.store(true, Relaxed);
        }
        warm
    }

    /// Follows a discovery source until it closes or the task is aborted.
    pub(crate) async fn follow(
        self: Arc<Self>,
        mut updates: tokio::sync::watch::Receiver<Option<EndpointSet>>,
    ) {
        loop {
            let set = updates.borrow_and_update().clone();
            if let Some(set) = set {
                self.apply(&set);
                tracing::debug!(cluster = %self.name, endpoints = set.len(), "endpoint set applied");
            }
            if updates.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Why a cluster took no request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// No endpoint takes requests.
    NoEndpoints,
    /// `max_requests` are in flight.
    Overflow,
}

/// Starts following `source` for `cluster`: each new endpoint set is
/// applied as it comes; the task stops when the handle is aborted.
pub(crate) fn follow(
    cluster: &Arc<Cluster>,
    discovery: &skiff_discovery::Discovery,
    source: &Source,
) -> tokio::task::AbortHandle {
    let updates = discovery.spawn(
        source,
        &cluster.name,
        cluster.stats.discovery_errors.clone(),
    );
    tokio::spawn(cluster.clone().follow(updates)).abort_handle()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_config::cluster::LbPolicy;
    use skiff_config::endpoints::Origin;

    use skiff_config::endpoints::Source;

    fn cluster(lb: LbPolicy) -> Arc<Cluster> {
        Arc::new(
            Cluster::new(ClusterConfig {
                lb,
                ..ClusterConfig::new("c", Source::Static(vec![]))
            })
            .expect("a plaintext cluster"),
        )
    }

    fn counts(healthy: usize, ejected: usize, draining: usize) -> EndpointCounts {
        EndpointCounts {
            healthy,
            unhealthy: 0,
            ejected,
            draining,
        }
    }

    fn set(list: &[(u16, u32)]) -> EndpointSet {
        list.iter()
            .map(|&(port, weight)| {
                EndpointSpec::new(SocketAddr::from(([127, 0, 0, 1], port)), weight)
            })
            .collect()
    }

    #[test]
    fn round_robin_is_exact_over_cycles() {
        let c = cluster(LbPolicy::RoundRobin);
        c.apply(&set(&[(1, 3), (2, 1), (3, 2)]));
        let mut counts = HashMap::new();
        for _ in 0..6 * 100 {
            let f = c.pick().unwrap();
            *counts.entry(f.endpoint.address.port()).or_insert(0) += 1;
        }
        assert_eq!(counts[&1], 300);
        assert_eq!(counts[&2], 100);
        assert_eq!(counts[&3], 200);
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let c = cluster(LbPolicy::LeastRequest);
        c.apply(&set(&[(1, 1), (2, 1)]));
        let first = loop {
            let f = c.pick().unwrap();
            if f.endpoint.address.port() == 1 {
                break f;
            }
        };
        let held: Vec<InFlight> = (0..9).map(|_| first.another()).collect();
        assert_eq!(first.endpoint.in_flight(), 10);
        for _ in 0..100 {
            assert_eq!(c.pick().unwrap().endpoint.address.port(), 2);
        }
        drop(held);
    }

    #[test]
    fn weighted_least_request_balances_in_flight_by_weight() {
        let c = cluster(LbPolicy::LeastRequest);
        c.apply(&set(&[(1, 3), (2, 1)]));
        // Hold every pick: in-flight settles at the 3:1 weight ratio.
        let held: Vec<InFlight> = (0..400).map(|_| c.pick().unwrap()).collect();
        let heavy = held
            .iter()
            .filter(|f| f.endpoint.address.port() == 1)
            .count();
        assert!((290..=310).contains(&heavy), "heavy got {heavy} of 400");
    }

    #[test]
    fn update_keeps_state_and_removed_endpoint_drains() {
        let c = cluster(LbPolicy::RoundRobin);
        c.apply(&set(&[(1, 1), (2, 1)]));
        let held: Vec<InFlight> = (0..2).map(|_| c.pick().unwrap()).collect();
        c.apply(&set(&[(2, 1), (3, 1)]));
        let ep2 = held
            .iter()
            .find(|f| f.endpoint.address.port() == 2)
            .unwrap()
            .endpoint
            .clone();
        assert_eq!(ep2.in_flight(), 1, "state kept across the update");
        for _ in 0..10 {
            assert_ne!(c.pick().unwrap().endpoint.address.port(), 1);
        }
        assert_eq!(c.endpoint_counts(), counts(2, 0, 1));
        drop(held);
        assert_eq!(c.endpoint_counts(), counts(2, 0, 0));
        assert_eq!(c.in_flight(), 0);
    }

    fn addresses(c: &Cluster) -> Vec<u16> {
        c.snapshot()
            .endpoints
            .iter()
            .map(|e| e.address.port())
            .collect()
    }

    #[test]
    fn a_change_in_the_middle_keeps_the_endpoints_around_it() {
        let c = cluster(LbPolicy::RoundRobin);
        c.apply(&set(&[(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]));
        let before: Vec<Arc<Endpoint>> = c.snapshot().endpoints.to_vec();
        c.apply(&set(&[(1, 1), (2, 1), (6, 1), (4, 2), (5, 1)]));
        assert_eq!(addresses(&c), [1, 2, 6, 4, 5]);
        let after = c.snapshot().endpoints.to_vec();
        for (i, j) in [(0, 0), (1, 1), (3, 3), (4, 4)] {
            assert!(
                Arc::ptr_eq(&before[i], &after[j]),
                "endpoint {i} was replaced"
            );
        }
        assert_eq!(after[3].spec_weight(), 2, "updated in place");
        assert!(before[2].is_draining());
        assert!(!after[2].is_draining());
    }

    #[test]
    fn a_reordered_set_keeps_every_endpoint() {
        let c = cluster(LbPolicy::RoundRobin);
        c.apply(&set(&[(1, 1), (2, 1), (3, 1)]));
        let before: Vec<Arc<Endpoint>> = c.snapshot().endpoints.to_vec();
        c.apply(&set(&[(3, 1), (1, 1), (2, 1)]));
        assert_eq!(addresses(&c), [3, 1, 2]);
        let after = c.snapshot().endpoints.to_vec();
        assert!(Arc::ptr_eq(&before[0], &after[1]));
        assert!(Arc::ptr_eq(&before[1], &after[2]));
        assert!(Arc::ptr_eq(&before[2], &after[0]));
        assert!(before.iter().all(|e| !e.is_draining()));
        assert_eq!(c.endpoint_counts(), counts(3, 0, 0));
    }

    #[test]
    fn an_address_listed_twice_counts_once() {
        let c = cluster(LbPolicy::RoundRobin);
        c.apply(&set(&[(1, 1), (2, 1)]));
        c.apply(&set(&[(1, 1), (3, 1), (1, 5), (3, 1)]));
        assert_eq!(addresses(&c), [1, 3]);
        assert_eq!(
            c.snapshot().endpoints[0].spec_weight(),
            1,
            "the first listing stands"
        );
        c.apply(&set(&[(3, 1)]));
        assert_eq!(addresses(&c), [3]);
        assert_eq!(c.members.lock().by_address.len(), 1);
    }

    #[test]
    fn a_weight_change_is_applied_whether_or_not_the_last_set_listed_an_address_twice() {
        let c = cluster(LbPolicy::RoundRobin);
        c.apply(&set(&[(1, 1), (2, 1), (3, 1)]));
        c.apply(&set(&[(1, 2), (2, 1), (3, 3)]));
        let weights = |c: &Cluster| -> Vec<u32> {
            c.snapshot()
                .endpoints
                .iter()
                .map(|e| e.spec_weight())
                .collect()
        };
        assert_eq!(weights(&c), [2, 1, 3]);
        c.apply(&set(&[(1, 2), (2, 1), (3, 3), (1, 9)]));
        assert_eq!(weights(&c), [2, 1, 3], "the first listing stands");
        c.apply(&set(&[(1, 4), (2, 1), (3, 3)]));
        assert_eq!(weights(&c), [4, 1, 3]);
    }

    #[test]
    fn an_origin_update_is_applied_in_place() {
        let c = cluster(LbPolicy::RoundRobin);
        let origin = |zone: &str| {
            Some(Arc::new(Origin {
                slice: "web-a".into(),
                zone: Some(zone.into()),
                node: None,
                ready: true,
                serving: true,
                terminating: false,
            }))
        };
        let address = SocketAddr::from(([127, 0, 0, 1], 1));
        let spec = |zone| EndpointSpec {
            address,
            weight: 1,
            origin: origin(zone),
        };
        c.apply(&EndpointSet::from([spec("a")]));
        let endpoint = c.snapshot().endpoints[0].clone();
        c.apply(&EndpointSet::from([spec("b")]));
        assert!(Arc::ptr_eq(&endpoint, &c.snapshot().endpoints[0]));
        assert_eq!(
            endpoint.origin().and_then(|o| o.zone.clone()).as_deref(),
            Some("b")
        );
    }

    #[test]
    fn ejection_takes_at_most_its_share_and_panic_mode_uses_everyone() {
        let c = cluster(LbPolicy::RoundRobin);
        let list: Vec<(u16, u32)> = (1..=20).map(|p| (p, 1)).collect();
        c.apply(&set(&list));
        let members = c.snapshot().members.to_vec();
        // Five failures in a row on three endpoints: 10% of 20 is two.
        for e in &members[..3] {
            for _ in 0..5 {
                c.record_outcome(e, true);
            }
        }
        assert_eq!(c.endpoint_counts(), counts(18, 2, 0));
        assert_eq!(c.snapshot().endpoints.len(), 18);
        assert!(!c.snapshot().panic);
        for _ in 0..100 {
            let picked = c.pick().unwrap();
            assert!(!picked.endpoint.is_ejected());
        }
        // A success resets the count: four more failures do not eject.
        let fourth = &members[3];
        c.record_outcome(fourth, false);
        for _ in 0..4 {
            c.record_outcome(fourth, true);
        }
        assert!(!fourth.is_ejected());

        // With a threshold above what is left, the cluster panics.
        let mut config = ClusterConfig::clone(&c.settings());
        config.panic_threshold = 95;
        c.update_settings(Settings::new(config, None).unwrap());
        c.apply(&set(&list));
        assert!(c.snapshot().panic);
        assert_eq!(c.snapshot().endpoints.len(), 20);
    }

    fn http_check() -> skiff_config::cluster::HealthCheck {
        skiff_config::cluster::HealthCheck {
            kind: skiff_config::cluster::HealthCheckKind::Tcp,
            interval: std::time::Duration::from_secs(1),
            unhealthy_interval: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_secs(1),
            jitter: std::time::Duration::ZERO,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }

    fn picked(c: &Cluster) -> Vec<u16> {
        let mut ports: Vec<u16> = (0..20)
            .map(|_| c.pick().unwrap().endpoint.address.port())
            .collect();
        ports.sort();
        ports.dedup();
        ports
    }

    #[test]
    fn health_thresholds_move_endpoints_out_and_back() {
        let c = cluster(LbPolicy::RoundRobin);
        let mut config = ClusterConfig::clone(&c.settings());
        config.health_check = Some(http_check());
        c.update_settings(Settings::new(config, None).unwrap());
        let check = http_check();
        c.apply(&set(&[(1, 1), (2, 1), (3, 1)]));
        // Waiting for the first check: nothing takes traffic, not ready.
        assert!(c.pick().is_none());
        assert!(!c.is_warm());
        let members = c.snapshot().members.to_vec();
        c.record_check(&members[0], None, 1, &check);
        assert_eq!(picked(&c), [1], "takes traffic after its first pass");
        c.record_check(&members[1], None, 1, &check);
        c.record_check(&members[2], Some("answered 503".into()), 1, &check);
        assert!(c.is_warm());
        // A later endpoint waiting for its first check does not unready it.
        c.apply(&set(&[(1, 1), (2, 1), (3, 1), (4, 1)]));
        assert!(c.is_warm());
        c.apply(&set(&[(1, 1), (2, 1), (3, 1)]));
        assert_eq!(picked(&c), [1, 2]);
        assert_eq!(members[2].health_failure().as_deref(), Some("answered 503"));

        // Two failures are under the threshold of three; the third counts.
        c.record_check(&members[0], Some("x".into()), 1, &check);
        c.record_check(&members[0], Some("x".into()), 2, &check);
        assert_eq!(picked(&c), [1, 2]);
        c.record_check(&members[0], Some("x".into()), 3, &check);
        assert_eq!(
            c.endpoint_counts(),
            EndpointCounts {
                healthy: 1,
                unhealthy: 2,
                ejected: 0,
                draining: 0
            }
        );
        // One healthy of three is under the 50% panic threshold.
        assert!(c.snapshot().panic);
        assert_eq!(picked(&c), [1, 2, 3]);
        let mut config = ClusterConfig::clone(&c.settings());
        config.panic_threshold = 30;
        c.update_settings(Settings::new(config, None).unwrap());
        assert!(!c.snapshot().panic);
        assert_eq!(picked(&c), [2]);

        // Back after healthy_threshold passes in a row.
        c.record_check(&members[2], None, 1, &check);
        assert!(!members[2].takes_traffic());
        c.record_check(&members[2], None, 2, &check);
        assert!(members[2].takes_traffic());
        assert_eq!(members[2].health_failure(), None);
    }

    #[test]
    fn a_passing_check_ends_an_ejection() {
        let c = cluster(LbPolicy::RoundRobin);
        let mut config = ClusterConfig::clone(&c.settings());
        config.health_check = Some(http_check());
        c.update_settings(Settings::new(config, None).unwrap());
        let list: Vec<(u16, u32)> = (1..=10).map(|p| (p, 1)).collect();
        c.apply(&set(&list));
        let members = c.snapshot().members.to_vec();
        for e in &members {
            c.record_check(e, None, 1, &http_check());
        }
        for _ in 0..5 {
            c.record_outcome(&members[0], true);
        }
        assert!(members[0].is_ejected());
        assert!(!picked(&c).contains(&1));
        c.record_check(&members[0], None, 1, &http_check());
        assert!(!members[0].is_ejected());
        assert!(picked(&c).contains(&1));
        assert_eq!(
            members[0].ejection().1,
            1,
            "the ejection count stays for the next one"
        );
    }

    #[test]
    fn all_unhealthy_is_panic_but_pending_endpoints_wait() {
        let c = cluster(LbPolicy::RoundRobin);
        let mut config = ClusterConfig::clone(&c.settings());
        config.health_check = Some(http_check());
        c.update_settings(Settings::new(config, None).unwrap());
        c.apply(&set(&[(1, 1), (2, 1)]));
        let members = c.snapshot().members.to_vec();
        c.record_check(&members[0], Some("down".into()), 1, &http_check());
        c.record_check(&members[1], Some("down".into()), 1, &http_check());
        assert!(c.snapshot().panic);
        assert_eq!(picked(&c), [1, 2], "panic mode serves what it can");
        // A third endpoint joins: not in the panic set until checked.
        c.apply(&set(&[(1, 1), (2, 1), (3, 1)]));
        assert_eq!(picked(&c), [1, 2]);
        // Turning checks off puts everyone back.
        let mut config = ClusterConfig::clone(&c.settings());
        config.health_check = None;
        c.update_settings(Settings::new(config, None).unwrap());
        c.clear_health();
        assert_eq!(picked(&c), [1, 2, 3]);
        assert!(!c.snapshot().panic);
    }

    #[test]
    fn slow_start_ramps_a_new_endpoints_weight_by_envoys_formula() {
        let slow_start = skiff_config::cluster::SlowStart {
            window: std::time::Duration::from_secs(10),
            aggression: 1.0,
            min_weight_percent: 10,
        };
        let e = Endpoint::new(
            &EndpointSpec::new(SocketAddr::from(([127, 0, 0, 1], 1)), 2),
            Arc::default(),
        );
        e.ramp_from.store(1, Relaxed);
        e.ramp(&slow_start, 1);
        assert_eq!(e.weight(), 20, "10% floor: t counts as at least 1 s");
        e.ramp(&slow_start, 1 + 5000);
        assert_eq!(e.weight(), 100, "half way: half the weight");
        let squared = skiff_config::cluster::SlowStart {
            aggression: 2.0,
            ..slow_start
        };
        e.ramp(&squared, 1 + 2500);
        assert_eq!(e.weight(), 100, "aggression 2: sqrt(0.25)");
        assert!(e.is_ramping());
        e.ramp(&slow_start, 1 + 10_000);
        assert_eq!(e.weight(), 200);
        assert!(!e.is_ramping(), "the window is over");
    }

    #[test]
    fn slow_start_applies_to_endpoints_joining_after_the_first_set() {
        let c = cluster(LbPolicy::RoundRobin);
        let mut config = ClusterConfig::clone(&c.settings());
        config.slow_start.window = std::time::Duration::from_secs(60);
        c.update_settings(Settings::new(config, None).unwrap());
        c.apply(&set(&[(1, 1), (2, 1)]));
        assert!(c.snapshot().members.iter().all(|e| !e.is_ramping()));
        c.apply(&set(&[(1, 1), (2, 1), (3, 1)]));
        let members = c.snapshot().members.to_vec();
        assert!(members[2].is_ramping());
        assert_eq!(members[2].weight(), 10);
        let mut counts = HashMap::new();
        for _ in 0..210 {
            *counts
                .entry(c.pick().unwrap().endpoint.address.port())
                .or_insert(0) += 1;
        }
        assert_eq!(counts[&3], 10, "a tenth of a full share: {counts:?}");
    }

    #[test]
    fn the_ejection_multiplier_decays_while_an_endpoint_stays_in_rotation() {
        let c = cluster(LbPolicy::RoundRobin);
        let mut config = ClusterConfig::clone(&c.settings());
        config.outlier_detection.base_ejection_time = std::time::Duration::from_millis(1);
        config.outlier_detection.max_ejection_percent = 100;
        config.panic_threshold = 0;
        c.update_settings(Settings::new(config, None).unwrap());
        c.apply(&set(&[(1, 1), (2, 1)]));
        let e = c.snapshot().members[0].clone();
        for round in 1..=3 {
            for _ in 0..5 {
                c.record_outcome(&e, true);
            }
            assert!(e.is_ejected());
            assert_eq!(e.ejection().1, round);
            while e.is_ejected() {
                std::thread::sleep(std::time::Duration::from_millis(1));
                c.sweep();
            }
        }
        // Each base time in rotation forgives one ejection.
        while e.ejection().1 > 0 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            c.sweep();
        }
        assert!(!e.is_ejected());
    }

    #[test]
    fn empty_cluster_picks_nothing() {
        let c = cluster(LbPolicy::LeastRequest);
        assert!(c.pick().is_none());
        c.apply(&set(&[]));
        assert!(c.pick().is_none());
        assert!(c.is_primed());
    }
}
