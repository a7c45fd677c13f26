//! A listener's route table: [`skiff_route::Table`] (host, path and
//! header matching, in `route/`) with what a forwarding route does in the
//! proxy: its cluster, its counter row, its edits and limits.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use skiff_config::route::Redirect;
use skiff_route::Lookup;

use crate::cluster::Cluster;
use crate::metrics::{CodeCounters, Registry};
use crate::proxy::rules::Edits;
use skiff_config::listener::ListenerConfig;

/// A listener's routes as the request path reads them: its name (for the
/// access log), its table (swapped whole on reload), and the count of
/// requests that matched no route.
#[derive(Debug)]
pub(crate) struct ListenerRoutes {
    pub(crate) name: Arc<str>,
    pub(crate) table: ArcSwap<RouteTable>,
    pub(crate) unrouted: Arc<AtomicU64>,
}

/// One forwarding route, resolved: its cluster and its counter row are
/// handles.
#[derive(Debug)]
pub struct Route {
    pub(crate) cluster: Arc<Cluster>,
    /// `skiff_requests_total{listener, cluster}`.
    pub(crate) requests: Arc<CodeCounters>,
    /// Rewrites and header edits; none for a plain route.
    pub(crate) edits: Option<Box<Edits>>,
    /// Overrides the cluster's request timeout.
    pub(crate) timeout: Option<Duration>,
    /// Largest request body forwarded (`413` past it).
    pub(crate) max_request_body: Option<u64>,
}

/// What a route does with the requests it matches.
#[derive(Debug)]
pub enum Target {
    Route(Route),
    /// Answers with a redirect instead of forwarding.
    Redirect(Redirect),
}

/// A listener's routes, ready for lookups.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// The listener's access log sampling, when on.
    pub(crate) access_log: Option<skiff_config::listener::AccessLog>,
    table: skiff_route::Table<Target>,
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
        let table = skiff_route::from_config(&listener.routes, |route| {
            if let Some(redirect) = &route.rules.redirect {
                return Ok(Target::Redirect(redirect.clone()));
            }
            let cluster = clusters.get(&route.cluster).ok_or_else(|| UnknownCluster {
                listener: listener.name.clone(),
                cluster: route.cluster.clone(),
            })?;
            Ok(Target::Route(Route {
                cluster: cluster.clone(),
                requests: registry.requests(&listener.name, &route.cluster),
                edits: Edits::of(&route.rules, &route.path),
                timeout: route.rules.timeout,
                max_request_body: route.rules.max_request_body,
            }))
        })?;
        Ok(RouteTable {
            access_log: None,
            table,
        })
    }

    /// What the request `req` describes goes to ([`skiff_route::Table::find`]).
    #[inline]
    pub fn find(&self, req: &Lookup<'_>) -> Option<&Target> {
        self.table.find(req)
    }

    /// Every forwarding route, in config order.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.table.targets().filter_map(|t| match t {
            Target::Route(route) => Some(route),
            Target::Redirect(_) => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_config::cluster::ClusterConfig;
    use skiff_config::endpoints::Source;
    use skiff_config::route::{PathMatch, RouteConfig};

    fn listener(clusters: &[&str]) -> ListenerConfig {
        ListenerConfig {
            limits: Default::default(),
            name: "web".into(),
            listen: "127.0.0.1:1".parse().unwrap(),
            capture: None,
            access_log: None,
            routes: clusters
                .iter()
                .map(|c| RouteConfig {
                    host: None,
                    path: PathMatch::Prefix(format!("/{c}")),
                    cluster: c.to_string(),
                    rules: Default::default(),
                })
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
}
