//! Cases from the Gateway API conformance suite (`conformance/tests`),
//! each named after the test it comes from, checked on the translation:
//! which routes attach where, in which order, and what status says.

use super::*;
use crate::manifests;
use crate::status::find;
use skiff_config::route::{Action, PathMatch};
use skiff_route::Lookup;

const CONTROLLER: &str = crate::CONTROLLER;

/// The infrastructure the suite's tests share: a class, three namespaces,
/// backends in `infra`, and the Gateway `infra/same-namespace` (HTTP on
/// port 80, routes from its own namespace).
const INFRA: &str = "
kind: GatewayClass
metadata: { name: skiff, generation: 1 }
spec: { controllerName: skiff.io/gateway-controller }
---
kind: Namespace
metadata: { name: infra, labels: { shared: \"yes\" } }
---
kind: Namespace
metadata: { name: apps, labels: { shared: \"yes\" } }
---
kind: Namespace
metadata: { name: other }
---
kind: Service
metadata: { name: backend-v1, namespace: infra }
spec: { ports: [{ name: http, port: 8080 }] }
---
kind: Service
metadata: { name: backend-v2, namespace: infra }
spec: { ports: [{ port: 8080, appProtocol: kubernetes.io/h2c }] }
---
kind: Service
metadata: { name: web, namespace: apps }
spec: { ports: [{ name: http, port: 80 }] }
---
kind: Gateway
metadata: { name: same-namespace, namespace: infra, generation: 3 }
spec:
  gatewayClassName: skiff
  listeners:
    - { name: http, port: 80, protocol: HTTP, allowedRoutes: { namespaces: { from: Same } } }
";

fn world(extra: &str) -> World {
    let mut world = World::default();
    for (line, object) in manifests::objects(&format!("{INFRA}---\n{extra}")).unwrap() {
        world
            .apply(object)
            .unwrap_or_else(|e| panic!("line {line}: {e}"));
    }
    world
}

fn gateway(world: &World, name: &str) -> Translation {
    translate(world, ("infra", name), CONTROLLER)
}

/// The condition `kind` of the route's entry for its first parent.
fn route_condition<'a>(
    t: &'a Translation,
    route: &str,
    kind: &str,
) -> &'a crate::status::Condition {
    let status = t
        .routes
        .iter()
        .find(|r| r.name == route)
        .unwrap_or_else(|| panic!("no status for {route}"));
    find(&status.parents[0].conditions, kind).unwrap_or_else(|| panic!("{route} has no {kind}"))
}

fn listener_condition<'a>(
    t: &'a Translation,
    listener: &str,
    kind: &str,
) -> &'a crate::status::Condition {
    let gw = t.gateway.as_ref().unwrap();
    let l = gw.listeners.iter().find(|l| l.name == listener).unwrap();
    find(&l.conditions, kind).unwrap()
}

