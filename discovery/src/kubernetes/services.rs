//! Services by address: which Service and port a ClusterIP and port are,
//! for the sidecar's captured outbound connections.
//!
//! An app calls `http://order:8080`; DNS gives it the Service's ClusterIP,
//! and skiff, reading the connection's original destination, needs the
//! Service behind it to balance over its EndpointSlices. A
//! [`ServiceIndex`] watches the Services of the namespaces it is given
//! (list, then watch, relist on 410, as for slices) on the discovery
//! thread and keeps a map from every ClusterIP (both families) and TCP
//! port to the Service and the port's name. Headless Services (`None`)
//! have no ClusterIP and are not in it: their pods are called directly.
//!
//! The watches start with the index (so a sidecar is ready only once its
//! Services are listed) and stop when no lookup came for the idle time
//! the owner sweeps with ([`ServiceIndex::stop_if_idle`]): an app that
//! calls nothing costs the API server no open watch. The next lookup
//! starts them again and waits (bounded) for the new list, keeping the
//! last one meanwhile.

use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::watcher::{self, watcher, DefaultBackoff, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};

use super::control_runtime;
use skiff_config::endpoints::{ServicePort, ServiceTarget};
use skiff_config::sidecar::{MTLS_ANNOTATION, SERVICE_ACCOUNT_ANNOTATION};

/// A Service port a ClusterIP and port stand for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceRef {
    pub namespace: String,
    pub service: String,
    /// The Service port's name (`""` for a Service's single unnamed port).
    pub port_name: String,
    /// The Service port's number.
    pub port: u16,
    /// The `skiff.io/service-account` annotation.
    pub service_account: Option<String>,
    /// False when annotated `skiff.io/mtls: disabled`.
    pub mtls: bool,
}

impl ServiceRef {
    /// The EndpointSlice target this Service port routes to.
    pub fn target(&self) -> ServiceTarget {
        ServiceTarget {
            namespace: self.namespace.clone(),
            service: self.service.clone(),
            // Slices name each port as the Service does, `""` when unnamed.
            port: ServicePort::Name(self.port_name.clone()),
        }
    }
}

type Map = HashMap<SocketAddr, Arc<ServiceRef>>;
/// A namespace's Services by name, each with its (address, port) entries.
type ByName = HashMap<String, Vec<(SocketAddr, Arc<ServiceRef>)>>;

#[derive(Debug)]
struct Shared {
    /// Every namespace's Services, by address: what lookups read.
    by_address: RwLock<Arc<Map>>,
    /// Each namespace's Services by name, for updates and deletes.
    namespaces: RwLock<HashMap<String, ByName>>,
    /// The namespaces watched.
    wanted: Vec<String>,
    /// Namespaces listed since the watches last started.
    listed: AtomicUsize,
    /// Set once every namespace was listed, and never unset.
    ever_listed: AtomicBool,
    /// Bumped when the watches start; a watch of an earlier run writes nothing.
    run: AtomicU64,
    /// The running watches; empty while stopped.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Whether `tasks` is not empty, for lookups to read without the lock.
    watching: AtomicBool,
    /// When the index was made, and the last lookup in ms after that.
    epoch: Instant,
    last_lookup_ms: AtomicU64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().drain(..) {
            task.abort();
        }
    }
}

/// Services by ClusterIP and port, kept up to date. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServiceIndex {
    shared: Arc<Shared>,
}

/// How often a lookup waiting for a restarted watch's list looks.
const LISTED_POLL: Duration = Duration::from_millis(5);

impl ServiceIndex {
    /// Starts watching the Services of `namespaces`; the API server is
    /// found as kubectl finds it.
    pub fn watch(namespaces: &[String]) -> ServiceIndex {
        let shared = Arc::new(Shared {
            by_address: RwLock::default(),
            namespaces: RwLock::default(),
            wanted: namespaces.to_vec(),
            listed: AtomicUsize::new(0),
            ever_listed: AtomicBool::new(false),
            run: AtomicU64::new(0),
            tasks: Mutex::default(),
            watching: AtomicBool::new(false),
            epoch: Instant::now(),
            last_lookup_ms: AtomicU64::new(0),
        });
        shared.start();
        ServiceIndex { shared }
    }

