//! Serving one captured connection: original destination, protocol, then
//! either HTTP through the usual request path or bytes copied both ways.
//!
//! Each destination skiff balances (a Service port outbound, an app port
//! inbound) gets a cluster of its own on first use, named for it
//! (`order.shop.http`, `inbound.8080`) and a one-route table that sends
//! every request to it, so the request path ([`crate::h1`], [`crate::h2`],
//! [`crate::forward`]) is the same as for configured listeners: retries,
//! outlier ejection, pools and metrics included. HTTP/2 clients get a
//! cluster that speaks HTTP/2 upstream (`.h2`), so gRPC stays gRPC.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use skiff_discovery::kubernetes::services::{ServiceIndex, ServiceRef};
use skiff_discovery::{EndpointSpec, Source, DEFAULT_WEIGHT};
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

use super::detect::{detect, Protocol};
use super::{CaptureConfig, Direction};
use crate::cluster::Cluster;
use crate::config::{
    AccessLog, CircuitBreaker, ClusterConfig, LbPolicy, ListenerConfig, OutlierDetection,
    PathMatch, Retries, RouteConfig, SlowStart, Timeouts, UpstreamProtocol,
    DEFAULT_PANIC_THRESHOLD,
};
use crate::listener::ListenerState;
use crate::route::RouteTable;
use crate::Inner;

/// How long the first connection to a new destination waits for its
/// endpoints (the namespace's first EndpointSlice list) before being
/// answered without them.
const FIRST_ENDPOINTS_WAIT: Duration = Duration::from_secs(5);
/// How often that wait looks.
const PRIMED_POLL: Duration = Duration::from_millis(5);
/// A destination no connection has used for this long is dropped, and
/// with it its EndpointSlice subscription (the namespace's watch stops
/// when no destination of it is left). Its next connection starts over.
pub const IDLE_AFTER: Duration = Duration::from_secs(300);

/// A capture listener's live settings, swapped in with each config.
#[derive(Debug)]
pub struct Captured {
    pub config: CaptureConfig,
    pub listener: Arc<str>,
    /// The listener's access log, for its destinations' requests.
    pub access_log: Option<AccessLog>,
    pub(crate) proxy: Weak<Inner>,
}

