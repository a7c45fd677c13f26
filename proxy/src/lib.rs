//! skiff: a sidecar proxy and L7 load balancer for Kubernetes.
//!
//! [`Proxy`] is the running data plane: it binds the admin server and the
//! listeners, runs one discovery task per cluster, and applies new configs
//! live ([`Proxy::apply`]). The request path lives in [`forward`]; what it
//! reads is built by the control path here and swapped in atomically.

#![forbid(unsafe_code)]

pub mod admin;
mod apply;
pub mod cli;
pub(crate) mod clock;
pub mod cluster;
mod gateway;
mod gateway_status;
pub mod http;
pub mod io;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod tls;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use skiff_config::endpoints::Source;
use tokio::task::AbortHandle;

use cluster::Cluster;
use io::workers::Workers;
use metrics::Registry;
use server::listener::Listener;
use skiff_config::{Config, ConfigError};

/// How often a config file given with `-c` is checked for changes.
pub(crate) const CONFIG_POLL_INTERVAL: Duration = Duration::from_millis(500);
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
    Route(#[from] proxy::route::RouteError),
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
    /// The config applied: the file's, with what the Gateway adds.
    config: ArcSwap<Config>,
    /// The file's config alone (the gateway role adds to it).
    base: ArcSwap<Config>,
    /// The gateway (or ingress) role, when `gateway_api` (or `ingress`)
    /// is set.
    gateway: Option<Arc<gateway::Role>>,
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
        let gateway = gateway::Serves::of(&config).map(gateway::Role::new);
        let proxy = Proxy {
            inner: Arc::new(Inner {
                config_path,
                config: ArcSwap::from_pointee(config.clone()),
                base: ArcSwap::from_pointee(config.clone()),
                gateway,
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
        *proxy.inner.admin_address.lock() = Some(admin);
        proxy.apply(config).await?;
        proxy.inner.started.store(true, Relaxed);
        proxy.spawn_upkeep();
        if let Some(role) = &proxy.inner.gateway {
            let weak: std::sync::Weak<Inner> = Arc::downgrade(&proxy.inner);
            role.start(weak);
        }
        Ok(proxy)
    }

    /// Re-reads the config file and applies it; a bad file changes nothing.
    pub async fn reload(&self) -> Result<(), ApplyError> {
        let Some(path) = self.inner.config_path.clone() else {
            return Ok(());
        };
        let result = match Config::load(&path, &tls::certs::TlsFiles) {
            Ok(config) => {
                self.warm_new_clusters(&config).await;
                self.apply(config).await
            }
            Err(e) => Err(e.into()),
        };
        self.inner.registry.reload(result.is_ok());
        match &result {
            Ok(()) => tracing::info!(path = %path.display(), "config reloaded"),
            Err(e) => tracing::error!("config reload refused, the running config stays:\n{e}"),
        }
        result
    }

    /// Starts the clusters `config` adds beside the running routes and
    /// gives them up to [`gateway::WARMING`] for their first endpoints (and health
    /// checks), as Envoy warms clusters before routes use them: a route
    /// moved to a new Kubernetes cluster keeps its old one until the new
    /// one's endpoints are known, instead of answering 503 meanwhile.
    async fn warm_new_clusters(&self, config: &Config) {
        let base = self.inner.base.load_full();
        let fresh: Vec<&skiff_config::ClusterConfig> = (config.clusters.iter())
            .filter(|c| base.cluster(&c.name).is_none())
            .collect();
        if fresh.is_empty() {
            return;
        }
        let mut warming = (*base).clone();
        warming.clusters.extend(fresh.iter().map(|c| (*c).clone()));
        if self.apply(warming).await.is_err() {
            // The real apply reports what is wrong.
            return;
        }
        let deadline = tokio::time::Instant::now() + gateway::WARMING;
        let warm = || {
            (self.inner.cluster_list.load().iter())
                .filter(|c| fresh.iter().any(|f| *f.name == *c.name))
                .all(|c| c.is_warm())
        };
        while !warm() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
            && (self.inner.gateway.as_ref()).is_none_or(|g| g.ready.load(Relaxed))
    }

    /// Namespaces whose Services the sidecar still waits to list.
    pub(crate) fn services_waiting(&self) -> Vec<String> {
        self.inner.sidecar.waiting_for()
    }

    /// Whether the first config's listeners are bound.
    pub(crate) fn is_started(&self) -> bool {
        self.inner.started.load(Relaxed)
    }

    /// The effective config.
    pub(crate) fn config(&self) -> Arc<Config> {
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
        *self.inner.admin_address.lock()
    }

    /// Where a listener listens (useful with port 0).
    pub fn listener_address(&self, name: &str) -> Option<SocketAddr> {
        self.inner.listeners.lock().get(name).map(|l| l.address)
    }

    /// Asks the process to shut down, as SIGTERM does (`POST /drain`).
    pub(crate) fn request_drain(&self) {
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
