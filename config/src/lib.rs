//! skiff's config file: its types, how it is read and validated, and
//! defaults. Data only: no sockets, no runtime, no TLS library, so `skiff
//! check`, the fuzz targets and anything else that reads a config build
//! without the proxy; the proxy builds its runtime objects (listeners,
//! clusters, route tables, connectors) from what is read here.
//!
//! Reading never stops at the first mistake: every unknown field, bad
//! address, bad duration, duplicate name and dangling cluster reference is
//! reported as `file:line:col: field.path: message`, so one `skiff check`
//! shows everything to fix. A config that fails validation is never
//! applied; the running one stays.
//!
//! The files a config names (certificates) are checked through a
//! [`tls::Files`] the caller passes: the proxy loads them, so a missing or
//! broken certificate is refused with the field that names it.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod endpoints;
pub mod gateway_api;
pub mod ingress;
pub mod limits;
pub mod listener;
pub mod read;
pub mod route;
pub mod sidecar;
pub mod tls;
pub mod units;
pub mod yaml;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

pub use cluster::ClusterConfig;
pub use listener::ListenerConfig;

use sidecar::MeshConfig;
use tls::{Context, Files};
use units::ser_duration;
use yaml::{Diagnostics, MapReader, Node, Value};

/// Where the admin server listens unless configured.
pub const DEFAULT_ADMIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9901);
/// How long listeners keep accepting after SIGTERM, so the pod can leave
/// the Service's endpoints before connections are refused.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(5);
/// How long in-flight requests get to finish once listeners stop.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub admin: AdminConfig,
    pub shutdown: ShutdownConfig,
    pub listeners: Vec<ListenerConfig>,
    pub clusters: Vec<ClusterConfig>,
    /// mTLS between sidecars; none: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshConfig>,
    /// The gateway role: a Gateway API Gateway to serve; none: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_api: Option<gateway_api::GatewayApiConfig>,
    /// The ingress role: Ingress objects of one class to serve; none: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<ingress::IngressConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

/// Graceful shutdown on SIGTERM/SIGINT or `POST /drain`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShutdownConfig {
    #[serde(serialize_with = "ser_duration")]
    pub drain_delay: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub grace_period: Duration,
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Diagnostics),
}

impl Config {
    /// Reads and validates the config file at `path`, checking the files
    /// it names with `files`. Relative paths inside it (endpoint files,
    /// certificates) are taken relative to the file's directory.
    pub fn load(path: &Path, files: &dyn Files) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse_checked(&text, &path.display().to_string(), base, files)
            .map_err(ConfigError::Invalid)
    }

    /// Parses and validates config text without looking into the files it
    /// names; `file` names it in errors and `base` is the directory
    /// relative paths are resolved against.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<Config, Diagnostics> {
        Config::parse_checked(text, file, base, &tls::Unchecked)
    }

    /// Like [`Config::parse`], checking the files the config names with `files`.
    pub fn parse_checked(
        text: &str,
        file: &str,
        base: &Path,
        files: &dyn Files,
    ) -> Result<Config, Diagnostics> {
        let root = yaml::parse_file(text, file)?;
        let mut diags = Diagnostics::new(file);
        let cx = Context { base, files };
        let config = read_config(&root, &cx, &mut diags);
        diags.items.sort_by_key(|d| (d.line, d.col));
        match config {
            Some(config) if diags.is_empty() => Ok(config),
            _ => {
                if diags.is_empty() {
                    diags.error(&root, "", "config is not valid");
                }
                Err(diags)
            }
        }
    }

    /// Finds a cluster's config by name.
    pub fn cluster(&self, name: &str) -> Option<&ClusterConfig> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

const TOP_FIELDS: &[&str] = &[
    "admin",
    "shutdown",
    "listeners",
    "clusters",
    "mesh",
    "gateway_api",
    "ingress",
];

fn read_config(root: &Node, cx: &Context<'_>, diags: &mut Diagnostics) -> Option<Config> {
    let mut map = MapReader::new(root, "", diags)?;
    let admin = match map.optional("admin") {
        Some(node) => read_admin(node, diags),
        None => Some(AdminConfig {
            listen: DEFAULT_ADMIN,
        }),
    };
    let shutdown = match map.optional("shutdown") {
        Some(node) => read_shutdown(node, diags),
        None => Some(ShutdownConfig {
            drain_delay: DEFAULT_DRAIN_DELAY,
            grace_period: DEFAULT_GRACE_PERIOD,
        }),
    };
    let clusters_node = map.optional("clusters");
    let clusters = match clusters_node {
        Some(node) => read_list(node, "clusters", diags, |n, p, d| {
            cluster::read_cluster(n, p, cx, d)
        }),
        None => Vec::new(),
    };
    let listeners_node = map.optional("listeners");
    let listeners = match listeners_node {
        Some(node) => read_list(node, "listeners", diags, |n, p, d| {
            listener::read_listener(n, p, cx, d)
        }),
        None => Vec::new(),
    };
    let mesh = match map.optional("mesh") {
        Some(node) => sidecar::read_mesh(node, cx, diags).map(Some),
        None => Some(None),
    };
    let gateway_api = match map.optional("gateway_api") {
        Some(node) => gateway_api::read_gateway_api(node, diags).map(Some),
        None => Some(None),
    };
    let ingress_node = map.optional("ingress");
    let ingress = match ingress_node {
        Some(node) => ingress::read_ingress(node, diags).map(Some),
        None => Some(None),
    };
    if let (Some(node), Some(Some(_))) = (ingress_node, &gateway_api) {
        diags.error(
            node,
            "ingress",
            "serve a Gateway (`gateway_api`) or an Ingress class (`ingress`), not both",
        );
    }
    map.finish(diags, TOP_FIELDS);

    // Duplicates are found on the raw items, so an item with another
    // mistake still takes part.
    check_unique(clusters_node, "clusters", "name", "cluster name", diags);
    check_unique(listeners_node, "listeners", "name", "listener name", diags);
    check_unique(
        listeners_node,
        "listeners",
        "listen",
        "listen address",
        diags,
    );
    if let Some(admin) = &admin {
        for (i, (node, listener)) in listeners.iter().enumerate() {
            // Port 0 asks the kernel for a free port, so it never clashes.
            if listener.listen == admin.listen && admin.listen.port() != 0 {
                let node = node.get("listen").unwrap_or(node);
                diags.error(
                    node,
                    &format!("listeners[{i}].listen"),
                    format!("{} is also the admin address", listener.listen),
                );
            }
        }
    }
    check_route_clusters(clusters_node, listeners_node, diags);
    Some(Config {
        admin: admin?,
        shutdown: shutdown?,
        listeners: listeners.into_iter().map(|(_, l)| l).collect(),
        clusters: clusters.into_iter().map(|(_, c)| c).collect(),
        mesh: mesh?,
        gateway_api: gateway_api?,
        ingress: ingress?,
    })
}

