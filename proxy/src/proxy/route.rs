//! A listener's route table: [`skiff_route::Table`] (host, path and
//! header matching, in `route/`) with what a forwarding route does in the
//! proxy: its cluster, its counter row, its edits and limits.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use skiff_config::listener::ListenerConfig;
use skiff_config::route::{Action, Backend, PathMatch, Redirect, RouteConfig};
use skiff_route::{BadPattern, Lookup};

use crate::cluster::balance::random;
use crate::cluster::Cluster;
use crate::metrics::{CodeCounters, Registry};
use crate::proxy::rules::{Edits, HeaderOps};

/// A listener's routes as the request path reads them: its name (for the
/// access log), its table (swapped whole on reload), and the count of
/// requests that matched no route.
#[derive(Debug)]
pub(crate) struct ListenerRoutes {
    pub(crate) name: Arc<str>,
    pub(crate) table: ArcSwap<RouteTable>,
    pub(crate) unrouted: Arc<AtomicU64>,
}

/// One way a route forwards, resolved: its cluster and its counter row
/// are handles. A route with several backends has one of these for each.
#[derive(Debug)]
pub struct Route {
    pub(crate) cluster: Arc<Cluster>,
    /// `skiff_requests_total{listener, cluster}`.
    pub(crate) requests: Arc<CodeCounters>,
    /// `skiff_route_requests_total{listener, route}`, when it has a name.
    pub(crate) named: Option<Arc<CodeCounters>>,
    /// Rewrites and request header edits; none for a plain route.
    pub(crate) edits: Option<Box<Edits>>,
    /// Response header edits; none for a plain route.
    pub(crate) response: Option<Box<HeaderOps>>,
    /// Overrides the cluster's request timeout.
    pub(crate) timeout: Option<Duration>,
    /// Overrides the cluster's per-try timeout.
    pub(crate) per_try_timeout: Option<Duration>,
    /// Overrides the cluster's retry attempts, statuses and backoff.
    pub(crate) retries: Option<Box<skiff_config::route::RouteRetries>>,
    /// Clusters that get copies of its requests (empty: none; no
    /// allocation).
    pub(crate) mirrors: Box<[crate::proxy::forward::mirror::Mirror]>,
    /// Cross-origin requests: preflights answered, answers marked.
    pub(crate) cors: Option<Box<crate::proxy::cors::CorsPolicy>>,
    /// Largest request body forwarded (`413` past it).
    pub(crate) max_request_body: Option<u64>,
}

impl Route {
    /// Counts an answer with `status`, by cluster and by route name.
    #[inline]
    pub(crate) fn record(&self, status: u16) {
        self.requests.record(status);
        if let Some(named) = &self.named {
            named.record(status);
        }
    }
}

/// Backends chosen by weight, request by request.
#[derive(Debug)]
pub struct Split {
    /// (the running sum of weights up to and including this backend, the
    /// backend); a backend that could not be resolved is `None`.
    choices: Box<[(u64, Option<Route>)]>,
    total: u64,
}

impl Split {
    /// The backend this request goes to; `None` when its share is to be
    /// answered `500` (an unresolved backend, or no weight at all).
    #[inline]
    pub(crate) fn pick(&self) -> Option<&Route> {
        if self.total == 0 {
            return None;
        }
        let ticket = random() % self.total;
        let i = self.choices.partition_point(|(upto, _)| *upto <= ticket);
        self.choices.get(i)?.1.as_ref()
    }

    /// Every resolved backend.
    pub(crate) fn routes(&self) -> impl Iterator<Item = &Route> {
        self.choices.iter().filter_map(|(_, r)| r.as_ref())
    }
}

/// A redirect route: where to, and how it matched (a prefix redirect
/// replaces what the prefix matched).
#[derive(Debug)]
pub struct RedirectTo {
    pub(crate) redirect: Redirect,
    pub(crate) matched: PathMatch,
}

/// What a route does with the requests it matches.
#[derive(Debug)]
pub enum Target {
    /// Forwards to one backend (the common case, one branch).
    Route(Route),
    /// Forwards to one of several by weight.
    Split(Split),
    /// Answers with a redirect instead of forwarding.
    Redirect(RedirectTo),
}

/// A listener's routes, ready for lookups.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// The listener's access log sampling, when on.
    pub(crate) access_log: Option<skiff_config::listener::AccessLog>,
    /// The port and scheme clients reach the listener by, which a
    /// redirect that keeps them writes.
    pub(crate) port: u16,
    pub(crate) tls: bool,
    table: skiff_route::Table<Target>,
}

