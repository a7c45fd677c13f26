//! Route tables: from a request's host and path to a cluster.
//!
//! Routes are grouped by host pattern as Envoy groups virtual hosts: an
//! exact host first, then `*.suffix` patterns longest first, then routes
//! with no host. Within that order the first route whose path matches wins,
//! so a request for a known host that matches none of its paths falls
//! through to the host-less routes, as a reader of the flat config expects.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderMap;

use crate::cluster::Cluster;
use crate::metrics::{CodeCounters, Registry};
use crate::proxy::rules::{self, Edits, HeaderCheck};
use skiff_config::listener::ListenerConfig;
use skiff_config::route::HostMatch;
use skiff_config::route::PathMatch;
use skiff_config::route::Redirect;

/// A listener's routes as the request path reads them: its name (for the
/// access log), its table (swapped whole on reload), and the count of
/// requests that matched no route.
#[derive(Debug)]
pub(crate) struct ListenerRoutes {
    pub(crate) name: Arc<str>,
    pub(crate) table: ArcSwap<RouteTable>,
    pub(crate) unrouted: Arc<AtomicU64>,
}

/// One route, resolved: its cluster and its counter row are handles.
#[derive(Debug)]
pub struct Route {
    pub(crate) path: PathMatch,
    pub(crate) cluster: Arc<Cluster>,
    /// `skiff_requests_total{listener, cluster}`.
    pub(crate) requests: Arc<CodeCounters>,
    /// Header conditions, all of which must hold (usually none).
    pub(crate) headers: Box<[HeaderCheck]>,
    /// Rewrites and header edits; none for a plain route.
    pub(crate) edits: Option<Box<Edits>>,
    /// Overrides the cluster's request timeout.
    pub(crate) timeout: Option<Duration>,
    /// Largest request body forwarded (`413` past it).
    pub(crate) max_request_body: Option<u64>,
}

/// A route that answers with a redirect instead of forwarding.
#[derive(Debug)]
struct RedirectRoute {
    path: PathMatch,
    headers: Box<[HeaderCheck]>,
    redirect: Redirect,
}

#[derive(Debug)]
enum Entry {
    Forward(Route),
    Redirect(RedirectRoute),
}

/// What a request matched.
#[derive(Debug)]
pub enum Found<'a> {
    Route(&'a Route),
    Redirect(&'a Redirect),
}

#[inline]
fn path_matches(want: &PathMatch, path: &str) -> bool {
    match want {
        PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        PathMatch::Exact(p) => path == p,
    }
}

impl Entry {
    #[inline]
    fn matches(&self, path: &str, headers: &HeaderMap) -> bool {
        let (want, checks) = match self {
            Entry::Forward(r) => (&r.path, &r.headers),
            Entry::Redirect(r) => (&r.path, &r.headers),
        };
        path_matches(want, path) && checks.iter().all(|c| c.matches(headers))
    }

    #[inline]
    fn found(&self) -> Found<'_> {
        match self {
            Entry::Forward(r) => Found::Route(r),
            Entry::Redirect(r) => Found::Redirect(&r.redirect),
        }
    }
}

/// A listener's routes, ready for lookups.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// The listener's access log sampling, when on.
    pub(crate) access_log: Option<skiff_config::listener::AccessLog>,
    entries: Vec<Entry>,
    exact: HashMap<Box<str>, Vec<usize>>,
    /// (`.suffix`, route indices), longest suffix first.
    suffixes: Vec<(Box<str>, Vec<usize>)>,
    any_host: Vec<usize>,
}

/// A route names a cluster that is not running.
#[derive(Debug, thiserror::Error)]
#[error("listener `{listener}` routes to unknown cluster `{cluster}`")]
pub struct UnknownCluster {
    pub(crate) listener: String,
    pub(crate) cluster: String,
}

impl RouteTable {
    /// Builds the table for `listener`, resolving clusters by name.
    pub fn build(
        listener: &ListenerConfig,
        clusters: &HashMap<String, Arc<Cluster>>,
        registry: &Registry,
    ) -> Result<RouteTable, UnknownCluster> {
        let mut table = RouteTable::default();
        for (i, route) in listener.routes.iter().enumerate() {
            let headers = rules::header_checks(&route.rules.headers);
            let entry = match &route.rules.redirect {
                Some(redirect) => Entry::Redirect(RedirectRoute {
                    path: route.path.clone(),
                    headers,
                    redirect: redirect.clone(),
                }),
                None => {
                    let cluster = clusters.get(&route.cluster).ok_or_else(|| UnknownCluster {
                        listener: listener.name.clone(),
                        cluster: route.cluster.clone(),
                    })?;
                    Entry::Forward(Route {
                        path: route.path.clone(),
                        cluster: cluster.clone(),
                        requests: registry.requests(&listener.name, &route.cluster),
                        headers,
                        edits: Edits::of(&route.rules, &route.path),
                        timeout: route.rules.timeout,
                        max_request_body: route.rules.max_request_body,
                    })
                }
            };
            table.entries.push(entry);
            match &route.host {
                Some(HostMatch::Exact(h)) => {
                    table.exact.entry(h.as_str().into()).or_default().push(i)
                }
                Some(HostMatch::Suffix(s)) => {
                    match table.suffixes.iter_mut().find(|(k, _)| **k == **s) {
                        Some((_, list)) => list.push(i),
                        None => table.suffixes.push((s.as_str().into(), vec![i])),
                    }
                }
                None => table.any_host.push(i),
            }
        }
        table
            .suffixes
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Ok(table)
    }

