//! Serving one captured connection: original destination, protocol, then
//! either HTTP through the usual request path or bytes copied both ways.
//!
//! Each destination skiff balances (a Service port outbound, an app port
//! inbound) gets a cluster of its own on first use, named for it
//! (`order.shop.http`, `inbound.8080`) and a one-route table that sends
//! every request to it, so the request path ([`crate::server::h1`], [`crate::server::h2`],
//! [`crate::proxy::forward`]) is the same as for configured listeners: retries,
//! outlier ejection, pools and metrics included. HTTP/2 clients get a
//! cluster that speaks HTTP/2 upstream (`.h2`), so gRPC stays gRPC.
//!
//! With `mesh:` ([`super::mesh`]), an outbound destination's cluster dials
//! its pods over mTLS, and an inbound listener takes a connection that
//! opens with a mesh ClientHello to [`Captured::serve_mesh`]: the same
//! destination cluster, reached through a route table that keeps the
//! verified identity header (the plaintext one removes any such header a
//! client sent). With no `mesh:`, none of this runs: a connection costs
//! one more pointer load.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use skiff_config::endpoints::EndpointSpec;
use skiff_config::endpoints::Source;
use skiff_config::endpoints::DEFAULT_WEIGHT;
use skiff_discovery::kubernetes::services::{ServiceIndex, ServiceRef};
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

use super::detect::{detect, Protocol};
use super::mesh::{self, Mesh, Opening};
use super::routes::Routing;
use crate::cluster::{self, Cluster};
use crate::metrics::tls::Failure;
use crate::metrics::Registry;
use crate::proxy::route::{ListenerRoutes, RouteTable};
use crate::server::state::{ConnectionGuard, ListenerState};
use crate::tls::client::Connector;
use crate::tls::ServerTls;
use skiff_config::cluster::CircuitBreaker;
use skiff_config::cluster::ClusterConfig;
use skiff_config::cluster::Timeouts;
use skiff_config::cluster::UpstreamProtocol;
use skiff_config::listener::AccessLog;
use skiff_config::listener::ListenerConfig;
use skiff_config::route::PathMatch;
use skiff_config::route::RouteConfig;
use skiff_config::sidecar::MeshConfig;
use skiff_config::sidecar::{CaptureConfig, Direction, PROXY_UID};
use skiff_config::tls::UpstreamTls;
use std::sync::atomic::Ordering::Relaxed;

/// How long the first connection to a new destination waits for its
/// endpoints (the namespace's first EndpointSlice list) before being
/// answered without them.
const FIRST_ENDPOINTS_WAIT: Duration = Duration::from_secs(5);
/// How often that wait looks.
const PRIMED_POLL: Duration = Duration::from_millis(5);
/// A destination no connection has used for this long is dropped, and
/// with it its EndpointSlice subscription (the namespace's watch stops
/// when no destination of it is left). Its next connection starts over.
pub(crate) const IDLE_AFTER: Duration = skiff_config::sidecar::DEFAULT_WATCH_IDLE_TIMEOUT;

/// A capture listener's live settings, swapped in with each config.
#[derive(Debug)]
pub(crate) struct Captured {
    pub(crate) config: CaptureConfig,
    pub(crate) listener: Arc<str>,
    /// The listener's access log, for its destinations' requests.
    pub(crate) access_log: Option<AccessLog>,
    /// The sidecar's Services and destinations, shared by its listeners.
    pub(crate) sidecar: Arc<Shared>,
    /// Inbound with `mesh:`: the TLS that sidecars' connections end in.
    pub(crate) mesh_server: Option<Arc<ServerTls>>,
}

/// What [`Captured::accept`] leaves for the listener to serve.
pub(crate) enum Accepted {
    /// Served to the end already (opaque, passed through, or refused).
    Done,
    /// HTTP, to serve with the destination's route table.
    Http(TcpStream, Arc<ListenerState>),
    /// A sidecar's mTLS connection, for [`Captured::serve_mesh`].
    Mesh(TcpStream, SocketAddr),
}

