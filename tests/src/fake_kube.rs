//! A fake Kubernetes API server for EndpointSlices, the tests' one stand-in.
//!
//! It speaks the real wire protocol on 127.0.0.1 so the real kube client
//! and kube-runtime watcher are what the tests exercise:
//!
//! - `GET /apis/discovery.k8s.io/v1/namespaces/NS/endpointslices` lists,
//!   paginated with `limit` and `continue` (pages are cut from one snapshot,
//!   whose resourceVersion every page carries, as etcd-backed lists are);
//! - the same path with `watch=true` (or `1`) streams chunked,
//!   newline-delimited `{"type": ..., "object": ...}` events after the
//!   given `resourceVersion`: ADDED, MODIFIED, DELETED, BOOKMARK (only when
//!   `allowWatchBookmarks` asks for them), and ERROR with a 410 Expired
//!   Status when that version is older than the last compaction;
//! - `labelSelector` with `key`, `!key`, `key=value` and `key!=value` terms,
//!   and `fieldSelector` with `path=value` and `path!=value` (`type`,
//!   `metadata.name`, any dotted path);
//! - and the faults a real one has: streams it ends on its own
//!   ([`FakeKube::end_watches`]), compaction that expires every watcher
//!   ([`FakeKube::expire_watches`]), and going away entirely and coming
//!   back on the same address ([`FakeKube::stop`], [`FakeKube::start`]).
//!
//! Objects are stored as JSON exactly as given (plus namespace and
//! resourceVersion), so a test can send a malformed slice too.
//!
//! Services are served the same way on `/api/v1/namespaces/NS/services`
//! ([`FakeKube::apply_service`]), for the sidecar's Service watch; and so
//! is every kind in [`RESOURCES`] (the Gateway API's, Ingresses and
//! IngressClasses, Namespaces, Secrets), namespaced or across all namespaces (`/apis/G/V/PLURAL`),
//! with [`FakeKube::apply_object`] and [`FakeKube::delete_object`].

use parking_lot::{Mutex, MutexGuard};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::TestBody;

/// The kinds served: (API path prefix, plural, kind, apiVersion,
/// namespaced).
pub const RESOURCES: [(&str, &str, &str, &str, bool); 12] = [
    (
        "/apis/discovery.k8s.io/v1",
        "endpointslices",
        "EndpointSlice",
        "discovery.k8s.io/v1",
        true,
    ),
    ("/api/v1", "services", "Service", "v1", true),
    ("/api/v1", "namespaces", "Namespace", "v1", false),
    ("/api/v1", "secrets", "Secret", "v1", true),
    (
        "/apis/networking.k8s.io/v1",
        "ingresses",
        "Ingress",
        "networking.k8s.io/v1",
        true,
    ),
    (
        "/apis/networking.k8s.io/v1",
        "ingressclasses",
        "IngressClass",
        "networking.k8s.io/v1",
        false,
    ),
    (
        "/apis/gateway.networking.k8s.io/v1",
        "gatewayclasses",
        "GatewayClass",
        "gateway.networking.k8s.io/v1",
        false,
    ),
    (
        "/apis/gateway.networking.k8s.io/v1",
        "gateways",
        "Gateway",
        "gateway.networking.k8s.io/v1",
        true,
    ),
    (
        "/apis/gateway.networking.k8s.io/v1",
        "httproutes",
        "HTTPRoute",
        "gateway.networking.k8s.io/v1",
        true,
    ),
    (
        "/apis/gateway.networking.k8s.io/v1",
        "grpcroutes",
        "GRPCRoute",
        "gateway.networking.k8s.io/v1",
        true,
    ),
    (
        "/apis/gateway.networking.k8s.io/v1beta1",
        "referencegrants",
        "ReferenceGrant",
        "gateway.networking.k8s.io/v1beta1",
        true,
    ),
    (
        "/apis/coordination.k8s.io/v1",
        "leases",
        "Lease",
        "coordination.k8s.io/v1",
        true,
    ),
];

