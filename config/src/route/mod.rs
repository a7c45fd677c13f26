//! A listener's routes: which requests go where, and what a route does on
//! the way. Envoy's route features by Envoy's names where it has them,
//! and everything a Gateway API `HTTPRoute` rule can say (its objects are
//! translated into these):
//!
//! ```yaml
//! routes:
//!   - name: catalog-canary                  # shown in /config and the access log
//!     match:
//!       host: shop.example.com              # or *.example.com, or a list of them
//!       path_prefix: /api/                  # bytes; or path_separated_prefix: /api (whole
//!                                           # segments), path: /exact, path_regex: "/v[0-9]+/.*"
//!       method: GET
//!       headers: [{ name: x-canary, exact: "1" }, { name: authorization, present: true }]
//!       query: [{ name: color, regex: "red|blue" }]
//!     backends:                             # or `cluster: catalog` for one
//!       - { cluster: catalog, weight: 90 }
//!       - { cluster: catalog-v2, weight: 10, request_headers: { set: { x-version: "2" } } }
//!     rewrite: { path_prefix: /v2/, host: catalog.internal }   # or path: /full
//!     request_headers: { set: { x-gateway: skiff }, add: { via: skiff }, remove: [x-debug] }
//!     response_headers: { set: { cache-control: no-store } }   # on what the backends answer
//!     timeout: 5s                           # to response headers, instead of the cluster's
//!     max_request_body: 10MiB               # 413 past it
//!   - match: { path_prefix: / }
//!     redirect: { scheme: https, port: 8443, code: 301 }   # instead of backends
//! ```
//!
//! Regular expressions are Rust's `regex` dialect (linear time, RE2-like)
//! and match the whole path or value.

mod read;

pub(crate) use read::read_route;

use std::time::Duration;

use serde::Serialize;

use crate::units::{ser_optional_duration, ser_optional_size};

/// One route: requests that match go to its backends (or are redirected).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteConfig {
    /// Where the route came from, when it has a name: the config's
    /// `name`, or `HTTPRoute/shop/catalog/rule/0` for a translated one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The hosts it serves; empty: any host.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostMatch>,
    /// The hostname of the Gateway listener the route came from, for
    /// routes translated from the Gateway API: a request is routed only
    /// by the routes of the most specific listener hostname it matches
    /// (listener isolation). None: skiff's own routes, for any host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener_host: Option<HostMatch>,
    pub path: PathMatch,
    /// Upper case, as sent (`GET`); none: any method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// All must hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// All must hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<QueryMatch>,
    pub action: Action,
    /// Rewrites, header edits, timeout, body limit.
    #[serde(flatten)]
    pub rules: RouteRules,
}

impl RouteConfig {
    /// A route for `path` to one cluster, with nothing else.
    pub fn to_cluster(path: PathMatch, cluster: &str) -> RouteConfig {
        RouteConfig {
            name: None,
            hosts: Vec::new(),
            listener_host: None,
            path,
            method: None,
            headers: Vec::new(),
            query: Vec::new(),
            action: Action::Forward(vec![Backend::cluster(cluster)]),
            rules: RouteRules::default(),
        }
    }

    /// The clusters its backends and mirrors name.
    pub fn clusters(&self) -> impl Iterator<Item = &str> {
        let backends = match &self.action {
            Action::Forward(backends) => backends.as_slice(),
            Action::Redirect(_) => &[],
        };
        let mirrors = self.rules.mirrors.iter().map(|m| m.cluster.as_str());
        backends
            .iter()
            .filter_map(|b| b.cluster.as_deref())
            .chain(mirrors)
    }
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
    /// The path starts with these bytes (`/api` takes `/apis` too).
    Prefix(String),
    /// Whole segments (the Gateway API's `PathPrefix`): `/api` takes
    /// `/api` and `/api/x`, never `/apis`. Kept as written.
    SeparatedPrefix(String),
    Exact(String),
    /// The whole path matches this regular expression.
    Regex(String),
}

/// A condition on one request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderMatch {
    /// Lowercase header name.
    pub name: String,
    pub value: ValueMatch,
}

/// A condition on one query parameter (its first value, percent-decoded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueryMatch {
    /// Case-sensitive, as the Gateway API says.
    pub name: String,
    pub value: ValueMatch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueMatch {
    Exact(String),
    Prefix(String),
    /// The whole value matches this regular expression.
    Regex(String),
    /// There, whatever its value.
    Present,
    /// Not there.
    Absent,
}