/// One balanced destination: its cluster and the route table to it.
#[derive(Debug)]
struct Target {
    cluster: Arc<Cluster>,
    /// An outbound Service port the mesh's routes may shape:
    /// `(namespace, name, port)`.
    service: Option<(String, String, u16)>,
    listener: Arc<str>,
    access_log: Option<AccessLog>,
    /// Inbound with the mesh: the identity header plaintext requests lose.
    strip_header: Option<String>,
    /// The clusters the mesh's routes send to (other Services), each with
    /// its EndpointSlice follower.
    backends: Mutex<HashMap<String, (Arc<Cluster>, AbortHandle)>>,
    /// Held by every HTTP connection being served to this destination.
    state: Arc<ListenerState>,
    /// The same for connections that arrived over mesh TLS (`state` itself
    /// when the two do not differ).
    tls_state: Arc<ListenerState>,
    /// Mesh: how opaque connections to the destination's pods are dialled.
    opaque_tls: Option<Connector>,
    follower: AbortHandle,
    /// When a connection last came for it.
    last_used: Mutex<std::time::Instant>,
}

impl Target {
    /// Whether a connection is being served with one of its route tables.
    fn serving(&self) -> bool {
        let held = if Arc::ptr_eq(&self.state, &self.tls_state) {
            2
        } else {
            1
        };
        Arc::strong_count(&self.state) > held || Arc::strong_count(&self.tls_state) > held
    }
}

/// How a new destination's pods are found and spoken to.
struct Reach {
    source: Source,
    protocol: UpstreamProtocol,
    tls: TargetTls,
    /// An outbound Service port the mesh's routes may shape.
    service: Option<(String, String, u16)>,
}

/// A destination's TLS, when the mesh gives it some.
#[derive(Debug, Default)]
struct TargetTls {
    /// The cluster's upstream TLS (outbound, to a meshed Service), and
    /// the mesh's connector for it.
    upstream: Option<(UpstreamTls, Connector)>,
    /// For opaque connections to the same pods.
    opaque: Option<Connector>,
    /// Inbound: the identity header removed from plaintext requests.
    strip_header: Option<String>,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.follower.abort();
        for (_, follower) in self.backends.lock().values() {
            follower.abort();
        }
    }
}

/// What the sidecar keeps across connections: the Service index and the
/// destinations in use, with what it makes destinations from (the proxy's
/// discovery and metrics). One per proxy.
#[derive(Debug)]
pub(crate) struct Shared {
    discovery: skiff_discovery::Discovery,
    registry: Arc<Registry>,
    /// The watched namespaces, their index, and its idle time.
    services: Mutex<Option<(Vec<String>, ServiceIndex, Duration)>>,
    targets: Mutex<HashMap<String, Arc<Target>>>,
    mesh: ArcSwapOption<Mesh>,
    /// The mesh's routes, when an outbound listener asks for them.
    routing: Mutex<Option<Arc<Routing>>>,
}

impl Shared {
    pub(crate) fn new(discovery: skiff_discovery::Discovery, registry: Arc<Registry>) -> Shared {
        Shared {
            discovery,
            registry,
            services: Mutex::default(),
            targets: Mutex::default(),
            mesh: ArcSwapOption::empty(),
            routing: Mutex::default(),
        }
    }