/// What a request path names: the namespace (`""`: all, or a
/// cluster-scoped kind) and the kind.
fn resource(path: &str) -> Option<(String, &'static str)> {
    RESOURCES
        .iter()
        .find_map(|(prefix, plural, kind, _, namespaced)| {
            let rest = path.strip_prefix(prefix)?.strip_prefix('/')?;
            if rest == *plural {
                return Some((String::new(), *kind));
            }
            let (namespace, tail) = rest.strip_prefix("namespaces/")?.split_once('/')?;
            (*namespaced && tail == *plural && !namespace.is_empty())
                .then(|| (namespace.to_string(), *kind))
        })
}

fn api_version(kind: &str) -> &'static str {
    RESOURCES.iter().find(|r| r.2 == kind).map_or("v1", |r| r.3)
}

/// One object's path: `…/namespaces/NS/PLURAL/NAME[/status]`, or
/// `…/PLURAL/NAME[/status]` for a cluster-scoped kind.
struct ObjectPath {
    namespace: String,
    kind: &'static str,
    name: String,
    status: bool,
}

fn object_path(path: &str) -> Option<ObjectPath> {
    RESOURCES
        .iter()
        .find_map(|(prefix, plural, kind, _, namespaced)| {
            let rest = path.strip_prefix(prefix)?.strip_prefix('/')?;
            let parts: Vec<&str> = rest.split('/').collect();
            let (namespace, tail) = match (parts.as_slice(), namespaced) {
                (["namespaces", ns, tail @ ..], true) if !tail.is_empty() => (ns.to_string(), tail),
                (tail, false) => (String::new(), tail),
                _ => return None,
            };
            match tail {
                [p, name] if p == plural => Some((namespace, name.to_string(), false)),
                [p, name, "status"] if p == plural => Some((namespace, name.to_string(), true)),
                _ => None,
            }
            .map(|(namespace, name, status)| ObjectPath {
                namespace,
                kind,
                name,
                status,
            })
        })
}

/// Whether an object in `namespace` is seen by a list or watch of
/// `wanted` (`""`: every namespace).
fn in_namespace(wanted: &str, namespace: &str) -> bool {
    wanted.is_empty() || wanted == namespace
}

/// One request the fake answered, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub namespace: String,
    /// `EndpointSlice` or `Service`.
    pub kind: &'static str,
    pub watch: bool,
    /// The query parameters as sent.
    pub query: BTreeMap<String, String>,
}

#[derive(Debug)]
struct Event {
    rv: u64,
    namespace: String,
    kind: &'static str,
    object: Value,
}

struct Watcher {
    namespace: String,
    /// The kind of object watched (`EndpointSlice`, `Service`).
    kind: &'static str,
    selector: Selector,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Events older than this are compacted: a watch from before it is 410.
    compacted: u64,
    objects: BTreeMap<(String, String), Value>,
    history: Vec<Event>,
    watchers: Vec<Watcher>,
    /// List snapshots being paged through, by continue token.
    pages: HashMap<String, (u64, Vec<Value>)>,
    next_token: u64,
    calls: Vec<Call>,
    /// Kinds answered 404, as a cluster without their CRD answers.
    unserved: Vec<&'static str>,
}