/// What a route does with what it matches.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// To one of these, chosen by weight. None, or only weights of 0:
    /// every request is answered `500` (the Gateway API's rule for a
    /// rule with nothing to send to).
    Forward(Vec<Backend>),
    /// Answered with a redirect.
    Redirect(Redirect),
}

/// One backend of a route.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backend {
    /// None: the backend could not be resolved (a Gateway API backend
    /// reference to nothing); its share of requests is answered `500`.
    pub cluster: Option<String>,
    /// Its share is `weight` over the sum of the route's weights.
    pub weight: u32,
    /// Edits made only when this backend is the one chosen, after the
    /// route's.
    #[serde(skip_serializing_if = "HeaderEdits::is_empty")]
    pub request_headers: HeaderEdits,
    #[serde(skip_serializing_if = "HeaderEdits::is_empty")]
    pub response_headers: HeaderEdits,
}

impl Backend {
    /// `cluster`, weight 1, no edits.
    pub fn cluster(cluster: &str) -> Backend {
        Backend {
            cluster: Some(cluster.to_string()),
            weight: 1,
            request_headers: HeaderEdits::default(),
            response_headers: HeaderEdits::default(),
        }
    }
}

/// Header edits, the Gateway API's `HeaderModifier`: `remove` every value
/// of a name, `set` one value in place of any, `add` a value after any
/// there are. Names are lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct HeaderEdits {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// A new path for a request (rewritten or redirected).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathRewrite {
    /// The part the route's prefix matched is replaced with this.
    Prefix(String),
    /// The whole path is replaced (the query stays).
    Full(String),
}

/// What a route changes in the request's URL before it leaves.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Rewrite {
    /// The `Host` (or `:authority`) sent upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
}

/// Where a redirect route sends clients. What it leaves unset stays as
/// the request had it; the port follows the Gateway API's rule: the one
/// given, else the scheme's default when the scheme is given, else the
/// listener's own port, and a scheme's default port is never written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Redirect {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    /// 301, 302, 303, 307 or 308.
    pub code: u16,
}

/// A route's CORS policy (the Gateway API's `CORS` filter, Envoy's CORS
/// filter). `*` in a list allows anything; an origin may be
/// `https://*.example.com` (any name under it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cors {
    pub allow_origins: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight's answer.
    #[serde(serialize_with = "crate::units::ser_duration")]
    pub max_age: Duration,
}

impl Cors {
    /// Whether `origin` is a valid entry of `allow_origins`: `*`, or
    /// `scheme://host[:port]` whose host may start with `*.`.
    pub fn valid_origin(origin: &str) -> bool {
        if origin == "*" {
            return true;
        }
        let Some((scheme, rest)) = origin.split_once("://") else {
            return false;
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        };
        let host = host.strip_prefix("*.").unwrap_or(host);
        !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            && !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
            && port.is_none_or(|p| p.parse::<u16>().is_ok())
    }
}

/// A cluster that gets copies of a route's requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mirror {
    pub cluster: String,
    /// Of every million requests, how many are copied (1,000,000: all).
    pub per_million: u32,
}

/// A route's own retry policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteRetries {
    /// Retries after the first try.
    pub attempts: u32,
    /// Statuses answered that are tried again (502, 503 and 504 when the
    /// route does not say).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub status_codes: Vec<u16>,
    /// The least wait before a retry; none: the cluster's.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_optional_duration"
    )]
    pub backoff: Option<Duration>,
}

/// The parts of one route beyond its match and its backends.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct RouteRules {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    #[serde(skip_serializing_if = "HeaderEdits::is_empty")]
    pub request_headers: HeaderEdits,
    #[serde(skip_serializing_if = "HeaderEdits::is_empty")]
    pub response_headers: HeaderEdits,
    /// To response headers, instead of the cluster's request timeout.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_optional_duration"
    )]
    pub timeout: Option<Duration>,
    /// To response headers, each try, instead of the cluster's
    /// `retries.per_try_timeout` (the Gateway API's `backendRequest`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_optional_duration"
    )]
    pub per_try_timeout: Option<Duration>,
    /// How this route's requests are tried again, instead of the
    /// cluster's attempts, statuses and backoff (the retry budget stays
    /// the cluster's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<RouteRetries>,
    /// Clusters that get a copy of (a share of) the requests, fire and
    /// forget: their answers are dropped, and they never slow the
    /// request itself.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    /// Cross-origin requests from browsers: preflights answered by skiff,
    /// the answers of allowed origins marked so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// Largest request body forwarded (`413` past it); none: no limit.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_optional_size"
    )]
    pub max_request_body: Option<u64>,
}
