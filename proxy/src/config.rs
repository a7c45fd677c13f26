//! The config file: its types, how it is read and validated, and defaults.
//!
//! Reading never stops at the first mistake: every unknown field, bad
//! address, bad duration, duplicate name and dangling cluster reference is
//! reported as `file:line:col: field.path: message`, so one `skiff check`
//! shows everything to fix. A config that fails validation is never applied;
//! the running one stays (see `reload` in the crate root).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use skiff_discovery::yaml::{self, Diagnostics, MapReader, Node};
use skiff_discovery::{file as endpoint_file, kubernetes, Source};

/// Where the admin server listens unless configured.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
/// How long listeners keep accepting after SIGTERM, so the pod can leave
/// the Service's endpoints before connections are refused.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(5);
/// How long in-flight requests get to finish once listeners stop.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);
/// Upstream connect timeout (Envoy's default is 5s; 1s suits a cluster network).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Time from sending a request to the upstream's response headers (Envoy's default).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an unused upstream connection stays pooled.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub admin: AdminConfig,
    pub shutdown: ShutdownConfig,
    pub listeners: Vec<ListenerConfig>,
    pub clusters: Vec<ClusterConfig>,
    /// mTLS between sidecars (see [`crate::sidecar::mesh`]); none: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh: Option<crate::sidecar::mesh::MeshConfig>,
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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub routes: Vec<RouteConfig>,
    /// TLS termination (see [`crate::tls::config`]); none: plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::config::ListenerTls>,
    /// Serve connections captured by `skiff iptables` (the sidecar role).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture: Option<crate::sidecar::CaptureConfig>,
    /// One log line per request (or a sample of them); off when absent.
    pub access_log: Option<AccessLog>,
    /// What the listener's clients may send and hold (see [`crate::limits`]).
    pub limits: crate::limits::ListenerLimits,
}

/// The access log of a listener: a `skiff::access` line per request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AccessLog {
    /// The share of requests logged, in (0, 1].
    pub sample: f64,
}

/// One route: requests whose host and path match go to `cluster`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteConfig {
    pub host: Option<HostMatch>,
    pub path: PathMatch,
    /// Empty for a redirect route.
    pub cluster: String,
    /// Header matches, rewrites, header edits, timeout, redirect.
    #[serde(flatten)]
    pub rules: crate::gateway::RouteRules,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostMatch {
    /// `shop.example.com` (lowercase, no port).
    Exact(String),
    /// `*.example.com`: any host ending in `.example.com` (stored as `.example.com`).
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
}

/// The protocol spoken to a cluster's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with a keep-alive pool per endpoint.
    Http1,
    /// HTTP/2 (h2c), one multiplexed connection per endpoint.
    Http2,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timeouts {
    #[serde(serialize_with = "ser_duration")]
    pub connect: Duration,
    /// To response headers; zero disables it (long-lived streams).
    #[serde(serialize_with = "ser_duration")]
    pub request: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            request: DEFAULT_REQUEST_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// Per-cluster limits past which requests are refused at once (503 with
/// `x-skiff-overflow`), so a slow upstream cannot pile up unbounded work
/// in skiff. Envoy's circuit breakers, with its default thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CircuitBreaker {
    /// Requests in flight to the cluster (admitted, response not ended).
    pub max_requests: u32,
    /// Requests waiting for a new upstream connection to be established.
    pub max_pending: u32,
}

/// Envoy's default for both thresholds.
pub const DEFAULT_CIRCUIT_LIMIT: u32 = 1024;
/// Largest limit accepted.
const MAX_CIRCUIT_LIMIT: u64 = 1 << 24;

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            max_requests: DEFAULT_CIRCUIT_LIMIT,
            max_pending: DEFAULT_CIRCUIT_LIMIT,
        }
    }
}

/// How failed requests are tried again (Envoy's retry policy and
/// Linkerd's retry budget).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Retries {
    /// Retries after the first try (0: none).
    pub attempts: u32,
    /// Retries allowed as a share of requests, over the last seconds.
    pub budget_percent: u32,
    /// Retries always allowed per second, whatever the share.
    pub min_per_second: u32,
    /// Limit of each try to response headers (0s: the request timeout).
    #[serde(serialize_with = "ser_duration")]
    pub per_try_timeout: Duration,
    /// Base of the jittered exponential backoff between tries.
    #[serde(serialize_with = "ser_duration")]
    pub backoff: Duration,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            attempts: 2,
            budget_percent: 20,
            min_per_second: 10,
            per_try_timeout: Duration::ZERO,
            backoff: Duration::from_millis(25),
        }
    }
}

/// Passive ejection of failing endpoints (Envoy's outlier detection with
/// its defaults): after `consecutive_failures` 5xx responses or connect
/// failures in a row an endpoint takes no requests for
/// `base_ejection_time`, doubled at each new ejection up to
/// `max_ejection_time`; at most `max_ejection_percent` of the cluster (at
/// least one endpoint) is ejected at once.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OutlierDetection {
    /// 0 turns ejection off.
    pub consecutive_failures: u32,
    #[serde(serialize_with = "ser_duration")]
    pub base_ejection_time: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    }
}

/// Active health checking of every endpoint (Envoy's semantics): a check
/// every `interval` (`unhealthy_interval` while failing) plus up to
/// `jitter`; `unhealthy_threshold` failures in a row take an endpoint out
/// of rotation and `healthy_threshold` passes bring it back. A new
/// endpoint is checked at once and takes traffic after its first pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheck {
    #[serde(flatten)]
    pub kind: HealthCheckKind,
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub unhealthy_interval: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub jitter: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// What a health check does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    /// `GET path` on a kept-alive connection; passes on an expected status.
    Http {
        path: String,
        /// The `host` header; the cluster's name when not set (as Envoy).
        host: Option<String>,
        /// Inclusive status ranges that pass (200–399 by default, as
        /// Kubernetes' HTTP probes).
        #[serde(serialize_with = "ser_status_ranges")]
        expected_statuses: Vec<(u16, u16)>,
    },
    /// Passes when a TCP connection is established.
    Tcp,
}

fn ser_status_ranges<S: serde::Serializer>(r: &[(u16, u16)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(r.iter().map(|&(a, b)| {
        if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        }
    }))
}

