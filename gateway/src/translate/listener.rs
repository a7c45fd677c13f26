//! A Gateway's listeners: which can be served, what their status says,
//! and how they share ports.

use std::collections::BTreeMap;

use skiff_config::route::{HostMatch, RouteConfig};
use skiff_route::HostPattern;

use super::route::Entry;
use super::Port;
use crate::objects::{Gateway, Listener, RouteGroupKind, GATEWAY_GROUP};
use crate::status::{Condition, ListenerStatus};
use crate::world::{Pem, World};

/// The route kinds an HTTP or HTTPS listener takes (gRPC arrives as h2c
/// with prior knowledge, or as HTTP/2 by ALPN).
const ROUTE_KINDS: [&str; 2] = ["HTTPRoute", "GRPCRoute"];

/// A certificate an HTTPS listener serves: the Secret's name and PEM,
/// and the listener hostname it is for (none: the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub listener: String,
    pub hostname: Option<String>,
    pub namespace: String,
    pub secret: String,
    pub pem: Pem,
}

/// A listener, checked.
#[derive(Debug)]
pub(super) struct Checked<'a> {
    pub(super) spec: &'a Listener,
    pub(super) gateway_namespace: String,
    pub(super) host: Option<HostPattern>,
    pub(super) port: u16,
    pub(super) tls: bool,
    pub(super) kinds: Vec<RouteGroupKind>,
    /// Why it cannot be served (`Accepted` False): reason and message.
    refused: Option<(&'static str, String)>,
    /// `ResolvedRefs` False: reason and message.
    unresolved: Option<(&'static str, String)>,
    conflict: Option<&'static str>,
    pub(super) certificates: Vec<Certificate>,
    /// Served, but not with what a Secret holds now (`ResolvedRefs`
    /// False, `Programmed` True): why.
    stale: Option<String>,
    /// Routes attached (counted once each).
    pub(super) attached: u32,
    /// The routes served here, HTTPRoutes then GRPCRoutes: `namespace/name`
    /// and the hostnames they serve on this listener (empty: any), for the
    /// rule that an HTTPRoute and a GRPCRoute may not share a hostname.
    pub(super) served: [Vec<(String, Vec<HostPattern>)>; 2],
}

impl Checked<'_> {
    /// Whether requests are served on it: accepted, without conflict,
    /// and with its certificates resolved.
    pub(super) fn serves(&self) -> bool {
        self.refused.is_none() && self.conflict.is_none() && self.unresolved.is_none()
    }

    /// Whether routes may attach: everything but a refused protocol or a
    /// conflict (a listener waiting for its certificate still counts its
    /// routes, as the specification says).
    pub(super) fn takes_routes(&self) -> bool {
        self.refused.is_none() && self.conflict.is_none()
    }

    pub(super) fn status(&self, generation: i64) -> ListenerStatus {
        let c =
            |kind, ok, reason, message: &str| Condition::new(kind, ok, reason, message, generation);
        let accepted = match &self.refused {
            None => c("Accepted", true, "Accepted", ""),
            Some((reason, message)) => c("Accepted", false, reason, message),
        };
        let resolved = match (&self.unresolved, &self.stale) {
            (Some((reason, message)), _) => c("ResolvedRefs", false, reason, message),
            (None, Some(message)) => c("ResolvedRefs", false, "InvalidCertificateRef", message),
            (None, None) => c("ResolvedRefs", true, "ResolvedRefs", ""),
        };
        let conflicted = match self.conflict {
            None => c("Conflicted", false, "NoConflicts", ""),
            Some(reason) => c(
                "Conflicted",
                true,
                reason,
                "another listener shares its port",
            ),
        };
        let programmed = if self.serves() {
            c("Programmed", true, "Programmed", "")
        } else {
            c(
                "Programmed",
                false,
                "Invalid",
                "the listener is not served; see its other conditions",
            )
        };
        ListenerStatus {
            name: self.spec.name.clone(),
            supported_kinds: self.kinds.clone(),
            attached_routes: self.attached,
            conditions: vec![accepted, programmed, resolved, conflicted],
        }
    }
}

/// Checks every listener of `gateway`.
pub(super) fn validate<'a>(world: &World, gateway: &'a Gateway) -> Vec<Checked<'a>> {
    let mut checked: Vec<Checked<'a>> = gateway
        .spec
        .listeners
        .iter()
        .map(|l| check(world, gateway, l))
        .collect();
    mark_conflicts(&mut checked);
    checked
}

