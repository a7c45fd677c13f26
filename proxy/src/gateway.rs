//! The gateway role: serves one Gateway API `Gateway` read from the API
//! server, with no control plane; or, the same way, the Ingress objects
//! of one class (the ingress role). The Gateway API objects (and the
//! Services and Namespaces they name) are followed cluster-wide
//! ([`skiff_discovery::kubernetes::objects`]); every change, coalesced for
//! a moment, is translated by [`skiff_gateway`] into listeners (one per
//! port, bound at `listen_address` with `port_offset` added) and clusters
//! (one per Service port, following its EndpointSlices), which are applied
//! beside the config file's own as a reload is: listeners whose address
//! stays keep their sockets, so a route edit drops nothing.
//!
//! A translation that cannot be applied (a port already taken) leaves the
//! last good one serving and says why in the log. Status is written by one
//! replica ([`crate::gateway_status`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use skiff_config::gateway_api::GatewayApiConfig;
use skiff_config::ingress::IngressConfig;
use skiff_config::listener::ListenerConfig;
use skiff_config::tls::{InlineCert, ListenerTls};
use skiff_config::{ClusterConfig, Config};
use skiff_discovery::kubernetes::lease;
use skiff_discovery::kubernetes::objects::{self, Change, Kind, GATEWAY_KINDS, INGRESS_KINDS};
use skiff_gateway::world::Key;
use skiff_gateway::{Pem, SecretInfo, Translation, World};
use tokio::sync::{mpsc, watch};

use crate::gateway_status::{self, Written};

/// What the role needs of the proxy: to apply what the Gateway now adds
/// (implemented in `apply.rs`, so this module imports nothing above it).
pub(crate) trait Applier: Send + Sync + 'static {
    fn apply_generated(
        self: Arc<Self>,
        generated: Generated,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

    /// Whether the clusters `names` have their first endpoints.
    fn warm(&self, names: &[String]) -> bool;
}

/// How long routes wait for a new cluster's first endpoints before they
/// use it anyway (a Service with no pods stays empty).
pub(crate) const WARMING: Duration = Duration::from_secs(10);

/// What the Gateway adds to the config file's listeners and clusters.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Generated {
    pub(crate) listeners: Vec<ListenerConfig>,
    pub(crate) clusters: Vec<ClusterConfig>,
}

impl Generated {
    /// `base` with these listeners and clusters added (the file's own
    /// win a name they share).
    pub(crate) fn merged_into(&self, mut base: Config) -> Config {
        let names: HashSet<String> = base.listeners.iter().map(|l| l.name.clone()).collect();
        base.listeners.extend(
            self.listeners
                .iter()
                .filter(|l| !names.contains(&l.name))
                .cloned(),
        );
        let names: HashSet<String> = base.clusters.iter().map(|c| c.name.clone()).collect();
        base.clusters.extend(
            self.clusters
                .iter()
                .filter(|c| !names.contains(&c.name))
                .cloned(),
        );
        base
    }
}

/// What the role serves: a Gateway, or an Ingress class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Serves {
    Gateway(GatewayApiConfig),
    Ingress(IngressConfig),
}

impl Serves {
    /// What the config asks for, if anything.
    pub(crate) fn of(config: &Config) -> Option<Serves> {
        let gateway = config.gateway_api.clone().map(Serves::Gateway);
        gateway.or_else(|| config.ingress.clone().map(Serves::Ingress))
    }