/// Envoy's slow start: an endpoint that joins (or comes back healthy) gets
/// `weight · max(min_weight_percent, (t / window)^(1 / aggression))` of its
/// traffic share for `window`, so a cold pod is not flooded after a scale-up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SlowStart {
    /// 0s turns it off (the default).
    #[serde(serialize_with = "ser_duration")]
    pub window: Duration,
    pub aggression: f64,
    pub min_weight_percent: u32,
}

impl Default for SlowStart {
    fn default() -> Self {
        SlowStart {
            window: Duration::ZERO,
            aggression: 1.0,
            min_weight_percent: 10,
        }
    }
}

/// Below this share of endpoints taking traffic, a cluster balances over
/// all of them, ejected ones included (Envoy's panic threshold).
pub const DEFAULT_PANIC_THRESHOLD: u32 = 50;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterConfig {
    pub name: String,
    pub lb: LbPolicy,
    pub protocol: UpstreamProtocol,
    pub source: Source,
    pub timeouts: Timeouts,
    pub circuit_breaker: CircuitBreaker,
    pub retries: Retries,
    pub outlier_detection: OutlierDetection,
    /// Percent of endpoints that must take traffic; below it, panic mode.
    pub panic_threshold: u32,
    pub health_check: Option<HealthCheck>,
    pub slow_start: SlowStart,
    /// TLS to the endpoints (see [`crate::tls::config`]); none: plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::config::UpstreamTls>,
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// Formats a duration the way the config file writes them (`250ms`, `2s`).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
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
    /// Reads and validates the config file at `path`. Relative paths inside
    /// it (endpoint files) are taken relative to the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, &path.display().to_string(), base).map_err(ConfigError::Invalid)
    }

    /// Parses and validates config text; `file` names it in errors and
    /// `base` is the directory relative paths are resolved against.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<Config, Diagnostics> {
        let mut diags = Diagnostics::new(file);
        let root = match yaml::parse(text) {
            Ok(root) => root,
            Err(e) => {
                diags.syntax(e);
                return Err(diags);
            }
        };
        let config = read_config(&root, base, &mut diags);
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

const TOP_FIELDS: &[&str] = &["admin", "shutdown", "listeners", "clusters", "mesh"];

fn read_config(root: &Node, base: &Path, diags: &mut Diagnostics) -> Option<Config> {
    let mut map = MapReader::new(root, "", diags)?;
    let admin = match map.optional("admin") {
        Some(node) => read_admin(node, diags),
        None => Some(AdminConfig {
            listen: DEFAULT_ADMIN.parse().expect("default admin address parses"),
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
            read_cluster(n, p, base, d)
        }),
        None => Vec::new(),
    };
    let listeners_node = map.optional("listeners");
    let listeners = match listeners_node {
        Some(node) => read_list(node, "listeners", diags, |n, p, d| {
            read_listener(n, p, base, d)
        }),
        None => Vec::new(),
    };
    let mesh = match map.optional("mesh") {
        Some(node) => crate::sidecar::mesh::read_mesh(node, base, diags).map(Some),
        None => Some(None),
    };
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
                let node = field(node, "listen").unwrap_or(node);
                diags.error(
                    node,
                    &format!("listeners[{i}].listen"),
                    format!("{} is also the admin address", listener.listen),
                );
            }
        }
    }
    // Every route must name a cluster that exists. Checked on the raw
    // items, so a listener or cluster with another mistake still counts.
    let cluster_names: Vec<&str> = match clusters_node.map(|n| &n.value) {
        Some(yaml::Value::Seq(items)) => items
            .iter()
            .filter_map(|c| field(c, "name").and_then(Node::as_str))
            .collect(),
        _ => Vec::new(),
    };
    if let Some(yaml::Value::Seq(items)) = listeners_node.map(|n| &n.value) {
        for (li, listener) in items.iter().enumerate() {
            let Some(yaml::Value::Seq(routes)) = field(listener, "routes").map(|n| &n.value) else {
                continue;
            };
            for (ri, route) in routes.iter().enumerate() {
                let Some(node) = field(route, "cluster") else {
                    continue;
                };
                let Some(name) = node.as_str() else { continue };
                if !cluster_names.contains(&name) {
                    diags.error(
                        node,
                        &format!("listeners[{li}].routes[{ri}].cluster"),
                        format!("no cluster named `{name}`"),
                    );
                }
            }
        }
    }
    Some(Config {
        admin: admin?,
        shutdown: shutdown?,
        listeners: listeners.into_iter().map(|(_, l)| l).collect(),
        clusters: clusters.into_iter().map(|(_, c)| c).collect(),
        mesh: mesh?,
    })
}

/// The value of mapping field `name`, if `node` is a mapping that has it.
fn field<'a>(node: &'a Node, name: &str) -> Option<&'a Node> {
    match &node.value {
        yaml::Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(name))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// Reads each item of a list, keeping the node beside each value for later checks.
