//! A cluster's config: where its endpoints come from, how requests are
//! balanced over them and sent, and the Envoy-style policies that guard
//! them (timeouts, circuit breaking, retries, outlier detection, health
//! checks, slow start), each with Envoy's defaults unless it says otherwise.
//!
//! ```yaml
//! clusters:
//!   - name: catalog
//!     lb: least_request                      # or round_robin
//!     protocol: http1                        # or http2 (h2c)
//!     endpoints: [10.0.0.1:8080, { address: 10.0.0.2:8080, weight: 2 }]
//!     # discovery: { kubernetes: { namespace: shop, service: catalog, port: http } }
//!     # discovery: { file: endpoints.yaml, interval: 250ms }
//!     timeouts: { connect: 1s, request: 15s, idle: 60s }
//!     circuit_breaker: { max_requests: 1024, max_pending: 1024 }
//!     retries: { attempts: 2, budget_percent: 20, min_per_second: 10, per_try_timeout: 0s, backoff: 25ms }
//!     outlier_detection: { consecutive_failures: 5, base_ejection_time: 30s }
//!     health_check: { http: { path: /healthz }, interval: 5s }
//!     slow_start: { window: 30s }
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::endpoints::{self, ServicePort, ServiceTarget, Source};
use crate::read;
use crate::tls::{self, Context, UpstreamTls};
use crate::units::ser_duration;
use crate::yaml::{self, Diagnostics, MapReader, Node};

/// Upstream connect timeout (Envoy's default is 5s; 1s suits a cluster network).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Time from sending a request to the upstream's response headers (Envoy's default).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an unused upstream connection stays pooled.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Envoy's default for both circuit breaker thresholds.
pub const DEFAULT_CIRCUIT_LIMIT: u32 = 1024;
/// Largest circuit breaker limit accepted.
const MAX_CIRCUIT_LIMIT: u64 = 1 << 24;
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// The shortest health check interval or timeout accepted.
const MIN_HEALTH_PERIOD: Duration = Duration::from_millis(10);
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
    /// TLS to the endpoints; none: plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

