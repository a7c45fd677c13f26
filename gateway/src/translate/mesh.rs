//! The mesh (GAMMA, GEP-1294): HTTPRoutes and GRPCRoutes whose parent is
//! a Service shape the traffic a sidecar sends to that Service.
//!
//! - A route names its Service with `parentRefs: [{ group: "", kind:
//!   Service, name, namespace?, port? }]`; without `port` it is for every
//!   port of the Service.
//! - A *producer* route lives in the Service's namespace and applies to
//!   every client. A *consumer* route lives in another namespace and
//!   applies only to clients of its own namespace; where a client's
//!   namespace has consumer routes for a Service, they replace the
//!   producer routes for that client (they need no ReferenceGrant: they
//!   shape only their own namespace's traffic).
//! - The rules translate as a Gateway's do, in the same precedence;
//!   hostnames play no part (the Service is the parent). A Service with
//!   no route keeps the sidecar's plain balancing; one with routes
//!   answers 404 to a request no rule matches.

use std::collections::BTreeMap;

use skiff_config::cluster::ClusterConfig;
use skiff_config::route::RouteConfig;

use super::route::{AnyRoute, Entry, Rule};
use super::{grpc, route as http, sorted_routes};
use crate::objects::ParentRef;
use crate::status::{Condition, RouteParentStatus, RouteStatus};
use crate::world::World;

/// What a client's traffic to one Service port goes through.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshRoutes {
    /// In precedence order.
    pub routes: Vec<RouteConfig>,
    /// Every cluster the routes name.
    pub clusters: Vec<ClusterConfig>,
}

/// Whether `parent` names a Service, and which: `(namespace, name)`.
fn service_of<'a>(parent: &'a ParentRef, route_namespace: &'a str) -> Option<(&'a str, &'a str)> {
    let is_service =
        parent.group.as_deref() == Some("") && parent.kind.as_deref() == Some("Service");
    is_service.then(|| {
        let namespace = parent.namespace.as_deref().unwrap_or(route_namespace);
        (namespace, parent.name.as_str())
    })
}

/// The routes a client in `client_namespace` takes to port `port` of the
/// Service `namespace/name`; none when no route names it (the sidecar's
/// plain balancing stays).
pub fn mesh_routes(
    world: &World,
    (namespace, name): (&str, &str),
    port: u16,
    client_namespace: &str,
) -> Option<MeshRoutes> {
    let service = world
        .services
        .get(&(namespace.to_string(), name.to_string()))?;
    if !service.spec.ports.iter().any(|p| p.port == u32::from(port)) {
        return None;
    }
    let routes = sorted_routes(world);
    let names_this = |r: &AnyRoute<'_>| {
        let meta = r.meta();
        r.parent_refs().iter().any(|p| {
            service_of(p, &meta.namespace) == Some((namespace, name))
                && p.port.is_none_or(|p| p == u32::from(port))
        })
    };
    let consumer =
        |r: &AnyRoute<'_>| r.meta().namespace == client_namespace && client_namespace != namespace;
    let ranked: Vec<(usize, AnyRoute<'_>)> = routes
        .into_iter()
        .enumerate()
        .filter(|(_, r)| names_this(r))
        .collect();
    let consumers: Vec<_> = ranked
        .iter()
        .filter(|(_, r)| consumer(r))
        .cloned()
        .collect();
    let chosen = match consumers.is_empty() {
        false => consumers,
        true => ranked
            .into_iter()
            .filter(|(_, r)| r.meta().namespace == namespace)
            .collect(),
    };
    if chosen.is_empty() {
        return None;
    }
    let mut clusters = BTreeMap::new();
    let mut entries: Vec<Entry> = Vec::new();
    for (rank, route) in chosen {
        let (rules, _) = translate(world, rank, route, (namespace, name), &mut clusters);
        for (key, config) in rules.into_iter().flatten().flatten() {
            entries.push(Entry {
                key,
                listener: 0,
                route: config,
            });
        }
    }
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    Some(MeshRoutes {
        routes: entries.into_iter().map(|e| e.route).collect(),
        clusters: clusters.into_values().collect(),
    })
}