/// A fake API server; see the module docs. Cheap to clone.
#[derive(Clone)]
pub struct FakeKube {
    pub address: SocketAddr,
    state: Arc<Mutex<State>>,
    /// The accept loop and every connection, aborted by [`FakeKube::stop`].
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl FakeKube {
    /// Starts a fake API server on a free port.
    pub async fn start_new() -> FakeKube {
        let fake = FakeKube::unstarted();
        fake.start().await;
        fake
    }

    /// A fake with an address reserved but nothing listening yet: the API
    /// server is unreachable until [`FakeKube::start`].
    pub fn unstarted() -> FakeKube {
        FakeKube {
            address: SocketAddr::from(([127, 0, 0, 1], crate::free_port())),
            state: Arc::default(),
            tasks: Arc::default(),
        }
    }

    /// Starts (or restarts) serving on the fake's address, with its objects.
    pub async fn start(&self) {
        let listener = tokio::net::TcpListener::bind(self.address)
            .await
            .expect("bind the fake API server");
        self.serve(listener);
    }

    /// Serves on a listener made elsewhere (inside a network namespace, on
    /// the fake's address).
    pub fn serve(&self, listener: tokio::net::TcpListener) {
        let fake = self.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let fake_conn = fake.clone();
                let conn = tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let fake = fake_conn.clone();
                        async move { Ok::<_, Infallible>(fake.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                fake.tasks_lock().push(conn.abort_handle());
            }
        });
        self.tasks_lock().push(accept.abort_handle());
    }

    /// Goes away: stops listening and cuts every connection, watches
    /// included. The objects stay for [`FakeKube::start`].
    pub fn stop(&self) {
        for task in self.tasks_lock().drain(..) {
            task.abort();
        }
        self.lock().watchers.clear();
    }

    /// Writes a kubeconfig pointing at the fake, as `kubectl config` would.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             users:\n- name: tester\n  user:\n    token: fake-token\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tester\n    namespace: default\n\
             current-context: fake\n",
            self.address
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Creates or replaces an object (an EndpointSlice as JSON) in
    /// `namespace`, and tells the watchers (ADDED or MODIFIED).
    pub fn apply(&self, namespace: &str, object: Value) {
        self.apply_kind(
            namespace,
            object,
            "EndpointSlice",
            "discovery.k8s.io/v1",
            "",
        );
    }

    /// Creates or replaces a Service (JSON, see [`service`]) in `namespace`.
    pub fn apply_service(&self, namespace: &str, object: Value) {
        self.apply_kind(namespace, object, "Service", "v1", "Service/");
    }

    fn apply_kind(
        &self,
        namespace: &str,
        mut object: Value,
        kind: &str,
        api_version: &str,
        key_prefix: &str,
    ) {
        let name = object["metadata"]["name"]
            .as_str()
            .expect("the object has metadata.name")
            .to_string();
        let mut state = self.lock();
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["namespace"] = namespace.into();
        object["metadata"]["resourceVersion"] = rv.to_string().into();
        object["kind"] = kind.into();
        object["apiVersion"] = api_version.into();
        let key = (namespace.to_string(), format!("{key_prefix}{name}"));
        let kind = if state.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        state.objects.insert(key, object.clone());
        state.record(Event {
            rv,
            namespace: namespace.into(),
            kind,
            object,
        });
    }

    /// Creates or replaces an object of any kind in [`RESOURCES`] (its
    /// `kind` and `metadata.namespace` say which and where; cluster-scoped
    /// kinds have none).
    pub fn apply_object(&self, object: Value) {
        let kind = object["kind"]
            .as_str()
            .expect("the object has a kind")
            .to_string();
        let (_, _, kind, version, _) = RESOURCES
            .iter()
            .find(|r| r.2 == kind)
            .unwrap_or_else(|| panic!("the fake does not serve {kind}"));
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        self.apply_kind(&namespace, object, kind, version, &format!("{kind}/"));
    }

    /// Deletes an object of a kind in [`RESOURCES`].
    pub fn delete_object(&self, kind: &str, namespace: &str, name: &str) {
        self.delete(namespace, &format!("{kind}/{name}"));
    }

    /// Deletes an object and tells the watchers (DELETED).
    pub fn delete(&self, namespace: &str, name: &str) {
        let mut state = self.lock();
        let Some(mut object) = state.objects.remove(&(namespace.into(), name.into())) else {
            panic!("no object {namespace}/{name} to delete");
        };
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = rv.to_string().into();
        state.record(Event {
            rv,
            namespace: namespace.into(),
            kind: "DELETED",
            object,
        });
    }

