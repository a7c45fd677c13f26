//! Applying a config to the running proxy without dropping a connection
//! ([`Proxy::apply`]), in steps: everything that can fail is built first
//! (TLS, cluster connectors, new sockets), so a failure changes nothing;
//! then clusters, route tables and listeners are swapped in, and metric
//! series of what is gone are dropped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use skiff_config::listener::ListenerConfig;
use skiff_config::sidecar::Direction;
use skiff_config::Config;

use crate::cluster::{self, Cluster};
use crate::proxy::route::{ListenerRoutes, RouteTable};
use crate::server;
use crate::server::listener::Listener;
use crate::server::state::ListenerState;
use crate::tls;
use crate::{ApplyError, ClusterEntry, Proxy};

/// What a config needs built before anything changes.
struct Prepared {
    /// Each listener's TLS, by name (none for plaintext).
    tls: HashMap<String, Option<Arc<tls::ServerTls>>>,
    /// Each inbound capture listener's mesh TLS, by name.
    mesh: HashMap<String, Arc<tls::ServerTls>>,
    /// Each cluster's settings, with its connector.
    clusters: HashMap<String, cluster::Settings>,
    /// Sockets bound for listeners that are new or moved.
    fresh: HashMap<String, Listener>,
}

impl Proxy {
    /// Applies a validated config without dropping a connection: listeners
    /// whose address is unchanged keep their sockets and get new routes;
    /// clusters keep their endpoints' state. If a new listener cannot bind,
    /// nothing changes and the running config stays.
    ///
    /// In the gateway role, `config` is the file's: what the Gateway adds
    /// is applied with it.
    pub async fn apply(&self, config: Config) -> Result<(), ApplyError> {
        let _serial = self.inner.reload.lock().await;
        let effective = match &self.inner.gateway {
            Some(role) => role.generated.load().merged_into(config.clone()),
            None => config.clone(),
        };
        self.apply_locked(effective)?;
        self.inner.base.store(Arc::new(config));
        Ok(())
    }

    /// Applies what the Gateway now adds to the file's config; on failure
    /// the last applied stays.
    pub(crate) async fn apply_generated(
        &self,
        generated: crate::gateway::Generated,
    ) -> Result<(), ApplyError> {
        let _serial = self.inner.reload.lock().await;
        let effective = generated.merged_into((**self.inner.base.load()).clone());
        self.apply_locked(effective)?;
        if let Some(role) = &self.inner.gateway {
            role.generated.store(Arc::new(generated));
        }
        Ok(())
    }

    /// The steps, with the reload lock held.
    fn apply_locked(&self, config: Config) -> Result<(), ApplyError> {
        let mut prepared = self.prepare(&config)?;
        let clusters = self.apply_clusters(&config, &mut prepared.clusters);
        let mut tables = Vec::with_capacity(config.listeners.len());
        for lc in &config.listeners {
            let mut table = RouteTable::build(lc, &clusters, &self.inner.registry)?;
            table.access_log = lc.access_log;
            tables.push(table);
        }
        self.inner.sidecar.set_mesh(config.mesh.as_ref());
        let routes = (config.listeners.iter()).any(|l| {
            l.capture
                .as_ref()
                .is_some_and(|c| c.direction == Direction::Outbound && c.routes)
        });
        self.inner.sidecar.follow_routes(routes);
        self.swap_listeners(&config, tables, &mut prepared);
        if config.admin.listen != self.inner.config.load().admin.listen {
            tracing::warn!(
                "admin.listen changed to {}; the admin server moves only on restart",
                config.admin.listen
            );
        }
        self.forget_series(&config, &prepared);
        self.inner.config.store(Arc::new(config));
        Ok(())
    }

