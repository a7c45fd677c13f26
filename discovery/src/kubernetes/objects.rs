//! Whole kinds of objects followed across every namespace, as JSON: what
//! the gateway and ingress roles read (Gateway API objects, Ingresses,
//! Services, Namespaces, TLS Secrets).
//! Each kind gets its own kube-runtime watcher (list, then watch; relist
//! on 410; back off on errors) on the discovery thread, and its events go
//! to one channel in the order they come, a relist as one event so the
//! reader can replace the kind's objects whole.
//!
//! Faults keep what was known: an unreachable API server leaves the
//! reader's objects as they were (the error is logged and counted).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher::{self, watcher, DefaultBackoff, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::mpsc::UnboundedSender;

use super::control_runtime;

/// A kind of object to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    /// Only the objects this field selector picks (`type=kubernetes.io/tls`).
    pub fields: Option<&'static str>,
}

impl Kind {
    /// How kube's dynamic API names it.
    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version: if self.group.is_empty() {
                self.version.into()
            } else {
                format!("{}/{}", self.group, self.version)
            },
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }
}

const fn gateway_api(kind: &'static str, plural: &'static str) -> Kind {
    Kind {
        group: "gateway.networking.k8s.io",
        version: "v1",
        kind,
        plural,
        fields: None,
    }
}

const fn core(kind: &'static str, plural: &'static str) -> Kind {
    Kind {
        group: "",
        version: "v1",
        kind,
        plural,
        fields: None,
    }
}

pub const GATEWAY_CLASS: Kind = gateway_api("GatewayClass", "gatewayclasses");
pub const GATEWAY: Kind = gateway_api("Gateway", "gateways");
pub const HTTP_ROUTE: Kind = gateway_api("HTTPRoute", "httproutes");
pub const GRPC_ROUTE: Kind = gateway_api("GRPCRoute", "grpcroutes");
pub const REFERENCE_GRANT: Kind = Kind {
    version: "v1beta1",
    ..gateway_api("ReferenceGrant", "referencegrants")
};
pub const SERVICE: Kind = core("Service", "services");
pub const NAMESPACE: Kind = core("Namespace", "namespaces");
/// HTTPS listeners' certificates; no other Secret is read.
pub const TLS_SECRET: Kind = Kind {
    fields: Some("type=kubernetes.io/tls"),
    ..core("Secret", "secrets")
};
pub const INGRESS: Kind = Kind {
    group: "networking.k8s.io",
    ..core("Ingress", "ingresses")
};
pub const INGRESS_CLASS: Kind = Kind {
    group: "networking.k8s.io",
    ..core("IngressClass", "ingressclasses")
};

/// What the gateway role follows.
pub const GATEWAY_KINDS: [Kind; 8] = [
    GATEWAY_CLASS,
    GATEWAY,
    HTTP_ROUTE,
    GRPC_ROUTE,
    REFERENCE_GRANT,
    SERVICE,
    NAMESPACE,
    TLS_SECRET,
];

/// What the ingress role follows.
pub const INGRESS_KINDS: [Kind; 4] = [INGRESS, INGRESS_CLASS, SERVICE, TLS_SECRET];

/// What a sidecar follows for the mesh's routes (GAMMA): routes whose
/// parent is a Service, the Services they name, and the grants between
/// namespaces.
pub const MESH_KINDS: [Kind; 4] = [HTTP_ROUTE, GRPC_ROUTE, REFERENCE_GRANT, SERVICE];

/// One change to the objects of a kind.
#[derive(Debug, Clone)]
pub enum Change {
    /// Every object of `kind`, after a (re)list: they replace what was known.
    Listed {
        kind: &'static str,
        objects: Vec<serde_json::Value>,
    },
    /// An object added or changed (with its `kind` set).
    Applied(serde_json::Value),
    Deleted {
        kind: &'static str,
        namespace: String,
        name: String,
    },
}

