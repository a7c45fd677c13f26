//! The Kubernetes source: a Service's endpoints, followed live from its
//! EndpointSlices on the API server, the way kube-proxy follows them.
//!
//! ```yaml
//! discovery: { kubernetes: { namespace: shop, service: catalog, port: http } }
//! ```
//!
//! The API server is found as kubectl finds it (`KUBECONFIG`,
//! `~/.kube/config`, or the pod's service account). A [`Registry`] keeps
//! one watch per namespace however many clusters use it: one task per
//! namespace runs kube-runtime's [`watcher`] (list, then watch from the
//! list's resourceVersion, relist on 410 Expired, back off on errors) over
//! every slice carrying the `kubernetes.io/service-name` label, keeps the
//! slices by Service, and publishes to each cluster its Service's endpoints:
//! the [`merge`] of the Service's slices, kept up to date slice by slice
//! ([`ServiceEndpoints`]) so a changed slice costs in proportion to the
//! slice, not to the Service. A namespace no cluster uses is not watched;
//! when the last cluster of a namespace goes, its watch stops.
//!
//! The watches run on a thread of their own (`skiff-discovery`), not on
//! the runtime that serves requests: reading a large slice and merging a
//! large Service take milliseconds, and a request should never queue
//! behind them.
//!
//! Faults keep the last known endpoints: until the first complete list a
//! cluster has no set (so `/ready` waits); after it, an unreachable API
//! server leaves the published sets as they are, logs a warning and counts
//! on each cluster's error counter. A relist publishes only the Services
//! whose endpoints changed. A slice that cannot be read is skipped with a
//! warning naming it, and its last good version (if any) stays.

pub mod lease;
mod merge;
pub mod objects;
mod service;
pub mod services;
pub mod status;

pub use merge::{merge, Slice, SliceError};
pub use service::ServiceEndpoints;

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher::{self, watcher, DefaultBackoff, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::watch;

use skiff_config::endpoints::{ServicePort, ServiceTarget};

use crate::EndpointSet;

/// The label the EndpointSlice controller puts on every slice it manages,
/// naming the slice's Service; the watch selects on it.
pub const SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// How often a namespace's watch checks that some cluster still listens.
const LISTENER_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The namespaces being watched. Cheap to clone; clones share the watches.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    namespaces: Arc<Mutex<HashMap<String, Arc<Namespace>>>>,
}

impl Registry {
    /// Follows `target` for `cluster`: starts its namespace's watch unless
    /// one runs, and returns a receiver holding the Service's merged set
    /// (`None` until the namespace's first complete list). API errors are
    /// counted on `errors`.
    pub fn subscribe(
        &self,
        target: &ServiceTarget,
        cluster: &str,
        errors: Arc<AtomicU64>,
    ) -> watch::Receiver<Option<EndpointSet>> {
        let mut namespaces = self.namespaces.lock();
        let namespace = namespaces
            .entry(target.namespace.clone())
            .or_insert_with(|| {
                let namespace = Arc::new(Namespace {
                    name: target.namespace.clone(),
                    state: Mutex::default(),
                });
                tracing::info!(namespace = %namespace.name, "watching EndpointSlices");
                control_runtime().spawn(run(namespace.clone(), self.clone()));
                namespace
            })
            .clone();
        let rx = namespace.state.lock().subscribe(target, cluster, errors);
        rx
    }

    /// Namespaces watched now.
    pub fn watched_namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = self.namespaces.lock().keys().cloned().collect();
        names.sort();
        names
    }
}

/// One watched namespace: its slices and the clusters listening.
#[derive(Debug)]
struct Namespace {
    name: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Set once the first complete list is in; until then no set is published.
    listed: bool,
    /// Slices by Service, then by slice name.
    services: HashMap<String, BTreeMap<String, Slice>>,
    /// Which Service each slice belongs to, for deletes.
    owners: HashMap<String, String>,
    /// For each Service a cluster follows, its endpoints on each port
    /// followed, updated slice by slice.
    views: HashMap<String, Vec<View>>,
    subscribers: Vec<Subscriber>,
}