    /// Sends a BOOKMARK at the current resourceVersion to every watcher that
    /// allowed bookmarks; returns that version.
    pub fn bookmark(&self) -> u64 {
        let mut state = self.lock();
        let rv = state.rv;
        state.watchers.retain(|w| {
            if !w.bookmarks {
                return !w.tx.is_closed();
            }
            let line = event_line("BOOKMARK", &bookmark_object(rv));
            w.tx.send(line).is_ok()
        });
        rv
    }

    /// Ends every open watch from the server side, as an API server does
    /// when its watch timeout passes or it restarts a watch cache.
    pub fn end_watches(&self) {
        self.lock().watchers.clear();
    }

    /// Compacts history to the current version and answers every open
    /// watch with ERROR 410 Expired, so watchers must relist.
    pub fn expire_watches(&self) {
        let mut state = self.lock();
        state.compacted = state.rv;
        let compacted = state.compacted;
        for w in state.watchers.drain(..) {
            let _ = w.tx.send(event_line("ERROR", &expired(compacted)));
        }
    }

    /// Every request answered so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// EndpointSlice watches open now in `namespace`.
    pub fn open_watches(&self, namespace: &str) -> usize {
        let mut state = self.lock();
        state.watchers.retain(|w| !w.tx.is_closed());
        state
            .watchers
            .iter()
            .filter(|w| w.namespace == namespace && w.kind == "EndpointSlice")
            .count()
    }

    /// Service watches open now in `namespace` (the sidecar's).
    pub fn open_service_watches(&self, namespace: &str) -> usize {
        let mut state = self.lock();
        state.watchers.retain(|w| !w.tx.is_closed());
        state
            .watchers
            .iter()
            .filter(|w| w.namespace == namespace && w.kind == "Service")
            .count()
    }

