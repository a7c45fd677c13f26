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

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::watcher::{self, watcher, DefaultBackoff, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};

use super::{control_runtime, ServicePort, Target};

/// A Service port a ClusterIP and port stand for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceRef {
    pub namespace: String,
    pub service: String,
    /// The Service port's name (`""` for a Service's single unnamed port).
    pub port_name: String,
    /// The Service port's number.
    pub port: u16,
}

impl ServiceRef {
    /// The EndpointSlice target this Service port routes to.
    pub fn target(&self) -> Target {
        Target {
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

#[derive(Debug, Default)]
struct Shared {
    /// Every namespace's Services, by address: what lookups read.
    by_address: RwLock<Arc<Map>>,
    /// Each namespace's Services by name, for updates and deletes.
    namespaces: RwLock<HashMap<String, ByName>>,
    /// Namespaces whose first complete list is in.
    listed: AtomicUsize,
    wanted: usize,
}

/// Services by ClusterIP and port, kept up to date. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServiceIndex {
    shared: Arc<Shared>,
}

impl ServiceIndex {
    /// Starts watching the Services of `namespaces`; the API server is
    /// found as kubectl finds it.
    pub fn watch(namespaces: &[String]) -> ServiceIndex {
        let shared = Arc::new(Shared {
            wanted: namespaces.len(),
            ..Shared::default()
        });
        for namespace in namespaces {
            tracing::info!(namespace = %namespace, "watching Services");
            control_runtime().spawn(follow(namespace.clone(), Arc::downgrade(&shared)));
        }
        ServiceIndex { shared }
    }

    /// The Service port at `address`, if one is there.
    pub fn lookup(&self, address: SocketAddr) -> Option<Arc<ServiceRef>> {
        let map = self
            .shared
            .by_address
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        map.get(&address).cloned()
    }

    /// Whether every namespace has been listed once.
    pub fn is_listed(&self) -> bool {
        self.shared.listed.load(Relaxed) >= self.shared.wanted
    }
}

/// Every (address, Service port) a Service stands for.
fn entries(namespace: &str, service: &Service) -> Vec<(SocketAddr, Arc<ServiceRef>)> {
    let name = service.metadata.name.clone().unwrap_or_default();
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    let mut ips: Vec<&String> = spec.cluster_ips.iter().flatten().collect();
    if ips.is_empty() {
        ips.extend(spec.cluster_ip.as_ref());
    }
    let ips: Vec<IpAddr> = ips.into_iter().filter_map(|ip| ip.parse().ok()).collect();
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
        });
        for ip in &ips {
            out.push((SocketAddr::new(*ip, number), service_ref.clone()));
        }
    }
    out
}

impl Shared {
    fn publish(&self) {
        let namespaces = self.namespaces.read().unwrap_or_else(|e| e.into_inner());
        let map: Map = namespaces
            .values()
            .flat_map(|services| services.values().flatten().cloned())
            .collect();
        *self.by_address.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
    }

    fn update(&self, namespace: &str, f: impl FnOnce(&mut ByName)) {
        {
            let mut namespaces = self.namespaces.write().unwrap_or_else(|e| e.into_inner());
            f(namespaces.entry(namespace.to_string()).or_default());
        }
        self.publish();
    }
}

async fn follow(namespace: String, shared: std::sync::Weak<Shared>) {
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
                    shared.update(&namespace, |s| *s = services);
                    if !listed {
                        listed = true;
                        shared.listed.fetch_add(1, Relaxed);
                    }
                }
            }
            Ok(Event::Apply(service)) => {
                let name = service.metadata.name.clone().unwrap_or_default();
                let e = entries(&namespace, &service);
                shared.update(&namespace, |s| {
                    s.insert(name, e);
                });
            }
            Ok(Event::Delete(service)) => {
                let name = service.metadata.name.clone().unwrap_or_default();
                shared.update(&namespace, |s| {
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