    fn kinds(&self) -> &'static [Kind] {
        match self {
            Serves::Gateway(_) => &GATEWAY_KINDS,
            Serves::Ingress(_) => &INGRESS_KINDS,
        }
    }

    /// `Gateway shop/web`, `Ingress class skiff`: for the log.
    fn describe(&self) -> String {
        match self {
            Serves::Gateway(g) => format!("Gateway {}/{}", g.namespace, g.name),
            Serves::Ingress(i) => format!("Ingress class {}", i.class),
        }
    }

    /// The status writer's Lease: namespace, name, duration.
    fn lease(&self) -> (String, String, Duration) {
        match self {
            Serves::Gateway(g) => (
                g.namespace.clone(),
                format!("skiff-gateway-{}", g.name),
                g.lease_duration,
            ),
            Serves::Ingress(i) => {
                let namespace = i.namespace.clone().or_else(|| {
                    std::env::var("POD_NAMESPACE")
                        .ok()
                        .filter(|n| !n.is_empty())
                });
                (
                    namespace.unwrap_or_else(|| "default".into()),
                    format!("skiff-ingress-{}", i.class),
                    i.lease_duration,
                )
            }
        }
    }

    fn listen_address(&self) -> std::net::IpAddr {
        match self {
            Serves::Gateway(g) => g.listen_address,
            Serves::Ingress(i) => i.listen_address,
        }
    }

    fn port_offset(&self) -> u16 {
        match self {
            Serves::Gateway(g) => g.port_offset,
            Serves::Ingress(i) => i.port_offset,
        }
    }

    /// The prefix of the listeners' names: `gateway-80`, `ingress-443`.
    fn listener_prefix(&self) -> &'static str {
        match self {
            Serves::Gateway(_) => "gateway",
            Serves::Ingress(_) => "ingress",
        }
    }

    fn translate(&self, world: &World) -> Translation {
        match self {
            Serves::Gateway(g) => {
                let controller = skiff_gateway::CONTROLLER;
                let mut t = skiff_gateway::translate(world, (&g.namespace, &g.name), controller);
                if t.gateway.is_some() {
                    // The mesh's routes (a Service as parent) have their
                    // status written by the Gateway's writer too.
                    for mesh in skiff_gateway::mesh_status(world, controller) {
                        let key = (mesh.kind, &mesh.namespace, &mesh.name);
                        let same = |r: &&mut skiff_gateway::status::RouteStatus| {
                            (r.kind, &r.namespace, &r.name) == key
                        };
                        match t.routes.iter_mut().find(same) {
                            Some(r) => r.parents.extend(mesh.parents),
                            None => t.routes.push(mesh),
                        }
                    }
                }
                t
            }
            Serves::Ingress(i) => {
                let ports = skiff_gateway::IngressPorts {
                    http: i.http_port,
                    https: i.https_port,
                };
                skiff_gateway::translate_ingress(world, &i.class, ports)
            }
        }
    }
}

/// The role's state, shared with the proxy.
pub(crate) struct Role {
    pub(crate) config: Serves,
    /// What is applied now.
    pub(crate) generated: ArcSwap<Generated>,
    /// Set once the objects were listed and their translation applied.
    pub(crate) ready: AtomicBool,
    /// API errors (watches), for the log and `/clusters`.
    pub(crate) errors: Arc<AtomicU64>,
    /// The watches, stopped with the role.
    watches: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Role {
    fn drop(&mut self) {
        for watch in self.watches.lock().drain(..) {
            watch.abort();
        }
    }
}

impl Role {
    pub(crate) fn new(config: Serves) -> Arc<Role> {
        Arc::new(Role {
            config,
            generated: ArcSwap::from_pointee(Generated::default()),
            ready: AtomicBool::new(false),
            errors: Arc::default(),
            watches: Mutex::new(Vec::new()),
        })
    }

    /// Starts following the objects and the status writer's election;
    /// `proxy` gets each new translation.
    pub(crate) fn start(self: &Arc<Role>, proxy: Weak<dyn Applier>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watches = objects::follow(self.config.kinds(), tx, self.errors.clone());
        let (namespace, name, duration) = self.config.lease();
        let (leader, election) = lease::run(lease::Election {
            namespace,
            name,
            identity: identity(),
            duration,
        });
        watches.push(election);
        *self.watches.lock() = watches;
        tokio::spawn(run(Arc::downgrade(self), proxy, rx, leader));
    }
}

async fn run(
    role: Weak<Role>,
    proxy: Weak<dyn Applier>,
    mut rx: mpsc::UnboundedReceiver<Change>,
    mut leader: watch::Receiver<bool>,
) {
    let mut world = World::default();
    let mut listed: BTreeSet<&'static str> = BTreeSet::new();
    let mut last: Option<Generated> = None;
    let mut translation: Option<Translation> = None;
    let mut written = Written::default();
    // Warnings already logged: each is said once, while it holds.
    let mut warned: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            change = rx.recv() => {
                let Some(change) = change else { return };
                let received = std::time::Instant::now();
                take(&mut world, &mut listed, change);
                // Gather what else arrives in the moment after.
                objects::gather(&mut rx, |change| take(&mut world, &mut listed, change)).await;
                let (Some(role), Some(proxy)) = (role.upgrade(), proxy.upgrade()) else {
                    return;
                };
                if listed.len() < role.config.kinds().len() {
                    continue;
                }
                let translating = std::time::Instant::now();
                let mut t = role.config.translate(&world);
                if let Some(problem) = &t.problem {
                    tracing::warn!("gateway: {problem}; nothing of it is served");
                }
                for warning in t.warnings.iter().filter(|w| !warned.contains(*w)) {
                    tracing::warn!("gateway: {warning}");
                }
                warned = t.warnings.iter().cloned().collect();
                let generated = generate(&role.config, &mut t);
                let timing = (received, translating.elapsed());
                if last.as_ref() != Some(&generated)
                    && serve(&role, proxy, last.as_ref(), &generated, timing).await
                {
                    last = Some(generated);
                }
                translation = Some(t);
            }
            changed = leader.changed() => {
                if changed.is_err() {
                    return;
                }
                let leading = *leader.borrow();
                if !leading {
                    continue;
                }
                // A new writer writes everything once.
                written.clear();
            }
        }
        let leading = *leader.borrow();
        if let (true, Some(t), Some(role)) = (leading, &translation, role.upgrade()) {
            let addresses = addresses(&role.config);
            let gateway = match &role.config {
                Serves::Gateway(g) => Some((g.namespace.clone(), g.name.clone())),
                Serves::Ingress(_) => None,
            };
            gateway_status::write(
                t,
                &addresses,
                skiff_gateway::CONTROLLER,
                &mut written,
                gateway,
            )
            .await;
        }
    }
}