    /// Service WATCH requests answered so far in `namespace`.
    pub fn service_watch_requests(&self, namespace: &str) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.watch && c.namespace == namespace && c.kind == "Service")
            .count()
    }

    /// Namespaces with a watch open now, sorted.
    pub fn watched_namespaces(&self) -> Vec<String> {
        let mut state = self.lock();
        state.watchers.retain(|w| !w.tx.is_closed());
        let mut names: Vec<String> = state
            .watchers
            .iter()
            .filter(|w| w.kind == "EndpointSlice")
            .map(|w| w.namespace.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Answers every request for `kind` 404 from now on, as a cluster
    /// without its CRD does.
    pub fn unserve(&self, kind: &'static str) {
        self.lock().unserved.push(kind);
    }

    /// LIST requests answered so far (each page counts).
    pub fn lists(&self) -> usize {
        self.lock().calls.iter().filter(|c| !c.watch).count()
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<TestBody> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query_text = req.uri().query().unwrap_or("").to_string();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let unserved = resource(&path)
            .map(|(_, kind)| kind)
            .or_else(|| object_path(&path).map(|t| t.kind))
            .is_some_and(|kind| self.lock().unserved.contains(&kind));
        if unserved {
            return status_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
        if let Some(target) = object_path(&path) {
            return self.one(&method, target, &body);
        }
        if method == http::Method::POST {
            return match resource(&path) {
                Some((namespace, kind)) => self.create(&namespace, kind, &body),
                None => status_response(StatusCode::NOT_FOUND, "NotFound", &path),
            };
        }
        self.collection(&path, &query_text)
    }

    /// A list or a watch.
    fn collection(&self, path: &str, query: &str) -> Response<TestBody> {
        let query: BTreeMap<String, String> = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (decode(k), decode(v))
            })
            .collect();
        let Some((namespace, kind)) = resource(path) else {
            return status_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("the fake does not serve {path}"),
            );
        };
        let namespace = namespace.as_str();
        let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
        self.lock().calls.push(Call {
            namespace: namespace.into(),
            kind,
            watch,
            query: query.clone(),
        });
        if watch {
            self.watch(namespace, kind, &query)
        } else {
            self.list(namespace, kind, &query)
        }
    }

    /// Reads, replaces, or replaces the status of, one object.
    fn one(&self, method: &http::Method, target: ObjectPath, body: &[u8]) -> Response<TestBody> {
        let key = (
            target.namespace.clone(),
            format!("{}/{}", target.kind, target.name),
        );
        let mut state = self.lock();
        state.calls.push(Call {
            namespace: target.namespace.clone(),
            kind: target.kind,
            watch: false,
            query: BTreeMap::from([
                ("method".to_string(), method.to_string()),
                ("name".to_string(), target.name.clone()),
            ]),
        });
        let Some(current) = state.objects.get(&key).cloned() else {
            let message = format!("{} \"{}\" not found", target.kind, target.name);
            return status_response(StatusCode::NOT_FOUND, "NotFound", &message);
        };
        if *method == http::Method::GET {
            return json_response(StatusCode::OK, &current);
        }
        if *method != http::Method::PUT {
            return status_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                method.as_str(),
            );
        }
        let Ok(sent) = serde_json::from_slice::<Value>(body) else {
            return status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the body is not JSON",
            );
        };
        let version = sent["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if !version.is_empty()
            && version
                != current["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
        {
            let message = "the object has been modified; please apply your changes to the latest version and try again";
            return status_response(StatusCode::CONFLICT, "Conflict", message);
        }
        let mut object = if target.status {
            let mut object = current.clone();
            object["status"] = sent["status"].clone();
            object
        } else {
            let mut object = sent;
            object["kind"] = current["kind"].clone();
            object["apiVersion"] = current["apiVersion"].clone();
            object["metadata"]["namespace"] = current["metadata"]["namespace"].clone();
            object
        };
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = rv.to_string().into();
        state.objects.insert(key, object.clone());
        state.record(Event {
            rv,
            namespace: target.namespace,
            kind: "MODIFIED",
            object: object.clone(),
        });
        json_response(StatusCode::OK, &object)
    }

    /// Creates an object (`POST` to its collection).
    fn create(&self, namespace: &str, kind: &'static str, body: &[u8]) -> Response<TestBody> {
        let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
            return status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the body is not JSON",
            );
        };
        let Some(name) = object["metadata"]["name"].as_str().map(str::to_string) else {
            return status_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.name is required",
            );
        };
        let key = (namespace.to_string(), format!("{kind}/{name}"));
        if self.lock().objects.contains_key(&key) {
            let message = format!("{kind} \"{name}\" already exists");
            return status_response(StatusCode::CONFLICT, "AlreadyExists", &message);
        }
        object["metadata"]["namespace"] = namespace.into();
        self.apply_kind(
            namespace,
            object,
            kind,
            api_version(kind),
            &format!("{kind}/"),
        );
        let created = self.lock().objects.get(&key).cloned().unwrap_or_default();
        json_response(StatusCode::CREATED, &created)
    }

    /// An object of a kind in [`RESOURCES`] as stored now (with its status).
    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (namespace.to_string(), format!("{kind}/{name}"));
        self.lock().objects.get(&key).cloned()
    }

    fn list(
        &self,
        namespace: &str,
        kind: &'static str,
        query: &BTreeMap<String, String>,
    ) -> Response<TestBody> {
        let mut state = self.lock();
        let (rv, items) = match query.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => match state.pages.remove(token) {
                Some(page) => page,
                None => {
                    return status_response(
                        StatusCode::GONE,
                        "Expired",
                        "the provided continue parameter is too old",
                    )
                }
            },
            None => {
                let selector = Selector::of(query);
                let items: Vec<Value> = state
                    .objects
                    .iter()
                    .filter(|((ns, _), o)| {
                        in_namespace(namespace, ns) && o["kind"] == kind && selector.selects(o)
                    })
                    .map(|(_, o)| o.clone())
                    .collect();
                (state.rv, items)
            }
        };
        let limit = query
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let mut items = items;
        let rest = if items.len() > limit {
            items.split_off(limit)
        } else {
            Vec::new()
        };
        let mut metadata = json!({ "resourceVersion": rv.to_string() });
        if !rest.is_empty() {
            state.next_token += 1;
            let token = format!("page-{}", state.next_token);
            metadata["continue"] = token.clone().into();
            metadata["remainingItemCount"] = rest.len().into();
            state.pages.insert(token, (rv, rest));
        }
        let body = json!({
            "kind": format!("{kind}List"),
            "apiVersion": api_version(kind),
            "metadata": metadata,
            "items": items,
        });
        json_response(StatusCode::OK, &body)
    }

    fn watch(
        &self,
        namespace: &str,
        kind: &'static str,
        query: &BTreeMap<String, String>,
    ) -> Response<TestBody> {
        let (tx, rx) = mpsc::unbounded_channel();
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let selector = Selector::of(query);
        let bookmarks = query
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true");
        let mut state = self.lock();
        if from < state.compacted {
            // The API server answers 200 and a single ERROR event.
            let _ = tx.send(event_line("ERROR", &expired(state.compacted)));
        } else {
            for e in state.history.iter().filter(|e| e.rv > from) {
                if in_namespace(namespace, &e.namespace)
                    && e.object["kind"] == kind
                    && selector.selects(&e.object)
                {
                    let _ = tx.send(event_line(e.kind, &e.object));
                }
            }
            state.watchers.push(Watcher {
                namespace: namespace.into(),
                kind,
                selector,
                bookmarks,
                tx,
            });
        }
        // The server ends a watch after `timeoutSeconds`, as the real one does.
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map(|t| Box::pin(tokio::time::sleep(Duration::from_secs(t))));
        let body = StreamBody::new(Lines { rx, timeout }).boxed();
        Response::builder()
            .header("content-type", "application/json")
            .body(body)
            .expect("watch response")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    fn tasks_lock(&self) -> MutexGuard<'_, Vec<tokio::task::AbortHandle>> {
        self.tasks.lock()
    }
}