    /// Step 1: loads certificates, builds connectors and binds new
    /// sockets, so that a bad file or a taken port changes nothing.
    fn prepare(&self, config: &Config) -> Result<Prepared, ApplyError> {
        let tls = self.tls_servers(config)?;
        let mesh = self.mesh_servers(config)?;
        let clusters = self.cluster_settings(config)?;
        let to_bind: Vec<&ListenerConfig> = {
            let listeners = self.listeners();
            config
                .listeners
                .iter()
                .filter(|lc| !listeners.get(&lc.name).is_some_and(|l| same_address(l, lc)))
                .collect()
        };
        let mut fresh = HashMap::new();
        for lc in to_bind {
            let state = self.listener_state(&lc.name);
            // Before the socket accepts: no client may see it plaintext,
            // nor without its limits.
            state.tls.store(tls.get(&lc.name).cloned().flatten());
            state.limits.store(Arc::new(lc.limits));
            let listener =
                Listener::bind(lc.listen, state, &self.inner.workers).map_err(|source| {
                    ApplyError::Bind {
                        name: lc.name.clone(),
                        address: lc.listen,
                        source,
                    }
                })?;
            fresh.insert(lc.name.clone(), listener);
        }
        Ok(Prepared {
            tls,
            mesh,
            clusters,
            fresh,
        })
    }

    /// Step 2: clusters are kept (with new settings), added, or dropped
    /// when no longer named; returns them by name for the route tables.
    fn apply_clusters(
        &self,
        config: &Config,
        settings: &mut HashMap<String, cluster::Settings>,
    ) -> HashMap<String, Arc<Cluster>> {
        let inner = &self.inner;
        let mut clusters = inner.clusters.lock();
        clusters.retain(|name, _| config.cluster(name).is_some());
        for cc in &config.clusters {
            let Some(settings) = settings.remove(&cc.name) else {
                continue;
            };
            match clusters.get_mut(&cc.name) {
                Some(entry) if entry.source == cc.source => entry.cluster.update_settings(settings),
                Some(entry) => {
                    entry.cluster.update_settings(settings);
                    entry.follower.abort();
                    entry.source = cc.source.clone();
                    entry.follower = cluster::follow(&entry.cluster, &inner.discovery, &cc.source);
                }
                None => {
                    let cluster = Arc::new(Cluster::from_settings(settings));
                    let follower = cluster::follow(&cluster, &inner.discovery, &cc.source);
                    let checker =
                        tokio::spawn(cluster::health::run(cluster.clone())).abort_handle();
                    let source = cc.source.clone();
                    let entry = ClusterEntry {
                        cluster,
                        source,
                        follower,
                        checker,
                    };
                    clusters.insert(cc.name.clone(), entry);
                }
            }
        }
        let by_name: HashMap<String, Arc<Cluster>> = clusters
            .iter()
            .map(|(n, e)| (n.clone(), e.cluster.clone()))
            .collect();
        let mut list: Vec<Arc<Cluster>> = by_name.values().cloned().collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        inner.cluster_list.store(Arc::new(list));
        by_name
    }

    /// Step 3: each listener gets its route table, capture settings,
    /// limits and TLS; new sockets replace old ones (which drain within
    /// the grace period), and listeners no longer named drain.
    fn swap_listeners(&self, config: &Config, tables: Vec<RouteTable>, prepared: &mut Prepared) {
        let grace = config.shutdown.grace_period;
        let mut listeners = self.listeners();
        for (lc, table) in config.listeners.iter().zip(tables) {
            let table = Arc::new(table);
            let capture = self.captured(lc, prepared.mesh.get(&lc.name).cloned());
            if let Some(l) = prepared
                .fresh
                .get(&lc.name)
                .or_else(|| listeners.get(&lc.name))
            {
                l.capture.store(capture);
            }
            if let Some(new) = prepared.fresh.remove(&lc.name) {
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
                let tls = prepared.tls.get(&lc.name).cloned().flatten();
                existing.state.tls.store(tls);
            }
        }
        retire_unnamed(&mut listeners, config, grace);
    }

    /// A capture listener's settings (the sidecar role), with its
    /// Services watched when it captures outbound calls.
    fn captured(
        &self,
        lc: &ListenerConfig,
        mesh_server: Option<Arc<tls::ServerTls>>,
    ) -> Option<Arc<server::sidecar::Captured>> {
        let c = lc.capture.as_ref()?;
        let sidecar = &self.inner.sidecar;
        if c.direction == Direction::Outbound {
            sidecar.watch_services(c.service_namespaces(), c.watch_idle_timeout);
        }
        Some(Arc::new(server::sidecar::Captured {
            config: c.clone(),
            listener: lc.name.as_str().into(),
            access_log: lc.access_log,
            sidecar: sidecar.clone(),
            mesh_server,
        }))
    }

