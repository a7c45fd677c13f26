//! The gateway role's status: written by one replica, the holder of the
//! Lease `skiff-gateway-NAME` in the Gateway's namespace, for the
//! GatewayClass, the Gateway (conditions, listeners, addresses) and every
//! route that names it. Each object is read, merged (other controllers'
//! entries and conditions stay; a condition's transition time moves only
//! when its status does) and replaced with the version read, so nothing
//! another writer put there is lost. What was written is remembered, and
//! only what changed is written again; a route that stops naming the
//! Gateway loses this controller's entry.

use std::collections::HashMap;

use serde_json::Value;
use skiff_discovery::kubernetes::objects::{Kind, GATEWAY_KINDS, INGRESS_KINDS};
use skiff_discovery::kubernetes::status;
use skiff_gateway::Translation;

/// What was last written, by (kind, namespace, name): our part, as JSON.
#[derive(Default)]
pub(crate) struct Written(HashMap<(&'static str, String, String), Value>);

impl Written {
    /// Forgets everything (a new leader writes all).
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

fn kind(name: &str) -> &'static Kind {
    (GATEWAY_KINDS.iter())
        .chain(INGRESS_KINDS.iter())
        .find(|k| k.kind == name)
        .expect("a kind the role follows")
}

/// The time as `metav1.Time` writes it.
fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Writes what `translation` says of every object, where it changed.
/// `gateway`: the Gateway this writer serves, if any (it answers for
/// its entries in routes' status even once the Gateway is gone, so they
/// are removed).
pub(crate) async fn write(
    translation: &Translation,
    addresses: &[Value],
    controller: &str,
    written: &mut Written,
    gateway: Option<(String, String)>,
) {
    let client = match status::client().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("gateway status: no Kubernetes client: {e}");
            return;
        }
    };
    let now = now();
    // The route status entries this writer answers for: those of its
    // Gateway, and (a Gateway's writer) those whose parent is a Service.
    let owned = move |parent: &Value, route_namespace: &str| {
        let text = |k: &str| parent[k].as_str();
        match (text("group"), text("kind")) {
            (Some(""), Some("Service")) => gateway.is_some(),
            (None | Some(skiff_gateway::objects::GATEWAY_GROUP), None | Some("Gateway")) => {
                gateway.as_ref().is_some_and(|(ns, name)| {
                    text("name") == Some(name.as_str())
                        && text("namespace").unwrap_or(route_namespace) == ns
                })
            }
            _ => false,
        }
    };
    let mut wanted: Vec<((&'static str, String, String), Value)> = Vec::new();
    if let Some((class, conditions)) = &translation.class {
        let ours = serde_json::to_value(conditions).unwrap_or_default();
        wanted.push((("GatewayClass", String::new(), class.clone()), ours));
    }
    if let (Some(gateway), Some((namespace, name))) =
        (&translation.gateway, &translation.gateway_name)
    {
        let ours = serde_json::json!({ "status": gateway, "addresses": addresses });
        wanted.push((("Gateway", namespace.clone(), name.clone()), ours));
    }
    for route in &translation.routes {
        let ours = serde_json::to_value(route).unwrap_or_default();
        wanted.push((
            (route.kind, route.namespace.clone(), route.name.clone()),
            ours,
        ));
    }
    // An Ingress's status is where clients reach it (`loadBalancer`).
    let load_balancer: Vec<Value> = addresses
        .iter()
        .map(|a| match a["type"].as_str() {
            Some("Hostname") => serde_json::json!({ "hostname": a["value"] }),
            _ => serde_json::json!({ "ip": a["value"] }),
        })
        .collect();
    for (namespace, name) in &translation.ingresses {
        let ours = serde_json::json!({ "loadBalancer": { "ingress": load_balancer } });
        wanted.push((("Ingress", namespace.clone(), name.clone()), ours));
    }
    // Routes written before that no longer name the Gateway: our entries
    // go; Ingresses no longer served: the address goes.
    let gone: Vec<(&'static str, String, String)> = (written.0.keys())
        .filter(|k| matches!(k.0, "HTTPRoute" | "GRPCRoute" | "Ingress"))
        .filter(|k| !wanted.iter().any(|(w, _)| w == *k))
        .cloned()
        .collect();
    for key in gone {
        let ours = match key.0 {
            "Ingress" => serde_json::json!({ "loadBalancer": {}, "parents": [] }),
            _ => {
                serde_json::json!({ "kind": key.0, "namespace": key.1, "name": key.2, "parents": [] })
            }
        };
        wanted.push((key, ours));
    }
    for (key, ours) in wanted {
        if written.0.get(&key) == Some(&ours) {
            continue;
        }
        let (kind_name, namespace, name) = (key.0, key.1.as_str(), key.2.as_str());
        let make = |object: &Value| -> Option<Value> {
            let existing = &object["status"];
            match kind_name {
                "GatewayClass" => {
                    let conditions: Vec<skiff_gateway::status::Condition> = translation
                        .class
                        .as_ref()
                        .map(|c| c.1.clone())
                        .unwrap_or_default();
                    skiff_gateway::status::gateway_class(existing, &conditions, &now)
                }
                "Gateway" => {
                    let gateway = translation.gateway.as_ref()?;
                    skiff_gateway::status::gateway(existing, gateway, addresses, &now)
                }
                "Ingress" => {
                    let mut status = match existing {
                        Value::Object(_) => existing.clone(),
                        _ => serde_json::json!({}),
                    };
                    status["loadBalancer"] = ours["loadBalancer"].clone();
                    Some(status)
                }
                _ => {
                    let route = (translation.routes.iter()).find(|r| {
                        r.kind == kind_name && r.namespace == namespace && r.name == name
                    });
                    let empty = skiff_gateway::status::RouteStatus {
                        kind: kind_name,
                        namespace: namespace.to_string(),
                        name: name.to_string(),
                        parents: Vec::new(),
                    };
                    skiff_gateway::status::route(
                        existing,
                        route.unwrap_or(&empty),
                        controller,
                        &now,
                        &owned,
                    )
                }
            }
        };
        match status::write(client.clone(), kind(kind_name), namespace, name, make).await {
            Ok(_) => {
                if ours.get("parents").is_some_and(|p| p.as_array().is_some_and(Vec::is_empty)) {
                    written.0.remove(&key);
                } else {
                    written.0.insert(key, ours);
                }
            }
            Err(e) => tracing::warn!("gateway status of {kind_name} {namespace}/{name}: {e}; tried again on the next change"),
        }
    }
}