impl State {
    fn record(&mut self, event: Event) {
        let line = event_line(event.kind, &event.object);
        self.watchers.retain(|w| {
            if !in_namespace(&w.namespace, &event.namespace)
                || event.object["kind"] != w.kind
                || !w.selector.selects(&event.object)
            {
                return !w.tx.is_closed();
            }
            w.tx.send(line.clone()).is_ok()
        });
        self.history.push(event);
    }
}

/// A watch body: each event line as one chunk, ending when the sender
/// goes or the timeout passes.
struct Lines {
    rx: mpsc::UnboundedReceiver<Bytes>,
    timeout: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl futures_core::Stream for Lines {
    type Item = Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if let Some(timeout) = self.timeout.as_mut() {
            if timeout.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(None);
            }
        }
        self.rx
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(Frame::data(l))))
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({ "type": kind, "object": object })).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark_object(rv: u64) -> Value {
    json!({
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": { "resourceVersion": rv.to_string() },
    })
}

fn expired(compacted: u64) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("too old resource version: (compacted to {compacted})"),
        "reason": "Expired",
        "code": 410,
    })
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<TestBody> {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    json_response(code, &body)
}

fn json_response(code: StatusCode, body: &Value) -> Response<TestBody> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(crate::full(serde_json::to_vec(body).unwrap_or_default()))
        .expect("json response")
}

/// A list's or watch's `labelSelector` and `fieldSelector`.
struct Selector {
    labels: String,
    fields: String,
}

impl Selector {
    fn of(query: &BTreeMap<String, String>) -> Selector {
        let get = |k: &str| query.get(k).cloned().unwrap_or_default();
        Selector {
            labels: get("labelSelector"),
            fields: get("fieldSelector"),
        }
    }