/// A route that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("listener `{listener}` routes to unknown cluster `{cluster}`")]
    UnknownCluster { listener: String, cluster: String },
    #[error("listener `{listener}`: {error}")]
    Pattern { listener: String, error: BadPattern },
}

impl From<BadPattern> for RouteError {
    fn from(error: BadPattern) -> RouteError {
        RouteError::Pattern {
            listener: String::new(),
            error,
        }
    }
}

impl RouteTable {
    /// Builds the table for `listener`, resolving clusters by name.
    pub fn build(
        listener: &ListenerConfig,
        clusters: &HashMap<String, Arc<Cluster>>,
        registry: &Registry,
    ) -> Result<RouteTable, RouteError> {
        let table = skiff_route::from_config(&listener.routes, |route| {
            let backends = match &route.action {
                Action::Redirect(redirect) => {
                    return Ok(Target::Redirect(RedirectTo {
                        redirect: redirect.clone(),
                        matched: route.path.clone(),
                    }))
                }
                Action::Forward(backends) => backends,
            };
            let resolve = |backend: &Backend| match &backend.cluster {
                None => Ok(None),
                Some(name) => {
                    backend_route(listener, route, backend, name, clusters, registry).map(Some)
                }
            };
            if let [one] = backends.as_slice() {
                if one.weight > 0 {
                    if let Some(route) = resolve(one)? {
                        return Ok(Target::Route(route));
                    }
                }
            }
            let mut total = 0;
            let mut choices = Vec::with_capacity(backends.len());
            for backend in backends.iter().filter(|b| b.weight > 0) {
                total += u64::from(backend.weight);
                choices.push((total, resolve(backend)?));
            }
            Ok(Target::Split(Split {
                choices: choices.into(),
                total,
            }))
        })
        .map_err(|e| match e {
            RouteError::Pattern { error, .. } => RouteError::Pattern {
                listener: listener.name.clone(),
                error,
            },
            other => other,
        })?;
        Ok(RouteTable {
            access_log: None,
            port: listener.advertised_port.unwrap_or(listener.listen.port()),
            tls: listener.tls.is_some(),
            table,
        })
    }

    /// What the request `req` describes goes to ([`skiff_route::Table::find`]).
    #[inline]
    pub fn find(&self, req: &Lookup<'_>) -> Option<&Target> {
        self.table.find(req)
    }

    /// Every forwarding route (each backend of a split), in config order.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.table.targets().flat_map(|t| {
            let (one, split) = match t {
                Target::Route(route) => (Some(route), None),
                Target::Split(split) => (None, Some(split.routes())),
                Target::Redirect(_) => (None, None),
            };
            one.into_iter().chain(split.into_iter().flatten())
        })
    }
}

