//! A rule's backend references, resolved to clusters: a Service in the
//! route's namespace, or in another one that a ReferenceGrant opens to
//! it, and one of the Service's ports. A reference that does not resolve
//! keeps its share of the traffic, which is answered 500.

use std::collections::BTreeMap;

use skiff_config::cluster::{ClusterConfig, UpstreamProtocol};
use skiff_config::endpoints::{ServicePort, ServiceTarget, Source};

use crate::objects::Meta;
use crate::world::World;

/// Why a reference does not resolve: the `ResolvedRefs` reason, and a
/// message naming the object.
pub(super) type Unresolved = (&'static str, String);

/// What a backend reference names.
pub(super) struct Reference<'a> {
    pub(super) group: Option<&'a str>,
    pub(super) kind: Option<&'a str>,
    pub(super) name: &'a str,
    pub(super) namespace: Option<&'a str>,
    pub(super) port: Option<u32>,
}

/// How a reference is resolved beyond what it names.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Terms<'a> {
    /// A GRPCRoute's backends: the cluster speaks HTTP/2 whatever the
    /// port's `appProtocol`; one that does not say `kubernetes.io/h2c` is
    /// a cluster of its own, `NS/NAME:PORT/h2c`, beside the HTTP/1.1 one
    /// an HTTPRoute would use.
    pub(super) h2: bool,
    /// In the mesh, the route's parent Service `(namespace, name)`: a
    /// consumer route may send to the Service it shapes in another
    /// namespace without a ReferenceGrant.
    pub(super) parent_service: Option<(&'a str, &'a str)>,
}

impl<'a> Reference<'a> {
    /// What a route's backend (or mirror) reference names.
    pub(super) fn of(r: &'a crate::objects::BackendRef) -> Reference<'a> {
        Reference {
            group: r.group.as_deref(),
            kind: r.kind.as_deref(),
            name: &r.name,
            namespace: r.namespace.as_deref(),
            port: r.port,
        }
    }
}

/// Resolves `reference` made by the `route_kind` `route`; the cluster it
/// names is added to `new` unless `known` has it, and its name returned.
pub(super) fn resolve(
    world: &World,
    (route_kind, route): (&str, &Meta),
    reference: &Reference<'_>,
    (known, new): (
        &BTreeMap<String, ClusterConfig>,
        &mut BTreeMap<String, ClusterConfig>,
    ),
    terms: Terms<'_>,
) -> Result<String, Unresolved> {
    let h2 = terms.h2;
    let group = reference.group.unwrap_or("");
    let kind = reference.kind.unwrap_or("Service");
    let namespace = reference.namespace.unwrap_or(&route.namespace);
    let name = format!("{namespace}/{}", reference.name);
    if !group.is_empty() || kind != "Service" {
        let group = if group.is_empty() { "core" } else { group };
        return Err((
            "InvalidKind",
            format!("{kind} ({group}) {name} is not a Service"),
        ));
    }
    // Checked before existence, so a refused reference never tells
    // whether the Service is there.
    if namespace != route.namespace
        && terms.parent_service != Some((namespace, reference.name))
        && !world.grants(
            route_kind,
            &route.namespace,
            ("", "Service"),
            namespace,
            reference.name,
        )
    {
        return Err((
            "RefNotPermitted",
            format!(
                "no ReferenceGrant in {namespace} lets {route_kind}s of {} use Service {name}",
                route.namespace
            ),
        ));
    }
    let key = (namespace.to_string(), reference.name.to_string());
    let Some(service) = world.services.get(&key) else {
        return Err(("BackendNotFound", format!("Service {name} does not exist")));
    };
    let Some(port) = reference.port else {
        return Err((
            "BackendNotFound",
            format!("a reference to Service {name} needs a port"),
        ));
    };
    let Some(spec) = service.spec.ports.iter().find(|p| p.port == port) else {
        return Err((
            "BackendNotFound",
            format!("Service {name} has no port {port}"),
        ));
    };
    let protocol = match spec.app_protocol.as_deref() {
        Some("kubernetes.io/h2c") => UpstreamProtocol::Http2,
        Some("kubernetes.io/wss") => {
            return Err((
                "UnsupportedProtocol",
                format!("Service {name} port {port} wants WebSocket over TLS, which skiff does not originate"),
            ))
        }
        _ if h2 => UpstreamProtocol::Http2,
        _ => UpstreamProtocol::Http1,
    };
    let declared_h2 = spec.app_protocol.as_deref() == Some("kubernetes.io/h2c");
    let cluster = match h2 && !declared_h2 {
        true => format!("{name}:{port}/h2c"),
        false => format!("{name}:{port}"),
    };
    if known.contains_key(&cluster) {
        return Ok(cluster);
    }
    new.entry(cluster.clone()).or_insert_with(|| {
        let target = ServiceTarget {
            namespace: namespace.to_string(),
            service: reference.name.to_string(),
            // Slices name their ports as the Service does; a single
            // unnamed port is "" in both.
            port: ServicePort::Name(spec.name.clone().unwrap_or_default()),
        };
        let mut config = ClusterConfig::new(&cluster, Source::Kubernetes(target));
        config.protocol = protocol;
        config
    });
    Ok(cluster)
}