#[derive(Debug)]
struct View {
    endpoints: ServiceEndpoints,
    /// Changed since the last publish.
    dirty: bool,
}

#[derive(Debug)]
struct Subscriber {
    service: String,
    port: ServicePort,
    cluster: String,
    tx: watch::Sender<Option<EndpointSet>>,
    errors: Arc<AtomicU64>,
}

impl State {
    /// Adds a listener for `target`'s endpoints; the receiver holds the
    /// current set once the namespace is listed.
    fn subscribe(
        &mut self,
        target: &ServiceTarget,
        cluster: &str,
        errors: Arc<AtomicU64>,
    ) -> watch::Receiver<Option<EndpointSet>> {
        let views = self.views.entry(target.service.clone()).or_default();
        let view = match views
            .iter()
            .position(|v| v.endpoints.port() == &target.port)
        {
            Some(i) => &views[i],
            None => {
                let slices = self.services.get(&target.service);
                views.push(View {
                    endpoints: ServiceEndpoints::from_slices(
                        slices.into_iter().flat_map(|s| s.values()),
                        target.port.clone(),
                    ),
                    dirty: false,
                });
                &views[views.len() - 1]
            }
        };
        let current = self.listed.then(|| view.endpoints.set());
        let (tx, rx) = watch::channel(current);
        self.subscribers.push(Subscriber {
            service: target.service.clone(),
            port: target.port.clone(),
            cluster: cluster.to_string(),
            tx,
            errors,
        });
        rx
    }

    /// Forgets listeners that went away, and the views only they used.
    fn drop_closed(&mut self) {
        self.subscribers.retain(|s| !s.tx.is_closed());
        let subscribers = &self.subscribers;
        self.views.retain(|service, views| {
            views.retain(|v| {
                subscribers
                    .iter()
                    .any(|s| s.service == *service && s.port == *v.endpoints.port())
            });
            !views.is_empty()
        });
    }

    /// Sends `view`'s set to its listeners. The view knows whether it
    /// changed, so the set is built once and never compared.
    fn send(subscribers: &[Subscriber], service: &str, view: &View) {
        let set = view.endpoints.set();
        for s in subscribers
            .iter()
            .filter(|s| s.service == service && s.port == *view.endpoints.port())
        {
            tracing::debug!(cluster = %s.cluster, endpoints = set.len(), "Service endpoints changed");
            s.tx.send_replace(Some(set.clone()));
        }
    }

    /// Publishes every view: the first complete list.
    fn publish_all(&mut self) {
        for (service, views) in &mut self.views {
            for view in views {
                view.dirty = false;
                State::send(&self.subscribers, service, view);
            }
        }
    }

    /// Publishes the views changed since the last call.
    fn publish_dirty(&mut self) {
        for (service, views) in &mut self.views {
            for view in views.iter_mut().filter(|v| v.dirty) {
                view.dirty = false;
                State::send(&self.subscribers, service, view);
            }
        }
    }

    fn insert(&mut self, service: String, slice: Slice) {
        let name = slice.name.clone();
        if let Some(previous) = self.owners.insert(name.clone(), service.clone()) {
            if previous != service {
                self.remove_from(&previous, &name);
            }
        }
        let slices = self.services.entry(service.clone()).or_default();
        if slices.get(&name) == Some(&slice) {
            return;
        }
        for view in self.views.get_mut(&service).into_iter().flatten() {
            view.dirty |= view.endpoints.upsert(&slice);
        }
        slices.insert(name, slice);
    }

    fn delete(&mut self, name: &str) {
        if let Some(service) = self.owners.remove(name) {
            self.remove_from(&service, name);
        }
    }