    /// Follows the mesh's routes (from now on, once), or stops.
    pub(crate) fn follow_routes(self: &Arc<Self>, on: bool) {
        let mut routing = self.routing.lock();
        match (on, routing.is_some()) {
            (true, false) => {
                let namespace = std::env::var(skiff_config::sidecar::NAMESPACE_ENV)
                    .ok()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "default".into());
                let shared = Arc::downgrade(self);
                let refresh = move || {
                    let Some(shared) = shared.upgrade() else {
                        return false;
                    };
                    shared.refresh_routes();
                    true
                };
                *routing = Some(Routing::start(refresh, namespace));
            }
            (false, true) => {
                *routing = None;
                drop(routing);
                self.refresh_routes();
            }
            _ => {}
        }
    }

    /// Rebuilds the route table of every outbound destination from the
    /// mesh's routes as they are now.
    pub(crate) fn refresh_routes(&self) {
        let targets: Vec<Arc<Target>> = self.targets.lock().values().cloned().collect();
        for target in targets.iter().filter(|t| t.service.is_some()) {
            // Outbound destinations strip no header: one table for both.
            let table = Arc::new(self.route_table(target, None));
            target.state.routes.table.store(table.clone());
            if !Arc::ptr_eq(&target.state, &target.tls_state) {
                target.tls_state.routes.table.store(table);
            }
        }
    }

    /// A destination's route table: the mesh's routes for its Service
    /// when there are any (their backends' clusters made and followed
    /// here), else its one route to its own cluster.
    fn route_table(&self, target: &Target, strip_header: Option<&str>) -> RouteTable {
        let name = target.cluster.name.to_string();
        let mut clusters = HashMap::from([(name.clone(), target.cluster.clone())]);
        let routing = self.routing.lock().clone();
        let mesh_routes = match (&target.service, &routing) {
            (Some((namespace, service, port)), Some(r)) if r.listed.load(Relaxed) => {
                let world = r.world.lock();
                skiff_gateway::mesh_routes(&world, (namespace, service), *port, &r.client_namespace)
            }
            _ => None,
        };
        let routes = match mesh_routes {
            None => vec![RouteConfig::to_cluster(
                PathMatch::Prefix("/".into()),
                &name,
            )],
            Some(mesh) => {
                let mut backends = target.backends.lock();
                // The sidecar's own settings (no request timeout, no
                // breaker a pod would hit), and HTTP/2 where the client
                // speaks it, as for the destination itself.
                let client_h2 = target.cluster.settings().protocol == UpstreamProtocol::Http2;
                for translated in mesh.clusters {
                    let protocol = match client_h2 {
                        true => UpstreamProtocol::Http2,
                        false => translated.protocol,
                    };
                    let config =
                        destination_settings(&translated.name, &translated.source, protocol);
                    let backend = backends.entry(config.name.clone()).or_insert_with(|| {
                        let source = config.source.clone();
                        let cluster = Arc::new(Cluster::with_connector(config, None));
                        let follower = cluster::follow(&cluster, &self.discovery, &source);
                        (cluster, follower)
                    });
                    clusters.insert(backend.0.name.to_string(), backend.0.clone());
                }
                mesh.routes
            }
        };
        let routes = routes
            .into_iter()
            .map(|mut r| {
                if let Some(header) = strip_header {
                    r.rules.request_headers.remove.push(header.to_string());
                }
                r
            })
            .collect();
        let listener_config = ListenerConfig {
            limits: Default::default(),
            name: target.listener.to_string(),
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            advertised_port: None,
            routes,
            tls: None,
            capture: None,
            access_log: None,
        };
        let mut table = match RouteTable::build(&listener_config, &clusters, &self.registry) {
            Ok(table) => table,
            Err(e) => {
                tracing::warn!(cluster = %name, "mesh routes refused, the Service is balanced as it is: {e}");
                let plain = ListenerConfig {
                    routes: vec![RouteConfig::to_cluster(
                        PathMatch::Prefix("/".into()),
                        &name,
                    )],
                    ..listener_config
                };
                RouteTable::build(&plain, &clusters, &self.registry).unwrap_or_default()
            }
        };
        table.access_log = target.access_log;
        table
    }

    /// Starts watching the Services of `namespaces` (once; a new set of
    /// namespaces replaces the watch). The watches stop after `idle`
    /// without a lookup and start again with the next.
    pub(crate) fn watch_services(&self, namespaces: Vec<String>, idle: Duration) {
        let mut services = self.services.lock();
        if let Some((n, _, i)) = services.as_mut() {
            if *n == namespaces {
                *i = idle;
                return;
            }
        }
        if services.is_none() {
            warn_unless_proxy_uid();
        }
        let index = ServiceIndex::watch(&namespaces);
        *services = Some((namespaces, index, idle));
    }

    /// Puts mesh settings in force. A change drops the destinations, so
    /// the next connection to each dials with the new settings (open
    /// ones finish on the old); the files' contents reload on their own.
    pub(crate) fn set_mesh(&self, config: Option<&MeshConfig>) {
        let running = self.mesh.load();
        if running.as_ref().map(|m| &m.config) == config {
            return;
        }
        self.mesh
            .store(config.map(|c| Arc::new(Mesh::new(c.clone()))));
        if running.is_some() || config.is_some() {
            self.targets.lock().clear();
        }
    }

    /// The mesh settings in force, if any.
    pub(crate) fn mesh(&self) -> Option<Arc<Mesh>> {
        self.mesh.load_full()
    }

    /// False until the watched namespaces' Services are listed: before,
    /// a Service's address would pass through unbalanced.
    pub(crate) fn is_ready(&self) -> bool {
        let routes = (self.routing.lock().as_ref()).is_none_or(|r| r.listed.load(Relaxed));
        routes
            && self
                .services
                .lock()
                .as_ref()
                .is_none_or(|(_, index, _)| index.is_listed())
    }

    /// The namespaces whose Services are not listed yet (empty when ready).
    pub(crate) fn waiting_for(&self) -> Vec<String> {
        let mut waiting = match self.services.lock().as_ref() {
            Some((namespaces, index, _)) if !index.is_listed() => namespaces.clone(),
            _ => Vec::new(),
        };
        if (self.routing.lock().as_ref()).is_some_and(|r| !r.listed.load(Relaxed)) {
            waiting.push("the mesh's routes (cluster-wide)".into());
        }
        waiting
    }

    async fn lookup(&self, destination: SocketAddr) -> Option<Arc<ServiceRef>> {
        let index = self.services.lock().as_ref().map(|(_, i, _)| i.clone())?;
        index.lookup(destination, FIRST_ENDPOINTS_WAIT).await
    }

    /// The clusters of the destinations in use, for the admin server.
    pub(crate) fn clusters(&self) -> Vec<Arc<Cluster>> {
        let mut list: Vec<Arc<Cluster>> = Vec::new();
        for t in self.targets.lock().values() {
            list.push(t.cluster.clone());
            list.extend(t.backends.lock().values().map(|(c, _)| c.clone()));
        }

        list.sort_by(|a, b| a.name.cmp(&b.name));
        list.dedup_by(|a, b| a.name == b.name);
        list
    }

    /// Upkeep, every second: closes expired pooled connections, drops
    /// destinations idle for [`IDLE_AFTER`] (no connection open to them)
    /// and stops Service watches idle for their listener's
    /// `watch_idle_timeout`.
    pub(crate) fn sweep(&self) {
        if let Some((_, index, idle)) = self.services.lock().as_ref() {
            index.stop_if_idle(*idle);
        }
        let mut targets = self.targets.lock();
        for t in targets.values() {
            t.cluster.sweep();
            for (backend, _) in t.backends.lock().values() {
                backend.sweep();
            }
        }
        targets.retain(|name, t| {
            let open = Arc::strong_count(t) > 1 || t.serving();
            let idle = t.last_used.lock().elapsed() >= IDLE_AFTER;
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
        listener: &Arc<str>,
        access_log: Option<AccessLog>,
        name: String,
        how: Reach,
    ) -> Arc<Target> {
        let existing = self.targets.lock().get(&name).cloned();
        if let Some(t) = &existing {
            *t.last_used.lock() = std::time::Instant::now();
        }
        let target = match existing {
            Some(t) if t.cluster.is_primed() => return t,
            Some(t) => t,
            None => self.add_target(listener, access_log, name, how),
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
        listener: &Arc<str>,
        access_log: Option<AccessLog>,
        name: String,
        how: Reach,
    ) -> Arc<Target> {
        let Reach {
            source,
            protocol,
            tls,
            service,
        } = how;
        let mut targets = self.targets.lock();
        if let Some(t) = targets.get(&name) {
            return t.clone();
        }
        let mut config = destination_settings(&name, &source, protocol);
        let connector = tls.upstream.map(|(upstream, connector)| {
            config.tls = Some(upstream);
            connector
        });
        let cluster = Arc::new(Cluster::with_connector(config, connector));
        let follower = cluster::follow(&cluster, &self.discovery, &source);
        let state = || {
            Arc::new(ListenerState {
                routes: ListenerRoutes {
                    name: listener.clone(),
                    table: ArcSwap::from_pointee(RouteTable::default()),
                    unrouted: self.registry.unrouted(listener),
                },
                connections: self.registry.connections(listener),
                refused: self.registry.refused(listener),
                protocol_errors: self.registry.protocol_errors(listener),
                // Unused: a captured connection is served within the limits
                // of the listener that accepted it.
                limits: Default::default(),
                tls: Default::default(),
            })
        };
        let tls_state = state();
        let plaintext = match &tls.strip_header {
            // Plaintext clients may not claim an identity.
            Some(_) => state(),
            None => tls_state.clone(),
        };
        let target = Arc::new(Target {
            cluster,
            service,
            listener: listener.clone(),
            access_log,
            strip_header: tls.strip_header,
            backends: Mutex::default(),
            state: plaintext,
            tls_state,
            opaque_tls: tls.opaque,
            follower,
            last_used: Mutex::new(std::time::Instant::now()),
        });
        // Tables before any connection can use the target.
        target
            .tls_state
            .routes
            .table
            .store(Arc::new(self.route_table(&target, None)));
        if !Arc::ptr_eq(&target.state, &target.tls_state) {
            let strip = target.strip_header.as_deref();
            let table = self.route_table(&target, strip);
            target.state.routes.table.store(Arc::new(table));
        }
        tracing::info!(listener = %listener, cluster = %name, "new destination");
        targets.insert(name, target.clone());
        target
    }
}

impl Captured {
    /// Takes a captured connection. HTTP is handed back, with the route
    /// table to serve it with, for the listener's HTTP path, and a mesh
    /// ClientHello for [`Captured::serve_mesh`]; anything else is served
    /// here to the end.
    pub(crate) async fn accept(&self, stream: TcpStream, peer: SocketAddr) -> Accepted {
        let destination = match crate::io::original_dst::original_destination(&stream) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(listener = %self.listener, %peer, "not a captured connection (no original destination: {e}); closed");
                return Accepted::Done;
            }
        };
        let mesh = self.sidecar.mesh();
        let opaque_port = self.config.opaque_ports.contains(&destination.port());
        if let (Some(mesh), Direction::Inbound) = (&mesh, self.config.direction) {
            // Opaque ports too: a sidecar's opaque connection opens with
            // its ClientHello; a plaintext client whose server speaks
            // first waits `detect_timeout` for nothing, as on other ports.
            match mesh::opening(&stream, self.config.detect_timeout).await {
                Opening::Tls(sni) if mesh.is_mesh_sni(sni.as_deref()) => {
                    return Accepted::Mesh(stream, destination);
                }
                _ if mesh.strict() => {
                    if let Some(server) = &self.mesh_server {
                        server.stats.failed(Failure::Plaintext);
                    }
                    tracing::warn!(listener = %self.listener, %peer, %destination, "refused: not mesh TLS (mesh.mode is strict)");
                    return Accepted::Done;
                }
                // The app's own TLS, or a protocol where the server speaks first.
                Opening::Tls(_) | Opening::Silent => {
                    pass_through(stream, destination, peer).await;
                    return Accepted::Done;
                }
                Opening::Plain => {}
            }
        }
        let protocol = if opaque_port {
            Protocol::Opaque
        } else {
            detect(&stream, self.config.detect_timeout).await
        };
        let upstream = match protocol {
            Protocol::Http2 => UpstreamProtocol::Http2,
            _ => UpstreamProtocol::Http1,
        };
        let target = match self.config.direction {
            Direction::Outbound => {
                let Some(service) = self.sidecar.lookup(destination).await else {
                    pass_through(stream, destination, peer).await;
                    return Accepted::Done;
                };
                match self
                    .outbound_target(mesh.as_deref(), &service, upstream, peer)
                    .await
                {
                    Some(target) => target,
                    None => return Accepted::Done,
                }
            }
            Direction::Inbound => {
                if protocol == Protocol::Opaque {
                    pass_through(stream, destination, peer).await;
                    return Accepted::Done;
                }
                self.inbound_target(mesh.as_deref(), destination, upstream)
                    .await
            }
        };
        if protocol != Protocol::Opaque {
            return Accepted::Http(stream, target.state.clone());
        }
        // Opaque TCP to a Service: balanced per connection.
        let Some(picked) = target.cluster.pick() else {
            tracing::warn!(cluster = %target.cluster.name, %peer, "no endpoints for an opaque connection; closed");
            return Accepted::Done;
        };
        let address = picked.endpoint.address;
        match &target.opaque_tls {
            None => pass_through(stream, address, peer).await,
            Some(tls) => pass_through_tls(stream, address, tls, peer).await,
        }
        drop(picked);
        Accepted::Done
    }

    /// The outbound destination for a Service's port, named after it
    /// (`catalog.shop.http`, `.h2` for HTTP/2); `None` when its mesh TLS
    /// cannot be built (logged: the connection is closed).
    async fn outbound_target(
        &self,
        mesh: Option<&Mesh>,
        service: &ServiceRef,
        upstream: UpstreamProtocol,
        peer: SocketAddr,
    ) -> Option<Arc<Target>> {
        let port = if service.port_name.is_empty() {
            service.port.to_string()
        } else {
            service.port_name.clone()
        };
        let name = format!(
            "{}.{}.{port}{}",
            service.service,
            service.namespace,
            suffix(upstream)
        );
        let tls = match mesh.filter(|_| service.mtls) {
            Some(mesh) => match outbound_tls(mesh, service, upstream) {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::error!(listener = %self.listener, %peer, service = %name, "mesh TLS unusable; connection closed: {e}");
                    return None;
                }
            },
            None => TargetTls::default(),
        };
        // With mesh mTLS, the routes' other backends would be dialled in
        // plaintext: while the mesh is on, Services keep their plain
        // balancing (said at each new destination).
        let meshed = mesh.is_some();
        if meshed && self.config.routes {
            tracing::info!(service = %name, "mesh routes are not applied to a Service reached over mesh mTLS yet");
        }
        let how = Reach {
            source: Source::Kubernetes(service.target()),
            protocol: upstream,
            tls,
            service: (self.config.routes && !meshed).then(|| {
                (
                    service.namespace.clone(),
                    service.service.clone(),
                    service.port,
                )
            }),
        };
        let access_log = self.access_log;
        Some(
            self.sidecar
                .target(&self.listener, access_log, name, how)
                .await,
        )
    }

    /// The inbound destination for the app's `destination` port.
    async fn inbound_target(
        &self,
        mesh: Option<&Mesh>,
        destination: SocketAddr,
        upstream: UpstreamProtocol,
    ) -> Arc<Target> {
        let name = format!("inbound.{}{}", destination.port(), suffix(upstream));
        let how = Reach {
            source: Source::Static(vec![EndpointSpec::new(destination, DEFAULT_WEIGHT)]),
            protocol: upstream,
            tls: TargetTls {
                strip_header: mesh.map(|m| m.config.identity_header.clone()),
                ..TargetTls::default()
            },
            service: None,
        };
        self.sidecar
            .target(&self.listener, self.access_log, name, how)
            .await
    }

    /// Serves a sidecar's mTLS connection to the app's `destination`
    /// port: the handshake (client certificate and allow-list checked,
    /// counted in `skiff_tls_*{listener}`), then HTTP by ALPN with the
    /// client's identity in the mesh's header, or opaque TCP without ALPN.
    pub(crate) async fn serve_mesh(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        destination: SocketAddr,
        limits: Arc<skiff_config::limits::ListenerLimits>,
        drain: tokio::sync::watch::Receiver<bool>,
        guard: ConnectionGuard,
    ) {
        let Some(server) = &self.mesh_server else {
            return;
        };
        let Some(done) = crate::server::tls::handshake(stream, peer, server, &self.listener).await
        else {
            return;
        };
        let upstream = match done.alpn.as_deref() {
            None => {
                // No ALPN: opaque TCP inside the mesh's TLS.
                pass_through(done.tls, destination, peer).await;
                return;
            }
            Some(b"h2") => UpstreamProtocol::Http2,
            Some(_) => UpstreamProtocol::Http1,
        };
        let mesh = self.sidecar.mesh();
        let target = self
            .inbound_target(mesh.as_deref(), destination, upstream)
            .await;
        let state = target.tls_state.clone();
        drop(target);
        crate::server::tls::serve_http(done, peer, state, limits, drain, guard).await;
    }
}