fn check<'a>(world: &World, gateway: &Gateway, spec: &'a Listener) -> Checked<'a> {
    let tls = spec.protocol == "HTTPS";
    let mut refused = None;
    if !matches!(spec.protocol.as_str(), "HTTP" | "HTTPS") {
        let message = format!(
            "skiff serves HTTP and HTTPS listeners, not `{}`",
            spec.protocol
        );
        refused = Some(("UnsupportedProtocol", message));
    }
    let port = u16::try_from(spec.port).ok().filter(|p| *p > 0);
    if port.is_none() && refused.is_none() {
        refused = Some((
            "UnsupportedValue",
            format!("port {} is not a TCP port", spec.port),
        ));
    }
    if tls && refused.is_none() {
        let mode = spec
            .tls
            .as_ref()
            .and_then(|t| t.mode.as_deref())
            .unwrap_or("Terminate");
        if mode != "Terminate" {
            refused = Some((
                "UnsupportedValue",
                format!("TLS mode `{mode}` (skiff terminates TLS)"),
            ));
        }
    }
    let (kinds, mut unresolved) = route_kinds(spec, refused.is_none());
    let mut certificates = Vec::new();
    let mut stale = None;
    if tls && refused.is_none() {
        match certificate_refs(world, gateway, spec) {
            Ok(found) => {
                certificates = found.certificates;
                stale = found.stale;
            }
            Err(problem) => unresolved = unresolved.or(Some(problem)),
        }
    }
    Checked {
        spec,
        gateway_namespace: gateway.metadata.namespace.clone(),
        host: spec.hostname.as_deref().map(HostPattern::parse),
        port: port.unwrap_or(0),
        tls,
        kinds,
        refused,
        unresolved,
        conflict: None,
        certificates,
        stale,
        attached: 0,
        served: Default::default(),
    }
}

