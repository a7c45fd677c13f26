//! One Gateway, translated: its listeners into ports that skiff binds,
//! the HTTPRoutes and GRPCRoutes attached to them into route config in the
//! specification's precedence, their backends into clusters, and the
//! status of the GatewayClass, the Gateway, its listeners and each route.
//!
//! The order of work follows the specification's (§ numbers are the
//! brief's, `apis/v1` is the source): listeners are validated and checked
//! for conflicts; each route's parent references select listeners
//! (`sectionName`, `port`), which must allow the route (namespace, kind)
//! and share a hostname with it; each rule becomes one route entry per
//! match, sorted across every route on the port.

mod backend;
mod grpc;
mod ingress;
mod listener;
mod mesh;
mod route;

use std::collections::BTreeMap;

use skiff_config::cluster::ClusterConfig;
use skiff_config::route::RouteConfig;

use crate::objects::{Gateway, GATEWAY_GROUP};
use crate::status::{Condition, GatewayStatus, RouteStatus};
use crate::world::World;

pub use ingress::{translate_ingress, IngressPorts, INGRESS_CONTROLLER};
pub use listener::Certificate;
pub use mesh::{mesh_routes, mesh_status, MeshRoutes};

/// What skiff serves for one port of the Gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    /// As the Gateway writes it (before any offset the deployment adds).
    pub port: u16,
    /// HTTPS: TLS is terminated with `certificates`.
    pub tls: bool,
    /// In precedence order.
    pub routes: Vec<RouteConfig>,
    pub certificates: Vec<Certificate>,
}

/// A Gateway translated.
#[derive(Debug, Clone, Default)]
pub struct Translation {
    pub ports: Vec<Port>,
    /// Every cluster a route names, once.
    pub clusters: Vec<ClusterConfig>,
    /// The GatewayClass's name and its conditions, when it is skiff's.
    pub class: Option<(String, Vec<Condition>)>,
    pub gateway: Option<GatewayStatus>,
    /// The Gateway's `(namespace, name)`, when it is served.
    pub gateway_name: Option<(String, String)>,
    pub routes: Vec<RouteStatus>,
    /// Why nothing is served, when nothing is.
    pub problem: Option<String>,
    /// The Ingresses served (`namespace`, `name`), whose status gets the
    /// address.
    pub ingresses: Vec<(String, String)>,
    /// What is wrong with them (Ingress has no conditions to say it in).
    pub warnings: Vec<String>,
}

/// Translates the Gateway `namespace/name`, which skiff serves when its
/// class names `controller`.
pub fn translate(world: &World, (namespace, name): (&str, &str), controller: &str) -> Translation {
    let key = (namespace.to_string(), name.to_string());
    let Some(gateway) = world.gateways.get(&key) else {
        return Translation {
            problem: Some(format!("Gateway {namespace}/{name} does not exist")),
            ..Translation::default()
        };
    };
    let class_name = &gateway.spec.gateway_class_name;
    let class = world.gateway_classes.get(class_name);
    let Some(class) = class.filter(|c| c.spec.controller_name == controller) else {
        let problem = match class {
            None => format!("its GatewayClass `{class_name}` does not exist"),
            Some(c) => format!(
                "its GatewayClass `{class_name}` belongs to `{}`, not `{controller}`",
                c.spec.controller_name
            ),
        };
        return Translation {
            problem: Some(format!("Gateway {namespace}/{name}: {problem}")),
            ..Translation::default()
        };
    };
    let class_status = vec![Condition::new(
        "Accepted",
        true,
        "Accepted",
        "",
        class.metadata.generation,
    )];
    let mut listeners = listener::validate(world, gateway);
    let mut clusters = BTreeMap::new();
    let mut entries = Vec::new();
    let mut routes = Vec::new();
    for (rank, route) in sorted_routes(world).into_iter().enumerate() {
        let status = route::attach(
            world,
            gateway,
            (rank, route),
            controller,
            &mut listeners,
            &mut entries,
            &mut clusters,
        );
        if let Some(status) = status {
            routes.push(status);
        }
    }
    let ports = listener::ports(&listeners, entries);
    Translation {
        ports,
        clusters: clusters.into_values().collect(),
        class: Some((class.metadata.name.clone(), class_status)),
        gateway: Some(gateway_status(gateway, &listeners)),
        gateway_name: Some(key),
        routes,
        problem: None,
        ingresses: Vec::new(),
        warnings: Vec::new(),
    }
}

/// Routes of both kinds oldest first, then by `namespace/name`: the
/// order ties in precedence are broken by.
fn sorted_routes(world: &World) -> Vec<route::AnyRoute<'_>> {
    let http = world.http_routes.values().map(route::AnyRoute::Http);
    let grpc = world.grpc_routes.values().map(route::AnyRoute::Grpc);
    let mut routes: Vec<_> = http.chain(grpc).collect();
    // Missing timestamps sort last.
    routes.sort_by_key(|r| {
        let m = r.meta();
        let created = m.creation_timestamp.as_deref();
        (created.is_none(), created, &m.namespace, &m.name, r.kind())
    });
    routes
}

fn gateway_status(gateway: &Gateway, listeners: &[listener::Checked<'_>]) -> GatewayStatus {
    let generation = gateway.metadata.generation;
    let valid = listeners.iter().filter(|l| l.serves()).count();
    let all = listeners.len();
    let accepted = if valid == all {
        Condition::new("Accepted", true, "Accepted", "", generation)
    } else {
        let message = format!("{} of {all} listeners are not valid", all - valid);
        Condition::new(
            "Accepted",
            valid > 0,
            "ListenersNotValid",
            message,
            generation,
        )
    };
    let programmed = if valid > 0 {
        Condition::new("Programmed", true, "Programmed", "", generation)
    } else {
        Condition::new(
            "Programmed",
            false,
            "Invalid",
            "no listener can be served",
            generation,
        )
    };
    GatewayStatus {
        conditions: vec![accepted, programmed],
        listeners: listeners.iter().map(|l| l.status(generation)).collect(),
    }
}

/// The group a reference means when it leaves it out (`""` is the core
/// group of Services and Secrets).
fn group_or<'a>(group: &'a Option<String>, default: &'a str) -> &'a str {
    group.as_deref().unwrap_or(default)
}

/// Whether a parent reference names `gateway`.
fn names_gateway(
    parent: &crate::objects::ParentRef,
    route_namespace: &str,
    gateway: &Gateway,
) -> bool {
    group_or(&parent.group, GATEWAY_GROUP) == GATEWAY_GROUP
        && parent.kind.as_deref().unwrap_or("Gateway") == "Gateway"
        && parent.namespace.as_deref().unwrap_or(route_namespace) == gateway.metadata.namespace
        && parent.name == gateway.metadata.name
}

#[cfg(test)]
mod tests;