    /// The Service port at `address`, if one is there. A lookup while
    /// the watches are stopped starts them and waits up to `wait` for
    /// their list; without it in time, the last known Services answer.
    pub async fn lookup(&self, address: SocketAddr, wait: Duration) -> Option<Arc<ServiceRef>> {
        let shared = &self.shared;
        shared
            .last_lookup_ms
            .store(shared.epoch.elapsed().as_millis() as u64, Relaxed);
        // Only a restart waits: while the watches run but cannot list (the
        // API server is away), lookups go on with what is known.
        if !self.is_watching() {
            shared.start();
            let deadline = tokio::time::Instant::now() + wait;
            while !self.is_current() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(LISTED_POLL).await;
            }
        }
        let map = shared.by_address.read().clone();
        map.get(&address).cloned()
    }

    /// Whether every namespace has been listed once (since the index was
    /// made: an idle stop does not undo it).
    pub fn is_listed(&self) -> bool {
        self.shared.ever_listed.load(Relaxed)
    }

    /// Whether the watches run and have listed every namespace.
    fn is_current(&self) -> bool {
        self.shared.listed.load(Relaxed) >= self.shared.wanted.len() && self.is_watching()
    }

    /// Whether the watches run now.
    pub fn is_watching(&self) -> bool {
        self.shared.watching.load(Relaxed)
    }

    /// Stops the watches when no lookup came for `idle`. What they
    /// listed stays, as the last known Services, until they list again.
    pub fn stop_if_idle(&self, idle: Duration) {
        let shared = &self.shared;
        let last = Duration::from_millis(shared.last_lookup_ms.load(Relaxed));
        if shared.epoch.elapsed().saturating_sub(last) < idle {
            return;
        }
        let mut tasks = shared.tasks.lock();
        if tasks.is_empty() {
            return;
        }
        for task in tasks.drain(..) {
            task.abort();
        }
        shared.watching.store(false, Relaxed);
        {
            // Under the lock updates take: no write of this run follows.
            let _namespaces = shared.namespaces.write();
            shared.run.fetch_add(1, Relaxed);
            shared.listed.store(0, Relaxed);
        }
        tracing::info!(namespaces = ?shared.wanted, "no lookup for {idle:?}; Service watches stopped");
    }
}

/// Every (address, Service port) a Service stands for.
pub fn entries(namespace: &str, service: &Service) -> Vec<(SocketAddr, Arc<ServiceRef>)> {
    let name = service.metadata.name.clone().unwrap_or_default();
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    let mut ips: Vec<&String> = spec.cluster_ips.iter().flatten().collect();
    if ips.is_empty() {
        ips.extend(spec.cluster_ip.as_ref());
    }
    let ips: Vec<IpAddr> = ips.into_iter().filter_map(|ip| ip.parse().ok()).collect();
    let annotation = |key: &str| {
        service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let mut out = Vec::new();
    for port in spec.ports.iter().flatten() {
        if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
            continue;
        }
        let Ok(number) = u16::try_from(port.port) else {
            continue;
        };
        let service_ref = Arc::new(ServiceRef {
            namespace: namespace.to_string(),
            service: name.clone(),
            port_name: port.name.clone().unwrap_or_default(),
            port: number,
            service_account: annotation(SERVICE_ACCOUNT_ANNOTATION).map(str::to_owned),
            mtls: annotation(MTLS_ANNOTATION) != Some("disabled"),
        });
        for ip in &ips {
            out.push((SocketAddr::new(*ip, number), service_ref.clone()));
        }
    }
    out
}

impl Shared {
    /// Starts a watch per namespace, unless they run.
    fn start(self: &Arc<Self>) {
        let mut tasks = self.tasks.lock();
        if !tasks.is_empty() {
            return;
        }
        let run = self.run.fetch_add(1, Relaxed) + 1;
        self.listed.store(0, Relaxed);
        for namespace in &self.wanted {
            tracing::info!(namespace = %namespace, "watching Services");
            let task =
                control_runtime().spawn(follow(namespace.clone(), run, Arc::downgrade(self)));
            tasks.push(task.abort_handle());
        }
        self.watching.store(true, Relaxed);
    }