/// The route kinds a listener takes, and `InvalidRouteKinds` when it
/// names one it cannot take.
fn route_kinds(
    spec: &Listener,
    supported: bool,
) -> (Vec<RouteGroupKind>, Option<(&'static str, String)>) {
    if !supported {
        return (Vec::new(), None);
    }
    let named = spec
        .allowed_routes
        .as_ref()
        .map(|a| &a.kinds)
        .filter(|k| !k.is_empty());
    let Some(named) = named else {
        let all = ROUTE_KINDS
            .iter()
            .map(|k| RouteGroupKind {
                group: Some(GATEWAY_GROUP.into()),
                kind: (*k).into(),
            })
            .collect();
        return (all, None);
    };
    let (valid, invalid): (Vec<_>, Vec<_>) = named.iter().partition(|k| {
        k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
            && ROUTE_KINDS.contains(&k.kind.as_str())
    });
    let valid = valid
        .into_iter()
        .map(|k| RouteGroupKind {
            group: Some(GATEWAY_GROUP.into()),
            kind: k.kind.clone(),
        })
        .collect();
    let problem = (!invalid.is_empty()).then(|| {
        let names: Vec<&str> = invalid.iter().map(|k| k.kind.as_str()).collect();
        (
            "InvalidRouteKinds",
            format!("skiff does not serve {}", names.join(", ")),
        )
    });
    (valid, problem)
}

/// An HTTPS listener's certificates, or why they cannot be used.
fn certificate_refs(
    world: &World,
    gateway: &Gateway,
    spec: &Listener,
) -> Result<Found, (&'static str, String)> {
    let refs = spec
        .tls
        .as_ref()
        .map(|t| t.certificate_refs.as_slice())
        .unwrap_or(&[]);
    if refs.is_empty() {
        return Err((
            "InvalidCertificateRef",
            "an HTTPS listener needs a certificate".into(),
        ));
    }
    let mut found = Found::default();
    for r in refs {
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("Secret");
        let namespace = r
            .namespace
            .clone()
            .unwrap_or_else(|| gateway.metadata.namespace.clone());
        let name = format!("{namespace}/{}", r.name);
        if !group.is_empty() || kind != "Secret" {
            return Err((
                "InvalidCertificateRef",
                format!("{kind} {name} is not a Secret"),
            ));
        }
        if namespace != gateway.metadata.namespace
            && !world.grants(
                "Gateway",
                &gateway.metadata.namespace,
                ("", "Secret"),
                &namespace,
                &r.name,
            )
        {
            return Err((
                "RefNotPermitted",
                format!(
                    "no ReferenceGrant in {namespace} lets Gateways of {} use Secret {name}",
                    gateway.metadata.namespace
                ),
            ));
        }
        match world.secrets.get(&(namespace.clone(), r.name.clone())) {
            None => {
                return Err((
                    "InvalidCertificateRef",
                    format!("Secret {name} does not exist"),
                ))
            }
            Some(s) if !s.tls => {
                return Err((
                    "InvalidCertificateRef",
                    format!(
                        "Secret {name} is not of type kubernetes.io/tls with tls.crt and tls.key"
                    ),
                ))
            }
            Some(s) => {
                if let Some(problem) = &s.problem {
                    let served = match s.pem {
                        Some(_) => "its last valid certificate is served",
                        None => "the listener is not served",
                    };
                    found.stale = Some(format!("Secret {name}: {problem}; {served}"));
                }
                // Without PEM there is nothing to serve: the
                // certificate never loaded.
                let Some(pem) = s.pem.clone() else {
                    let why = found.stale.take().unwrap_or_default();
                    return Err(("InvalidCertificateRef", why));
                };
                found.certificates.push(Certificate {
                    listener: spec.name.clone(),
                    hostname: spec.hostname.clone(),
                    namespace,
                    secret: r.name.clone(),
                    pem,
                });
            }
        }
    }
    Ok(found)
}

/// A listener's certificates, and why one is not the Secret's current
/// content (a Secret edited into one that does not load).
#[derive(Debug, Default)]
struct Found {
    certificates: Vec<Certificate>,
    stale: Option<String>,
}

/// Listeners on one port must agree on the protocol (else
/// `ProtocolConflict` for all of them) and differ in hostname (else
/// `HostnameConflict` for those that share one).
fn mark_conflicts(listeners: &mut [Checked<'_>]) {
    let mut by_port: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (i, l) in listeners.iter().enumerate() {
        if l.refused.is_none() {
            by_port.entry(l.port).or_default().push(i);
        }
    }
    for members in by_port.values() {
        let protocols: std::collections::BTreeSet<&str> = members
            .iter()
            .map(|&i| listeners[i].spec.protocol.as_str())
            .collect();
        if protocols.len() > 1 {
            for &i in members {
                listeners[i].conflict = Some("ProtocolConflict");
            }
            continue;
        }
        for (a, &i) in members.iter().enumerate() {
            for &j in &members[a + 1..] {
                if listeners[i].host == listeners[j].host {
                    listeners[i].conflict = Some("HostnameConflict");
                    listeners[j].conflict = Some("HostnameConflict");
                }
            }
        }
    }
}

fn host_match(pattern: &HostPattern) -> HostMatch {
    match pattern {
        HostPattern::Exact(h) => HostMatch::Exact(h.clone()),
        HostPattern::Wildcard(s) => HostMatch::Suffix(s.clone()),
    }
}

pub(super) fn host_matches(patterns: &[HostPattern]) -> Vec<HostMatch> {
    patterns.iter().map(host_match).collect()
}

/// The ports to serve: every port with a listener that serves, its
/// entries in precedence order, each tagged with its listener's hostname.
pub(super) fn ports(listeners: &[Checked<'_>], entries: Vec<Entry>) -> Vec<Port> {
    // The order is sorted, not the entries: a route's config is large,
    // and moving thousands of them about costs more than the rest.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&a, &b| entries[a].key.cmp(&entries[b].key));
    let mut entries: Vec<Option<Entry>> = entries.into_iter().map(Some).collect();
    let mut ports: BTreeMap<u16, Port> = BTreeMap::new();
    for l in listeners.iter().filter(|l| l.serves()) {
        let port = ports.entry(l.port).or_insert_with(|| Port {
            port: l.port,
            tls: l.tls,
            routes: Vec::new(),
            certificates: Vec::new(),
        });
        port.certificates.extend(l.certificates.iter().cloned());
    }
    for entry in order.into_iter().filter_map(|i| entries[i].take()) {
        let l = &listeners[entry.listener];
        if !l.serves() {
            continue;
        }
        if let Some(port) = ports.get_mut(&l.port) {
            let route: RouteConfig = RouteConfig {
                listener_host: l.host.as_ref().map(host_match),
                ..entry.route
            };
            port.routes.push(route);
        }
    }
    ports.into_values().collect()
}