    fn remove_from(&mut self, service: &str, name: &str) {
        if let Some(slices) = self.services.get_mut(service) {
            slices.remove(name);
            if slices.is_empty() {
                self.services.remove(service);
            }
        }
        for view in self.views.get_mut(service).into_iter().flatten() {
            view.dirty |= view.endpoints.remove(name);
        }
    }

    /// The stored version of slice `name`, if any.
    fn stored(&self, name: &str) -> Option<(&String, &Slice)> {
        let service = self.owners.get(name)?;
        Some((service, self.services.get(service)?.get(name)?))
    }

    /// Brings the slices to a fresh list's, slice by slice (an unchanged
    /// slice costs a comparison), then publishes what changed: everything
    /// after the first list.
    fn replace(&mut self, listed: Vec<(String, Slice)>) {
        let names: HashSet<String> = listed.iter().map(|(_, s)| s.name.clone()).collect();
        let gone: Vec<String> = self
            .owners
            .keys()
            .filter(|name| !names.contains(*name))
            .cloned()
            .collect();
        for name in gone {
            self.delete(&name);
        }
        for (service, slice) in listed {
            self.insert(service, slice);
        }
        if self.listed {
            self.publish_dirty();
        } else {
            self.listed = true;
            self.publish_all();
        }
    }

    fn count_error(&self) {
        for s in &self.subscribers {
            s.errors.fetch_add(1, Relaxed);
        }
    }
}

/// A namespace's task: follows its slices until no cluster listens.
async fn run(namespace: Arc<Namespace>, registry: Registry) {
    tokio::select! {
        () = follow(&namespace) => {}
        () = until_unused(&namespace, &registry) => {}
    }
    tracing::info!(namespace = %namespace.name, "no cluster uses the namespace any more; its EndpointSlice watch stopped");
}

/// Resolves once no cluster listens, having taken the namespace out of the
/// registry (under the registry's lock, so a new subscriber either came
/// before and keeps it alive, or comes after and starts a new watch).
async fn until_unused(namespace: &Arc<Namespace>, registry: &Registry) {
    let mut tick = tokio::time::interval(LISTENER_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut namespaces = registry.namespaces.lock();
        let mut state = namespace.state.lock();
        state.drop_closed();
        if state.subscribers.is_empty() {
            if namespaces
                .get(&namespace.name)
                .is_some_and(|n| Arc::ptr_eq(n, namespace))
            {
                namespaces.remove(&namespace.name);
            }
            return;
        }
    }
}

/// Connects, then runs the watcher for ever (it retries on its own).
async fn follow(namespace: &Namespace) {
    let client = connect(namespace).await;
    let api: Api<DynamicObject> = Api::namespaced_with(
        client,
        &namespace.name,
        &ApiResource::erase::<EndpointSlice>(&()),
    );
    // Slices are read as untyped objects and parsed one by one, so one
    // malformed slice is skipped instead of failing the whole list.
    let config = watcher::Config::default().labels(SERVICE_LABEL);
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    let mut relist: Option<Vec<(String, Slice)>> = None;
    while let Some(event) = events.next().await {
        let mut state = namespace.state.lock();
        handle(namespace, &mut state, &mut relist, event);
        // Take every event already received before publishing, so a burst
        // (a rollout touching many slices, a new Service's slices) merges
        // each Service once rather than once per slice.
        while let Some(Some(event)) = events.next().now_or_never() {
            handle(namespace, &mut state, &mut relist, event);
        }
        state.publish_dirty();
    }
}