    fn publish(&self) {
        let namespaces = self.namespaces.read();
        let map: Map = namespaces
            .values()
            .flat_map(|services| services.values().flatten().cloned())
            .collect();
        *self.by_address.write() = Arc::new(map);
    }

    /// Changes a namespace's Services, unless `run` was stopped; returns
    /// whether it did.
    fn update(&self, run: u64, namespace: &str, f: impl FnOnce(&mut ByName)) -> bool {
        {
            let mut namespaces = self.namespaces.write();
            if self.run.load(Relaxed) != run {
                return false;
            }
            f(namespaces.entry(namespace.to_string()).or_default());
        }
        self.publish();
        true
    }
}

async fn follow(namespace: String, run: u64, shared: std::sync::Weak<Shared>) {
    let mut backoff = DefaultBackoff::default();
    let client = loop {
        match Client::try_default().await {
            Ok(client) => break client,
            Err(e) => {
                let wait = backoff.next().unwrap_or(Duration::from_secs(30));
                tracing::warn!(namespace = %namespace, "no Kubernetes client for the Service watch: {e}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
            }
        }
    };
    let api: Api<Service> = Api::namespaced(client, &namespace);
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut relist: Option<ByName> = None;
    let mut listed = false;
    while let Some(event) = events.next().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match event {
            Ok(Event::Init) => relist = Some(HashMap::new()),
            Ok(Event::InitApply(service)) => {
                if let Some(relist) = relist.as_mut() {
                    let name = service.metadata.name.clone().unwrap_or_default();
                    relist.insert(name, entries(&namespace, &service));
                }
            }
            Ok(Event::InitDone) => {
                if let Some(services) = relist.take() {
                    tracing::debug!(namespace = %namespace, services = services.len(), "Services listed");
                    let current = shared.update(run, &namespace, |s| *s = services);
                    if current && !listed {
                        listed = true;
                        let now = shared.listed.fetch_add(1, Relaxed) + 1;
                        if now >= shared.wanted.len() {
                            shared.ever_listed.store(true, Relaxed);
                        }
                    }
                }
            }
            Ok(Event::Apply(service)) => {
                let name = service.metadata.name.clone().unwrap_or_default();
                let e = entries(&namespace, &service);
                shared.update(run, &namespace, |s| {
                    s.insert(name, e);
                });
            }
            Ok(Event::Delete(service)) => {
                let name = service.metadata.name.clone().unwrap_or_default();
                shared.update(run, &namespace, |s| {
                    s.remove(&name);
                });
            }
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                tracing::info!(namespace = %namespace, "Service watch expired (410); relisting");
            }
            Err(e) => {
                tracing::warn!(namespace = %namespace, "Kubernetes API (Services): {e}; the last known Services stay, retrying with backoff");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_cluster_ip_and_tcp_port_maps_to_its_service_port() {
        let service: Service = serde_json::from_value(json!({
            "metadata": { "name": "order" },
            "spec": {
                "clusterIP": "10.96.0.10",
                "clusterIPs": ["10.96.0.10", "fd00::10"],
                "ports": [
                    { "name": "http", "port": 80, "targetPort": 8080 },
                    { "name": "dns", "port": 53, "protocol": "UDP" },
                ],
            },
        }))
        .expect("service");
        let e = entries("shop", &service);
        let addresses: Vec<String> = e.iter().map(|(a, _)| a.to_string()).collect();
        assert_eq!(addresses, ["10.96.0.10:80", "[fd00::10]:80"]);
        assert_eq!(e[0].1.target().port, ServicePort::Name("http".into()));
        assert_eq!(e[0].1.service, "order");
        let headless: Service = serde_json::from_value(json!({
            "metadata": { "name": "db" },
            "spec": { "clusterIP": "None", "ports": [{ "port": 5432 }] },
        }))
        .expect("service");
        assert!(entries("shop", &headless).is_empty());
    }
}