    /// Finds the route for `host` (as sent: any case, maybe with a port),
    /// `path` and `headers`. A host no route names goes to the routes
    /// without a host (the default route), else nowhere (404).
    #[inline]
    pub fn find(&self, host: Option<&str>, path: &str, headers: &HeaderMap) -> Option<Found<'_>> {
        if let Some(host) = host {
            let host = normalize_host(host);
            if let Some(list) = self.exact.get(&*host) {
                if let Some(r) = self.first_match(list, path, headers) {
                    return Some(r);
                }
            }
            for (suffix, list) in &self.suffixes {
                if host.len() > suffix.len() && host.ends_with(&**suffix) {
                    if let Some(r) = self.first_match(list, path, headers) {
                        return Some(r);
                    }
                }
            }
        }
        self.first_match(&self.any_host, path, headers)
    }

    #[inline]
    fn first_match(&self, list: &[usize], path: &str, headers: &HeaderMap) -> Option<Found<'_>> {
        list.iter()
            .map(|&i| &self.entries[i])
            .find(|e| e.matches(path, headers))
            .map(Entry::found)
    }

    /// Every forwarding route, in config order.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Forward(r) => Some(r),
            Entry::Redirect(_) => None,
        })
    }
}

/// Lowercases and strips the port and a trailing dot; borrows when it can.
fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let without_port = if host.starts_with('[') {
        // [v6]:port
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rfind(':') {
            Some(colon) => &host[..colon],
            None => host,
        }
    };
    let trimmed = without_port.strip_suffix('.').unwrap_or(without_port);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        trimmed.to_ascii_lowercase().into()
    } else {
        trimmed.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_config::cluster::ClusterConfig;
    use skiff_config::cluster::LbPolicy;

    use skiff_config::endpoints::Source;
    use skiff_config::route::RouteConfig;

    fn table(routes: &[(Option<HostMatch>, PathMatch, &str)]) -> RouteTable {
        let mut clusters = HashMap::new();
        for (_, _, c) in routes {
            clusters.entry(c.to_string()).or_insert_with(|| {
                Arc::new(
                    Cluster::new(ClusterConfig {
                        lb: LbPolicy::RoundRobin,
                        ..ClusterConfig::new(c, Source::Static(vec![]))
                    })
                    .expect("a plaintext cluster"),
                )
            });
        }
        let listener = ListenerConfig {
            limits: Default::default(),
            name: "web".into(),
            listen: "127.0.0.1:1".parse().unwrap(),
            capture: None,
            access_log: None,
            routes: routes
                .iter()
                .map(|(h, p, c)| RouteConfig {
                    host: h.clone(),
                    path: p.clone(),
                    cluster: c.to_string(),
                    rules: Default::default(),
                })
                .collect(),
            tls: None,
        };
        RouteTable::build(&listener, &clusters, &Registry::default()).unwrap()
    }

    fn find<'a>(t: &'a RouteTable, host: Option<&str>, path: &str) -> Option<&'a str> {
        match t.find(host, path, &HeaderMap::new())? {
            Found::Route(r) => Some(&*r.cluster.name),
            Found::Redirect(_) => Some("redirect"),
        }
    }

    #[test]
    fn exact_host_beats_suffix_beats_any() {
        let t = table(&[
            (None, PathMatch::Prefix("/".into()), "any"),
            (
                Some(HostMatch::Suffix(".example.com".into())),
                PathMatch::Prefix("/".into()),
                "wild",
            ),
            (
                Some(HostMatch::Exact("shop.example.com".into())),
                PathMatch::Prefix("/products".into()),
                "shop",
            ),
        ]);
        assert_eq!(
            find(&t, Some("shop.example.com"), "/products/1"),
            Some("shop")
        );
        assert_eq!(
            find(&t, Some("SHOP.example.com:8080"), "/products"),
            Some("shop")
        );
        assert_eq!(find(&t, Some("shop.example.com"), "/orders"), Some("wild"));
        assert_eq!(find(&t, Some("a.b.example.com"), "/"), Some("wild"));
        assert_eq!(find(&t, Some("example.com"), "/"), Some("any"));
        assert_eq!(find(&t, None, "/x"), Some("any"));
    }

    #[test]
    fn exact_paths_and_prefixes_and_misses() {
        let t = table(&[
            (None, PathMatch::Exact("/healthz".into()), "health"),
            (None, PathMatch::Prefix("/api/".into()), "api"),
        ]);
        assert_eq!(find(&t, Some("h"), "/healthz"), Some("health"));
        assert_eq!(find(&t, Some("h"), "/healthz/x"), None);
        assert_eq!(find(&t, Some("h"), "/api/v1"), Some("api"));
        assert_eq!(find(&t, Some("h"), "/other"), None);
    }

    #[test]
    fn longest_suffix_wins() {
        let t = table(&[
            (
                Some(HostMatch::Suffix(".com".into())),
                PathMatch::Prefix("/".into()),
                "com",
            ),
            (
                Some(HostMatch::Suffix(".example.com".into())),
                PathMatch::Prefix("/".into()),
                "example",
            ),
        ]);
        assert_eq!(find(&t, Some("www.example.com"), "/"), Some("example"));
        assert_eq!(find(&t, Some("www.other.com"), "/"), Some("com"));
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Example.COM."), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("a.b:1"), "a.b");
    }
}