/// Applies one watcher event to the namespace's slices; publishing is left
/// to the caller, except after a relist, which publishes what changed.
fn handle(
    namespace: &Namespace,
    state: &mut State,
    relist: &mut Option<Vec<(String, Slice)>>,
    event: Result<Event<DynamicObject>, watcher::Error>,
) {
    match event {
        Ok(Event::Init) => *relist = Some(Vec::new()),
        Ok(Event::InitApply(object)) => {
            if let Some(relist) = relist.as_mut() {
                let name = object.metadata.name.clone().unwrap_or_default();
                match read(&namespace.name, object) {
                    Read::Use(service, slice) => relist.push((service, slice)),
                    // Keep the last good version of a slice that went bad.
                    Read::Skip => {
                        if let Some((service, slice)) = state.stored(&name) {
                            relist.push((service.clone(), slice.clone()));
                        }
                    }
                }
            }
        }
        Ok(Event::InitDone) => {
            if let Some(listed) = relist.take() {
                let first = !state.listed;
                tracing::debug!(namespace = %namespace.name, slices = listed.len(), "EndpointSlices listed");
                state.replace(listed);
                if first {
                    tracing::info!(namespace = %namespace.name, "EndpointSlices listed; endpoints published");
                }
            }
        }
        Ok(Event::Apply(object)) => {
            if let Read::Use(service, slice) = read(&namespace.name, object) {
                state.insert(service, slice);
            }
        }
        Ok(Event::Delete(object)) => {
            if let Some(name) = object.metadata.name.as_deref() {
                state.delete(name);
            }
        }
        Err(watcher::Error::WatchError(status)) if status.code == 410 => {
            tracing::info!(namespace = %namespace.name, "EndpointSlice watch expired (410); relisting");
        }
        Err(e) => {
            state.count_error();
            if state.listed {
                tracing::warn!(namespace = %namespace.name, "Kubernetes API: {e}; the last known endpoints stay, retrying with backoff");
            } else {
                tracing::warn!(namespace = %namespace.name, "Kubernetes API: {e}; no endpoints yet, retrying with backoff");
            }
        }
    }
}

/// Builds a client as kubectl would find the cluster, retrying with the
/// watcher's backoff until it works (a missing kubeconfig may be mounted
/// later).
async fn connect(namespace: &Namespace) -> Client {
    let mut backoff = DefaultBackoff::default();
    loop {
        match Client::try_default().await {
            Ok(client) => return client,
            Err(e) => {
                namespace.state.lock().count_error();
                let wait = backoff.next().unwrap_or(Duration::from_secs(30));
                tracing::warn!(namespace = %namespace.name, "no Kubernetes client (KUBECONFIG, ~/.kube/config or the in-cluster service account): {e}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

enum Read {
    Use(String, Slice),
    Skip,
}

/// Reads one object from the watch as a slice of a Service, or says why not.
fn read(namespace: &str, object: DynamicObject) -> Read {
    let name = object.metadata.name.clone().unwrap_or_default();
    let Some(service) = object
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_LABEL))
        .cloned()
    else {
        tracing::debug!(
            namespace,
            slice = name,
            "slice has no {SERVICE_LABEL} label; skipped"
        );
        return Read::Skip;
    };
    let typed: EndpointSlice = match object.try_parse() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                namespace,
                slice = name,
                "slice `{namespace}/{name}` is malformed and skipped: {e}"
            );
            return Read::Skip;
        }
    };
    match Slice::parse(&typed) {
        Ok(slice) => Read::Use(service, slice),
        Err(e @ SliceError::Fqdn { .. }) => {
            tracing::info!(namespace, "{e}");
            Read::Skip
        }
        Err(e) => {
            tracing::warn!(namespace, "{e}");
            Read::Skip
        }
    }
}

