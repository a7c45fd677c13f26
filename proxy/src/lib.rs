//! skiff: a sidecar proxy and L7 load balancer for Kubernetes.
//!
//! [`Proxy`] is the running data plane: it binds the admin server and the
//! listeners, runs one discovery task per cluster, and applies new configs
//! live ([`Proxy::apply`]). The request path lives in [`forward`]; what it
//! reads is built by the control path here and swapped in atomically.

#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod http;
pub mod io;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use skiff_config::endpoints::Source;
use tokio::task::AbortHandle;

use cluster::Cluster;
use io::workers::Workers;
use metrics::Registry;
use proxy::route::{ListenerRoutes, RouteTable};
use server::listener::Listener;
use server::state::ListenerState;
use skiff_config::{Config, ConfigError, ListenerConfig};

/// How often a config file given with `-c` is checked for changes.
pub const CONFIG_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How often clusters close expired idle connections.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Why starting or reloading failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("listener `{name}` cannot listen on {address}: {source}")]
    Bind {
        name: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Route(#[from] proxy::route::UnknownCluster),
    #[error("listener `{name}`: {source}")]
    Tls { name: String, source: tls::TlsError },
    #[error("cluster `{name}`: {source}")]
    ClusterTls { name: String, source: tls::TlsError },
}

struct ClusterEntry {
    cluster: Arc<Cluster>,
    source: Source,
    follower: AbortHandle,
    /// The cluster's active health checks.
    checker: AbortHandle,
}

impl Drop for ClusterEntry {
    fn drop(&mut self) {
        self.follower.abort();
        self.checker.abort();
    }
}

/// Shared state of a running proxy.
struct Inner {
    config_path: Option<PathBuf>,
    config: ArcSwap<Config>,
    registry: Arc<Registry>,
    /// Starts discovery sources; shares one Kubernetes watch per namespace.
    discovery: skiff_discovery::Discovery,
    clusters: Mutex<HashMap<String, ClusterEntry>>,
    /// The same clusters, for readers (admin, metrics) that must not lock.
    cluster_list: ArcSwap<Vec<Arc<Cluster>>>,
    listeners: Mutex<HashMap<String, Listener>>,
    /// Set once the first config's listeners are bound.
    started: AtomicBool,
    draining: AtomicBool,
    /// Serialises reloads.
    reload: tokio::sync::Mutex<()>,
    /// Fires when `POST /drain` asks the process to shut down.
    drain_requested: tokio::sync::Notify,
    admin_address: Mutex<Option<SocketAddr>>,
    /// Thread-per-core workers the listeners accept on (none: this runtime).
    workers: Workers,
    /// The sidecar role's Services and destinations (capture listeners).
    sidecar: Arc<server::sidecar::Shared>,
}

/// A running skiff. Cheap to clone; all clones are the same proxy.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

impl Proxy {
    /// Starts the admin server, clusters and listeners of `config`.
    /// `config_path` is watched for changes when given.
    pub async fn start(config: Config, config_path: Option<PathBuf>) -> Result<Proxy, ApplyError> {
        Proxy::start_on(config, config_path, Workers::none()).await
    }

    /// Like [`Proxy::start`], with listeners accepting on `workers`.
    pub async fn start_on(
        config: Config,
        config_path: Option<PathBuf>,
        workers: Workers,
    ) -> Result<Proxy, ApplyError> {
        let admin_listen = config.admin.listen;
        let registry = Arc::new(Registry::default());
        let discovery = skiff_discovery::Discovery::default();
        let sidecar = server::sidecar::Shared::new(discovery.clone(), registry.clone());
        let proxy = Proxy {
            inner: Arc::new(Inner {
                config_path,
                config: ArcSwap::from_pointee(config.clone()),
                registry,
                discovery,
                clusters: Mutex::new(HashMap::new()),
                cluster_list: ArcSwap::from_pointee(Vec::new()),
                listeners: Mutex::new(HashMap::new()),
                started: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                reload: tokio::sync::Mutex::new(()),
                drain_requested: tokio::sync::Notify::new(),
                admin_address: Mutex::new(None),
                workers,
                sidecar: Arc::new(sidecar),
            }),
        };
        let admin = admin::serve(admin_listen, proxy.clone())
            .await
            .map_err(|source| ApplyError::Bind {
                name: "admin".into(),
                address: admin_listen,
                source,
            })?;
        *proxy
            .inner
            .admin_address
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(admin);
        proxy.apply(config).await?;
        proxy.inner.started.store(true, Relaxed);
        proxy.spawn_upkeep();
        Ok(proxy)
    }

    /// Applies a validated config without dropping a connection: listeners
    /// whose address is unchanged keep their sockets and get new routes;
    /// clusters keep their endpoints' state. If a new listener cannot bind,
    /// nothing changes and the running config stays.
    pub async fn apply(&self, config: Config) -> Result<(), ApplyError> {
        let _serial = self.inner.reload.lock().await;
        let inner = &self.inner;
        let grace = config.shutdown.grace_period;

        // 0. Load certificates first, so a bad one changes nothing.
        let tls_servers = self.tls_servers(&config)?;
        let mesh_servers = self.mesh_servers(&config)?;
        let mut settings = self.cluster_settings(&config)?;

        // 1. Bind what is new first, so a failure changes nothing.
        let to_bind: Vec<&ListenerConfig> = {
            let listeners = inner.listeners.lock().unwrap_or_else(|e| e.into_inner());
            config
                .listeners
                .iter()
                .filter(|lc| !listeners.get(&lc.name).is_some_and(|l| same_address(l, lc)))
                .collect()
        };
        let mut fresh: HashMap<String, Listener> = HashMap::new();
        for lc in to_bind {
            let state = self.listener_state(&lc.name);
            // Before the socket accepts: no client may see it plaintext,
            // nor without its limits.
            state
                .tls
                .store(tls_servers.get(&lc.name).cloned().flatten());
            state.limits.store(Arc::new(lc.limits));
            let listener = Listener::bind(lc.listen, state, &inner.workers).map_err(|source| {
                ApplyError::Bind {
                    name: lc.name.clone(),
                    address: lc.listen,
                    source,
                }
            })?;
            fresh.insert(lc.name.clone(), listener);
        }

        // 2. Clusters: keep, update, add; drop the ones no longer named.
        let cluster_map: HashMap<String, Arc<Cluster>> = {
            let mut clusters = inner.clusters.lock().unwrap_or_else(|e| e.into_inner());
            clusters.retain(|name, _| config.cluster(name).is_some());
            for cc in &config.clusters {
                let Some(settings) = settings.remove(&cc.name) else {
                    continue;
                };
                match clusters.get_mut(&cc.name) {
                    Some(entry) if entry.source == cc.source => {
                        entry.cluster.update_settings(settings);
                    }
                    Some(entry) => {
                        entry.cluster.update_settings(settings);
                        entry.follower.abort();
                        entry.source = cc.source.clone();
                        entry.follower =
                            cluster::follow(&entry.cluster, &inner.discovery, &cc.source);
                    }
                    None => {
                        let cluster = Arc::new(Cluster::from_settings(settings));
                        let follower = cluster::follow(&cluster, &inner.discovery, &cc.source);
                        let checker =
                            tokio::spawn(cluster::health::run(cluster.clone())).abort_handle();
                        clusters.insert(
                            cc.name.clone(),
                            ClusterEntry {
                                cluster,
                                source: cc.source.clone(),
                                follower,
                                checker,
                            },
                        );
                    }
                }
            }
            clusters
                .iter()
                .map(|(n, e)| (n.clone(), e.cluster.clone()))
                .collect()
        };
        let mut list: Vec<Arc<Cluster>> = cluster_map.values().cloned().collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        inner.cluster_list.store(Arc::new(list));

        // 3. Routes, then swap listeners.
        let mut tables = Vec::with_capacity(config.listeners.len());
        for lc in &config.listeners {
            let mut table = RouteTable::build(lc, &cluster_map, &inner.registry)?;
            table.access_log = lc.access_log;
            tables.push(table);
        }
        inner.sidecar.set_mesh(config.mesh.as_ref());
        {
            let mut listeners = inner.listeners.lock().unwrap_or_else(|e| e.into_inner());
            for (lc, table) in config.listeners.iter().zip(tables) {
                let table = Arc::new(table);
                let capture = lc.capture.as_ref().map(|c| {
                    if c.direction == skiff_config::sidecar::Direction::Outbound {
                        inner
                            .sidecar
                            .watch_services(c.service_namespaces(), c.watch_idle_timeout);
                    }
                    Arc::new(server::sidecar::Captured {
                        config: c.clone(),
                        listener: lc.name.as_str().into(),
                        access_log: lc.access_log,
                        sidecar: inner.sidecar.clone(),
                        mesh_server: mesh_servers.get(&lc.name).cloned(),
                    })
                });
                if let Some(l) = fresh.get(&lc.name).or_else(|| listeners.get(&lc.name)) {
                    l.capture.store(capture);
                }
                if let Some(new) = fresh.remove(&lc.name) {
                    new.state.routes.table.store(table);
                    tracing::info!(listener = %lc.name, address = %new.address, "listening");
                    if let Some(old) = listeners.insert(lc.name.clone(), new) {
                        old.retire(grace);
                    }
                } else if let Some(existing) = listeners.get(&lc.name) {
                    existing.state.routes.table.store(table);
                    // For connections accepted from now on.
                    if **existing.state.limits.load() != lc.limits {
                        existing.state.limits.store(Arc::new(lc.limits));
                    }
                    existing
                        .state
                        .tls
                        .store(tls_servers.get(&lc.name).cloned().flatten());
                }
            }
            let gone: Vec<String> = listeners
                .keys()
                .filter(|n| !config.listeners.iter().any(|l| &l.name == *n))
                .cloned()
                .collect();
            for name in gone {
                if let Some(old) = listeners.remove(&name) {
                    tracing::info!(listener = %name, "listener removed; draining it");
                    old.retire(grace);
                }
            }
        }

        if config.admin.listen != inner.config.load().admin.listen {
            tracing::warn!(
                "admin.listen changed to {}; the admin server moves only on restart",
                config.admin.listen
            );
        }
        inner.registry.retain(
            |l, c| {
                config
                    .listeners
                    .iter()
                    // A capture listener's series are its destinations'.
                    .any(|x| {
                        x.name == l
                            && (x.capture.is_some() || x.routes.iter().any(|r| r.cluster == c))
                    })
            },
            |l| config.listeners.iter().any(|x| x.name == l),
        );
        inner.registry.tls.retain(|l| {
            config
                .listeners
                .iter()
                .any(|x| x.name == l && x.tls.is_some())
                || mesh_servers.contains_key(l)
        });
        inner.config.store(Arc::new(config));
        Ok(())
    }

    /// Each cluster's settings with its connector: kept from the running
    /// cluster when its TLS settings are the same, else built (reading the
    /// certificate files), so a bad file is found before anything changes.
    fn cluster_settings(
        &self,
        config: &Config,
    ) -> Result<HashMap<String, cluster::Settings>, ApplyError> {
        let clusters = self
            .inner
            .clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut out = HashMap::with_capacity(config.clusters.len());
        for cc in &config.clusters {
            let previous = clusters.get(&cc.name).map(|e| e.cluster.settings_full());
            let settings =
                cluster::Settings::new(cc.clone(), previous.as_deref()).map_err(|source| {
                    ApplyError::ClusterTls {
                        name: cc.name.clone(),
                        source,
                    }
                })?;
            out.insert(cc.name.clone(), settings);
        }
        Ok(out)
    }

    /// Each listener's TLS: the running one when its settings are
    /// unchanged (its file watcher reloads the certificates), else built
    /// anew from the files.
    fn tls_servers(
        &self,
        config: &Config,
    ) -> Result<HashMap<String, Option<Arc<tls::ServerTls>>>, ApplyError> {
        let listeners = self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut out = HashMap::new();
        for lc in &config.listeners {
            let running = listeners
                .get(&lc.name)
                .and_then(|l| l.state.tls.load_full());
            let server = match (&lc.tls, running) {
                (None, _) => None,
                (Some(settings), Some(running)) if running.settings == *settings => Some(running),
                (Some(settings), _) => Some(
                    tls::ServerTls::build(
                        &lc.name,
                        settings.clone(),
                        self.inner.registry.tls.stats(&lc.name),
                    )
                    .map_err(|source| ApplyError::Tls {
                        name: lc.name.clone(),
                        source,
                    })?,
                ),
            };
            out.insert(lc.name.clone(), server);
        }
        Ok(out)
    }

    /// The mesh TLS of each inbound capture listener when `mesh:` is on:
    /// the running one when the mesh settings are unchanged (its file
    /// watcher reloads the certificates), else built from the files.
    fn mesh_servers(
        &self,
        config: &Config,
    ) -> Result<HashMap<String, Arc<tls::ServerTls>>, ApplyError> {
        let mut out = HashMap::new();
        let Some(mesh) = &config.mesh else {
            return Ok(out);
        };
        let settings = mesh.listener_tls();
        let listeners = self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for lc in &config.listeners {
            if lc.capture.as_ref().map(|c| c.direction)
                != Some(skiff_config::sidecar::Direction::Inbound)
            {
                continue;
            }
            let running = listeners
                .get(&lc.name)
                .and_then(|l| l.capture.load_full())
                .and_then(|c| c.mesh_server.clone())
                .filter(|s| s.settings == settings);
            let server = match running {
                Some(s) => s,
                None => tls::ServerTls::build(
                    &lc.name,
                    settings.clone(),
                    self.inner.registry.tls.stats(&lc.name),
                )
                .map_err(|source| ApplyError::Tls {
                    name: lc.name.clone(),
                    source,
                })?,
            };
            out.insert(lc.name.clone(), server);
        }
        Ok(out)
    }

    /// Re-reads the config file and applies it; a bad file changes nothing.
    pub async fn reload(&self) -> Result<(), ApplyError> {
        let Some(path) = self.inner.config_path.clone() else {
            return Ok(());
        };
        let result = match Config::load(&path, &tls::certs::TlsFiles) {
            Ok(config) => self.apply(config).await,
            Err(e) => Err(e.into()),
        };
        self.inner.registry.reload(result.is_ok());
        match &result {
            Ok(()) => tracing::info!(path = %path.display(), "config reloaded"),
            Err(e) => tracing::error!("config reload refused, the running config stays:\n{e}"),
        }
        result
    }

    fn listener_state(&self, name: &str) -> Arc<ListenerState> {
        let listeners = self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // A listener moving to a new address keeps its counters.
        if let Some(existing) = listeners.get(name) {
            return Arc::new(ListenerState {
                routes: ListenerRoutes {
                    name: existing.state.routes.name.clone(),
                    table: ArcSwap::from_pointee(RouteTable::default()),
                    unrouted: existing.state.routes.unrouted.clone(),
                },
                connections: existing.state.connections.clone(),
                refused: existing.state.refused.clone(),
                protocol_errors: existing.state.protocol_errors.clone(),
                limits: Default::default(),
                tls: Default::default(),
            });
        }
        drop(listeners);
        Arc::new(ListenerState {
            routes: ListenerRoutes {
                name: name.into(),
                table: ArcSwap::from_pointee(RouteTable::default()),
                unrouted: self.inner.registry.unrouted(name),
            },
            connections: self.inner.registry.connections(name),
            refused: self.inner.registry.refused(name),
            protocol_errors: self.inner.registry.protocol_errors(name),
            limits: Default::default(),
            tls: Default::default(),
        })
    }

    fn spawn_upkeep(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                for c in inner.cluster_list.load().iter() {
                    c.sweep();
                }
                inner.sidecar.sweep();
            }
        });
        if let Some(path) = self.inner.config_path.clone() {
            let proxy = Arc::downgrade(&self.inner);
            tokio::spawn(async move {
                let stamp = |p: &std::path::Path| skiff_discovery::file::stamp(p).ok();
                let mut last = stamp(&path);
                let mut tick = tokio::time::interval(CONFIG_POLL_INTERVAL);
                loop {
                    tick.tick().await;
                    let Some(inner) = proxy.upgrade() else { return };
                    let now = stamp(&path);
                    if now.is_some() && now != last {
                        last = now;
                        let _ = Proxy { inner }.reload().await;
                    }
                }
            });
        }
    }

    /// True once listeners are bound and every cluster has its first
    /// endpoint set, each endpoint checked once where checks are on,
    /// until shutdown begins.
    pub fn is_ready(&self) -> bool {
        self.inner.started.load(Relaxed)
            && !self.inner.draining.load(Relaxed)
            && self.inner.cluster_list.load().iter().all(|c| c.is_warm())
            && self.inner.sidecar.is_ready()
    }

    /// Namespaces whose Services the sidecar still waits to list.
    pub fn services_waiting(&self) -> Vec<String> {
        self.inner.sidecar.waiting_for()
    }

    /// Whether the first config's listeners are bound.
    pub fn is_started(&self) -> bool {
        self.inner.started.load(Relaxed)
    }

    /// The effective config.
    pub fn config(&self) -> Arc<Config> {
        self.inner.config.load_full()
    }

    /// Every cluster, sorted by name; then the sidecar's destinations.
    pub fn clusters(&self) -> Arc<Vec<Arc<Cluster>>> {
        let list = self.inner.cluster_list.load_full();
        let captured = self.inner.sidecar.clusters();
        if captured.is_empty() {
            return list;
        }
        Arc::new(list.iter().cloned().chain(captured).collect())
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Where the admin server listens (useful with port 0).
    pub fn admin_address(&self) -> Option<SocketAddr> {
        *self
            .inner
            .admin_address
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Where a listener listens (useful with port 0).
    pub fn listener_address(&self, name: &str) -> Option<SocketAddr> {
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|l| l.address)
    }

    /// Asks the process to shut down, as SIGTERM does (`POST /drain`).
    pub fn request_drain(&self) {
        self.inner.drain_requested.notify_one();
    }

    /// Resolves when `POST /drain` was called.
    pub async fn drain_requested(&self) {
        self.inner.drain_requested.notified().await
    }

    /// Graceful shutdown: `/ready` fails at once; listeners keep accepting
    /// for `drain_delay` (so the pod leaves the Service's endpoints), then
    /// stop; open connections are asked to close (GOAWAY, `connection:
    /// close`) and get `grace_period` to finish their requests.
    pub async fn shutdown(&self) {
        self.inner.draining.store(true, Relaxed);
        let config = self.config();
        tracing::info!(
            drain_delay = ?config.shutdown.drain_delay,
            grace_period = ?config.shutdown.grace_period,
            "shutting down: not ready; still accepting during the drain delay"
        );
        tokio::time::sleep(config.shutdown.drain_delay).await;
        let listeners: Vec<Listener> = self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, l)| l)
            .collect();
        for l in &listeners {
            l.stop_accepting();
            l.drain_connections();
        }
        tracing::info!("listeners closed; waiting for in-flight requests");
        let deadline = tokio::time::Instant::now() + config.shutdown.grace_period;
        let mut all_closed = true;
        for l in &listeners {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            all_closed &= l.wait_closed(left).await;
        }
        if all_closed {
            tracing::info!("all connections finished");
        } else {
            let open: usize = listeners.iter().map(|l| l.open_connections()).sum();
            tracing::warn!(open, "grace period over; closing the remaining connections");
        }
    }
}

/// The admin server's view of the proxy: the inherent methods above.
impl admin::Control for Proxy {
    fn registry(&self) -> &Registry {
        Proxy::registry(self)
    }
    fn clusters(&self) -> Arc<Vec<Arc<Cluster>>> {
        Proxy::clusters(self)
    }
    fn config(&self) -> Arc<Config> {
        Proxy::config(self)
    }
    fn is_ready(&self) -> bool {
        Proxy::is_ready(self)
    }
    fn is_started(&self) -> bool {
        Proxy::is_started(self)
    }
    fn services_waiting(&self) -> Vec<String> {
        Proxy::services_waiting(self)
    }
    fn request_drain(&self) {
        Proxy::request_drain(self)
    }
}

fn same_address(l: &Listener, lc: &ListenerConfig) -> bool {
    // Port 0 asks for any port; a listener bound that way keeps its port.
    l.address == lc.listen || (lc.listen.port() == 0 && l.address.ip() == lc.listen.ip())
}