impl ClusterConfig {
    /// A cluster of `source` with every setting at its default, as the
    /// config file reads one that names only `name` and its endpoints.
    pub fn new(name: &str, source: Source) -> ClusterConfig {
        ClusterConfig {
            name: name.to_string(),
            lb: LbPolicy::LeastRequest,
            protocol: UpstreamProtocol::Http1,
            source,
            timeouts: Timeouts::default(),
            circuit_breaker: CircuitBreaker::default(),
            retries: Retries::default(),
            outlier_detection: OutlierDetection::default(),
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
            health_check: None,
            slow_start: SlowStart::default(),
            tls: None,
        }
    }
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
    /// An unused pooled connection is closed after this.
    #[serde(serialize_with = "ser_duration")]
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            request: DEFAULT_REQUEST_TIMEOUT,
            idle: DEFAULT_POOL_IDLE_TIMEOUT,
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

/// A field that names one of a few choices: reads it, or reports which
/// choices there are.
fn choice<T: Copy>(
    map: &mut MapReader<'_>,
    name: &str,
    what: &str,
    choices: &[(&str, T)],
    default: T,
    diags: &mut Diagnostics,
) -> Option<T> {
    let path = map.path_of(name);
    let Some(n) = map.optional(name) else {
        return Some(default);
    };
    let text = read::string(n, &path, diags)?;
    if let Some(&(_, value)) = choices.iter().find(|(c, _)| *c == text) {
        return Some(value);
    }
    let names: Vec<&str> = choices.iter().map(|(c, _)| *c).collect();
    diags.error(
        n,
        &path,
        format!("unknown {what} `{text}` (expected {})", names.join(" or ")),
    );
    None
}

pub(crate) fn read_cluster(
    node: &Node,
    path: &str,
    cx: &Context<'_>,
    diags: &mut Diagnostics,
) -> Option<ClusterConfig> {
    let mut map = MapReader::new(node, path, diags)?;
    let name = read::name(&mut map, diags);
    let lb = choice(
        &mut map,
        "lb",
        "policy",
        &[
            ("round_robin", LbPolicy::RoundRobin),
            ("least_request", LbPolicy::LeastRequest),
        ],
        LbPolicy::LeastRequest,
        diags,
    );
    let protocol = choice(
        &mut map,
        "protocol",
        "protocol",
        &[
            ("http1", UpstreamProtocol::Http1),
            ("http2", UpstreamProtocol::Http2),
        ],
        UpstreamProtocol::Http1,
        diags,
    );
    let endpoints_path = map.path_of("endpoints");
    let endpoints = map
        .optional("endpoints")
        .map(|n| endpoints::endpoint_list(n, &endpoints_path, diags));
    let discovery_path = map.path_of("discovery");
    let discovery = map
        .optional("discovery")
        .map(|n| read_discovery(n, &discovery_path, cx, diags));
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
    let panic_threshold = map.uint_or("panic_threshold", 0..=100, DEFAULT_PANIC_THRESHOLD, diags);
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
    let tls = match map.optional("tls") {
        Some(n) => tls::read_upstream_tls(n, &tls_path, cx, diags).map(Some),
        None => Some(None),
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
    let interval = map.duration_at_least(
        "interval",
        MIN_HEALTH_PERIOD,
        DEFAULT_HEALTH_INTERVAL,
        diags,
    );
    // While failing, checks come as often as otherwise unless told.
    let unhealthy_interval = match interval {
        Some(interval) => {
            map.duration_at_least("unhealthy_interval", MIN_HEALTH_PERIOD, interval, diags)
        }
        None => {
            map.optional("unhealthy_interval");
            None
        }
    };
    let timeout =
        map.duration_at_least("timeout", MIN_HEALTH_PERIOD, DEFAULT_HEALTH_TIMEOUT, diags);
    let jitter = map.duration_or("jitter", Duration::ZERO, diags);
    let healthy_threshold = map.uint_or("healthy_threshold", 1..=1000, 2, diags);
    let unhealthy_threshold = map.uint_or("unhealthy_threshold", 1..=1000, 3, diags);
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
        Some(n) => read::string(n, &path_path, diags).and_then(|p| {
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
        Some(n) => read::string(n, &host_path, diags).and_then(|h| {
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
    let items = read::seq(node, path, diags)?;
    let mut ranges = Vec::with_capacity(items.len());
    let mut ok = !items.is_empty();
    if items.is_empty() {
        diags.error(node, path, "list at least one status");
    }
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(text) = read::string(item, &p, diags) else {
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
    let window = map.duration_or("window", defaults.window, diags);
    let aggression_path = map.path_of("aggression");
    let aggression = match map.optional("aggression") {
        None => Some(defaults.aggression),
        Some(n) => read::string(n, &aggression_path, diags).and_then(|t| {
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
    let min_weight_percent = map.uint_or(
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
    let consecutive_failures = map.uint_or(
        "consecutive_failures",
        0..=1000,
        defaults.consecutive_failures,
        diags,
    );
    let max_ejection_percent = map.uint_or(
        "max_ejection_percent",
        0..=100,
        defaults.max_ejection_percent,
        diags,
    );
    let base_ejection_time =
        map.duration_or("base_ejection_time", defaults.base_ejection_time, diags);
    let max_ejection_time = map.duration_or("max_ejection_time", defaults.max_ejection_time, diags);
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
    let attempts = map.uint_or("attempts", 0..=10, defaults.attempts, diags);
    let budget_percent = map.uint_or("budget_percent", 0..=100, defaults.budget_percent, diags);
    let min_per_second = map.uint_or(
        "min_per_second",
        0..=100_000,
        defaults.min_per_second,
        diags,
    );
    let per_try_timeout = map.duration_or("per_try_timeout", defaults.per_try_timeout, diags);
    let backoff = map.duration_or("backoff", defaults.backoff, diags);
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
    let max_requests = map.uint_or("max_requests", range.clone(), DEFAULT_CIRCUIT_LIMIT, diags);
    let max_pending = map.uint_or("max_pending", range, DEFAULT_CIRCUIT_LIMIT, diags);
    map.finish(diags, &["max_requests", "max_pending"]);
    Some(CircuitBreaker {
        max_requests: max_requests?,
        max_pending: max_pending?,
    })
}

fn read_discovery(
    node: &Node,
    path: &str,
    cx: &Context<'_>,
    diags: &mut Diagnostics,
) -> Option<Source> {
    let mut map = MapReader::new(node, path, diags)?;
    let kubernetes_path = map.path_of("kubernetes");
    if let Some(n) = map.optional("kubernetes") {
        let target = read_kubernetes(n, &kubernetes_path, diags);
        map.finish(diags, &["kubernetes"]);
        return target.map(Source::Kubernetes);
    }
    let file_path = map.path_of("file");
    let file = map.optional("file").map(|n| {
        let text = read::string(n, &file_path, diags)?;
        let p = PathBuf::from(&text);
        Some(if p.is_absolute() { p } else { cx.base.join(p) })
    });
    let interval = map.duration_at_least(
        "interval",
        endpoints::MIN_POLL_INTERVAL,
        endpoints::POLL_INTERVAL,
        diags,
    );
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
fn read_kubernetes(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<ServiceTarget> {
    let mut map = MapReader::new(node, path, diags)?;
    let dns_label = |map: &mut MapReader<'_>, field: &str, diags: &mut Diagnostics| {
        let field_path = map.path_of(field);
        let n = map.required(field, diags)?;
        let text = read::string(n, &field_path, diags)?;
        if !read::is_dns_label(&text) {
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
        let text = read::string(n, &port_path, diags)?;
        // Port names must hold a letter (IANA_SVC_NAME), so digits are a number.
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return read::uint(n, &port_path, 1..=u16::MAX as u64, diags)
                .map(|p| ServicePort::Number(p as u16));
        }
        if text.len() > 15 || !read::is_dns_label(&text) {
            diags.error(
                n,
                &port_path,
                format!("`{text}` is neither a port number nor a Service port name"),
            );
            return None;
        }
        Some(ServicePort::Name(text))
    });
    map.finish(diags, &["namespace", "service", "port"]);
    Some(ServiceTarget {
        namespace: namespace?,
        service: service?,
        port: port?,
    })
}

fn read_timeouts(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<Timeouts> {
    let mut map = MapReader::new(node, path, diags)?;
    let defaults = Timeouts::default();
    let connect = map.duration_or("connect", defaults.connect, diags);
    let request = map.duration_or("request", defaults.request, diags);
    let idle = map.duration_or("idle", defaults.idle, diags);
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

    #[test]
    fn a_cluster_that_names_only_its_endpoints_has_the_defaults() {
        let text = "clusters:\n  - name: a\n    endpoints: [127.0.0.1:1]\n";
        let config = crate::Config::parse(text, "c.yaml", std::path::Path::new(".")).unwrap();
        let spec = crate::endpoints::EndpointSpec::new("127.0.0.1:1".parse().unwrap(), 1);
        assert_eq!(
            config.clusters[0],
            ClusterConfig::new("a", Source::Static(vec![spec]))
        );
    }
}