/// The run-time form of one backend of a config route.
fn backend_route(
    listener: &ListenerConfig,
    route: &RouteConfig,
    backend: &Backend,
    name: &str,
    clusters: &HashMap<String, Arc<Cluster>>,
    registry: &Registry,
) -> Result<Route, RouteError> {
    let cluster = clusters
        .get(name)
        .ok_or_else(|| RouteError::UnknownCluster {
            listener: listener.name.clone(),
            cluster: name.to_string(),
        })?;
    let rules = &route.rules;
    let mut mirrors = Vec::with_capacity(rules.mirrors.len());
    for m in &rules.mirrors {
        let cluster = clusters
            .get(&m.cluster)
            .ok_or_else(|| RouteError::UnknownCluster {
                listener: listener.name.clone(),
                cluster: m.cluster.clone(),
            })?;
        mirrors.push(crate::proxy::forward::mirror::Mirror {
            cluster: cluster.clone(),
            requests: registry.requests(&listener.name, &m.cluster),
            per_million: m.per_million,
        });
    }
    Ok(Route {
        cluster: cluster.clone(),
        requests: registry.requests(&listener.name, name),
        named: (route.name.as_deref()).map(|n| registry.route_requests(&listener.name, n)),
        edits: Edits::of(
            rules.rewrite.as_ref(),
            &route.path,
            &[&rules.request_headers, &backend.request_headers],
        ),
        response: HeaderOps::of(&[&rules.response_headers, &backend.response_headers]),
        timeout: rules.timeout,
        per_try_timeout: rules.per_try_timeout,
        retries: rules.retries.clone().map(Box::new),
        mirrors: mirrors.into_boxed_slice(),
        cors: (rules.cors.as_ref()).map(|c| Box::new(crate::proxy::cors::CorsPolicy::of(c))),
        max_request_body: rules.max_request_body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_config::cluster::ClusterConfig;
    use skiff_config::endpoints::Source;

    fn listener(clusters: &[&str]) -> ListenerConfig {
        ListenerConfig {
            limits: Default::default(),
            name: "web".into(),
            listen: "127.0.0.1:1".parse().unwrap(),
            advertised_port: None,
            capture: None,
            access_log: None,
            routes: clusters
                .iter()
                .map(|c| RouteConfig::to_cluster(PathMatch::Prefix(format!("/{c}")), c))
                .collect(),
            tls: None,
        }
    }

    #[test]
    fn routes_resolve_their_clusters_and_counters() {
        let cluster = Cluster::new(ClusterConfig::new("shop", Source::Static(vec![]))).unwrap();
        let clusters = HashMap::from([("shop".to_string(), Arc::new(cluster))]);
        let registry = Registry::default();
        let table = RouteTable::build(&listener(&["shop"]), &clusters, &registry).unwrap();
        let headers = http::HeaderMap::new();
        let lookup = skiff_route::Lookup {
            host: Some("h"),
            path: "/shop/1",
            query: None,
            method: &http::Method::GET,
            headers: &headers,
        };
        let Some(Target::Route(route)) = table.find(&lookup) else {
            panic!("the route is found");
        };
        assert!(Arc::ptr_eq(&route.cluster, &clusters["shop"]));
        assert!(Arc::ptr_eq(
            &route.requests,
            &registry.requests("web", "shop")
        ));
        assert_eq!(table.routes().count(), 1);
    }

    #[test]
    fn an_unknown_cluster_is_named() {
        let err = RouteTable::build(&listener(&["gone"]), &HashMap::new(), &Registry::default())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "listener `web` routes to unknown cluster `gone`"
        );
    }

    /// Conformance's HTTPRouteWeight: shares follow the weights; a weight
    /// of 0 is never chosen; an unresolved backend's share is answered 500.
    #[test]
    fn splits_follow_their_weights() {
        let clusters: HashMap<String, Arc<Cluster>> = ["a", "b", "c"]
            .iter()
            .map(|n| {
                let cluster = Cluster::new(ClusterConfig::new(n, Source::Static(vec![]))).unwrap();
                (n.to_string(), Arc::new(cluster))
            })
            .collect();
        let backend = |cluster: Option<&str>, weight| Backend {
            cluster: cluster.map(str::to_string),
            weight,
            ..Backend::cluster("")
        };
        let mut config = listener(&[]);
        config.routes = vec![RouteConfig {
            action: Action::Forward(vec![
                backend(Some("a"), 70),
                backend(Some("b"), 20),
                backend(Some("c"), 0),
                backend(None, 10),
            ]),
            ..RouteConfig::to_cluster(PathMatch::Prefix("/".into()), "")
        }];
        let table = RouteTable::build(&config, &clusters, &Registry::default()).unwrap();
        let Some(Target::Split(split)) = table.table.targets().next() else {
            panic!("a split");
        };
        let mut counts = HashMap::new();
        for _ in 0..10_000 {
            let name = split.pick().map_or("500", |r| &*r.cluster.name);
            *counts.entry(name.to_string()).or_insert(0) += 1;
        }
        // Binomial: 5 standard deviations at p = 0.1 over 10,000 is 150.
        let near =
            |name: &str, want: i32| (counts.get(name).copied().unwrap_or(0) - want).abs() < 300;
        assert!(
            near("a", 7000) && near("b", 2000) && near("500", 1000),
            "{counts:?}"
        );
        assert!(!counts.contains_key("c"), "weight 0 is never chosen");
        assert_eq!(table.routes().count(), 2, "a and b; c has no share");

        config.routes[0].action = Action::Forward(vec![backend(Some("a"), 0)]);
        let table = RouteTable::build(&config, &clusters, &Registry::default()).unwrap();
        let Some(Target::Split(split)) = table.table.targets().next() else {
            panic!("a split");
        };
        assert!(split.pick().is_none(), "all weights 0: answered 500");
    }
}