/// The runtime the namespace watches run on: one thread, started on first
/// use and kept for the life of the process.
fn control_runtime() -> &'static tokio::runtime::Handle {
    static RUNTIME: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let started = std::thread::Builder::new()
            .name("skiff-discovery".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => {
                        let _ = tx.send(Some(runtime.handle().clone()));
                        runtime.block_on(std::future::pending::<()>());
                    }
                    Err(e) => {
                        tracing::error!("cannot start the discovery thread's runtime: {e}; watches run with the requests");
                        let _ = tx.send(None);
                    }
                }
            });
        let handle = started.ok().and_then(|_| rx.recv().ok().flatten());
        // Without a thread of its own, discovery shares the caller's runtime.
        handle.unwrap_or_else(tokio::runtime::Handle::current)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(name: &str, ips: &[&str]) -> Slice {
        let endpoints: Vec<_> = ips.iter().map(|ip| json!({ "addresses": [ip] })).collect();
        let object: EndpointSlice = serde_json::from_value(json!({
            "metadata": { "name": name },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 8080 }],
            "endpoints": endpoints,
        }))
        .unwrap();
        Slice::parse(&object).unwrap()
    }

    fn listen(state: &mut State, service: &str) -> watch::Receiver<Option<EndpointSet>> {
        let target = ServiceTarget {
            namespace: "shop".into(),
            service: service.into(),
            port: ServicePort::Name("http".into()),
        };
        state.subscribe(&target, service, Arc::default())
    }

    fn addresses(rx: &mut watch::Receiver<Option<EndpointSet>>) -> Vec<String> {
        rx.borrow_and_update()
            .as_deref()
            .map(|set| set.iter().map(|e| e.address.to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_service_without_slices_lists_as_an_empty_set() {
        let mut state = State::default();
        let web = listen(&mut state, "web");
        assert!(web.borrow().is_none(), "a set before the first list");
        state.replace(vec![("api".into(), slice("api-a", &["10.0.1.1"]))]);
        assert_eq!(web.borrow().as_deref().map(<[_]>::len), Some(0));
    }

    #[test]
    fn a_burst_of_slices_publishes_once() {
        let mut state = State::default();
        let mut rx = listen(&mut state, "web");
        state.replace(vec![]);
        rx.borrow_and_update();
        for i in 0..10 {
            state.insert(
                "web".into(),
                slice(&format!("web-{i}"), &[&format!("10.0.0.{}", i + 1)]),
            );
        }
        assert!(
            !rx.has_changed().unwrap(),
            "published before the burst ended"
        );
        state.publish_dirty();
        assert!(rx.has_changed().unwrap());
        assert_eq!(addresses(&mut rx).len(), 10);
    }

    #[test]
    fn a_relist_with_unchanged_slices_publishes_nothing() {
        let mut state = State::default();
        let mut rx = listen(&mut state, "web");
        state.replace(vec![(
            "web".into(),
            slice("web-a", &["10.0.0.1", "10.0.0.2"]),
        )]);
        assert_eq!(addresses(&mut rx), ["10.0.0.1:8080", "10.0.0.2:8080"]);
        state.replace(vec![(
            "web".into(),
            slice("web-a", &["10.0.0.1", "10.0.0.2"]),
        )]);
        assert!(
            !rx.has_changed().unwrap(),
            "an unchanged relist was published"
        );
        // A relist that did change something is published.
        state.replace(vec![("web".into(), slice("web-a", &["10.0.0.1"]))]);
        assert_eq!(addresses(&mut rx), ["10.0.0.1:8080"]);
    }

    #[test]
    fn an_unchanged_slice_update_publishes_nothing() {
        let mut state = State::default();
        let mut rx = listen(&mut state, "web");
        state.replace(vec![("web".into(), slice("web-a", &["10.0.0.1"]))]);
        rx.borrow_and_update();
        state.insert("web".into(), slice("web-a", &["10.0.0.1"]));
        state.publish_dirty();
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn a_deleted_slice_takes_its_endpoints_and_other_services_keep_theirs() {
        let mut state = State::default();
        let mut web = listen(&mut state, "web");
        let mut api = listen(&mut state, "api");
        state.replace(vec![
            ("web".into(), slice("web-a", &["10.0.0.1"])),
            ("web".into(), slice("web-b", &["10.0.0.2"])),
            ("api".into(), slice("api-a", &["10.0.1.1"])),
        ]);
        assert_eq!(addresses(&mut web).len(), 2);
        assert_eq!(addresses(&mut api), ["10.0.1.1:8080"]);
        state.delete("web-a");
        state.publish_dirty();
        assert_eq!(addresses(&mut web), ["10.0.0.2:8080"]);
        assert!(
            !api.has_changed().unwrap(),
            "another Service was republished"
        );
    }

    #[test]
    fn a_slice_relabelled_to_another_service_leaves_the_first() {
        let mut state = State::default();
        let mut web = listen(&mut state, "web");
        let mut api = listen(&mut state, "api");
        state.replace(vec![("web".into(), slice("shared", &["10.0.0.1"]))]);
        assert_eq!(addresses(&mut web), ["10.0.0.1:8080"]);
        state.insert("api".into(), slice("shared", &["10.0.0.1"]));
        state.publish_dirty();
        assert!(addresses(&mut web).is_empty());
        assert_eq!(addresses(&mut api), ["10.0.0.1:8080"]);
    }

    #[test]
    fn clusters_on_two_ports_of_one_service_each_get_their_port() {
        let mut state = State::default();
        let mut http = listen(&mut state, "web");
        let mut admin = state.subscribe(
            &ServiceTarget {
                namespace: "shop".into(),
                service: "web".into(),
                port: ServicePort::Number(9000),
            },
            "web-admin",
            Arc::default(),
        );
        let object: EndpointSlice = serde_json::from_value(json!({
            "metadata": { "name": "web-a" },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 8080 }, { "name": "admin", "port": 9000 }],
            "endpoints": [{ "addresses": ["10.0.0.1"] }],
        }))
        .unwrap();
        state.replace(vec![("web".into(), Slice::parse(&object).unwrap())]);
        assert_eq!(addresses(&mut http), ["10.0.0.1:8080"]);
        assert_eq!(addresses(&mut admin), ["10.0.0.1:9000"]);
    }

    #[test]
    fn a_cluster_added_after_the_list_starts_from_the_current_set() {
        let mut state = State::default();
        let _web = listen(&mut state, "web");
        state.replace(vec![("api".into(), slice("api-a", &["10.0.1.1"]))]);
        state.insert("api".into(), slice("api-b", &["10.0.1.2"]));
        state.publish_dirty();
        let mut api = listen(&mut state, "api");
        assert_eq!(addresses(&mut api), ["10.0.1.1:8080", "10.0.1.2:8080"]);
        state.delete("api-a");
        state.publish_dirty();
        assert_eq!(addresses(&mut api), ["10.0.1.2:8080"]);
    }

    #[test]
    fn a_relist_without_a_slice_removes_its_endpoints() {
        let mut state = State::default();
        let mut web = listen(&mut state, "web");
        state.replace(vec![
            ("web".into(), slice("web-a", &["10.0.0.1"])),
            ("web".into(), slice("web-b", &["10.0.0.2"])),
        ]);
        assert_eq!(addresses(&mut web).len(), 2);
        state.replace(vec![("web".into(), slice("web-b", &["10.0.0.2"]))]);
        assert_eq!(addresses(&mut web), ["10.0.0.2:8080"]);
    }

    #[test]
    fn a_closed_cluster_takes_its_view_with_it() {
        let mut state = State::default();
        let web = listen(&mut state, "web");
        let _api = listen(&mut state, "api");
        drop(web);
        state.drop_closed();
        assert!(!state.views.contains_key("web"));
        assert!(state.views.contains_key("api"));
    }

    #[test]
    fn errors_count_on_every_cluster_of_the_namespace() {
        let mut state = State::default();
        let _web = listen(&mut state, "web");
        let _api = listen(&mut state, "api");
        state.count_error();
        state.count_error();
        assert!(state
            .subscribers
            .iter()
            .all(|s| s.errors.load(Relaxed) == 2));
    }
}