/// After a first change, the changes that follow it closely: taken one by
/// one until [`QUIET`] passes without another, or [`GATHER_AT_MOST`] since
/// the first. A `kubectl apply` of several objects (events a few
/// milliseconds apart) becomes one change, and a lone edit waits only
/// the quiet moment.
pub async fn gather(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Change>,
    mut take: impl FnMut(Change),
) {
    let deadline = tokio::time::Instant::now() + GATHER_AT_MOST;
    loop {
        let wait = QUIET.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        if wait.is_zero() {
            return;
        }
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(change)) => take(change),
            // Quiet (or the sender is gone): what there is, is taken.
            Ok(None) | Err(_) => return,
        }
    }
}

/// How long without a further change ends a gathering.
pub const QUIET: Duration = Duration::from_millis(5);
/// The longest a gathering lasts.
pub const GATHER_AT_MOST: Duration = Duration::from_millis(50);

/// Follows `kinds` until the returned handles are aborted (or `tx` is
/// closed); failures are counted on `errors`.
pub fn follow(
    kinds: &[Kind],
    tx: UnboundedSender<Change>,
    errors: Arc<AtomicU64>,
) -> Vec<tokio::task::AbortHandle> {
    kinds
        .iter()
        .map(|&kind| {
            let (tx, errors) = (tx.clone(), errors.clone());
            control_runtime()
                .spawn(follow_kind(kind, tx, errors))
                .abort_handle()
        })
        .collect()
}

async fn follow_kind(kind: Kind, tx: UnboundedSender<Change>, errors: Arc<AtomicU64>) {
    let mut backoff = DefaultBackoff::default();
    let client = loop {
        match Client::try_default().await {
            Ok(client) => break client,
            Err(e) => {
                errors.fetch_add(1, Relaxed);
                let wait = backoff.next().unwrap_or(Duration::from_secs(30));
                tracing::warn!(
                    kind = kind.kind,
                    "no Kubernetes client: {e}; retrying in {wait:?}"
                );
                tokio::time::sleep(wait).await;
            }
        }
    };
    let resource = kind.api_resource();
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let mut config = watcher::Config::default();
    if let Some(fields) = kind.fields {
        config = config.fields(fields);
    }
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    let mut relist: Option<Vec<serde_json::Value>> = None;
    // Whether the kind was found missing (said once).
    let mut absent = false;
    let json = |object: DynamicObject| {
        let mut value = serde_json::to_value(object).unwrap_or_default();
        // List items come without their kind.
        value["kind"] = kind.kind.into();
        value
    };
    while let Some(event) = events.next().await {
        let change = match event {
            Ok(Event::Init) => {
                relist = Some(Vec::new());
                continue;
            }
            Ok(Event::InitApply(object)) => {
                if let Some(list) = relist.as_mut() {
                    list.push(json(object));
                }
                continue;
            }
            Ok(Event::InitDone) => match relist.take() {
                Some(objects) => Change::Listed {
                    kind: kind.kind,
                    objects,
                },
                None => continue,
            },
            Ok(Event::Apply(object)) => Change::Applied(json(object)),
            Ok(Event::Delete(object)) => Change::Deleted {
                kind: kind.kind,
                namespace: object.metadata.namespace.clone().unwrap_or_default(),
                name: object.metadata.name.clone().unwrap_or_default(),
            },
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                tracing::info!(kind = kind.kind, "watch expired (410); relisting");
                continue;
            }
            // The kind does not exist in this cluster (a CRD not
            // installed, as GRPCRoute before Gateway API v1.1): there are
            // none of it, which the reader may go on with; the list is
            // tried again, and objects come if the CRD is installed.
            Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                if status.code == 404 =>
            {
                if !absent {
                    absent = true;
                    tracing::warn!(
                        kind = kind.kind,
                        "the API server does not serve {}s (is its CRD installed?); taken as none",
                        kind.kind
                    );
                    Change::Listed {
                        kind: kind.kind,
                        objects: Vec::new(),
                    }
                } else {
                    continue;
                }
            }
            Err(e) => {
                errors.fetch_add(1, Relaxed);
                tracing::warn!(
                    kind = kind.kind,
                    "Kubernetes API: {e}; the last known objects stay, retrying with backoff"
                );
                continue;
            }
        };
        if tx.send(change).is_err() {
            return;
        }
    }
}