fn read_list<'a, T>(
    node: &'a Node,
    path: &str,
    diags: &mut Diagnostics,
    read: impl Fn(&'a Node, &str, &mut Diagnostics) -> Option<T>,
) -> Vec<(&'a Node, T)> {
    let Some(items) = yaml::seq(node, path, diags) else {
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
    let Some(yaml::Value::Seq(items)) = list.map(|n| &n.value) else {
        return;
    };
    let mut seen: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(value) = field(item, key).and_then(Node::as_str) else {
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
    let listen = map
        .optional("listen")
        .map(|n| endpoint_file::address(n, "admin.listen", diags))
        .unwrap_or_else(|| DEFAULT_ADMIN.parse().ok());
    map.finish(diags, &["listen"]);
    Some(AdminConfig { listen: listen? })
}

fn read_shutdown(node: &Node, diags: &mut Diagnostics) -> Option<ShutdownConfig> {
    let mut map = MapReader::new(node, "shutdown", diags)?;
    let drain_delay = optional_duration(&mut map, "drain_delay", DEFAULT_DRAIN_DELAY, diags);
    let grace_period = optional_duration(&mut map, "grace_period", DEFAULT_GRACE_PERIOD, diags);
    map.finish(diags, &["drain_delay", "grace_period"]);
    Some(ShutdownConfig {
        drain_delay: drain_delay?,
        grace_period: grace_period?,
    })
}

/// A whole number in `range` under `name`, or `default` when absent.
fn optional_uint(
    map: &mut MapReader<'_>,
    name: &str,
    range: std::ops::RangeInclusive<u64>,
    default: u32,
    diags: &mut Diagnostics,
) -> Option<u32> {
    let path = map.path_of(name);
    match map.optional(name) {
        Some(n) => yaml::uint(n, &path, range, diags).map(|v| v as u32),
        None => Some(default),
    }
}

fn optional_duration(
    map: &mut MapReader<'_>,
    name: &str,
    default: Duration,
    diags: &mut Diagnostics,
) -> Option<Duration> {
    let path = map.path_of(name);
    match map.optional(name) {
        Some(n) => yaml::duration(n, &path, diags),
        None => Some(default),
    }
}

/// Names of listeners and clusters appear in metric labels and URLs.
fn read_name(map: &mut MapReader<'_>, diags: &mut Diagnostics) -> Option<String> {
    let path = map.path_of("name");
    let node = map.required("name", diags)?;
    let name = yaml::string(node, &path, diags)?;
    let valid = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        diags.error(
            node,
            &path,
            format!("`{name}` is not a valid name (letters, digits, `-`, `_`, `.`; at most 128)"),
        );
        return None;
    }
    Some(name)
}

const LISTENER_FIELDS: &[&str] = &[
    "name",
    "listen",
    "routes",
    "tls",
    "capture",
    "access_log",
    "limits",
];

fn read_listener(
    node: &Node,
    path: &str,
    base: &Path,
    diags: &mut Diagnostics,
) -> Option<ListenerConfig> {
    let mut map = MapReader::new(node, path, diags)?;
    let name = read_name(&mut map, diags);
    let listen_path = map.path_of("listen");
    let listen = map
        .required("listen", diags)
        .and_then(|n| endpoint_file::address(n, &listen_path, diags));
    let capture_path = map.path_of("capture");
    let capture = map
        .optional("capture")
        .map(|n| crate::sidecar::read_capture(n, &capture_path, diags));
    let routes_path = map.path_of("routes");
    // A capture listener routes by original destination; routes optional.
    let routes_node = match capture {
        Some(_) => map.optional("routes"),
        None => map.required("routes", diags),
    };
    let routes = match routes_node {
        Some(n) => read_list(n, &routes_path, diags, read_route)
            .into_iter()
            .map(|(_, r)| r)
            .collect(),
        None => Vec::new(),
    };
    let access_path = map.path_of("access_log");
    let access_log = match map.optional("access_log") {
        None => Some(None),
        Some(n) => read_access_log(n, &access_path, diags).map(Some),
    };
    let limits_path = map.path_of("limits");
    let limits = match map.optional("limits") {
        Some(n) => crate::limits::read_listener_limits(n, &limits_path, diags),
        None => Some(crate::limits::ListenerLimits::default()),
    };
    let tls_path = map.path_of("tls");
    let tls = match map.optional("tls") {
        Some(n) => crate::tls::config::read_listener_tls(n, &tls_path, base, diags).map(Some),
        None => Some(None),
    };
    if let (Some(_), Some(n)) = (&capture, map.optional("tls")) {
        diags.error(
            n,
            &tls_path,
            "a capture listener passes the app's bytes on as sent; it cannot terminate TLS (for mTLS between sidecars, give the top-level `mesh:` section)",
        );
    }
    map.finish(diags, LISTENER_FIELDS);
    Some(ListenerConfig {
        name: name?,
        listen: listen?,
        routes,
        capture: capture.map(|c| c.ok_or(())).transpose().ok()?,
        access_log: access_log?,
        tls: tls?,
        limits: limits?,
    })
}

fn read_access_log(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<AccessLog> {
    let mut map = MapReader::new(node, path, diags)?;
    let sample_path = map.path_of("sample");
    let sample = match map.optional("sample") {
        None => Some(1.0),
        Some(n) => yaml::string(n, &sample_path, diags).and_then(|t| {
            let v = t
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| *v > 0.0 && *v <= 1.0);
            if v.is_none() {
                diags.error(
                    n,
                    &sample_path,
                    format!("expected a share in (0, 1] such as 0.01, found `{t}`"),
                );
            }
            v
        }),
    };
    map.finish(diags, &["sample"]);
    Some(AccessLog { sample: sample? })
}

fn read_route(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<RouteConfig> {
    let mut map = MapReader::new(node, path, diags)?;
    let match_path = map.path_of("match");
    let mut rules = crate::gateway::RouteRules::default();
    let matched = match map.optional("match") {
        Some(n) => read_match(n, &match_path, &mut rules, diags),
        None => Some((None, PathMatch::Prefix("/".into()))),
    };
    let rules_ok = crate::gateway::read_rules(&mut map, &mut rules, diags);
    let cluster_path = map.path_of("cluster");
    let cluster = match (map.optional("cluster"), &rules.redirect) {
        (Some(_), Some(_)) => {
            diags.error(node, path, "give `cluster` or `redirect`, not both");
            None
        }
        (Some(n), None) => yaml::string(n, &cluster_path, diags),
        (None, Some(_)) => Some(String::new()),
        (None, None) => {
            diags.error(node, path, "missing field `cluster` (or `redirect`)");
            None
        }
    };
    let mut fields = vec!["match", "cluster"];
    fields.extend(crate::gateway::RULE_FIELDS);
    map.finish(diags, &fields);
    let (host, path) = matched?;
    rules_ok?;
    Some(RouteConfig {
        host,
        path,
        cluster: cluster?,
        rules,
    })
}

fn read_match(
    node: &Node,
    path: &str,
    rules: &mut crate::gateway::RouteRules,
    diags: &mut Diagnostics,
) -> Option<(Option<HostMatch>, PathMatch)> {
    let mut map = MapReader::new(node, path, diags)?;
    let host_path = map.path_of("host");
    let host = map.optional("host").map(|n| {
        let text = yaml::string(n, &host_path, diags)?.to_ascii_lowercase();
        let (is_suffix, body) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let valid = !body.is_empty()
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !valid {
            diags.error(
                n,
                &host_path,
                format!("`{text}` is not a host name or `*.suffix` (no port, no scheme)"),
            );
            return None;
        }
        Some(if is_suffix {
            HostMatch::Suffix(format!(".{body}"))
        } else {
            HostMatch::Exact(body.to_string())
        })
    });
    let mut read_path = |name: &str, diags: &mut Diagnostics| -> Option<Option<String>> {
        let p = map.path_of(name);
        let n = map.optional(name)?;
        let text = yaml::string(n, &p, diags)?;
        if !text.starts_with('/') {
            diags.error(n, &p, format!("`{text}` must start with `/`"));
            return Some(None);
        }
        Some(Some(text))
    };
    let prefix = read_path("path_prefix", diags);
    let exact = read_path("path", diags);
    let path_match = match (prefix, exact) {
        (Some(_), Some(_)) => {
            diags.error(node, path, "give `path_prefix` or `path`, not both");
            None
        }
        (Some(p), None) => p.map(PathMatch::Prefix),
        (None, Some(p)) => p.map(PathMatch::Exact),
        (None, None) => Some(PathMatch::Prefix("/".into())),
    };
    let headers_path = map.path_of("headers");
    let headers = match map.optional("headers") {
        Some(n) => crate::gateway::read_header_matches(n, &headers_path, diags),
        None => Some(Vec::new()),
    };
    map.finish(diags, &["host", "path_prefix", "path", "headers"]);
    rules.headers = headers?;
    let host = match host {
        Some(h) => Some(h?),
        None => None,
    };
    Some((host, path_match?))
}

const CLUSTER_FIELDS: &[&str] = &[
    "name",
    "lb",
    "protocol",
    "endpoints",
    "discovery",
    "timeouts",
    "circuit_breaker",
    "retries",
    "outlier_detection",
    "panic_threshold",
    "health_check",
    "slow_start",
    "tls",
];

fn read_cluster(
    node: &Node,
    path: &str,
    base: &Path,
    diags: &mut Diagnostics,
) -> Option<ClusterConfig> {
    let mut map = MapReader::new(node, path, diags)?;
    let name = read_name(&mut map, diags);
    let lb_path = map.path_of("lb");
    let lb = match map.optional("lb") {
        None => Some(LbPolicy::LeastRequest),
        Some(n) => match yaml::string(n, &lb_path, diags)?.as_str() {
            "round_robin" => Some(LbPolicy::RoundRobin),
            "least_request" => Some(LbPolicy::LeastRequest),
            other => {
                diags.error(
                    n,
                    &lb_path,
                    format!("unknown policy `{other}` (expected round_robin or least_request)"),
                );
                None
            }
        },
    };
    let protocol_path = map.path_of("protocol");
    let protocol = match map.optional("protocol") {
        None => Some(UpstreamProtocol::Http1),
        Some(n) => match yaml::string(n, &protocol_path, diags)?.as_str() {
            "http1" => Some(UpstreamProtocol::Http1),
            "http2" => Some(UpstreamProtocol::Http2),
            other => {
                diags.error(
                    n,
                    &protocol_path,
                    format!("unknown protocol `{other}` (expected http1 or http2)"),
                );
                None
            }
        },
    };
    let endpoints_path = map.path_of("endpoints");
    let endpoints = map.optional("endpoints").map(|n| {
        let items = yaml::seq(n, &endpoints_path, diags)?;
        let mut out: Vec<skiff_discovery::EndpointSpec> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{endpoints_path}[{i}]");
            if let Some(spec) = endpoint_file::endpoint(item, &p, diags) {
                if out.iter().any(|e| e.address == spec.address) {
                    diags.error(item, &p, format!("{} is listed twice", spec.address));
                } else {
                    out.push(spec);
                }
            }
        }
        Some(out)
    });
    let discovery_path = map.path_of("discovery");
    let discovery = map
        .optional("discovery")
        .map(|n| read_discovery(n, &discovery_path, base, diags));
    let timeouts_path = map.path_of("timeouts");
    let timeouts = match map.optional("timeouts") {
        Some(n) => read_timeouts(n, &timeouts_path, diags),
        None => Some(Timeouts::default()),
    };
    let breaker_path = map.path_of("circuit_breaker");
    let circuit_breaker = match map.optional("circuit_breaker") {
        Some(n) => read_circuit_breaker(n, &breaker_path, diags),
        None => Some(CircuitBreaker::default()),
    };
    let retries_path = map.path_of("retries");
    let retries = match map.optional("retries") {
        Some(n) => read_retries(n, &retries_path, diags),
        None => Some(Retries::default()),
    };
    let outlier_path = map.path_of("outlier_detection");
    let outlier_detection = match map.optional("outlier_detection") {
        Some(n) => read_outlier_detection(n, &outlier_path, diags),
        None => Some(OutlierDetection::default()),
    };
    let panic_threshold = optional_uint(
        &mut map,
        "panic_threshold",
        0..=100,
        DEFAULT_PANIC_THRESHOLD,
        diags,
    );
    let health_path = map.path_of("health_check");
    let health_check = match map.optional("health_check") {
        Some(n) => read_health_check(n, &health_path, diags).map(Some),
        None => Some(None),
    };
    let slow_start_path = map.path_of("slow_start");
    let slow_start = match map.optional("slow_start") {
        Some(n) => read_slow_start(n, &slow_start_path, diags),
        None => Some(SlowStart::default()),
    };
    let tls_path = map.path_of("tls");
    let tls = match (map.optional("tls"), protocol) {
        (Some(n), Some(protocol)) => crate::tls::config::read_upstream_tls(
            n,
            &tls_path,
            base,
            protocol == UpstreamProtocol::Http2,
            diags,
        )
        .map(Some),
        (Some(_), None) => None,
        (None, _) => Some(None),
    };
    map.finish(diags, CLUSTER_FIELDS);
    let source = match (endpoints, discovery) {
        (Some(_), Some(_)) => {
            diags.error(node, path, "give `endpoints` or `discovery`, not both");
            None
        }
        (Some(e), None) => e.map(Source::Static),
        (None, Some(d)) => d,
        (None, None) => {
            diags.error(node, path, "missing field `endpoints` (or `discovery`)");
            None
        }
    };
    Some(ClusterConfig {
        name: name?,
        lb: lb?,
        protocol: protocol?,
        source: source?,
        timeouts: timeouts?,
        circuit_breaker: circuit_breaker?,
        retries: retries?,
        outlier_detection: outlier_detection?,
        panic_threshold: panic_threshold?,
        health_check: health_check?,
        slow_start: slow_start?,
        tls: tls?,
    })
}

fn read_health_check(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<HealthCheck> {
    let mut map = MapReader::new(node, path, diags)?;
    let http_path = map.path_of("http");
    let http = map.optional("http");
    let tcp = map.optional("tcp");
    let kind = match (http, tcp) {
        (Some(n), None) => read_http_check(n, &http_path, diags),
        (None, Some(_)) => Some(HealthCheckKind::Tcp),
        (Some(_), Some(_)) => {
            diags.error(node, path, "give `http` or `tcp`, not both");
            None
        }
        (None, None) => {
            diags.error(node, path, "missing field `http` (or `tcp: {}`)");
            None
        }
    };
    let positive =
        |d: Option<Duration>, name: &str, map: &MapReader<'_>, diags: &mut Diagnostics| {
            let d = d?;
            if d < Duration::from_millis(10) {
                diags.error(node, &map.path_of(name), "must be at least 10ms");
                return None;
            }
            Some(d)
        };
    let interval = optional_duration(&mut map, "interval", DEFAULT_HEALTH_INTERVAL, diags);
    let interval = positive(interval, "interval", &map, diags);
    let unhealthy_interval = match map.optional("unhealthy_interval") {
        Some(n) => yaml::duration(n, &map.path_of("unhealthy_interval"), diags),
        None => interval,
    };
    let unhealthy_interval = positive(unhealthy_interval, "unhealthy_interval", &map, diags);
    let timeout = optional_duration(&mut map, "timeout", DEFAULT_HEALTH_TIMEOUT, diags);
    let timeout = positive(timeout, "timeout", &map, diags);
    let jitter = optional_duration(&mut map, "jitter", Duration::ZERO, diags);
    let healthy_threshold = optional_uint(&mut map, "healthy_threshold", 1..=1000, 2, diags);
    let unhealthy_threshold = optional_uint(&mut map, "unhealthy_threshold", 1..=1000, 3, diags);
    map.finish(
        diags,
        &[
            "http",
            "tcp",
            "interval",
            "unhealthy_interval",
            "timeout",
            "jitter",
            "healthy_threshold",
            "unhealthy_threshold",
        ],
    );
    Some(HealthCheck {
        kind: kind?,
        interval: interval?,
        unhealthy_interval: unhealthy_interval?,
        timeout: timeout?,
        jitter: jitter?,
        healthy_threshold: healthy_threshold?,
        unhealthy_threshold: unhealthy_threshold?,
    })
}

fn read_http_check(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<HealthCheckKind> {
    let mut map = MapReader::new(node, path, diags)?;
    let path_path = map.path_of("path");
    let check_path = match map.optional("path") {
        None => Some("/".to_string()),
        Some(n) => yaml::string(n, &path_path, diags).and_then(|p| {
            let valid = p.starts_with('/') && p.bytes().all(|b| b.is_ascii_graphic());
            if !valid {
                diags.error(
                    n,
                    &path_path,
                    format!("`{p}` is not a request path (starts with `/`, no spaces)"),
                );
            }
            valid.then_some(p)
        }),
    };
    let host_path = map.path_of("host");
    let host = match map.optional("host") {
        None => Some(None),
        Some(n) => yaml::string(n, &host_path, diags).and_then(|h| {
            let valid = !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic());
            if !valid {
                diags.error(n, &host_path, format!("`{h}` is not a host name"));
            }
            valid.then_some(Some(h))
        }),
    };
    let statuses_path = map.path_of("expected_statuses");
    let expected_statuses = match map.optional("expected_statuses") {
        None => Some(vec![(200, 399)]),
        Some(n) => read_status_ranges(n, &statuses_path, diags),
    };
    map.finish(diags, &["path", "host", "expected_statuses"]);
    Some(HealthCheckKind::Http {
        path: check_path?,
        host: host?,
        expected_statuses: expected_statuses?,
    })
}

/// `[200, 204, 300-399]`: codes and inclusive ranges within 100–599.
fn read_status_ranges(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<Vec<(u16, u16)>> {
    let items = yaml::seq(node, path, diags)?;
    let mut ranges = Vec::with_capacity(items.len());
    let mut ok = !items.is_empty();
    if items.is_empty() {
        diags.error(node, path, "list at least one status");
    }
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(text) = yaml::string(item, &p, diags) else {
            ok = false;
            continue;
        };
        let parse = |t: &str| {
            t.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
        };
        let range = match text.split_once('-') {
            Some((a, b)) => parse(a).zip(parse(b)).filter(|(a, b)| a <= b),
            None => parse(&text).map(|c| (c, c)),
        };
        match range {
            Some(r) => ranges.push(r),
            None => {
                diags.error(
                    item,
                    &p,
                    format!("`{text}` is not a status or range like 200-299 (100..=599)"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(ranges)
}

fn read_slow_start(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<SlowStart> {
    let mut map = MapReader::new(node, path, diags)?;
    let defaults = SlowStart::default();
    let window = optional_duration(&mut map, "window", defaults.window, diags);
    let aggression_path = map.path_of("aggression");
    let aggression = match map.optional("aggression") {
        None => Some(defaults.aggression),
        Some(n) => yaml::string(n, &aggression_path, diags).and_then(|t| {
            let v = t
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.1 && *v <= 100.0);
            if v.is_none() {
                diags.error(
                    n,
                    &aggression_path,
                    format!("expected a number from 0.1 to 100, found `{t}`"),
                );
            }
            v
        }),
    };
    let min_weight_percent = optional_uint(
        &mut map,
        "min_weight_percent",
        1..=100,
        defaults.min_weight_percent,
        diags,
    );
    map.finish(diags, &["window", "aggression", "min_weight_percent"]);
    Some(SlowStart {
        window: window?,
        aggression: aggression?,
        min_weight_percent: min_weight_percent?,
    })
}

fn read_outlier_detection(
    node: &Node,
    path: &str,
    diags: &mut Diagnostics,
) -> Option<OutlierDetection> {
    let mut map = MapReader::new(node, path, diags)?;
    let defaults = OutlierDetection::default();
    let consecutive_failures = optional_uint(
        &mut map,
        "consecutive_failures",
        0..=1000,
        defaults.consecutive_failures,
        diags,
    );
    let max_ejection_percent = optional_uint(
        &mut map,
        "max_ejection_percent",
        0..=100,
        defaults.max_ejection_percent,
        diags,
    );
    let base_ejection_time = optional_duration(
        &mut map,
        "base_ejection_time",
        defaults.base_ejection_time,
        diags,
    );
    let max_ejection_time = optional_duration(
        &mut map,
        "max_ejection_time",
        defaults.max_ejection_time,
        diags,
    );
    map.finish(
        diags,
        &[
            "consecutive_failures",
            "base_ejection_time",
            "max_ejection_time",
            "max_ejection_percent",
        ],
    );
    Some(OutlierDetection {
        consecutive_failures: consecutive_failures?,
        base_ejection_time: base_ejection_time?,
        max_ejection_time: max_ejection_time?,
        max_ejection_percent: max_ejection_percent?,
    })
}

fn read_retries(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<Retries> {
    let mut map = MapReader::new(node, path, diags)?;
    let defaults = Retries::default();
    let attempts = optional_uint(&mut map, "attempts", 0..=10, defaults.attempts, diags);
    let budget_percent = optional_uint(
        &mut map,
        "budget_percent",
        0..=100,
        defaults.budget_percent,
        diags,
    );
    let min_per_second = optional_uint(
        &mut map,
        "min_per_second",
        0..=100_000,
        defaults.min_per_second,
        diags,
    );
    let per_try_timeout =
        optional_duration(&mut map, "per_try_timeout", defaults.per_try_timeout, diags);
    let backoff = optional_duration(&mut map, "backoff", defaults.backoff, diags);
    map.finish(
        diags,
        &[
            "attempts",
            "budget_percent",
            "min_per_second",
            "per_try_timeout",
            "backoff",
        ],
    );
    Some(Retries {
        attempts: attempts?,
        budget_percent: budget_percent?,
        min_per_second: min_per_second?,
        per_try_timeout: per_try_timeout?,
        backoff: backoff?,
    })
}

fn read_circuit_breaker(
    node: &Node,
    path: &str,
    diags: &mut Diagnostics,
) -> Option<CircuitBreaker> {
    let mut map = MapReader::new(node, path, diags)?;
    let range = 1..=MAX_CIRCUIT_LIMIT;
    let max_requests = optional_uint(
        &mut map,
        "max_requests",
        range.clone(),
        DEFAULT_CIRCUIT_LIMIT,
        diags,
    );
    let max_pending = optional_uint(&mut map, "max_pending", range, DEFAULT_CIRCUIT_LIMIT, diags);
    map.finish(diags, &["max_requests", "max_pending"]);
    Some(CircuitBreaker {
        max_requests: max_requests?,
        max_pending: max_pending?,
    })
}

fn read_discovery(node: &Node, path: &str, base: &Path, diags: &mut Diagnostics) -> Option<Source> {
    let mut map = MapReader::new(node, path, diags)?;
    let kubernetes_path = map.path_of("kubernetes");
    if let Some(n) = map.optional("kubernetes") {
        let target = read_kubernetes(n, &kubernetes_path, diags);
        map.finish(diags, &["kubernetes"]);
        return target.map(Source::Kubernetes);
    }
    let file_path = map.path_of("file");
    let file = map.optional("file").map(|n| {
        let text = yaml::string(n, &file_path, diags)?;
        let p = PathBuf::from(&text);
        Some(if p.is_absolute() { p } else { base.join(p) })
    });
    let interval_path = map.path_of("interval");
    let interval = match map.optional("interval") {
        Some(n) => yaml::duration(n, &interval_path, diags).and_then(|d| {
            if d < endpoint_file::MIN_POLL_INTERVAL {
                diags.error(n, &interval_path, "must be at least 10ms");
                None
            } else {
                Some(d)
            }
        }),
        None => Some(endpoint_file::POLL_INTERVAL),
    };
    map.finish(diags, &["file", "interval", "kubernetes"]);
    match file {
        Some(f) => Some(Source::File {
            path: f?,
            interval: interval?,
        }),
        None => {
            diags.error(node, path, "missing field `file` (or `kubernetes`)");
            None
        }
    }
}

/// Reads `{ namespace, service, port }`; `port` is a Service port name or
/// a number.
fn read_kubernetes(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<kubernetes::Target> {
    let mut map = MapReader::new(node, path, diags)?;
    let dns_label = |map: &mut MapReader<'_>, field: &str, diags: &mut Diagnostics| {
        let field_path = map.path_of(field);
        let n = map.required(field, diags)?;
        let text = yaml::string(n, &field_path, diags)?;
        if !is_dns_label(&text) {
            diags.error(
                n,
                &field_path,
                format!("`{text}` is not a Kubernetes name (lowercase letters, digits and `-`, at most 63)"),
            );
            return None;
        }
        Some(text)
    };
    let namespace = dns_label(&mut map, "namespace", diags);
    let service = dns_label(&mut map, "service", diags);
    let port_path = map.path_of("port");
    let port = map.required("port", diags).and_then(|n| {
        let text = yaml::string(n, &port_path, diags)?;
        // Port names must hold a letter (IANA_SVC_NAME), so digits are a number.
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return yaml::uint(n, &port_path, 1..=u16::MAX as u64, diags)
                .map(|p| kubernetes::ServicePort::Number(p as u16));
        }
        if text.len() > 15 || !is_dns_label(&text) {
            diags.error(
                n,
                &port_path,
                format!("`{text}` is neither a port number nor a Service port name"),
            );
            return None;
        }
        Some(kubernetes::ServicePort::Name(text))
    });
    map.finish(diags, &["namespace", "service", "port"]);
    Some(kubernetes::Target {
        namespace: namespace?,
        service: service?,
        port: port?,
    })
}

/// An RFC 1123 label, as Kubernetes namespace and Service names are.
fn is_dns_label(s: &str) -> bool {
    let ok_end = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    s.len() <= 63
        && ok_end(s.bytes().next())
        && ok_end(s.bytes().last())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn read_timeouts(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<Timeouts> {
    let mut map = MapReader::new(node, path, diags)?;
    let defaults = Timeouts::default();
    let connect = optional_duration(&mut map, "connect", defaults.connect, diags);
    let request = optional_duration(&mut map, "request", defaults.request, diags);
    let idle = optional_duration(&mut map, "idle", defaults.idle, diags);
    map.finish(diags, &["connect", "request", "idle"]);
    let connect = connect?;
    if connect.is_zero() {
        diags.error(node, &yaml::join(path, "connect"), "must be more than 0s");
        return None;
    }
    Some(Timeouts {
        connect,
        request: request?,
        idle: idle?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "skiff.yaml", Path::new("/etc/skiff")).map_err(|d| d.to_string())
    }

    const GOOD: &str = "\
admin: { listen: 127.0.0.1:9901 }
listeners:
  - name: web
    listen: 127.0.0.1:8080
    routes:
      - match: { host: shop.example.com, path_prefix: /products }
        cluster: catalog
      - match: { host: '*.example.com', path: /exact }
        cluster: catalog
clusters:
  - name: catalog
    lb: round_robin
    endpoints: [127.0.0.1:9001, { address: 127.0.0.1:9002, weight: 3 }]
    timeouts: { connect: 250ms, request: 2s }
  - name: orders
    discovery: { file: orders.yaml }
  - name: payments
    discovery: { kubernetes: { namespace: shop, service: payments, port: http } }
  - name: legacy
    discovery: { kubernetes: { namespace: shop, service: legacy, port: 8080 } }
";

    #[test]
    fn a_good_config_reads_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.listeners[0].routes.len(), 2);
        assert_eq!(
            c.listeners[0].routes[1].host,
            Some(HostMatch::Suffix(".example.com".into()))
        );
        let catalog = c.cluster("catalog").unwrap();
        assert_eq!(catalog.lb, LbPolicy::RoundRobin);
        assert_eq!(catalog.timeouts.connect, Duration::from_millis(250));
        assert_eq!(catalog.timeouts.idle, DEFAULT_IDLE_TIMEOUT);
        let orders = c.cluster("orders").unwrap();
        assert_eq!(orders.lb, LbPolicy::LeastRequest);
        assert_eq!(
            orders.source,
            Source::File {
                path: "/etc/skiff/orders.yaml".into(),
                interval: endpoint_file::POLL_INTERVAL
            }
        );
        assert_eq!(c.shutdown.drain_delay, DEFAULT_DRAIN_DELAY);
        assert_eq!(
            c.cluster("payments").unwrap().source,
            Source::Kubernetes(kubernetes::Target {
                namespace: "shop".into(),
                service: "payments".into(),
                port: kubernetes::ServicePort::Name("http".into()),
            })
        );
        assert!(matches!(
            &c.cluster("legacy").unwrap().source,
            Source::Kubernetes(t) if t.port == kubernetes::ServicePort::Number(8080)
        ));
    }

    #[test]
    fn kubernetes_discovery_mistakes_name_the_field() {
        let err = parse(
            "\
clusters:
  - name: a
    discovery: { kubernetes: { namespace: Shop, service: web, port: 70000 } }
  - name: b
    discovery: { kubernetes: { service: web, port: http_port, colour: red } }
",
        )
        .unwrap_err();
        for expected in [
            "skiff.yaml:3:43: clusters[0].discovery.kubernetes.namespace: `Shop` is not a Kubernetes name",
            "skiff.yaml:3:69: clusters[0].discovery.kubernetes.port: 70000 is out of range",
            "clusters[1].discovery.kubernetes: missing field `namespace`",
            "skiff.yaml:5:52: clusters[1].discovery.kubernetes.port: `http_port` is neither a port number nor a Service port name",
            "clusters[1].discovery.kubernetes.colour: unknown field",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
    }

    #[test]
    fn every_mistake_is_reported_at_once() {
        let err = parse(
            "\
listeners:
  - name: web
    listen: 127.0.0.1:1
    routes:
      - cluster: ghost
    colour: blue
  - name: web
    listen: 127.0.0.1:2
    routes: []
  - name: api
    listen: nowhere
    routes: []
clusters:
  - name: a
    endpoints: [127.0.0.1:1]
    timeouts: { connect: fast }
  - name: a
    lb: random
    endpoints: []
",
        )
        .unwrap_err();
        for expected in [
            "skiff.yaml:5:18: listeners[0].routes[0].cluster: no cluster named `ghost`",
            "skiff.yaml:6:5: listeners[0].colour: unknown field",
            "skiff.yaml:7:5: listeners[1]: duplicate listener name `web`",
            "skiff.yaml:11:13: listeners[2].listen: `nowhere` is not an address",
            "skiff.yaml:16:26: clusters[0].timeouts.connect: `fast` is not a duration",
            "skiff.yaml:17:5: clusters[1]: duplicate cluster name `a`",
            "skiff.yaml:18:9: clusters[1].lb: unknown policy `random`",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
    }

    #[test]
    fn circuit_breaker_limits_default_to_envoys_and_are_checked() {
        let base = "listeners:\n  - name: web\n    listen: 127.0.0.1:8080\n    routes:\n      - cluster: a\nclusters:\n  - name: a\n    endpoints: [127.0.0.1:1]\n";
        let config = parse(base).unwrap();
        assert_eq!(
            config.clusters[0].circuit_breaker,
            CircuitBreaker::default()
        );
        assert_eq!(CircuitBreaker::default().max_requests, 1024);

        let config = parse(&format!(
            "{base}    circuit_breaker: {{ max_requests: 10 }}\n"
        ))
        .unwrap();
        assert_eq!(config.clusters[0].circuit_breaker.max_requests, 10);
        assert_eq!(config.clusters[0].circuit_breaker.max_pending, 1024);

        let err = parse(&format!(
            "{base}    circuit_breaker: {{ max_requests: 0, max_pending: lots, max_retries: 3 }}\n"
        ))
        .unwrap_err();
        for expected in [
            "clusters[0].circuit_breaker.max_requests:",
            "clusters[0].circuit_breaker.max_pending:",
            "clusters[0].circuit_breaker.max_retries: unknown field",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
        assert!(err.starts_with("skiff.yaml:9:"), "{err}");
    }

    #[test]
    fn retry_policy_defaults_and_bounds() {
        let base = "listeners:\n  - name: web\n    listen: 127.0.0.1:8080\n    routes:\n      - cluster: a\nclusters:\n  - name: a\n    endpoints: [127.0.0.1:1]\n";
        let retries = parse(base).unwrap().clusters[0].retries;
        assert_eq!(
            (
                retries.attempts,
                retries.budget_percent,
                retries.min_per_second
            ),
            (2, 20, 10)
        );
        assert_eq!(retries.backoff, Duration::from_millis(25));

        let config = parse(&format!(
            "{base}    retries: {{ attempts: 0, per_try_timeout: 300ms }}\n"
        ))
        .unwrap();
        assert_eq!(config.clusters[0].retries.attempts, 0);
        assert_eq!(
            config.clusters[0].retries.per_try_timeout,
            Duration::from_millis(300)
        );

        let err = parse(&format!(
            "{base}    retries: {{ attempts: 11, budget_percent: 150, backoff: soon }}\n"
        ))
        .unwrap_err();
        for expected in [
            "clusters[0].retries.attempts:",
            "clusters[0].retries.budget_percent:",
            "clusters[0].retries.backoff: `soon` is not a duration",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
    }

    #[test]
    fn outlier_detection_and_panic_threshold_are_read_and_checked() {
        let base = "listeners:\n  - name: web\n    listen: 127.0.0.1:8080\n    routes:\n      - cluster: a\nclusters:\n  - name: a\n    endpoints: [127.0.0.1:1]\n";
        let cluster = &parse(base).unwrap().clusters[0];
        assert_eq!(cluster.outlier_detection, OutlierDetection::default());
        assert_eq!(cluster.panic_threshold, 50);

        let config = parse(&format!(
            "{base}    outlier_detection: {{ consecutive_failures: 3, base_ejection_time: 1s }}\n    panic_threshold: 0\n"
        ))
        .unwrap();
        let detection = config.clusters[0].outlier_detection;
        assert_eq!(detection.consecutive_failures, 3);
        assert_eq!(detection.base_ejection_time, Duration::from_secs(1));
        assert_eq!(detection.max_ejection_percent, 10);
        assert_eq!(config.clusters[0].panic_threshold, 0);

        let err = parse(&format!(
            "{base}    outlier_detection: {{ max_ejection_percent: 101, base_ejection_time: later }}\n    panic_threshold: half\n"
        ))
        .unwrap_err();
        for expected in [
            "skiff.yaml:9:",
            "clusters[0].outlier_detection.max_ejection_percent:",
            "clusters[0].outlier_detection.base_ejection_time: `later` is not a duration",
            "skiff.yaml:10:",
            "clusters[0].panic_threshold:",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
    }

    #[test]
    fn health_checks_and_slow_start_are_read_with_defaults_and_checked() {
        let base = "listeners:\n  - name: web\n    listen: 127.0.0.1:8080\n    routes:\n      - cluster: a\nclusters:\n  - name: a\n    endpoints: [127.0.0.1:1]\n";
        let cluster = &parse(base).unwrap().clusters[0];
        assert_eq!(cluster.health_check, None);
        assert!(cluster.slow_start.window.is_zero());

        let config = parse(&format!(
            "{base}    health_check: {{ http: {{ path: /healthz, expected_statuses: [200, 300-308] }}, interval: 2s, timeout: 500ms, unhealthy_threshold: 2 }}\n    slow_start: {{ window: 30s, aggression: 1.5 }}\n"
        ))
        .unwrap();
        let check = config.clusters[0].health_check.clone().unwrap();
        assert_eq!(
            check.kind,
            HealthCheckKind::Http {
                path: "/healthz".into(),
                host: None,
                expected_statuses: vec![(200, 200), (300, 308)],
            }
        );
        assert_eq!(check.interval, Duration::from_secs(2));
        assert_eq!(
            check.unhealthy_interval,
            Duration::from_secs(2),
            "defaults to interval"
        );
        assert_eq!(check.timeout, Duration::from_millis(500));
        assert_eq!((check.healthy_threshold, check.unhealthy_threshold), (2, 2));
        let slow_start = config.clusters[0].slow_start;
        assert_eq!(slow_start.window, Duration::from_secs(30));
        assert_eq!(slow_start.aggression, 1.5);
        assert_eq!(slow_start.min_weight_percent, 10);
        let tcp = parse(&format!("{base}    health_check: {{ tcp: {{}} }}\n")).unwrap();
        let tcp = tcp.clusters[0].health_check.clone().unwrap();
        assert_eq!(tcp.kind, HealthCheckKind::Tcp);
        assert_eq!(tcp.interval, DEFAULT_HEALTH_INTERVAL);

        let err = parse(&format!(
            "{base}    health_check: {{ http: {{ path: healthz, expected_statuses: [600, 299-200] }}, interval: 1ms }}\n    slow_start: {{ aggression: lots }}\n"
        ))
        .unwrap_err();
        for expected in [
            "clusters[0].health_check.http.path: `healthz` is not a request path",
            "clusters[0].health_check.http.expected_statuses[0]: `600` is not a status",
            "clusters[0].health_check.http.expected_statuses[1]: `299-200`",
            "clusters[0].health_check.interval: must be at least 10ms",
            "clusters[0].slow_start.aggression: expected a number",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
        let err = parse(&format!("{base}    health_check: {{ interval: 1s }}\n")).unwrap_err();
        assert!(
            err.contains("clusters[0].health_check: missing field `http`"),
            "{err}"
        );
    }

    #[test]
    fn a_route_to_a_missing_cluster_names_it() {
        let err = parse(
            "listeners:\n  - name: web\n    listen: 127.0.0.1:1\n    routes:\n      - cluster: ghost\nclusters: []\n",
        )
        .unwrap_err();
        assert_eq!(
            err,
            "skiff.yaml:5:18: listeners[0].routes[0].cluster: no cluster named `ghost`"
        );
    }

    #[test]
    fn syntax_errors_name_the_position() {
        let err = parse("listeners: [\n").unwrap_err();
        assert!(err.starts_with("skiff.yaml:"), "{err}");
    }
}