/// Every route must name a cluster that exists. Checked on the raw items,
/// so a listener or cluster with another mistake still counts.
fn check_route_clusters(
    clusters: Option<&Node>,
    listeners: Option<&Node>,
    diags: &mut Diagnostics,
) {
    let names: Vec<&str> = match clusters.map(|n| &n.value) {
        Some(Value::Seq(items)) => items
            .iter()
            .filter_map(|c| c.get("name").and_then(Node::as_str))
            .collect(),
        _ => Vec::new(),
    };
    let Some(Value::Seq(items)) = listeners.map(|n| &n.value) else {
        return;
    };
    for (li, listener) in items.iter().enumerate() {
        let Some(Value::Seq(routes)) = listener.get("routes").map(|n| &n.value) else {
            continue;
        };
        for (ri, route) in routes.iter().enumerate() {
            let mut named = Vec::new();
            if let Some(node) = route.get("cluster") {
                named.push((node, format!("listeners[{li}].routes[{ri}].cluster")));
            }
            for list in ["backends", "mirror"] {
                if let Some(Value::Seq(items)) = route.get(list).map(|n| &n.value) {
                    for (bi, item) in items.iter().enumerate() {
                        if let Some(node) = item.get("cluster") {
                            let at = format!("listeners[{li}].routes[{ri}].{list}[{bi}].cluster");
                            named.push((node, at));
                        }
                    }
                }
            }
            for (node, at) in named {
                let Some(name) = node.as_str().filter(|_| !node.is_null()) else {
                    continue;
                };
                if !names.contains(&name) {
                    diags.error(node, &at, format!("no cluster named `{name}`"));
                }
            }
        }
    }
}

/// Reads each item of a list, keeping the node beside each value for later checks.
pub(crate) fn read_list<'a, T>(
    node: &'a Node,
    path: &str,
    diags: &mut Diagnostics,
    read: impl Fn(&'a Node, &str, &mut Diagnostics) -> Option<T>,
) -> Vec<(&'a Node, T)> {
    let Some(items) = read::seq(node, path, diags) else {
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| read(item, &format!("{path}[{i}]"), diags).map(|v| (item, v)))
        .collect()
}

/// Reports items of the list at `list` whose `key` field repeats an earlier one.
fn check_unique(list: Option<&Node>, path: &str, key: &str, what: &str, diags: &mut Diagnostics) {
    let Some(Value::Seq(items)) = list.map(|n| &n.value) else {
        return;
    };
    let mut seen: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(value) = item.get(key).and_then(Node::as_str) else {
            continue;
        };
        // Compare addresses in their canonical form; port 0 never clashes.
        let value = match value.parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => continue,
            Ok(addr) => addr.to_string(),
            Err(_) => value.to_string(),
        };
        if seen.contains(&value) {
            diags.error(
                item,
                &format!("{path}[{i}]"),
                format!("duplicate {what} `{value}`"),
            );
        }
        seen.push(value);
    }
}

fn read_admin(node: &Node, diags: &mut Diagnostics) -> Option<AdminConfig> {
    let mut map = MapReader::new(node, "admin", diags)?;
    let listen = match map.optional("listen") {
        Some(n) => read::address(n, "admin.listen", diags),
        None => Some(DEFAULT_ADMIN),
    };
    map.finish(diags, &["listen"]);
    Some(AdminConfig { listen: listen? })
}

fn read_shutdown(node: &Node, diags: &mut Diagnostics) -> Option<ShutdownConfig> {
    let mut map = MapReader::new(node, "shutdown", diags)?;
    let drain_delay = map.duration_or("drain_delay", DEFAULT_DRAIN_DELAY, diags);
    let grace_period = map.duration_or("grace_period", DEFAULT_GRACE_PERIOD, diags);
    map.finish(diags, &["drain_delay", "grace_period"]);
    Some(ShutdownConfig {
        drain_delay: drain_delay?,
        grace_period: grace_period?,
    })
}

#[cfg(test)]
mod tests;