/// Applies `generated` (its new clusters warmed first, as Envoy does: a
/// route moved to a new Service keeps its old backends until the new
/// one's endpoints are known, so no request meets an empty cluster);
/// whether it is served now.
async fn serve(
    role: &Role,
    proxy: Arc<dyn Applier>,
    last: Option<&Generated>,
    generated: &Generated,
    (received, translate): (std::time::Instant, Duration),
) -> bool {
    let applying = std::time::Instant::now();
    let previous = last.cloned().unwrap_or_default();
    let fresh: Vec<String> = (generated.clusters.iter())
        .filter(|c| !previous.clusters.iter().any(|p| p.name == c.name))
        .map(|c| c.name.clone())
        .collect();
    if !fresh.is_empty() && !previous.listeners.is_empty() {
        let mut warming = previous.clone();
        warming.clusters.extend(
            (generated.clusters.iter())
                .filter(|c| fresh.contains(&c.name))
                .cloned(),
        );
        if proxy.clone().apply_generated(warming).await.is_ok() {
            let deadline = tokio::time::Instant::now() + WARMING;
            while !proxy.warm(&fresh) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    match proxy.apply_generated(generated.clone()).await {
        Ok(()) => {
            tracing::info!(
                serves = %role.config.describe(),
                listeners = generated.listeners.len(),
                routes = generated.listeners.iter().map(|l| l.routes.len()).sum::<usize>(),
                clusters = generated.clusters.len(),
                translate_ms = translate.as_secs_f64() * 1e3,
                apply_ms = applying.elapsed().as_secs_f64() * 1e3,
                since_change_ms = received.elapsed().as_secs_f64() * 1e3,
                "gateway applied"
            );
            role.ready.store(true, Relaxed);
            true
        }
        Err(e) => {
            tracing::error!("gateway: the new translation is refused, the last one stays: {e}");
            false
        }
    }
}

/// The addresses for status, as a Gateway's `addresses` write them: an
/// Ingress's configured `status_address` (an IP, or a hostname), else the
/// pod's IP (`POD_IP`, from the downward API), else the address
/// listeners bind when it is one.
fn addresses(config: &Serves) -> Vec<serde_json::Value> {
    if let Serves::Ingress(IngressConfig {
        status_address: Some(address),
        ..
    }) = config
    {
        let kind = match address.parse::<std::net::IpAddr>() {
            Ok(_) => "IPAddress",
            Err(_) => "Hostname",
        };
        return vec![serde_json::json!({ "type": kind, "value": address })];
    }
    let listen = config.listen_address();
    let ip = std::env::var("POD_IP")
        .ok()
        .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
        .or_else(|| (!listen.is_unspecified()).then(|| listen.to_string()));
    ip.map(|ip| vec![serde_json::json!({ "type": "IPAddress", "value": ip })])
        .unwrap_or_default()
}

/// Who this replica is, for the Lease: the pod's name (`POD_NAME`), else
/// the host's name and the process id.
fn identity() -> String {
    if let Ok(name) = std::env::var("POD_NAME") {
        if !name.is_empty() {
            return name;
        }
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

/// Takes one change into `world`; an object that cannot be read is
/// logged with its name, and what was known of it stays.
fn take(world: &mut World, listed: &mut BTreeSet<&'static str>, change: Change) {
    match change {
        Change::Listed { kind, objects } => {
            // A relist replaces the Secrets, but a bad one still keeps
            // the certificate it had.
            let before = match kind {
                "Secret" => std::mem::take(&mut world.secrets),
                _ => BTreeMap::new(),
            };
            world.clear(kind);
            for object in objects {
                apply(world, object, Some(&before));
            }
            listed.insert(kind);
        }
        Change::Applied(object) => apply(world, object, None),
        Change::Deleted {
            kind,
            namespace,
            name,
        } => world.remove(kind, &namespace, &name),
    }
}

/// Takes one object into `world`. A TLS Secret's certificate is loaded to
/// see that it can be served; one that cannot keeps the last that could
/// (as `before` has it, else as `world` did), with the reason for the
/// listener's status.
fn apply(world: &mut World, object: serde_json::Value, before: Option<&BTreeMap<Key, SecretInfo>>) {
    let secret = (object.get("kind").and_then(|k| k.as_str()) == Some("Secret")).then(|| {
        let text = |f: &str| object["metadata"][f].as_str().unwrap_or("").to_string();
        (text("namespace"), text("name"))
    });
    // What is in the world is always a certificate that loads, or none.
    let last_good = secret.as_ref().and_then(|key| {
        let before = before.unwrap_or(&world.secrets);
        before.get(key).and_then(|b| b.pem.clone())
    });
    if let Err(e) = world.apply(object) {
        tracing::warn!("gateway: {e}; skipped");
        return;
    }
    if let Some(key) = secret {
        if let Some(problem) = check_secret(world, &key, last_good) {
            tracing::warn!(
                "gateway: Secret {}/{}: {problem}; its certificate is not used",
                key.0,
                key.1
            );
        }
    }
}

/// Loads the certificate of the Secret `key` in `world` as a listener
/// would. One that does not load is replaced by `last_good` and the
/// reason (naming `tls.crt` or `tls.key`) is noted for the listener's
/// status, and returned.
pub(crate) fn check_secret(world: &mut World, key: &Key, last_good: Option<Pem>) -> Option<String> {
    let info = world.secrets.get_mut(key)?;
    let pem = info.pem.as_ref()?;
    let source = format!("Secret {}/{}", key.0, key.1);
    let e = crate::tls::certs::pair_from_pem(&pem.cert, &pem.key, &source).err()?;
    let file = e.path.display().to_string();
    let file = file.rsplit(' ').next().unwrap_or_default();
    let problem = format!("{file}: {}", e.message);
    info.pem = last_good;
    info.problem = Some(problem.clone());
    Some(problem)
}

/// An HTTPS port's TLS: each listener's certificates for its hostname
/// (SNI), a listener without one giving the default.
fn listener_tls(certificates: &[skiff_gateway::Certificate]) -> ListenerTls {
    let inline = certificates
        .iter()
        .map(|c| InlineCert {
            source: format!("Secret {}/{}", c.namespace, c.secret),
            names: c.hostname.iter().map(|h| h.to_ascii_lowercase()).collect(),
            cert: c.pem.cert.clone(),
            key: c.pem.key.clone(),
        })
        .collect();
    ListenerTls {
        default: None,
        certificates: Vec::new(),
        client_auth: None,
        inline,
    }
}

/// The listeners and clusters a translation makes: a listener per port,
/// named `gateway-PORT`, bound at the role's address with the offset
/// added, and speaking of the Gateway's own port to clients.
/// The routes and clusters are taken out of `translation` (what stays is
/// its status).
fn generate(config: &Serves, translation: &mut Translation) -> Generated {
    let listeners = std::mem::take(&mut translation.ports)
        .into_iter()
        .filter_map(|p| {
            let Some(bound) = p.port.checked_add(config.port_offset()) else {
                tracing::warn!(
                    "gateway: port {} + offset {} is past 65535; not bound",
                    p.port,
                    config.port_offset()
                );
                return None;
            };
            Some(ListenerConfig {
                name: format!("{}-{}", config.listener_prefix(), p.port),
                listen: SocketAddr::new(config.listen_address(), bound),
                advertised_port: Some(p.port),
                tls: p.tls.then(|| listener_tls(&p.certificates)),
                routes: p.routes,
                capture: None,
                access_log: None,
                limits: Default::default(),
            })
        })
        .collect();
    Generated {
        listeners,
        clusters: std::mem::take(&mut translation.clusters),
    }
}