/// Which backend cluster (or redirect, or 500) a request to `port` goes to.
fn route_to(
    t: &Translation,
    port: u16,
    host: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Option<String> {
    let port = t.ports.iter().find(|p| p.port == port)?;
    let table = skiff_route::from_config(&port.routes, |r| {
        Ok::<_, skiff_route::BadPattern>(match &r.action {
            Action::Redirect(_) => "redirect".to_string(),
            Action::Forward(b) if b.is_empty() => "500".to_string(),
            Action::Forward(b) => b[0].cluster.clone().unwrap_or_else(|| "500".into()),
        })
    })
    .unwrap();
    let mut req = http::Request::get(path_and_query);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(()).unwrap();
    table.find(&Lookup::of(&req, Some(host))).cloned()
}

#[test]
fn simple_same_namespace() {
    let w = world(
        "
kind: HTTPRoute
metadata: { name: web, namespace: infra, generation: 2 }
spec:
  parentRefs: [{ name: same-namespace }]
  rules: [{ backendRefs: [{ name: backend-v1, port: 8080 }] }]
",
    );
    let t = gateway(&w, "same-namespace");
    assert_eq!(t.problem, None);
    let accepted = route_condition(&t, "web", "Accepted");
    assert!(accepted.is_true(), "{accepted:?}");
    assert_eq!(accepted.observed_generation, 2);
    assert!(route_condition(&t, "web", "ResolvedRefs").is_true());
    let status = &t.routes[0].parents[0];
    assert_eq!(status.controller_name, CONTROLLER);
    assert_eq!(status.parent_ref.name, "same-namespace");
    let gw = t.gateway.as_ref().unwrap();
    assert!(find(&gw.conditions, "Accepted").unwrap().is_true());
    assert!(find(&gw.conditions, "Programmed").unwrap().is_true());
    assert_eq!(gw.conditions[0].observed_generation, 3);
    assert_eq!(gw.listeners[0].attached_routes, 1);
    assert_eq!(gw.listeners[0].supported_kinds[0].kind, "HTTPRoute");
    assert_eq!(t.ports.len(), 1);
    assert_eq!(t.ports[0].port, 80);
    assert_eq!(
        route_to(&t, 80, "anything.example", "/x", &[]).as_deref(),
        Some("infra/backend-v1:8080")
    );
    assert_eq!(t.clusters.len(), 1);
    assert_eq!(t.clusters[0].name, "infra/backend-v1:8080");
    let class = t.class.as_ref().unwrap();
    assert!(class.1[0].is_true());
}

#[test]
fn a_gateway_of_another_controller_is_not_served() {
    let mut w = world("");
    w.apply(serde_json::json!({
        "kind": "GatewayClass", "metadata": { "name": "other" },
        "spec": { "controllerName": "example.com/other" }
    }))
    .unwrap();
    w.apply(serde_json::json!({
        "kind": "Gateway", "metadata": { "name": "theirs", "namespace": "infra" },
        "spec": { "gatewayClassName": "other", "listeners": [] }
    }))
    .unwrap();
    let t = gateway(&w, "theirs");
    assert!(t
        .problem
        .unwrap()
        .contains("belongs to `example.com/other`"));
    assert!(t.ports.is_empty() && t.gateway.is_none());
    assert!(gateway(&w, "missing")
        .problem
        .unwrap()
        .contains("does not exist"));
}

/// HTTPRouteInvalidParentRefNotMatchingSectionName,
/// HTTPRouteInvalidParentRefNotMatchingListenerPort,
/// HTTPRouteInvalidCrossNamespaceParentRef and
/// HTTPRouteHostnameIntersection's unmatched route.
#[test]
fn parent_references_that_select_no_listener_say_why() {
    let w = world(
        "
kind: HTTPRoute
metadata: { name: section, namespace: infra }
spec: { parentRefs: [{ name: same-namespace, sectionName: nope }] }
---
kind: HTTPRoute
metadata: { name: port, namespace: infra }
spec: { parentRefs: [{ name: same-namespace, port: 81 }] }
---
kind: HTTPRoute
metadata: { name: elsewhere, namespace: apps }
spec: { parentRefs: [{ name: same-namespace, namespace: infra }] }
---
kind: HTTPRoute
metadata: { name: not-mine, namespace: infra }
spec: { parentRefs: [{ name: some-other-gateway }] }
",
    );
    let t = gateway(&w, "same-namespace");
    assert_eq!(
        route_condition(&t, "section", "Accepted").reason,
        "NoMatchingParent"
    );
    assert_eq!(
        route_condition(&t, "port", "Accepted").reason,
        "NoMatchingParent"
    );
    let elsewhere = route_condition(&t, "elsewhere", "Accepted");
    assert_eq!(
        (elsewhere.status, elsewhere.reason),
        ("False", "NotAllowedByListeners")
    );
    assert!(
        route_condition(&t, "elsewhere", "ResolvedRefs").is_true(),
        "written even when not accepted"
    );
    assert!(
        t.routes.iter().all(|r| r.name != "not-mine"),
        "another Gateway's route gets no status from this one"
    );
    assert_eq!(t.gateway.as_ref().unwrap().listeners[0].attached_routes, 0);
}

/// HTTPRouteHostnameIntersection and GatewayHTTPListenerIsolation: a
/// route serves the intersection of its hostnames with each listener's,
/// and a listener sharing a port serves only its own routes.
#[test]
fn hostnames_intersect_and_listeners_on_one_port_stay_apart() {
    let w = world(
        "
kind: Gateway
metadata: { name: hosts, namespace: infra }
spec:
  gatewayClassName: skiff
  listeners:
    - { name: specific, port: 80, protocol: HTTP, hostname: very.specific.com }
    - { name: wildcard, port: 80, protocol: HTTP, hostname: '*.wildcard.io' }
    - { name: any, port: 80, protocol: HTTP }
---
kind: HTTPRoute
metadata: { name: specific, namespace: infra, creationTimestamp: '2026-01-01T00:00:00Z' }
spec:
  parentRefs: [{ name: hosts }]
  hostnames: ['*.specific.com', 'foo.bar.wildcard.io', 'wildcard.io']
  rules: [{ matches: [{ path: { type: PathPrefix, value: /s1 } }], backendRefs: [{ name: backend-v1, port: 8080 }] }]
---
kind: HTTPRoute
metadata: { name: nowhere, namespace: infra }
spec:
  parentRefs: [{ name: hosts, sectionName: specific }]
  hostnames: [non.matching.com]
  rules: [{ backendRefs: [{ name: backend-v1, port: 8080 }] }]
---
kind: HTTPRoute
metadata: { name: any, namespace: infra, creationTimestamp: '2026-01-02T00:00:00Z' }
spec:
  parentRefs: [{ name: hosts, sectionName: any }]
  rules: [{ backendRefs: [{ name: backend-v2, port: 8080 }] }]
",
    );
    let t = gateway(&w, "hosts");
    assert_eq!(
        route_condition(&t, "nowhere", "Accepted").reason,
        "NoMatchingListenerHostname"
    );
    assert!(route_condition(&t, "specific", "Accepted").is_true());
    let v1 = Some("infra/backend-v1:8080".to_string());
    let v2 = Some("infra/backend-v2:8080".to_string());
    // The route's *.specific.com narrowed to the listener's exact host.
    assert_eq!(route_to(&t, 80, "very.specific.com", "/s1", &[]), v1);
    assert_eq!(
        route_to(&t, 80, "very.specific.com:8080", "/s1/x", &[]),
        v1,
        "the port is ignored"
    );
    // very.specific.com belongs to the `specific` listener alone: its
    // routes do not match `/`, and the `any` listener's are not tried.
    assert_eq!(route_to(&t, 80, "very.specific.com", "/", &[]), None);
    // Other hosts are the hostname-less listener's, where `specific`
    // serves its own hostnames as written and `any` everything else.
    assert_eq!(route_to(&t, 80, "foo.specific.com", "/s1", &[]), v1);
    assert_eq!(route_to(&t, 80, "foo.specific.com", "/", &[]), v2);
    assert_eq!(route_to(&t, 80, "foo.bar.wildcard.io", "/s1", &[]), v1);
    assert_eq!(
        route_to(&t, 80, "bar.wildcard.io", "/s1", &[]),
        None,
        "the wildcard listener's, and the route did not name it"
    );
    assert_eq!(
        route_to(&t, 80, "wildcard.io", "/s1", &[]),
        v1,
        "not under *.wildcard.io: the any listener's"
    );
    let gw = t.gateway.as_ref().unwrap();
    let attached: Vec<u32> = gw.listeners.iter().map(|l| l.attached_routes).collect();
    assert_eq!(
        attached,
        [1, 1, 2],
        "`specific` attaches to all three; `any` to its own"
    );
}

/// HTTPRouteMatchingAcrossRoutes and HTTPRoutePathMatchOrder: precedence
/// across every route on a listener.
#[test]
fn precedence_across_routes_follows_the_specification() {
    let w = world(
        "
kind: HTTPRoute
metadata: { name: older, namespace: infra, creationTimestamp: '2026-01-01T00:00:00Z' }
spec:
  parentRefs: [{ name: same-namespace }]
  rules:
    - matches: [{ path: { type: PathPrefix, value: /match } }]
      backendRefs: [{ name: backend-v1, port: 8080 }]
    - matches: [{ path: { type: PathPrefix, value: /match }, headers: [{ name: version, value: one }] }]
      backendRefs: [{ name: backend-v1, port: 8080 }]
---
kind: HTTPRoute
metadata: { name: newer, namespace: infra, creationTimestamp: '2026-01-02T00:00:00Z' }
spec:
  parentRefs: [{ name: same-namespace }]
  rules:
    - matches:
        - { path: { type: PathPrefix, value: /match/prefix/ } }
        - { path: { type: Exact, value: /match/exact } }
        - { path: { type: PathPrefix, value: /match }, headers: [{ name: version, value: one }, { name: color, value: blue }] }
        - { path: { type: PathPrefix, value: /match }, method: POST }
        - { path: { type: PathPrefix, value: /match }, queryParams: [{ name: animal, value: whale }] }
      backendRefs: [{ name: backend-v2, port: 8080 }]
",
    );
    let t = gateway(&w, "same-namespace");
    let v1 = Some("infra/backend-v1:8080".to_string());
    let v2 = Some("infra/backend-v2:8080".to_string());
    let to = |path: &str, headers: &[(&str, &str)]| route_to(&t, 80, "example.com", path, headers);
    assert_eq!(to("/match", &[]), v1, "the older route, for a tie");
    assert_eq!(
        to("/match/prefix/one", &[]),
        v2,
        "the longer prefix, though newer"
    );
    assert_eq!(to("/match/exact", &[]), v2, "exact beats every prefix");
    assert_eq!(to("/match/exactly", &[]), v1);
    assert_eq!(
        to("/match", &[("version", "one")]),
        v1,
        "one header beats none"
    );
    assert_eq!(
        to("/match", &[("version", "one"), ("color", "blue")]),
        v2,
        "two beat one"
    );
    assert_eq!(
        to("/match?animal=whale", &[]),
        v2,
        "a query match beats none"
    );
}

/// HTTPRouteInvalidNonExistentBackendRef, HTTPRouteInvalidBackendRefUnknownKind,
/// HTTPRouteInvalidCrossNamespaceBackendRef, HTTPRouteReferenceGrant,
/// HTTPRouteWeight: backends resolve, or keep their share as 500s.
#[test]
fn backends_resolve_or_answer_500_for_their_share() {
    let routes = "
kind: HTTPRoute
metadata: { name: missing, namespace: infra }
spec:
  parentRefs: [{ name: same-namespace }]
  rules: [{ matches: [{ path: { value: /missing } }], backendRefs: [{ name: nonexistent, port: 8080 }] }]
---
kind: HTTPRoute
metadata: { name: kind, namespace: infra }
spec:
  parentRefs: [{ name: same-namespace }]
  rules: [{ matches: [{ path: { value: /kind } }], backendRefs: [{ group: unknown.example, kind: Thing, name: backend-v1, port: 8080 }] }]
---
kind: HTTPRoute
metadata: { name: across, namespace: infra }
spec:
  parentRefs: [{ name: same-namespace }]
  rules: [{ matches: [{ path: { value: /across } }], backendRefs: [{ name: web, namespace: apps, port: 80 }] }]
---
kind: HTTPRoute
metadata: { name: split, namespace: infra }
spec:
  parentRefs: [{ name: same-namespace }]
  rules:
    - matches: [{ path: { value: /split } }]
      backendRefs: [{ name: backend-v1, port: 8080, weight: 70 }, { name: nonexistent, port: 8080, weight: 30 }, { name: backend-v2, port: 8080, weight: 0 }]
---
kind: HTTPRoute
metadata: { name: nothing, namespace: infra }
spec:
  parentRefs: [{ name: same-namespace }]
  rules: [{ matches: [{ path: { value: /nothing } }] }]
";
    let t = gateway(&world(routes), "same-namespace");
    let condition = |route| route_condition(&t, route, "ResolvedRefs");
    assert_eq!(condition("missing").reason, "BackendNotFound");
    assert!(condition("missing").message.contains("infra/nonexistent"));
    assert!(
        route_condition(&t, "missing", "Accepted").is_true(),
        "still served, with 500s"
    );
    assert_eq!(condition("kind").reason, "InvalidKind");
    assert_eq!(condition("across").reason, "RefNotPermitted");
    assert!(
        condition("nothing").is_true(),
        "no backends is not a reference problem"
    );
    assert_eq!(
        route_to(&t, 80, "h", "/missing", &[]).as_deref(),
        Some("500")
    );
    assert_eq!(
        route_to(&t, 80, "h", "/nothing", &[]).as_deref(),
        Some("500")
    );
    let port = &t.ports[0];
    let split = port
        .routes
        .iter()
        .find(|r| r.path == PathMatch::SeparatedPrefix("/split".into()))
        .unwrap();
    let Action::Forward(backends) = &split.action else {
        panic!()
    };
    let shares: Vec<(Option<&str>, u32)> = backends
        .iter()
        .map(|b| (b.cluster.as_deref(), b.weight))
        .collect();
    assert_eq!(
        shares,
        [
            (Some("infra/backend-v1:8080"), 70),
            (None, 30),
            (Some("infra/backend-v2:8080"), 0)
        ]
    );
    let h2c = t
        .clusters
        .iter()
        .find(|c| c.name == "infra/backend-v2:8080")
        .unwrap();
    assert_eq!(
        h2c.protocol,
        skiff_config::cluster::UpstreamProtocol::Http2,
        "appProtocol kubernetes.io/h2c"
    );

    let grant = "
---
kind: ReferenceGrant
metadata: { name: let-infra-in, namespace: apps }
spec:
  from: [{ group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: infra }]
  to: [{ group: '', kind: Service, name: web }]
";
    let t = gateway(&world(&format!("{routes}{grant}")), "same-namespace");
    assert!(route_condition(&t, "across", "ResolvedRefs").is_true());
    assert_eq!(
        route_to(&t, 80, "h", "/across", &[]).as_deref(),
        Some("apps/web:80")
    );
}

/// GatewayInvalidRouteKind, GatewayListenerUnsupportedProtocol,
/// GatewayInvalidTLSConfiguration (missing Secret), and conflicts.
#[test]
fn listeners_that_cannot_be_served_say_why() {
    let w = world(
        "
kind: Gateway
metadata: { name: mixed, namespace: infra, generation: 5 }
spec:
  gatewayClassName: skiff
  listeners:
    - { name: http, port: 80, protocol: HTTP }
    - { name: udp, port: 53, protocol: UDP }
    - { name: kinds, port: 81, protocol: HTTP, allowedRoutes: { kinds: [{ kind: TCPRoute }] } }
    - { name: https, port: 443, protocol: HTTPS, tls: { certificateRefs: [{ name: missing-cert }] } }
    - { name: same-a, port: 82, protocol: HTTP, hostname: a.example.com }
    - { name: same-b, port: 82, protocol: HTTP, hostname: a.example.com }
---
kind: HTTPRoute
metadata: { name: to-https, namespace: infra }
spec:
  parentRefs: [{ name: mixed, sectionName: https }]
  rules: [{ backendRefs: [{ name: backend-v1, port: 8080 }] }]
",
    );
    let t = gateway(&w, "mixed");
    let gw = t.gateway.as_ref().unwrap();
    let accepted = find(&gw.conditions, "Accepted").unwrap();
    assert_eq!(
        (accepted.status, accepted.reason),
        ("True", "ListenersNotValid")
    );
    assert_eq!(
        listener_condition(&t, "udp", "Accepted").reason,
        "UnsupportedProtocol"
    );
    assert_eq!(
        listener_condition(&t, "kinds", "ResolvedRefs").reason,
        "InvalidRouteKinds"
    );
    let kinds = gw.listeners.iter().find(|l| l.name == "kinds").unwrap();
    assert!(kinds.supported_kinds.is_empty());
    assert_eq!(
        listener_condition(&t, "https", "ResolvedRefs").reason,
        "InvalidCertificateRef"
    );
    assert_eq!(
        listener_condition(&t, "https", "Programmed").status,
        "False"
    );
    assert_eq!(
        listener_condition(&t, "same-a", "Conflicted").reason,
        "HostnameConflict"
    );
    assert_eq!(
        listener_condition(&t, "http", "Conflicted").reason,
        "NoConflicts"
    );
    let https = gw.listeners.iter().find(|l| l.name == "https").unwrap();
    assert_eq!(
        https.attached_routes, 1,
        "a listener waiting for its certificate still counts its routes"
    );
    assert!(route_condition(&t, "to-https", "Accepted").is_true());
    let ports: Vec<u16> = t.ports.iter().map(|p| p.port).collect();
    assert_eq!(ports, [80], "only the listener that can be served is bound");
    assert_eq!(
        listener_condition(&t, "http", "Accepted").observed_generation,
        5
    );
}

/// GatewaySecretReferenceGrantSpecific, GatewaySecretMissingReferenceGrant,
/// GatewayInvalidTLSConfiguration: HTTPS listeners take their certificates
/// from Secrets, across namespaces only with a ReferenceGrant, and each
/// listener's hostname is the SNI name its certificate is served for.
#[test]
fn https_listeners_take_certificates_from_secrets() {
    const GATEWAY: &str = "
kind: Gateway
metadata: { name: tls, namespace: infra, generation: 2 }
spec:
  gatewayClassName: skiff
  listeners:
    - { name: own, port: 443, protocol: HTTPS, hostname: shop.example.com, tls: { certificateRefs: [{ name: shop-cert }] } }
    - { name: other, port: 443, protocol: HTTPS, hostname: \"*.example.org\", tls: { certificateRefs: [{ name: org-cert, namespace: apps }] } }
    - { name: plain, port: 80, protocol: HTTP }
---
kind: Secret
metadata: { name: shop-cert, namespace: infra }
type: kubernetes.io/tls
stringData: { tls.crt: SHOP-CERT, tls.key: SHOP-KEY }
---
kind: Secret
metadata: { name: org-cert, namespace: apps }
type: kubernetes.io/tls
data: { tls.crt: T1JHLUNFUlQ=, tls.key: T1JHLUtFWQ== }
";
    let w = world(GATEWAY);
    let t = gateway(&w, "tls");
    assert_eq!(
        listener_condition(&t, "other", "ResolvedRefs").reason,
        "RefNotPermitted"
    );
    assert!(listener_condition(&t, "own", "ResolvedRefs").is_true());
    let https = t.ports.iter().find(|p| p.port == 443).unwrap();
    assert!(https.tls);
    let served: Vec<(&str, Option<&str>, &[u8])> = https
        .certificates
        .iter()
        .map(|c| (c.secret.as_str(), c.hostname.as_deref(), &*c.pem.cert))
        .collect();
    assert_eq!(
        served,
        [("shop-cert", Some("shop.example.com"), &b"SHOP-CERT"[..])]
    );

    let grant = "
---
kind: ReferenceGrant
metadata: { name: certs, namespace: apps }
spec:
  from: [{ group: gateway.networking.k8s.io, kind: Gateway, namespace: infra }]
  to: [{ group: \"\", kind: Secret, name: org-cert }]
";
    let w = world(&format!("{GATEWAY}{grant}"));
    let t = gateway(&w, "tls");
    assert!(listener_condition(&t, "other", "ResolvedRefs").is_true());
    let https = t.ports.iter().find(|p| p.port == 443).unwrap();
    let org = https
        .certificates
        .iter()
        .find(|c| c.secret == "org-cert")
        .unwrap();
    assert_eq!(
        (&*org.pem.cert, &*org.pem.key, org.hostname.as_deref()),
        (&b"ORG-CERT"[..], &b"ORG-KEY"[..], Some("*.example.org")),
        "data is base64 as the API server gives it"
    );

    // A Secret that the proxy found does not load (malformed, as the
    // suite's `malformed-certificate`): with no earlier certificate the
    // listener is not served; with one, that one stays and status says
    // why.
    let mut w = w;
    let key = ("infra".to_string(), "shop-cert".to_string());
    let secret = w.secrets.get_mut(&key).unwrap();
    let last_good = secret.pem.take();
    secret.problem = Some("tls.crt: not a valid PEM certificate file".into());
    let t = gateway(&w, "tls");
    let resolved = listener_condition(&t, "own", "ResolvedRefs");
    assert_eq!(resolved.reason, "InvalidCertificateRef");
    assert!(
        resolved.message.contains("tls.crt: not a valid PEM"),
        "{resolved:?}"
    );
    assert_eq!(listener_condition(&t, "own", "Programmed").status, "False");
    let https = t.ports.iter().find(|p| p.port == 443).unwrap();
    assert!(https.certificates.iter().all(|c| c.secret != "shop-cert"));

    w.secrets.get_mut(&key).unwrap().pem = last_good;
    let t = gateway(&w, "tls");
    let resolved = listener_condition(&t, "own", "ResolvedRefs");
    assert_eq!(resolved.reason, "InvalidCertificateRef");
    assert!(
        resolved
            .message
            .contains("last valid certificate is served"),
        "{resolved:?}"
    );
    assert!(listener_condition(&t, "own", "Programmed").is_true());
    let https = t.ports.iter().find(|p| p.port == 443).unwrap();
    assert!(https.certificates.iter().any(|c| c.secret == "shop-cert"));

    // Other Secrets' data is never kept.
    let w = world(
        "
kind: Secret
metadata: { name: token, namespace: infra }
type: Opaque
stringData: { tls.crt: A, tls.key: B, password: C }
",
    );
    let token = &w.secrets[&("infra".to_string(), "token".to_string())];
    assert!(!token.tls && token.pem.is_none());
}

/// Listener `allowedRoutes.namespaces` by `All` and `Selector`.
#[test]
fn routes_from_other_namespaces_by_selector() {
    let w = world(
        "
kind: Gateway
metadata: { name: shared, namespace: infra }
spec:
  gatewayClassName: skiff
  listeners:
    - name: http
      port: 80
      protocol: HTTP
      allowedRoutes: { namespaces: { from: Selector, selector: { matchLabels: { shared: \"yes\" } } } }
---
kind: HTTPRoute
metadata: { name: web, namespace: apps }
spec:
  parentRefs: [{ name: shared, namespace: infra }]
  rules: [{ backendRefs: [{ name: web, port: 80 }] }]
---
kind: HTTPRoute
metadata: { name: web, namespace: other }
spec:
  parentRefs: [{ name: shared, namespace: infra }]
  rules: [{ backendRefs: [{ name: web, port: 80 }] }]
",
    );
    let t = gateway(&w, "shared");
    let status = |ns: &str| {
        let r = t.routes.iter().find(|r| r.namespace == ns).unwrap();
        find(&r.parents[0].conditions, "Accepted").unwrap().clone()
    };
    assert!(status("apps").is_true());
    assert_eq!(status("other").reason, "NotAllowedByListeners");
}

/// Filters: redirects and rewrites become skiff's, an unsupported one
/// refuses its rule (`UnsupportedValue`, `PartiallyInvalid` when others
/// stay), and a redirect with backends is `IncompatibleFilters`.
#[test]
fn filters_translate_or_refuse_their_rule() {
    let w = world(
        "
kind: HTTPRoute
metadata: { name: filters, namespace: infra }
spec:
  parentRefs: [{ name: same-namespace }]
  rules:
    - matches: [{ path: { type: PathPrefix, value: /old } }]
      filters:
        - type: RequestRedirect
          requestRedirect: { scheme: https, hostname: Example.org, path: { type: ReplacePrefixMatch, replacePrefixMatch: /new }, statusCode: 301 }
    - matches: [{ path: { type: PathPrefix, value: /api } }]
      filters:
        - { type: URLRewrite, urlRewrite: { hostname: internal, path: { type: ReplaceFullPath, replaceFullPath: /v2 } } }
        - { type: RequestHeaderModifier, requestHeaderModifier: { set: [{ name: X-Set, value: '1' }], add: [{ name: x-add, value: a }], remove: [x-gone] } }
        - { type: ResponseHeaderModifier, responseHeaderModifier: { set: [{ name: x-resp, value: r }] } }
      timeouts: { request: 1m30s }
      backendRefs:
        - name: backend-v1
          port: 8080
          filters: [{ type: RequestHeaderModifier, requestHeaderModifier: { set: [{ name: x-backend, value: v1 }] } }]
    - matches: [{ path: { value: /extension } }]
      filters: [{ type: ExtensionRef, extensionRef: { group: example.com, kind: Thing, name: x } }]
      backendRefs: [{ name: backend-v1, port: 8080 }]
---
kind: HTTPRoute
metadata: { name: incompatible, namespace: infra }
spec:
  parentRefs: [{ name: same-namespace }]
  rules:
    - filters: [{ type: RequestRedirect, requestRedirect: { scheme: https } }]
      backendRefs: [{ name: backend-v1, port: 8080 }]
",
    );
    let t = gateway(&w, "same-namespace");
    let partial = route_condition(&t, "filters", "PartiallyInvalid");
    assert!(partial.message.starts_with("Dropped Rule"), "{partial:?}");
    assert!(partial.message.contains("ExtensionRef"), "{partial:?}");
    assert!(route_condition(&t, "filters", "Accepted").is_true());
    assert_eq!(
        route_condition(&t, "incompatible", "Accepted").reason,
        "IncompatibleFilters"
    );
    let routes = &t.ports[0].routes;
    let old = routes
        .iter()
        .find(|r| r.path == PathMatch::SeparatedPrefix("/old".into()))
        .unwrap();
    let Action::Redirect(redirect) = &old.action else {
        panic!("a redirect")
    };
    assert_eq!(redirect.code, 301);
    assert_eq!(redirect.host.as_deref(), Some("example.org"));
    assert_eq!(
        redirect.path,
        Some(skiff_config::route::PathRewrite::Prefix("/new".into()))
    );
    let api = routes
        .iter()
        .find(|r| r.path == PathMatch::SeparatedPrefix("/api".into()))
        .unwrap();
    assert_eq!(api.name.as_deref(), Some("HTTPRoute/infra/filters/rule/1"));
    let rewrite = api.rules.rewrite.as_ref().unwrap();
    assert_eq!(rewrite.host.as_deref(), Some("internal"));
    assert_eq!(
        api.rules.request_headers.set,
        [("x-set".to_string(), "1".to_string())]
    );
    assert_eq!(api.rules.request_headers.remove, ["x-gone"]);
    assert_eq!(api.rules.response_headers.set.len(), 1);
    assert_eq!(api.rules.timeout, Some(std::time::Duration::from_secs(90)));
    let Action::Forward(backends) = &api.action else {
        panic!()
    };
    assert_eq!(backends[0].request_headers.set[0].0, "x-backend");
    assert_eq!(
        route_to(&t, 80, "h", "/mirror", &[]),
        None,
        "the dropped rule is not served"
    );
}

#[test]
fn durations_read_as_gep_2257_writes_them() {
    use std::time::Duration;
    let d = route::duration;
    assert_eq!(d("10s"), Some(Duration::from_secs(10)));
    assert_eq!(d("1h30m"), Some(Duration::from_secs(5400)));
    assert_eq!(d("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(d("0s"), Some(Duration::ZERO));
    assert_eq!(d("1h1m1s1ms"), Some(Duration::from_millis(3_661_001)));
    for bad in ["", "10", "1.5s", "1d", "s", "1h1m1s1ms1ms", "123456s"] {
        assert_eq!(d(bad), None, "{bad}");
    }
}

/// Objects that cannot be read are named and change nothing.
#[test]
fn unreadable_objects_are_refused_by_name() {
    let mut w = world("");
    let err = w
        .apply(serde_json::json!({
            "kind": "HTTPRoute", "metadata": { "name": "bad", "namespace": "infra" },
            "spec": { "parentRefs": "not a list" }
        }))
        .unwrap_err();
    assert_eq!(err.object, "HTTPRoute infra/bad");
    assert!(err.reason.contains("invalid type"), "{err}");
    assert!(w.http_routes.is_empty());
    let err = w
        .apply(serde_json::json!({ "kind": "Gateway", "metadata": {} }))
        .unwrap_err();
    assert!(err.reason.contains("metadata.name"));
}

/// GRPCRouteExactMethodMatching, GRPCRouteHeaderMatching: service and
/// method become the request path, headers match as an HTTPRoute's do,
/// and precedence goes by service, then method, then headers. Backends
/// speak HTTP/2 whatever the Service port declares.
#[test]
fn grpc_routes_match_service_method_and_headers() {
    let w = world(
        "
kind: GRPCRoute
metadata: { name: exact, namespace: infra, generation: 4 }
spec:
  parentRefs: [{ name: same-namespace }]
  rules:
    - matches: [{ method: { service: echo.Echo, method: Echo } }]
      backendRefs: [{ name: backend-v1, port: 8080 }]
    - matches: [{ method: { service: echo.Echo, method: EchoTwo } }]
      backendRefs: [{ name: backend-v2, port: 8080 }]
    - matches: [{ method: { service: echo.Echo } }]
      backendRefs: [{ name: web, namespace: apps, port: 80 }]
    - matches: [{ method: { method: Health } }]
      backendRefs: [{ name: backend-v2, port: 8080 }]
    - matches: [{ method: { type: RegularExpression, service: \"shop\\\\.v[0-9]+\\\\.Catalog\" } }]
      backendRefs: [{ name: backend-v2, port: 8080 }]
",
    );
    let t = gateway(&w, "same-namespace");
    let accepted = route_condition(&t, "exact", "Accepted");
    assert!(accepted.is_true(), "{accepted:?}");
    assert_eq!(
        t.routes.iter().find(|r| r.name == "exact").unwrap().kind,
        "GRPCRoute"
    );
    let gw = t.gateway.as_ref().unwrap();
    let kinds: Vec<&str> = gw.listeners[0]
        .supported_kinds
        .iter()
        .map(|k| k.kind.as_str())
        .collect();
    assert_eq!(kinds, ["HTTPRoute", "GRPCRoute"]);
    assert_eq!(gw.listeners[0].attached_routes, 1);
    let to = |host: &str, path: &str, headers: &[(&str, &str)]| {
        route_to(&t, 80, host, path, headers).unwrap_or_default()
    };
    let h = "any.host";
    assert_eq!(to(h, "/echo.Echo/Echo", &[]), "infra/backend-v1:8080/h2c");
    assert_eq!(to(h, "/echo.Echo/EchoTwo", &[]), "infra/backend-v2:8080");
    assert_eq!(
        to(h, "/echo.Echo/EchoThree", &[]),
        "500",
        "the service's rule, whose Service in another namespace has no ReferenceGrant"
    );
    let resolved = route_condition(&t, "exact", "ResolvedRefs");
    assert_eq!(resolved.reason, "RefNotPermitted", "{resolved:?}");
    assert!(
        resolved.message.contains("GRPCRoutes of infra"),
        "{resolved:?}"
    );
    let t = gateway(
        &world(&format!(
            "{}\n---\nkind: ReferenceGrant\nmetadata: {{ name: g, namespace: apps }}\nspec:\n  from: [{{ group: gateway.networking.k8s.io, kind: GRPCRoute, namespace: infra }}]\n  to: [{{ group: \"\", kind: Service }}]\n",
            "kind: GRPCRoute\nmetadata: { name: svc, namespace: infra }\nspec:\n  parentRefs: [{ name: same-namespace }]\n  rules:\n    - matches: [{ method: { service: echo.Echo } }]\n      backendRefs: [{ name: web, namespace: apps, port: 80 }]\n    - matches: [{ method: { method: Health } }]\n      backendRefs: [{ name: backend-v2, port: 8080 }]\n    - matches: [{ method: { type: RegularExpression, service: \"shop\\\\.v[0-9]+\\\\.Catalog\" } }]\n      backendRefs: [{ name: backend-v1, port: 8080 }]\n"
        )),
        "same-namespace",
    );
    let to = |path: &str| route_to(&t, 80, "h", path, &[]).unwrap_or_default();
    assert_eq!(
        to("/echo.Echo/Anything"),
        "apps/web:80/h2c",
        "a service alone is a prefix"
    );
    assert_eq!(to("/echo.Echox/Anything"), "", "of whole service names");
    assert_eq!(
        to("/other.Svc/Health"),
        "infra/backend-v2:8080",
        "a method alone, any service"
    );
    assert_eq!(to("/shop.v2.Catalog/List"), "infra/backend-v1:8080/h2c");
    assert_eq!(to("/shop.vx.Catalog/List"), "");

    // The suite's header cases: the most headers win, in any rule order.
    let w = world(
        "
kind: GRPCRoute
metadata: { name: headers, namespace: infra }
spec:
  parentRefs: [{ name: same-namespace }]
  hostnames: [grpc.example.com]
  rules:
    - matches: [{ headers: [{ name: version, value: one }] }]
      backendRefs: [{ name: backend-v1, port: 8080 }]
    - matches: [{ headers: [{ name: version, value: two }] }]
      backendRefs: [{ name: backend-v2, port: 8080 }]
    - matches: [{ headers: [{ name: version, value: two }, { name: color, value: orange }] }]
      backendRefs: [{ name: backend-v1, port: 8080 }]
    - matches: [{ headers: [{ name: color, value: blue }] }, { headers: [{ name: color, value: green }] }]
      backendRefs: [{ name: backend-v1, port: 8080 }]
",
    );
    let t = gateway(&w, "same-namespace");
    let to = |headers: &[(&str, &str)]| {
        route_to(&t, 80, "grpc.example.com", "/echo.Echo/Echo", headers).unwrap_or_default()
    };
    assert_eq!(to(&[("version", "one")]), "infra/backend-v1:8080/h2c");
    assert_eq!(to(&[("version", "two")]), "infra/backend-v2:8080");
    assert_eq!(
        to(&[("version", "two"), ("color", "orange")]),
        "infra/backend-v1:8080/h2c"
    );
    assert_eq!(to(&[("color", "green")]), "infra/backend-v1:8080/h2c");
    assert_eq!(to(&[("color", "red")]), "");
    assert_eq!(
        route_to(
            &t,
            80,
            "other.example.com",
            "/echo.Echo/Echo",
            &[("version", "one")]
        ),
        None,
        "hostnames apply as an HTTPRoute's"
    );
    let clusters: Vec<(&str, skiff_config::cluster::UpstreamProtocol)> = t
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.protocol))
        .collect();
    assert!(
        clusters.contains(&(
            "infra/backend-v1:8080/h2c",
            skiff_config::cluster::UpstreamProtocol::Http2
        )),
        "{clusters:?}"
    );
}

/// What a GRPCRoute cannot carry is refused in its status: filters of
/// HTTPRoute only, invalid names, an empty method match; a listener that
/// allows only HTTPRoutes does not take it.
#[test]
fn grpc_routes_refuse_what_they_cannot_carry() {
    let w = world(
        "
kind: GRPCRoute
metadata: { name: redirect, namespace: infra }
spec:
  parentRefs: [{ name: same-namespace }]
  rules: [{ filters: [{ type: RequestRedirect, requestRedirect: { statusCode: 301 } }], backendRefs: [{ name: backend-v1, port: 8080 }] }]
---
kind: GRPCRoute
metadata: { name: bad-name, namespace: infra }
spec:
  parentRefs: [{ name: same-namespace }]
  rules: [{ matches: [{ method: { service: \"echo/Echo\" } }], backendRefs: [{ name: backend-v1, port: 8080 }] }]
---
kind: GRPCRoute
metadata: { name: empty, namespace: infra }
spec:
  parentRefs: [{ name: same-namespace }]
  rules: [{ matches: [{ method: { type: Exact } }], backendRefs: [{ name: backend-v1, port: 8080 }] }]
---
kind: Gateway
metadata: { name: http-only, namespace: infra }
spec:
  gatewayClassName: skiff
  listeners:
    - { name: http, port: 80, protocol: HTTP, allowedRoutes: { kinds: [{ kind: HTTPRoute }] } }
---
kind: GRPCRoute
metadata: { name: elsewhere, namespace: infra }
spec:
  parentRefs: [{ name: http-only }]
  rules: [{ backendRefs: [{ name: backend-v1, port: 8080 }] }]
",
    );
    let t = gateway(&w, "same-namespace");
    for (route, says) in [
        ("redirect", "RequestRedirect"),
        ("bad-name", "not a gRPC service name"),
        ("empty", "needs a service, a method or both"),
    ] {
        let accepted = route_condition(&t, route, "Accepted");
        assert_eq!(
            (accepted.status, accepted.reason),
            ("False", "UnsupportedValue")
        );
        assert!(accepted.message.contains(says), "{route}: {accepted:?}");
    }
    assert!(t.ports[0].routes.is_empty());
    let t = gateway(&w, "http-only");
    let accepted = route_condition(&t, "elsewhere", "Accepted");
    assert_eq!(accepted.reason, "NotAllowedByListeners");
    assert!(accepted.message.contains("GRPCRoutes"), "{accepted:?}");
}

const INGRESS_INFRA: &str = "
kind: IngressClass
metadata: { name: skiff, annotations: { ingressclass.kubernetes.io/is-default-class: \"true\" } }
spec: { controller: skiff.io/ingress-controller }
---
kind: Service
metadata: { name: shop, namespace: web }
spec: { ports: [{ name: http, port: 80 }] }
---
kind: Service
metadata: { name: api, namespace: web }
spec: { ports: [{ name: http, port: 8080 }] }
---
kind: Service
metadata: { name: fallback, namespace: web }
spec: { ports: [{ port: 80 }] }
---
kind: Secret
metadata: { name: shop-tls, namespace: web }
type: kubernetes.io/tls
stringData: { tls.crt: CERT, tls.key: KEY }
";

fn ingress_world(extra: &str) -> World {
    let mut world = World::default();
    for (line, object) in manifests::objects(&format!("{INGRESS_INFRA}---\n{extra}")).unwrap() {
        world
            .apply(object)
            .unwrap_or_else(|e| panic!("line {line}: {e}"));
    }
    world
}

/// Where a request to an Ingress port goes: a cluster, "redirect LOCATION
/// parts", "500", or none.
fn ingress_to(t: &Translation, port: u16, host: &str, path: &str) -> Option<String> {
    let port = t.ports.iter().find(|p| p.port == port)?;
    let table = skiff_route::from_config(&port.routes, |r| {
        Ok::<_, skiff_route::BadPattern>(match &r.action {
            Action::Redirect(to) => format!("redirect {:?} {}", to.scheme, to.code),
            Action::Forward(b) => b[0].cluster.clone().unwrap_or_else(|| "500".into()),
        })
    })
    .unwrap();
    let req = http::Request::get(path).body(()).unwrap();
    table.find(&Lookup::of(&req, Some(host))).cloned()
}

/// Ingress paths as the Ingress specification orders them (longest
/// first, `Exact` before `Prefix`), ingress-nginx's `ImplementationSpecific`
/// as a plain prefix, hosts exact and wildcard, the default backend, a
/// port by name, and what cannot be served named in the warnings.
#[test]
fn ingress_rules_route_as_ingress_nginx_does() {
    let w = ingress_world(
        "
kind: Ingress
metadata: { name: shop, namespace: web, creationTimestamp: \"2026-01-01T00:00:00Z\" }
spec:
  ingressClassName: skiff
  defaultBackend: { service: { name: fallback, port: { number: 80 } } }
  rules:
    - host: shop.example.com
      http:
        paths:
          - { path: /, pathType: Prefix, backend: { service: { name: shop, port: { name: http } } } }
          - { path: /api, pathType: Prefix, backend: { service: { name: api, port: { number: 8080 } } } }
          - { path: /api/v2, pathType: Exact, backend: { service: { name: shop, port: { number: 80 } } } }
          - { path: /legacy, pathType: ImplementationSpecific, backend: { service: { name: api, port: { number: 8080 } } } }
          - { path: /gone, pathType: Exact, backend: { service: { name: missing, port: { number: 80 } } } }
    - host: \"*.example.org\"
      http:
        paths: [{ path: /, pathType: Prefix, backend: { service: { name: api, port: { name: nope } } } }]
---
kind: Ingress
metadata: { name: newer, namespace: web, creationTimestamp: \"2026-02-01T00:00:00Z\" }
spec:
  defaultBackend: { service: { name: shop, port: { number: 80 } } }
  rules:
    - http:
        paths: [{ path: /any-host, pathType: Exact, backend: { service: { name: api, port: { number: 8080 } } } }]
---
kind: Ingress
metadata: { name: legacy, namespace: web, annotations: { kubernetes.io/ingress.class: skiff } }
spec:
  rules: [{ host: legacy.example.com, http: { paths: [{ path: /, pathType: Prefix, backend: { service: { name: api, port: { number: 8080 } } } }] } }]
---
kind: Ingress
metadata: { name: theirs, namespace: web }
spec:
  ingressClassName: nginx
  rules: [{ host: theirs.example.com, http: { paths: [{ path: /, pathType: Prefix, backend: { service: { name: api, port: { number: 8080 } } } }] } }]
",
    );
    let t = translate_ingress(&w, "skiff", IngressPorts::default());
    assert_eq!(t.problem, None);
    let served: Vec<&str> = t.ingresses.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        served,
        ["shop", "newer", "legacy"],
        "oldest first; not nginx's"
    );
    let to = |host: &str, path: &str| ingress_to(&t, 80, host, path).unwrap_or_default();
    let h = "shop.example.com";
    assert_eq!(to(h, "/cart"), "web/shop:80");
    assert_eq!(to(h, "/api"), "web/api:8080");
    assert_eq!(to(h, "/api/v1"), "web/api:8080");
    assert_eq!(to(h, "/apis"), "web/shop:80", "Prefix is by whole segments");
    assert_eq!(to(h, "/api/v2"), "web/shop:80", "the longer, exact path");
    assert_eq!(
        to(h, "/legacy-page"),
        "web/api:8080",
        "ImplementationSpecific: plain prefix"
    );
    assert_eq!(to(h, "/gone"), "500");
    assert_eq!(to("www.example.org", "/"), "500", "no port named `nope`");
    assert_eq!(to("legacy.example.com", "/x"), "web/api:8080");
    assert_eq!(
        to("theirs.example.com", "/x"),
        "web/fallback:80",
        "another class's host"
    );
    assert_eq!(to("any.host", "/any-host"), "web/api:8080");
    assert_eq!(
        to("any.host", "/else"),
        "web/fallback:80",
        "the oldest default backend"
    );
    let warnings = t.warnings.join("\n");
    for says in [
        "Ingress web/shop: rules[0].http.paths[4]: Service web/missing does not exist",
        "Ingress web/shop: rules[1].http.paths[0]: Service api has no port named `nope`",
        "Ingress web/newer: defaultBackend: an older Ingress's default backend is served",
    ] {
        assert!(warnings.contains(says), "{says}\nnot in:\n{warnings}");
    }
    assert_eq!(t.ports.len(), 1, "no TLS, no HTTPS port");

    // Without a default class, an Ingress that names none is not served.
    let mut w = w;
    w.ingress_classes
        .get_mut("skiff")
        .unwrap()
        .metadata
        .annotations
        .clear();
    let t = translate_ingress(&w, "skiff", IngressPorts::default());
    let served: Vec<&str> = t.ingresses.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(served, ["shop", "legacy"]);
    // Another controller's IngressClass of that name: nothing is served.
    w.ingress_classes.get_mut("skiff").unwrap().spec.controller = "k8s.io/ingress-nginx".into();
    let t = translate_ingress(&w, "skiff", IngressPorts::default());
    assert!(t.ports.is_empty());
    assert!(t.problem.unwrap().contains("k8s.io/ingress-nginx"));
}

/// Ingress TLS: the Secret's certificate for the entry's hosts on the
/// HTTPS port, those hosts redirected there from HTTP (308) unless the
/// Ingress turns it off, and a missing Secret leaving its hosts on HTTP.
#[test]
fn ingress_tls_serves_https_and_redirects_plain_http() {
    let w = ingress_world(
        "
kind: Ingress
metadata: { name: shop, namespace: web }
spec:
  tls: [{ hosts: [shop.example.com], secretName: shop-tls }]
  rules:
    - host: shop.example.com
      http: { paths: [{ path: /, pathType: Prefix, backend: { service: { name: shop, port: { number: 80 } } } }] }
---
kind: Ingress
metadata: { name: api, namespace: web, annotations: { nginx.ingress.kubernetes.io/ssl-redirect: \"false\" } }
spec:
  tls: [{ hosts: [api.example.com], secretName: shop-tls }, { hosts: [broken.example.com], secretName: missing }]
  rules:
    - host: api.example.com
      http: { paths: [{ path: /, pathType: Prefix, backend: { service: { name: api, port: { number: 8080 } } } }] }
    - host: broken.example.com
      http: { paths: [{ path: /, pathType: Prefix, backend: { service: { name: api, port: { number: 8080 } } } }] }
",
    );
    let t = translate_ingress(
        &w,
        "skiff",
        IngressPorts {
            http: 80,
            https: 443,
        },
    );
    let https = t
        .ports
        .iter()
        .find(|p| p.port == 443)
        .expect("an HTTPS port");
    assert!(https.tls);
    let certs: Vec<(Option<&str>, &str)> = https
        .certificates
        .iter()
        .map(|c| (c.hostname.as_deref(), c.secret.as_str()))
        .collect();
    assert_eq!(
        certs,
        [
            (Some("api.example.com"), "shop-tls"),
            (Some("shop.example.com"), "shop-tls")
        ]
    );
    assert_eq!(
        ingress_to(&t, 443, "shop.example.com", "/x").unwrap(),
        "web/shop:80"
    );
    assert_eq!(
        ingress_to(&t, 80, "shop.example.com", "/x").unwrap(),
        "redirect Some(\"https\") 308"
    );
    assert_eq!(
        ingress_to(&t, 80, "api.example.com", "/x").unwrap(),
        "web/api:8080"
    );
    assert_eq!(
        ingress_to(&t, 80, "broken.example.com", "/x").unwrap(),
        "web/api:8080"
    );
    assert_eq!(ingress_to(&t, 443, "broken.example.com", "/x"), None);
    assert!(t
        .warnings
        .iter()
        .any(|w| w.contains("tls[1]: Secret web/missing does not exist")));
}

/// HTTPRouteRetry, HTTPRouteTimeoutBackendRequest: a rule's retry and
/// backend request timeout become the route's own policy; what the
/// specification refuses is refused.
#[test]
fn retries_and_backend_request_timeouts_translate() {
    let w = world(
        "
kind: HTTPRoute
metadata: { name: retry, namespace: infra }
spec:
  parentRefs: [{ name: same-namespace }]
  rules:
    - retry: { codes: [500, 503], attempts: 3, backoff: 100ms }
      timeouts: { request: 10s, backendRequest: 2s }
      backendRefs: [{ name: backend-v1, port: 8080 }]
---
kind: HTTPRoute
metadata: { name: longer, namespace: infra }
spec:
  parentRefs: [{ name: same-namespace }]
  rules: [{ timeouts: { request: 1s, backendRequest: 2s }, backendRefs: [{ name: backend-v1, port: 8080 }] }]
---
kind: HTTPRoute
metadata: { name: code, namespace: infra }
spec:
  parentRefs: [{ name: same-namespace }]
  rules: [{ retry: { codes: [302] }, backendRefs: [{ name: backend-v1, port: 8080 }] }]
",
    );
    let t = gateway(&w, "same-namespace");
    let rules = &t.ports[0].routes[0].rules;
    assert_eq!(rules.timeout, Some(std::time::Duration::from_secs(10)));
    assert_eq!(
        rules.per_try_timeout,
        Some(std::time::Duration::from_secs(2))
    );
    let retries = rules.retries.as_ref().unwrap();
    assert_eq!(
        (
            retries.attempts,
            retries.status_codes.as_slice(),
            retries.backoff
        ),
        (
            3,
            &[500u16, 503][..],
            Some(std::time::Duration::from_millis(100))
        )
    );
    for (route, says) in [
        ("longer", "backendRequest is longer"),
        ("code", "retry code 302"),
    ] {
        let accepted = route_condition(&t, route, "Accepted");
        assert_eq!(accepted.reason, "UnsupportedValue");
        assert!(accepted.message.contains(says), "{accepted:?}");
    }
}

/// HTTPRouteRequestMirror, HTTPRouteRequestMultipleMirrors,
/// HTTPRouteRequestPercentageMirror: each mirror's cluster and share;
/// an unresolvable mirror is left out and named in ResolvedRefs.
#[test]
fn request_mirrors_translate_with_their_share() {
    let w = world(
        "
kind: HTTPRoute
metadata: { name: mirror, namespace: infra }
spec:
  parentRefs: [{ name: same-namespace }]
  rules:
    - filters:
        - { type: RequestMirror, requestMirror: { backendRef: { name: backend-v2, port: 8080 } } }
        - { type: RequestMirror, requestMirror: { backendRef: { name: web, namespace: apps, port: 80 }, percent: 20 } }
        - { type: RequestMirror, requestMirror: { backendRef: { name: backend-v1, port: 8080 }, fraction: { numerator: 25, denominator: 50 } } }
      backendRefs: [{ name: backend-v1, port: 8080 }]
---
kind: HTTPRoute
metadata: { name: both, namespace: infra }
spec:
  parentRefs: [{ name: same-namespace }]
  rules:
    - filters: [{ type: RequestMirror, requestMirror: { backendRef: { name: backend-v2, port: 8080 }, percent: 5, fraction: { numerator: 1 } } }]
      backendRefs: [{ name: backend-v1, port: 8080 }]
",
    );
    let t = gateway(&w, "same-namespace");
    let route = &t.ports[0].routes[0];
    let mirrors: Vec<(&str, u32)> = route
        .rules
        .mirrors
        .iter()
        .map(|m| (m.cluster.as_str(), m.per_million))
        .collect();
    assert_eq!(
        mirrors,
        [
            ("infra/backend-v2:8080", 1_000_000),
            ("infra/backend-v1:8080", 500_000)
        ]
    );
    let resolved = route_condition(&t, "mirror", "ResolvedRefs");
    assert_eq!(resolved.reason, "RefNotPermitted", "{resolved:?}");
    assert!(route_condition(&t, "mirror", "Accepted").is_true());
    assert!(t.clusters.iter().any(|c| c.name == "infra/backend-v2:8080"));
    let both = route_condition(&t, "both", "Accepted");
    assert!(both.message.contains("percent or fraction"), "{both:?}");
}

/// An HTTPRoute and a GRPCRoute that share a hostname on one listener:
/// only the older is accepted; with different hostnames both are.
#[test]
fn http_and_grpc_routes_sharing_a_hostname_accept_the_older() {
    let w = world(
        "
kind: HTTPRoute
metadata: { name: web, namespace: infra, creationTimestamp: \"2026-01-01T00:00:00Z\" }
spec:
  parentRefs: [{ name: same-namespace }]
  hostnames: [\"*.example.com\"]
  rules: [{ backendRefs: [{ name: backend-v1, port: 8080 }] }]
---
kind: GRPCRoute
metadata: { name: same-host, namespace: infra, creationTimestamp: \"2026-02-01T00:00:00Z\" }
spec:
  parentRefs: [{ name: same-namespace }]
  hostnames: [grpc.example.com]
  rules: [{ backendRefs: [{ name: backend-v2, port: 8080 }] }]
---
kind: GRPCRoute
metadata: { name: other-host, namespace: infra, creationTimestamp: \"2026-02-01T00:00:00Z\" }
spec:
  parentRefs: [{ name: same-namespace }]
  hostnames: [grpc.example.org]
  rules: [{ backendRefs: [{ name: backend-v2, port: 8080 }] }]
",
    );
    let t = gateway(&w, "same-namespace");
    assert!(route_condition(&t, "web", "Accepted").is_true());
    let refused = route_condition(&t, "same-host", "Accepted");
    assert_eq!(
        (refused.status, refused.reason),
        ("False", "NotAllowedByListeners")
    );
    assert!(
        refused.message.contains("HTTPRoute infra/web"),
        "{refused:?}"
    );
    assert!(route_condition(&t, "other-host", "Accepted").is_true());
    assert_eq!(t.gateway.as_ref().unwrap().listeners[0].attached_routes, 2);
}

/// The mesh suite's objects: Services `echo`, `echo-v1`, `echo-v2` in
/// `mesh` (ports 80 and 8080), and a consumer namespace.
const MESH: &str = "
kind: Service
metadata: { name: echo, namespace: mesh }
spec: { ports: [{ name: http, port: 80 }, { name: http-alt, port: 8080 }] }
---
kind: Service
metadata: { name: echo-v1, namespace: mesh }
spec: { ports: [{ name: http, port: 80 }, { name: http-alt, port: 8080 }] }
---
kind: Service
metadata: { name: echo-v2, namespace: mesh }
spec: { ports: [{ name: http, port: 80 }, { name: http-alt, port: 8080 }] }
";

fn mesh_world(extra: &str) -> World {
    let mut world = World::default();
    for (line, object) in manifests::objects(&format!("{MESH}---\n{extra}")).unwrap() {
        world
            .apply(object)
            .unwrap_or_else(|e| panic!("line {line}: {e}"));
    }
    world
}

/// Where a mesh client's request goes: the first backend's cluster, or
/// none when the Service has no routes for it.
fn mesh_to(world: &World, service: &str, port: u16, client: &str, path: &str) -> Option<String> {
    let routes = mesh_routes(world, ("mesh", service), port, client)?;
    let table = skiff_route::from_config(&routes.routes, |r| {
        Ok::<_, skiff_route::BadPattern>(match &r.action {
            Action::Redirect(_) => "redirect".to_string(),
            Action::Forward(b) if b.is_empty() => "500".to_string(),
            Action::Forward(b) => {
                let edit = r.rules.response_headers.set.first().map(|(_, v)| v.clone());
                format!(
                    "{}{}",
                    b[0].cluster.clone().unwrap_or("500".into()),
                    edit.map(|e| format!(" +{e}")).unwrap_or_default()
                )
            }
        })
    })
    .unwrap();
    let req = http::Request::get(path).body(()).unwrap();
    Some(
        table
            .find(&Lookup::of(&req, Some(service)))
            .cloned()
            .unwrap_or_else(|| "404".into()),
    )
}

/// MeshConsumerRoute, MeshPorts, MeshFrontend and the simple cases: a
/// producer route for every client, a consumer route for its namespace's
/// clients only and in place of the producer's, a parent port that
/// limits the route to it, and a Service with no route left alone.
#[test]
fn mesh_routes_for_producers_consumers_and_ports() {
    let w = mesh_world(
        "
kind: HTTPRoute
metadata: { name: mesh-split-v1, namespace: mesh }
spec:
  parentRefs: [{ group: \"\", kind: Service, name: echo-v1, port: 80 }]
  rules:
    - filters: [{ type: ResponseHeaderModifier, responseHeaderModifier: { set: [{ name: X-Header-Set, value: v1 }] } }]
      backendRefs: [{ name: echo-v1, port: 80 }]
---
kind: HTTPRoute
metadata: { name: mesh-split-v2, namespace: mesh }
spec:
  parentRefs: [{ group: \"\", kind: Service, name: echo-v2 }]
  rules:
    - filters: [{ type: ResponseHeaderModifier, responseHeaderModifier: { set: [{ name: X-Header-Set, value: v2 }] } }]
      backendRefs: [{ name: echo-v2, port: 80 }]
---
kind: HTTPRoute
metadata: { name: mesh-echo-add-header, namespace: consumer }
spec:
  parentRefs: [{ group: \"\", kind: Service, name: echo-v1, namespace: mesh }]
  rules:
    - filters: [{ type: ResponseHeaderModifier, responseHeaderModifier: { set: [{ name: X-Header-Set, value: consumer } ] } }]
      backendRefs: [{ name: echo-v1, namespace: mesh, port: 80 }]
---
kind: HTTPRoute
metadata: { name: to-a-gateway, namespace: mesh }
spec:
  parentRefs: [{ name: some-gateway }]
  rules: [{ backendRefs: [{ name: echo, port: 80 }] }]
",
    );
    // MeshPorts: the route names port 80 of echo-v1; 8080 is left alone.
    assert_eq!(
        mesh_to(&w, "echo-v1", 80, "mesh", "/").as_deref(),
        Some("mesh/echo-v1:80 +v1")
    );
    assert_eq!(mesh_to(&w, "echo-v1", 8080, "mesh", "/"), None);
    // No port: every port of echo-v2.
    assert_eq!(
        mesh_to(&w, "echo-v2", 80, "mesh", "/").as_deref(),
        Some("mesh/echo-v2:80 +v2")
    );
    assert_eq!(
        mesh_to(&w, "echo-v2", 8080, "mesh", "/").as_deref(),
        Some("mesh/echo-v2:80 +v2")
    );
    // MeshConsumerRoute: the consumer namespace's clients take its route,
    // in place of the producer's; others take the producer's.
    assert_eq!(
        mesh_to(&w, "echo-v1", 80, "consumer", "/").as_deref(),
        Some("mesh/echo-v1:80 +consumer")
    );
    assert_eq!(
        mesh_to(&w, "echo-v1", 80, "elsewhere", "/").as_deref(),
        Some("mesh/echo-v1:80 +v1")
    );
    // A Service no route names, and a Gateway's route: plain balancing.
    assert_eq!(mesh_to(&w, "echo", 80, "mesh", "/"), None);

    let status = mesh_status(&w, CONTROLLER);
    let names: Vec<&str> = status.iter().map(|s| s.name.as_str()).collect();
    assert!(!names.contains(&"to-a-gateway"), "{names:?}");
    for s in &status {
        let accepted = find(&s.parents[0].conditions, "Accepted").unwrap();
        assert!(accepted.is_true(), "{}: {accepted:?}", s.name);
        assert_eq!(s.parents[0].parent_ref.kind.as_deref(), Some("Service"));
    }
}

/// Mesh route status: a missing parent Service or port, a rule that
/// cannot be served, an unresolvable backend; and a request no rule of a
/// routed Service matches is answered 404.
#[test]
fn mesh_route_status_and_unmatched_requests() {
    let w = mesh_world(
        "
kind: HTTPRoute
metadata: { name: missing, namespace: mesh, generation: 2 }
spec:
  parentRefs: [{ group: \"\", kind: Service, name: nope }, { group: \"\", kind: Service, name: echo, port: 9999 }]
  rules: [{ backendRefs: [{ name: echo, port: 80 }] }]
---
kind: HTTPRoute
metadata: { name: partial, namespace: mesh }
spec:
  parentRefs: [{ group: \"\", kind: Service, name: echo }]
  rules:
    - matches: [{ path: { type: PathPrefix, value: /v1 } }]
      backendRefs: [{ name: echo-v1, port: 80 }, { name: gone, port: 80 }]
",
    );
    let status = mesh_status(&w, CONTROLLER);
    let missing = status.iter().find(|s| s.name == "missing").unwrap();
    for (parent, says) in missing
        .parents
        .iter()
        .zip(["Service mesh/nope does not exist", "has no port 9999"])
    {
        let accepted = find(&parent.conditions, "Accepted").unwrap();
        assert_eq!(
            (accepted.status, accepted.reason),
            ("False", "NoMatchingParent")
        );
        assert!(accepted.message.contains(says), "{accepted:?}");
        assert_eq!(accepted.observed_generation, 2);
    }
    let partial = status.iter().find(|s| s.name == "partial").unwrap();
    let resolved = find(&partial.parents[0].conditions, "ResolvedRefs").unwrap();
    assert_eq!(resolved.reason, "BackendNotFound");
    assert_eq!(
        mesh_to(&w, "echo", 80, "mesh", "/v1/x").as_deref(),
        Some("mesh/echo-v1:80")
    );
    assert_eq!(
        mesh_to(&w, "echo", 80, "mesh", "/other").as_deref(),
        Some("404")
    );
}

/// TLS is a host's, whichever Ingress gives it: another Ingress's rules
/// for that host are served on HTTPS (and redirected there) too, and a
/// wildcard TLS host covers the names under it.
#[test]
fn ingress_tls_is_merged_by_host() {
    let w = ingress_world(
        "
kind: Ingress
metadata: { name: shop, namespace: web, creationTimestamp: \"2026-01-01T00:00:00Z\" }
spec:
  tls: [{ hosts: [shop.example.com, \"*.api.example.com\"], secretName: shop-tls }]
  rules:
    - host: shop.example.com
      http: { paths: [{ path: /, pathType: Prefix, backend: { service: { name: shop, port: { number: 80 } } } }] }
---
kind: Ingress
metadata: { name: api, namespace: web, creationTimestamp: \"2026-02-01T00:00:00Z\" }
spec:
  rules:
    - host: shop.example.com
      http: { paths: [{ path: /api, pathType: Prefix, backend: { service: { name: api, port: { number: 8080 } } } }] }
    - host: v1.api.example.com
      http: { paths: [{ path: /, pathType: Prefix, backend: { service: { name: api, port: { number: 8080 } } } }] }
",
    );
    let t = translate_ingress(&w, "skiff", IngressPorts::default());
    assert_eq!(
        ingress_to(&t, 443, "shop.example.com", "/api/x").unwrap(),
        "web/api:8080"
    );
    assert_eq!(
        ingress_to(&t, 443, "shop.example.com", "/cart").unwrap(),
        "web/shop:80"
    );
    assert_eq!(
        ingress_to(&t, 80, "shop.example.com", "/api/x").unwrap(),
        "redirect Some(\"https\") 308"
    );
    assert_eq!(
        ingress_to(&t, 443, "v1.api.example.com", "/").unwrap(),
        "web/api:8080"
    );
}