/// A route's rules, and what did not resolve.
fn translate(
    world: &World,
    rank: usize,
    route: AnyRoute<'_>,
    parent: (&str, &str),
    clusters: &mut BTreeMap<String, ClusterConfig>,
) -> (Vec<Rule>, Vec<(&'static str, String)>) {
    let parent = Some(parent);
    let mut unresolved = Vec::new();
    let mut added = BTreeMap::new();
    let rules = match route {
        AnyRoute::Http(r) => (r.spec.rules.iter().enumerate())
            .map(|(i, rule)| {
                let c = (&*clusters, &mut added);
                http::translate_rule(world, (rank, r), i, rule, c, &mut unresolved, parent)
            })
            .collect(),
        AnyRoute::Grpc(r) => (r.spec.rules.iter().enumerate())
            .map(|(i, rule)| {
                let c = (&*clusters, &mut added);
                grpc::translate_rule(world, (rank, r), i, rule, c, &mut unresolved, parent)
            })
            .collect(),
    };
    clusters.append(&mut added);
    (rules, unresolved)
}

/// The status of every route whose parent is a Service, for the parents
/// `controller` serves (every Service: the mesh is the whole cluster's).
pub fn mesh_status(world: &World, controller: &str) -> Vec<RouteStatus> {
    let mut out = Vec::new();
    for (rank, route) in sorted_routes(world).into_iter().enumerate() {
        let meta = route.meta();
        let parents: Vec<&ParentRef> = (route.parent_refs().iter())
            .filter(|p| service_of(p, &meta.namespace).is_some())
            .collect();
        if parents.is_empty() {
            continue;
        }
        let generation = meta.generation;
        let statuses = parents
            .into_iter()
            .map(|parent| {
                let (namespace, name) = service_of(parent, &meta.namespace).unwrap_or_default();
                let clusters = &mut BTreeMap::new();
                let (rules, unresolved) =
                    translate(world, rank, route, (namespace, name), clusters);
                let resolved = match unresolved.first() {
                    None => Condition::new("ResolvedRefs", true, "ResolvedRefs", "", generation),
                    Some((reason, _)) => {
                        let all: Vec<&str> = unresolved.iter().map(|(_, m)| m.as_str()).collect();
                        Condition::new("ResolvedRefs", false, reason, all.join("; "), generation)
                    }
                };
                let invalid = rules.iter().find_map(|r| r.as_ref().err());
                let all_invalid = !rules.is_empty() && rules.iter().all(|r| r.is_err());
                let service = world
                    .services
                    .get(&(namespace.to_string(), name.to_string()));
                let accepted = match (service, parent.port) {
                    (None, _) => Condition::new(
                        "Accepted",
                        false,
                        "NoMatchingParent",
                        format!("Service {namespace}/{name} does not exist"),
                        generation,
                    ),
                    (Some(s), Some(port)) if !s.spec.ports.iter().any(|p| p.port == port) => {
                        Condition::new(
                            "Accepted",
                            false,
                            "NoMatchingParent",
                            format!("Service {namespace}/{name} has no port {port}"),
                            generation,
                        )
                    }
                    _ if all_invalid => {
                        let (reason, message) = invalid.cloned().unwrap_or_default();
                        Condition::new("Accepted", false, reason, message, generation)
                    }
                    _ => Condition::new("Accepted", true, "Accepted", "", generation),
                };
                RouteParentStatus {
                    parent_ref: parent.clone(),
                    controller_name: controller.to_string(),
                    conditions: vec![accepted, resolved],
                }
            })
            .collect();
        out.push(RouteStatus {
            kind: route.kind(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            parents: statuses,
        });
    }
    out
}