    fn selects(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let field = |path: &str| {
            let at = path.split('.').try_fold(object, |v, k| v.get(k))?;
            Some(match at {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        };
        selects(&self.labels, |k| {
            labels.get(k).and_then(Value::as_str).map(String::from)
        }) && selects(&self.fields, field)
    }
}

/// Whether the values `value` looks up match a selector of
/// comma-separated terms: `key`, `!key`, `key=value` (or `==`),
/// `key!=value` (field selectors use only the last two).
fn selects(selector: &str, value: impl Fn(&str) -> Option<String>) -> bool {
    let label = &value;
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                label(k.trim()).as_deref() != Some(v.trim())
            } else if let Some((k, v)) = term.split_once('=') {
                label(k.trim()).as_deref() == Some(v.trim_start_matches('=').trim())
            } else if let Some(k) = term.strip_prefix('!') {
                label(k.trim()).is_none()
            } else {
                label(term).is_some()
            }
        })
}

/// Percent-decoding for query parameters.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An EndpointSlice of Service `service` as the EndpointSlice controller
/// writes it: IPv4, the `kubernetes.io/service-name` label, `ports` as
/// (name, port) and `endpoints` from [`pod`].
pub fn endpoint_slice(
    name: &str,
    service: &str,
    ports: &[(&str, u16)],
    endpoints: &[Value],
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({ "name": n, "port": p, "protocol": "TCP" }))
        .collect();
    json!({
        "metadata": {
            "name": name,
            "labels": { "kubernetes.io/service-name": service },
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    })
}

/// A Service with one ClusterIP and TCP ports as (name, port, targetPort).
pub fn service(name: &str, cluster_ip: &str, ports: &[(&str, u16, u16)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p, t)| json!({ "name": n, "port": p, "targetPort": t, "protocol": "TCP" }))
        .collect();
    json!({
        "metadata": { "name": name },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ports": ports,
        },
    })
}

/// A pod's endpoint: `ip` with its conditions, in zone `zone-a` on `node-1`.
pub fn pod(ip: &str, ready: bool, serving: bool, terminating: bool) -> Value {
    json!({
        "addresses": [ip],
        "conditions": { "ready": ready, "serving": serving, "terminating": terminating },
        "zone": "zone-a",
        "nodeName": "node-1",
    })
}

/// A ready pod.
pub fn ready_pod(ip: &str) -> Value {
    pod(ip, true, true, false)
}

/// A pod shutting down that still serves (kube-proxy's fallback).
pub fn terminating_pod(ip: &str) -> Value {
    pod(ip, false, true, true)
}

/// Reads the `/clusters` JSON of cluster `name`.
pub fn cluster_json(clusters: &str, name: &str) -> Value {
    let all: Value = serde_json::from_str(clusters).unwrap_or(Value::Null);
    all["clusters"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Backends standing in for a Service's pods: one per loopback address
/// (127.0.0.1, .2, ...), all on one port, as pods share a target port.
pub struct Pods {
    pub port: u16,
    pub backends: Vec<crate::Backend>,
}

impl Pods {
    /// Starts `n` pods named `pod-1`.. on `127.0.0.1`.. sharing a port.
    pub async fn start(n: usize) -> Pods {
        Pods::start_named(n, "pod").await
    }

    /// Starts `n` pods named `PREFIX-1`.. on `127.0.0.1`.. sharing a port.
    pub async fn start_named(n: usize, prefix: &str) -> Pods {
        'retry: loop {
            let port = crate::free_port();
            let mut backends = Vec::new();
            for i in 1..=n {
                let address = SocketAddr::from(([127, 0, 0, i as u8], port));
                match tokio::net::TcpListener::bind(address).await {
                    Ok(l) => backends.push(crate::Backend::serve(&format!("{prefix}-{i}"), l)),
                    Err(_) => continue 'retry,
                }
            }
            return Pods { port, backends };
        }
    }

    /// Pod `i`'s IP (1-based, as named).
    pub fn ip(&self, i: usize) -> String {
        format!("127.0.0.{i}")
    }

    /// Pod `i`'s backend (1-based).
    pub fn pod(&self, i: usize) -> &crate::Backend {
        &self.backends[i - 1]
    }
}
