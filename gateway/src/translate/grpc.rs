//! A GRPCRoute's rules as route config. A gRPC call is an HTTP/2 POST
//! to `/SERVICE/METHOD`, so a method match is a path condition: both
//! exact → the exact path; a service alone → the prefix `/SERVICE/`; a
//! method alone, or regular expressions → a pattern over the whole path.
//! Backends always speak HTTP/2.

use std::cmp::Reverse;

use skiff_config::route::{Action, PathMatch, RouteConfig, RouteRules};

use super::backend::Unresolved;
use super::route::{self, unsupported, AnyRoute, Clusters, Invalid, Key, Rule};
use crate::objects::{GrpcMethodMatch, GrpcRoute, GrpcRouteMatch, GrpcRouteRule};
use crate::world::World;

/// The filters a GRPCRoute rule may carry here (a backend: the header
/// modifiers only).
const FILTERS: [&str; 3] = [
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
];

pub(super) fn translate_rule(
    world: &World,
    (rank, route): (usize, &GrpcRoute),
    index: usize,
    rule: &GrpcRouteRule,
    clusters: Clusters<'_>,
    unresolved: &mut Vec<Unresolved>,
    parent_service: Option<(&str, &str)>,
) -> Rule {
    let meta = &route.metadata;
    let all_filters = rule
        .filters
        .iter()
        .chain(rule.backend_refs.iter().flat_map(|b| &b.filters));
    if let Some(f) = all_filters
        .map(|f| f.kind.as_str())
        .find(|k| !FILTERS.contains(k))
    {
        return Err(unsupported(format!(
            "filter `{f}` is not supported on a GRPCRoute"
        )));
    }
    let mut rules = RouteRules::default();
    route::filters(&rule.filters, &mut rules, &mut None)?;
    let terms = super::backend::Terms {
        h2: true,
        parent_service,
    };
    let from = (AnyRoute::Grpc(route), terms);
    let (known, new) = clusters;
    rules.mirrors = route::mirrors(world, from, &rule.filters, (known, &mut *new), unresolved)?;
    let backends = route::backends(world, from, &rule.backend_refs, (known, new), unresolved)?;
    let action = Action::Forward(backends);
    let name = match &rule.name {
        Some(n) => format!("GRPCRoute/{}/{n}", meta.key()),
        None => format!("GRPCRoute/{}/rule/{index}", meta.key()),
    };
    let default = [GrpcRouteMatch::default()];
    let matches = match rule.matches.as_slice() {
        [] => &default[..],
        m => m,
    };
    let mut out = Vec::new();
    for (m, spec) in matches.iter().enumerate() {
        let (path, service, method) = method_match(spec.method.as_ref())?;
        let headers = route::header_matches(&spec.headers)?;
        let key = Key {
            path_rank: 0,
            prefix: Reverse(0),
            no_method: false,
            grpc_service: Reverse(service),
            grpc_method: Reverse(method),
            headers: Reverse(headers.len()),
            query: Reverse(0),
            route: rank,
            rule: index,
            matched: m,
        };
        out.push((
            key,
            RouteConfig {
                name: Some(name.clone()),
                hosts: Vec::new(),
                listener_host: None,
                path,
                method: None,
                headers,
                query: Vec::new(),
                action: action.clone(),
                rules: rules.clone(),
            },
        ));
    }
    Ok(out)
}

/// A method match as a path condition, with the characters of its
/// service and method (for precedence).
fn method_match(spec: Option<&GrpcMethodMatch>) -> Result<(PathMatch, usize, usize), Invalid> {
    let Some(spec) = spec else {
        return Ok((PathMatch::Prefix("/".into()), 0, 0));
    };
    let service = spec.service.as_deref().filter(|s| !s.is_empty());
    let method = spec.method.as_deref().filter(|m| !m.is_empty());
    let lengths = (service.map_or(0, str::len), method.map_or(0, str::len));
    if service.is_none() && method.is_none() {
        return Err(unsupported(
            "a method match needs a service, a method or both",
        ));
    }
    let path = match spec.kind.as_deref().unwrap_or("Exact") {
        "Exact" => {
            if let Some(s) = service.filter(|s| !valid_service(s)) {
                return Err(unsupported(format!("`{s}` is not a gRPC service name")));
            }
            if let Some(m) = method.filter(|m| !valid_method(m)) {
                return Err(unsupported(format!("`{m}` is not a gRPC method name")));
            }
            match (service, method) {
                (Some(s), Some(m)) => PathMatch::Exact(format!("/{s}/{m}")),
                (Some(s), None) => PathMatch::Prefix(format!("/{s}/")),
                (None, Some(m)) => PathMatch::Regex(format!("/[^/]+/{}", regex::escape(m))),
                (None, None) => unreachable!("checked above"),
            }
        }
        "RegularExpression" => {
            for part in [service, method].into_iter().flatten() {
                regex::Regex::new(part).map_err(|e| unsupported(format!("`{part}`: {e}")))?;
            }
            let group = |p: Option<&str>| p.map_or("[^/]+".to_string(), |p| format!("(?:{p})"));
            PathMatch::Regex(format!("/{}/{}", group(service), group(method)))
        }
        other => return Err(unsupported(format!("method match type `{other}`"))),
    };
    Ok((path, lengths.0, lengths.1))
}

/// `^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$`, as the CRD checks it.
fn valid_service(s: &str) -> bool {
    let s = s.strip_prefix('.').unwrap_or(s);
    s.split('.').all(valid_method)
}

/// `^[A-Za-z_][A-Za-z_0-9]*$`.
fn valid_method(m: &str) -> bool {
    let mut bytes = m.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
