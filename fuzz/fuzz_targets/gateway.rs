//! Gateway API and Ingress manifests (YAML, several documents) read into
//! a `World`; every Gateway, every IngressClass and every Service's mesh
//! routes translated: never a panic; the translation is the same twice;
//! every route it makes builds a table (its expressions compile); every
//! status condition carries its object's generation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_gateway::objects::Meta;
use skiff_gateway::{translate, World, CONTROLLER};

/// The metadata of the route `kind` `namespace/name`.
fn route_meta<'a>(world: &'a World, kind: &str, key: &(String, String)) -> &'a Meta {
    match kind {
        "GRPCRoute" => &world.grpc_routes[key].metadata,
        _ => &world.http_routes[key].metadata,
    }
}

fn builds(routes: &[skiff_config::route::RouteConfig]) {
    skiff_route::from_config(routes, |_| Ok::<_, skiff_route::BadPattern>(()))
        .expect("translated routes build a table");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(objects) = skiff_gateway::manifests::objects(text) else {
        return;
    };
    let mut world = World::default();
    for (_, object) in objects {
        let _ = world.apply(object);
    }
    let gateways: Vec<(String, String)> = world.gateways.keys().cloned().collect();
    for (namespace, name) in gateways {
        let t = translate(&world, (&namespace, &name), CONTROLLER);
        let again = translate(&world, (&namespace, &name), CONTROLLER);
        assert_eq!(t.ports, again.ports, "translation is deterministic");
        for port in &t.ports {
            builds(&port.routes);
        }
        if let Some(status) = &t.gateway {
            let generation = world.gateways[&(namespace.clone(), name.clone())].metadata.generation;
            let all = status.conditions.iter().chain(status.listeners.iter().flat_map(|l| l.conditions.iter()));
            for c in all {
                assert_eq!(c.observed_generation, generation, "{c:?}");
            }
        }
        for route in &t.routes {
            let key = (route.namespace.clone(), route.name.clone());
            let generation = route_meta(&world, route.kind, &key).generation;
            for parent in &route.parents {
                for c in &parent.conditions {
                    assert_eq!(c.observed_generation, generation, "{c:?}");
                }
            }
        }
    }
    let classes: Vec<String> = world.ingress_classes.keys().cloned().collect();
    for class in classes.iter().map(String::as_str).chain(["skiff"]) {
        let ports = skiff_gateway::IngressPorts::default();
        let t = skiff_gateway::translate_ingress(&world, class, ports);
        let again = skiff_gateway::translate_ingress(&world, class, ports);
        assert_eq!(t.ports, again.ports, "translation is deterministic");
        for port in &t.ports {
            builds(&port.routes);
        }
    }
    for route in skiff_gateway::mesh_status(&world, CONTROLLER) {
        let key = (route.namespace.clone(), route.name.clone());
        let generation = route_meta(&world, route.kind, &key).generation;
        for parent in &route.parents {
            for c in &parent.conditions {
                assert_eq!(c.observed_generation, generation, "{c:?}");
            }
            let namespace = parent.parent_ref.namespace.as_deref().unwrap_or(&route.namespace);
            let port = parent.parent_ref.port.unwrap_or(80) as u16;
            for client in [namespace, route.namespace.as_str(), "other"] {
                let service = (namespace, parent.parent_ref.name.as_str());
                if let Some(mesh) = skiff_gateway::mesh_routes(&world, service, port, client) {
                    builds(&mesh.routes);
                }
            }
        }
    }
});