/// One balanced destination: its cluster and the route table to it.
#[derive(Debug)]
struct Target {
    cluster: Arc<Cluster>,
    /// Held by every HTTP connection being served to this destination.
    state: Arc<ListenerState>,
    follower: AbortHandle,
    /// When a connection last came for it.
    last_used: Mutex<std::time::Instant>,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// What the sidecar keeps across connections: the Service index and the
/// destinations in use. One per proxy.
#[derive(Debug, Default)]
pub struct Shared {
    services: Mutex<Option<(Vec<String>, ServiceIndex)>>,
    targets: Mutex<HashMap<String, Arc<Target>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Starts watching the Services of `namespaces` (once; a new set of
    /// namespaces replaces the watch).
    pub fn watch_services(&self, namespaces: Vec<String>) {
        let mut services = lock(&self.services);
        if services.as_ref().is_some_and(|(n, _)| *n == namespaces) {
            return;
        }
        if services.is_none() {
            warn_unless_proxy_uid();
        }
        let index = ServiceIndex::watch(&namespaces);
        *services = Some((namespaces, index));
    }

    /// False until the watched namespaces' Services are listed: before,
    /// a Service's address would pass through unbalanced.
    pub fn is_ready(&self) -> bool {
        lock(&self.services)
            .as_ref()
            .is_none_or(|(_, index)| index.is_listed())
    }

    /// The namespaces whose Services are not listed yet (empty when ready).
    pub fn waiting_for(&self) -> Vec<String> {
        match lock(&self.services).as_ref() {
            Some((namespaces, index)) if !index.is_listed() => namespaces.clone(),
            _ => Vec::new(),
        }
    }

    fn lookup(&self, destination: SocketAddr) -> Option<Arc<ServiceRef>> {
        let index = lock(&self.services).as_ref().map(|(_, i)| i.clone())?;
        index.lookup(destination)
    }

    /// The clusters of the destinations in use, for the admin server.
    pub fn clusters(&self) -> Vec<Arc<Cluster>> {
        let mut list: Vec<Arc<Cluster>> = lock(&self.targets)
            .values()
            .map(|t| t.cluster.clone())
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Upkeep, every second: closes expired pooled connections and drops
    /// destinations idle for [`IDLE_AFTER`] (no connection open to them).
    pub fn sweep(&self) {
        let mut targets = lock(&self.targets);
        for t in targets.values() {
            t.cluster.sweep();
        }
        targets.retain(|name, t| {
            let open = Arc::strong_count(t) > 1 || Arc::strong_count(&t.state) > 1;
            let idle = lock(&t.last_used).elapsed() >= IDLE_AFTER;
            let keep = open || !idle || t.cluster.in_flight() > 0;
            if !keep {
                tracing::info!(cluster = %name, "destination idle; dropped");
            }
            keep
        });
    }

    /// The destination `name`, made on first use from `source`.
    async fn target(
        &self,
        inner: &Inner,
        listener: &Arc<str>,
        access_log: Option<AccessLog>,
        name: String,
        source: Source,
        protocol: UpstreamProtocol,
    ) -> Arc<Target> {
        let existing = lock(&self.targets).get(&name).cloned();
        if let Some(t) = &existing {
            *lock(&t.last_used) = std::time::Instant::now();
        }
        let target = match existing {
            Some(t) if t.cluster.is_primed() => return t,
            Some(t) => t,
            None => self.add_target(inner, listener, access_log, name, source, protocol),
        };
        // Connections to a new destination wait (bounded) for its first
        // endpoint set.
        let deadline = tokio::time::Instant::now() + FIRST_ENDPOINTS_WAIT;
        while !target.cluster.is_primed() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(PRIMED_POLL).await;
        }
        target
    }

    fn add_target(
        &self,
        inner: &Inner,
        listener: &Arc<str>,
        access_log: Option<AccessLog>,
        name: String,
        source: Source,
        protocol: UpstreamProtocol,
    ) -> Arc<Target> {
        let mut targets = lock(&self.targets);
        if let Some(t) = targets.get(&name) {
            return t.clone();
        }
        let config = destination_settings(&name, &source, protocol);
        let cluster = Arc::new(Cluster::new(config));
        let follower = crate::spawn_follower(&inner.discovery, &cluster, &source);
        let listener_config = ListenerConfig {
            limits: Default::default(),
            name: listener.to_string(),
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            routes: vec![RouteConfig {
                host: None,
                path: PathMatch::Prefix("/".into()),
                cluster: name.clone(),
                rules: Default::default(),
            }],
            tls: None,
            capture: None,
            access_log: None,
        };
        let clusters = HashMap::from([(name.clone(), cluster.clone())]);
        let mut table =
            RouteTable::build(&listener_config, &clusters, &inner.registry).unwrap_or_default();
        table.access_log = access_log;
        let state = Arc::new(ListenerState {
            name: listener.clone(),
            routes: ArcSwap::from_pointee(table),
            unrouted: inner.registry.unrouted(listener),
            connections: inner.registry.connections(listener),
            refused: inner.registry.refused(listener),
            // Unused: a captured connection is served within the limits
            // of the listener that accepted it.
            limits: Default::default(),
            tls: Default::default(),
            capture: Default::default(),
        });
        let target = Arc::new(Target {
            cluster,
            state,
            follower,
            last_used: Mutex::new(std::time::Instant::now()),
        });
        tracing::info!(listener = %listener, cluster = %name, "new destination");
        targets.insert(name, target.clone());
        target
    }
}

impl Captured {
    /// Serves a captured connection. HTTP is handed back, with the route
    /// table to serve it with, for the listener's HTTP path; anything else
    /// is served here to the end.
    pub async fn accept(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<(TcpStream, Arc<ListenerState>)> {
        let destination = match crate::iptables::original_destination(&stream) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(listener = %self.listener, %peer, "not a captured connection (no original destination: {e}); closed");
                return None;
            }
        };
        let inner = self.proxy.upgrade()?;
        let protocol = if self.config.opaque_ports.contains(&destination.port()) {
            Protocol::Opaque
        } else {
            detect(&stream, self.config.detect_timeout).await
        };
        let upstream = match protocol {
            Protocol::Http2 => UpstreamProtocol::Http2,
            _ => UpstreamProtocol::Http1,
        };
        let suffix = if upstream == UpstreamProtocol::Http2 {
            ".h2"
        } else {
            ""
        };
        let target = match self.config.direction {
            Direction::Outbound => {
                let Some(service) = inner.sidecar.lookup(destination) else {
                    pass_through(stream, destination, peer).await;
                    return None;
                };
                let port = if service.port_name.is_empty() {
                    service.port.to_string()
                } else {
                    service.port_name.clone()
                };
                let name = format!("{}.{}.{port}{suffix}", service.service, service.namespace);
                let source = Source::Kubernetes(service.target());
                inner
                    .sidecar
                    .target(
                        &inner,
                        &self.listener,
                        self.access_log,
                        name,
                        source,
                        upstream,
                    )
                    .await
            }
            Direction::Inbound => {
                if protocol == Protocol::Opaque {
                    pass_through(stream, destination, peer).await;
                    return None;
                }
                let name = format!("inbound.{}{suffix}", destination.port());
                let source = Source::Static(vec![EndpointSpec::new(destination, DEFAULT_WEIGHT)]);
                inner
                    .sidecar
                    .target(
                        &inner,
                        &self.listener,
                        self.access_log,
                        name,
                        source,
                        upstream,
                    )
                    .await
            }
        };
        if protocol != Protocol::Opaque {
            return Some((stream, target.state.clone()));
        }
        // Opaque TCP to a Service: balanced per connection.
        let Some(picked) = target.cluster.pick() else {
            tracing::warn!(cluster = %target.cluster.name, %peer, "no endpoints for an opaque connection; closed");
            return None;
        };
        let address = picked.endpoint.address;
        pass_through(stream, address, peer).await;
        drop(picked);
        None
    }
}

/// The capture rules leave skiff's own connections alone by its uid; run
/// as another, its upstream connections would be captured again, without
/// end. The rules' uid cannot be read back, so this only warns.
fn warn_unless_proxy_uid() {
    use std::os::unix::fs::MetadataExt;
    // The owner of /proc/self is this process's effective uid.
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return;
    };
    if uid != super::PROXY_UID {
        tracing::warn!(
            "outbound capture while running as uid {uid}, not {}: the capture rules must exclude uid {uid} (skiff iptables --proxy-uid {uid}), or skiff's own upstream connections are captured again",
            super::PROXY_UID
        );
    }
}

