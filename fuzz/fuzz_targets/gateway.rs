//! Gateway API manifests (YAML, several documents) read into a `World`
//! and every Gateway translated: never a panic; the translation is the
//! same twice; every route it makes builds a table (its expressions
//! compile); every status condition carries its object's generation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_gateway::{translate, World, CONTROLLER};

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
            skiff_route::from_config(&port.routes, |_| Ok::<_, skiff_route::BadPattern>(()))
                .expect("translated routes build a table");
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
            let generation = world.http_routes[&key].metadata.generation;
            for parent in &route.parents {
                for c in &parent.conditions {
                    assert_eq!(c.observed_generation, generation, "{c:?}");
                }
            }
        }
    }
});