fn suffix(protocol: UpstreamProtocol) -> &'static str {
    match protocol {
        UpstreamProtocol::Http2 => ".h2",
        UpstreamProtocol::Http1 => "",
    }
}

/// The mesh TLS of an outbound destination: its cluster's, and its
/// opaque connections'.
fn outbound_tls(
    mesh: &Mesh,
    service: &ServiceRef,
    protocol: UpstreamProtocol,
) -> Result<TargetTls, crate::tls::TlsError> {
    let alpn: &[u8] = match protocol {
        UpstreamProtocol::Http2 => b"h2",
        UpstreamProtocol::Http1 => b"http/1.1",
    };
    let (_, sni) = mesh.server_identity(service);
    Ok(TargetTls {
        upstream: Some((
            UpstreamTls {
                ca: Some(mesh.config.ca.clone()),
                sni: Some(sni),
                client_cert: Some(mesh.config.files.clone()),
            },
            mesh.connector(service, Some(alpn))?,
        )),
        opaque: Some(mesh.connector(service, None)?),
        strip_header: None,
    })
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
    if uid != PROXY_UID {
        tracing::warn!(
            "outbound capture while running as uid {uid}, not {}: the capture rules must exclude uid {uid} (skiff iptables --proxy-uid {uid}), or skiff's own upstream connections are captured again",
            PROXY_UID
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
    // Kubernetes' probes decide the pods' readiness (no health checks);
    // outlier ejection covers the rest without extra traffic.
    ClusterConfig {
        protocol,
        timeouts: Timeouts {
            request: Duration::ZERO,
            ..Timeouts::default()
        },
        circuit_breaker: CircuitBreaker {
            max_requests: UNREACHABLE_LIMIT,
            max_pending: UNREACHABLE_LIMIT,
        },
        ..ClusterConfig::new(name, source.clone())
    }
}

/// Like [`pass_through`], over mesh TLS to the pod at `address`.
async fn pass_through_tls(
    mut stream: TcpStream,
    address: SocketAddr,
    tls: &Connector,
    peer: SocketAddr,
) {
    let upstream = match TcpStream::connect(address).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%peer, %address, "cannot connect for an opaque connection: {e}");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    match tls.connect(address, upstream).await {
        Ok(mut upstream) => {
            if let Err(e) = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await {
                tracing::debug!(%peer, %address, "opaque mesh connection ended: {e}");
            }
        }
        Err(e) => {
            tracing::warn!(%peer, %address, "mesh TLS handshake failed for an opaque connection: {e}");
        }
    }
}

/// Copies bytes both ways between `stream` and `address` until both ends close.
async fn pass_through<S>(mut stream: S, address: SocketAddr, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
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