/// A destination's cluster settings. The app did not ask for a proxy, so
/// skiff adds no limit the app would not have had on its own: no timeout
/// to response headers (long polls and gRPC streams stay open) and circuit
/// breakers too high to reach, as Istio's sidecars do. What it does add
/// is what fixes connection-level balancing and hides endpoint churn:
/// least-request (P2C, as linkerd2-proxy), budgeted retries of requests
/// that are safe to retry, and outlier ejection.
fn destination_settings(name: &str, source: &Source, protocol: UpstreamProtocol) -> ClusterConfig {
    const UNREACHABLE_LIMIT: u32 = 1 << 24;
    ClusterConfig {
        name: name.to_string(),
        lb: LbPolicy::LeastRequest,
        protocol,
        source: source.clone(),
        timeouts: Timeouts {
            request: Duration::ZERO,
            ..Timeouts::default()
        },
        circuit_breaker: CircuitBreaker {
            max_requests: UNREACHABLE_LIMIT,
            max_pending: UNREACHABLE_LIMIT,
        },
        retries: Retries::default(),
        outlier_detection: OutlierDetection::default(),
        panic_threshold: DEFAULT_PANIC_THRESHOLD,
        // Kubernetes' probes decide the pods' readiness; outlier ejection
        // covers the rest without extra traffic.
        health_check: None,
        slow_start: SlowStart::default(),
        tls: None,
    }
}

/// Copies bytes both ways between `stream` and `address` until both ends close.
async fn pass_through(mut stream: TcpStream, address: SocketAddr, peer: SocketAddr) {
    match TcpStream::connect(address).await {
        Ok(mut upstream) => {
            let _ = upstream.set_nodelay(true);
            if let Err(e) = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await {
                tracing::debug!(%peer, %address, "opaque connection ended: {e}");
            }
        }
        Err(e) => {
            tracing::debug!(%peer, %address, "cannot connect for an opaque connection: {e}");
        }
    }
}