    /// Step 4: metric series of listeners, routes and TLS listeners that
    /// are gone leave with them.
    fn forget_series(&self, config: &Config, prepared: &Prepared) {
        let registry = &self.inner.registry;
        let listeners = &config.listeners;
        // Looked up once per series: a Gateway's thousands of named routes
        // would make a scan per series quadratic.
        let named: HashSet<(&str, &str)> = (listeners.iter())
            .flat_map(|l| {
                (l.routes.iter()).filter_map(move |r| Some((l.name.as_str(), r.name.as_deref()?)))
            })
            .collect();
        let routed: HashSet<(&str, &str)> = (listeners.iter())
            .flat_map(|l| {
                (l.routes.iter()).flat_map(move |r| r.clusters().map(move |c| (l.name.as_str(), c)))
            })
            .collect();
        registry.retain(
            |l, c| {
                // A capture listener's series are its destinations'.
                routed.contains(&(l, c))
                    || listeners.iter().any(|x| x.name == l && x.capture.is_some())
            },
            |l, route| named.contains(&(l, route)),
            |l| listeners.iter().any(|x| x.name == l),
        );
        registry.tls.retain(|l| {
            listeners.iter().any(|x| x.name == l && x.tls.is_some())
                || prepared.mesh.contains_key(l)
        });
    }

    /// A listener's TLS, built from the files (counted on its TLS stats).
    fn server_tls(
        &self,
        listener: &str,
        settings: &skiff_config::tls::ListenerTls,
    ) -> Result<Arc<tls::ServerTls>, ApplyError> {
        let stats = self.inner.registry.tls.stats(listener);
        tls::ServerTls::build(listener, settings.clone(), stats).map_err(|source| ApplyError::Tls {
            name: listener.to_string(),
            source,
        })
    }

    fn listeners(&self) -> parking_lot::MutexGuard<'_, HashMap<String, Listener>> {
        self.inner.listeners.lock()
    }

    /// Each cluster's settings with its connector: kept from the running
    /// cluster when its TLS settings are the same, else built (reading the
    /// certificate files), so a bad file is found before anything changes.
    fn cluster_settings(
        &self,
        config: &Config,
    ) -> Result<HashMap<String, cluster::Settings>, ApplyError> {
        let clusters = self.inner.clusters.lock();
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
        let listeners = self.inner.listeners.lock();
        let mut out = HashMap::new();
        for lc in &config.listeners {
            let running = listeners
                .get(&lc.name)
                .and_then(|l| l.state.tls.load_full());
            let server = match (&lc.tls, running) {
                (None, _) => None,
                (Some(settings), Some(running)) if running.settings == *settings => Some(running),
                (Some(settings), _) => Some(self.server_tls(&lc.name, settings)?),
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
        let listeners = self.inner.listeners.lock();
        for lc in &config.listeners {
            if lc.capture.as_ref().map(|c| c.direction) != Some(Direction::Inbound) {
                continue;
            }
            let running = listeners
                .get(&lc.name)
                .and_then(|l| l.capture.load_full())
                .and_then(|c| c.mesh_server.clone())
                .filter(|s| s.settings == settings);
            let server = match running {
                Some(s) => s,
                None => self.server_tls(&lc.name, &settings)?,
            };
            out.insert(lc.name.clone(), server);
        }
        Ok(out)
    }

    fn listener_state(&self, name: &str) -> Arc<ListenerState> {
        let listeners = self.inner.listeners.lock();
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
}

/// Drains the listeners no longer in `config`.
fn retire_unnamed(listeners: &mut HashMap<String, Listener>, config: &Config, grace: Duration) {
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

fn same_address(l: &Listener, lc: &ListenerConfig) -> bool {
    // Port 0 asks for any port; a listener bound that way keeps its port.
    l.address == lc.listen || (lc.listen.port() == 0 && l.address.ip() == lc.listen.ip())
}

/// The gateway role applies its translations through this.
impl crate::gateway::Applier for crate::Inner {
    fn apply_generated(
        self: Arc<Self>,
        generated: crate::gateway::Generated,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
        Box::pin(async move {
            let proxy = Proxy { inner: self };
            proxy
                .apply_generated(generated)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn warm(&self, names: &[String]) -> bool {
        (self.cluster_list.load().iter())
            .filter(|c| names.iter().any(|n| **n == *c.name))
            .all(|c| c.is_warm())
    }
}
