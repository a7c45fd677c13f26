//! What `skiff check --manifests` prints: for every Gateway of skiff's
//! class among the objects, what it would serve (ports, routes in
//! precedence order, their backends) and every problem its status would
//! report, naming the object, the field's condition and the reason; and
//! the same for every IngressClass of skiff's controller.

use skiff_config::route::{Action, PathMatch};

use crate::status::Condition;
use crate::translate::{
    mesh_routes, mesh_status, translate, translate_ingress, IngressPorts, INGRESS_CONTROLLER,
};
use crate::world::World;

/// The text to print, and how many problems it found.
#[derive(Debug, Default)]
pub struct Report {
    pub text: String,
    pub problems: usize,
}

/// Checks every Gateway whose class names `controller`.
pub fn check(world: &World, controller: &str) -> Report {
    let mut report = Report::default();
    let ours = world.gateways.values().filter(|g| {
        world
            .gateway_classes
            .get(&g.spec.gateway_class_name)
            .is_some_and(|c| c.spec.controller_name == controller)
    });
    let mut any = false;
    for gateway in ours {
        any = true;
        let key = gateway.metadata.key();
        let t = translate(
            world,
            (&gateway.metadata.namespace, &gateway.metadata.name),
            controller,
        );
        report.text.push_str(&format!("Gateway {key}\n"));
        ports(&mut report, &t);
        if let Some(status) = &t.gateway {
            problems(&mut report, &format!("Gateway {key}"), &status.conditions);
            for l in &status.listeners {
                problems(
                    &mut report,
                    &format!("Gateway {key} listener `{}`", l.name),
                    &l.conditions,
                );
            }
        }
        for route in &t.routes {
            for parent in &route.parents {
                let what = format!(
                    "{} {}/{} (parent {})",
                    route.kind, route.namespace, route.name, parent.parent_ref.name
                );
                problems(&mut report, &what, &parent.conditions);
            }
        }
    }
    let classes = world
        .ingress_classes
        .values()
        .filter(|c| c.spec.controller == INGRESS_CONTROLLER);
    for class in classes {
        any = true;
        let name = &class.metadata.name;
        let t = translate_ingress(world, name, IngressPorts::default());
        report.text.push_str(&format!(
            "IngressClass {name}: {} Ingresses\n",
            t.ingresses.len()
        ));
        ports(&mut report, &t);
        for warning in &t.warnings {
            report.problems += 1;
            report.text.push_str(&format!("  problem: {warning}\n"));
        }
    }
    // The mesh: routes whose parent is a Service, as that Service's own
    // namespace's clients (and every other client without consumer
    // routes) take them.
    let statuses = mesh_status(world, controller);
    let mut services: Vec<(String, String)> = statuses
        .iter()
        .flat_map(|s| s.parents.iter().map(move |p| (s, p)))
        .map(|(s, p)| {
            let ns = p
                .parent_ref
                .namespace
                .clone()
                .unwrap_or_else(|| s.namespace.clone());
            (ns, p.parent_ref.name.clone())
        })
        .collect();
    services.sort();
    services.dedup();
    for (namespace, name) in &services {
        let key = (namespace.clone(), name.clone());
        let Some(service) = world.services.get(&key) else {
            continue;
        };
        any = true;
        for port in &service.spec.ports {
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            if let Some(routes) = mesh_routes(world, (namespace, name), number, namespace) {
                report.text.push_str(&format!(
                    "Service {namespace}/{name} port {number} (mesh): {} routes\n",
                    routes.routes.len()
                ));
                for route in &routes.routes {
                    report.text.push_str(&format!("    {}\n", describe(route)));
                }
            }
        }
    }
    for route in &statuses {
        for parent in &route.parents {
            let what = format!(
                "{} {}/{} (parent Service {})",
                route.kind, route.namespace, route.name, parent.parent_ref.name
            );
            problems(&mut report, &what, &parent.conditions);
        }
    }
    if !any && statuses.is_empty() {
        report.text.push_str(&format!(
            "no Gateway of a GatewayClass with controllerName {controller}, \
             no IngressClass with controller {INGRESS_CONTROLLER}, no mesh route\n"
        ));
    }
    report
}

/// The ports of a translation, each route on a line.
fn ports(report: &mut Report, t: &crate::Translation) {
    for port in &t.ports {
        let scheme = if port.tls { "https" } else { "http" };
        report.text.push_str(&format!(
            "  port {} ({scheme}): {} routes\n",
            port.port,
            port.routes.len()
        ));
        for route in &port.routes {
            report.text.push_str(&format!("    {}\n", describe(route)));
        }
    }
}

/// Adds a line for each condition that says something is wrong.
fn problems(report: &mut Report, what: &str, conditions: &[Condition]) {
    for c in conditions {
        // `Conflicted` and `PartiallyInvalid` are wrong when true.
        let wrong = match c.kind {
            "Conflicted" | "PartiallyInvalid" => c.is_true(),
            _ => !c.is_true() || c.reason == "ListenersNotValid",
        };
        if wrong {
            report.problems += 1;
            report.text.push_str(&format!(
                "  problem: {what}: {} {} ({}): {}\n",
                c.kind, c.status, c.reason, c.message
            ));
        }
    }
}

/// One route entry on one line: its name, match and what it does.
fn describe(route: &skiff_config::route::RouteConfig) -> String {
    let hosts: Vec<String> = route
        .hosts
        .iter()
        .map(|h| match h {
            skiff_config::route::HostMatch::Exact(h) => h.clone(),
            skiff_config::route::HostMatch::Suffix(s) => format!("*{s}"),
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "*".to_string()
    } else {
        hosts.join(",")
    };
    let path = match &route.path {
        PathMatch::Prefix(p) => format!("prefix {p}"),
        PathMatch::SeparatedPrefix(p) => format!("prefix {p}"),
        PathMatch::Exact(p) => format!("exact {p}"),
        PathMatch::Regex(p) => format!("regex {p}"),
    };
    let mut conditions = Vec::new();
    if let Some(m) = &route.method {
        conditions.push(m.clone());
    }
    conditions.extend(route.headers.iter().map(|h| format!("header {}", h.name)));
    conditions.extend(route.query.iter().map(|q| format!("query {}", q.name)));
    let action = match &route.action {
        Action::Redirect(r) => format!("redirect {}", r.code),
        Action::Forward(backends) if backends.is_empty() => "500 (no backends)".to_string(),
        Action::Forward(backends) => backends
            .iter()
            .map(|b| {
                format!(
                    "{} ({})",
                    b.cluster.as_deref().unwrap_or("500: unresolved"),
                    b.weight
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
    };
    let extra = if conditions.is_empty() {
        String::new()
    } else {
        format!(" [{}]", conditions.join(", "))
    };
    format!(
        "{}: {hosts} {path}{extra} -> {action}",
        route.name.as_deref().unwrap_or("route")
    )
}
