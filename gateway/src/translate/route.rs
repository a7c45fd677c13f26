//! One HTTPRoute or GRPCRoute on one Gateway: which listeners take it
//! (its status says why not), and its rules as route config, one entry
//! per match (a GRPCRoute's rules are made in `grpc.rs`).

use std::cmp::Reverse;
use std::collections::BTreeMap;

use skiff_config::cluster::ClusterConfig;
use skiff_config::route::{
    Action, Backend, Cors, HeaderEdits, HeaderMatch, Mirror, PathMatch, PathRewrite, QueryMatch,
    Redirect, Rewrite, RouteConfig, RouteRetries, RouteRules, ValueMatch,
};
use skiff_route::{intersect, HostPattern};

use super::backend::{self, Reference, Terms, Unresolved};
use super::listener::{host_matches, Checked};
use super::names_gateway;
use crate::objects::{
    BackendRef, Gateway, GrpcRoute, HeaderModifier, HttpRoute, HttpRouteFilter, HttpRouteMatch,
    HttpRouteRule, Meta, ParentRef, PathModifier,
};
use crate::status::{Condition, RouteParentStatus, RouteStatus};
use crate::world::World;

/// One route entry for one listener, with its place in precedence.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(super) key: Key,
    pub(super) listener: usize,
    pub(super) route: RouteConfig,
}

/// The specification's precedence among matches on one listener, most
/// specific first: an exact path, then a regular expression (skiff's
/// choice where the specification leaves it open), then the longest
/// prefix; a method; more headers; more query parameters; the older
/// route; its `namespace/name`; rule order; match order. A GRPCRoute's
/// matches rank by the characters of their service, then of their
/// method, then headers (its paths and methods are all alike here).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    pub(super) path_rank: u8,
    pub(super) prefix: Reverse<usize>,
    pub(super) no_method: bool,
    pub(super) grpc_service: Reverse<usize>,
    pub(super) grpc_method: Reverse<usize>,
    pub(super) headers: Reverse<usize>,
    pub(super) query: Reverse<usize>,
    /// The route's place among routes, oldest first, then by
    /// `namespace/name`.
    pub(super) route: usize,
    pub(super) rule: usize,
    pub(super) matched: usize,
}

/// A rule that cannot be served: the `Accepted` reason and why.
pub(super) type Invalid = (&'static str, String);

/// What a rule becomes: an entry per match (before hostnames), or why
/// it cannot be served.
pub(super) type Rule = Result<Vec<(Key, RouteConfig)>, Invalid>;

/// A route of either kind, as attaching it to listeners sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AnyRoute<'a> {
    Http(&'a HttpRoute),
    Grpc(&'a GrpcRoute),
}

impl<'a> AnyRoute<'a> {
    pub(crate) fn kind(self) -> &'static str {
        match self {
            AnyRoute::Http(_) => "HTTPRoute",
            AnyRoute::Grpc(_) => "GRPCRoute",
        }
    }

    /// 0 for HTTPRoutes, 1 for GRPCRoutes.
    fn kind_index(self) -> usize {
        match self {
            AnyRoute::Http(_) => 0,
            AnyRoute::Grpc(_) => 1,
        }
    }

    pub(crate) fn meta(self) -> &'a Meta {
        match self {
            AnyRoute::Http(r) => &r.metadata,
            AnyRoute::Grpc(r) => &r.metadata,
        }
    }

    pub(super) fn parent_refs(self) -> &'a [ParentRef] {
        match self {
            AnyRoute::Http(r) => &r.spec.parent_refs,
            AnyRoute::Grpc(r) => &r.spec.parent_refs,
        }
    }

    fn hostnames(self) -> &'a [String] {
        match self {
            AnyRoute::Http(r) => &r.spec.hostnames,
            AnyRoute::Grpc(r) => &r.spec.hostnames,
        }
    }
}

/// The clusters known before this route, and those it adds.
pub(super) type Clusters<'c> = (
    &'c BTreeMap<String, ClusterConfig>,
    &'c mut BTreeMap<String, ClusterConfig>,
);

/// Attaches `route` to the listeners of `gateway` its parent references
/// select, adding entries and clusters; its status for this controller,
/// or none when no reference names the Gateway.
pub(super) fn attach(
    world: &World,
    gateway: &Gateway,
    (rank, route): (usize, AnyRoute<'_>),
    controller: &str,
    listeners: &mut [Checked<'_>],
    entries: &mut Vec<Entry>,
    clusters: &mut BTreeMap<String, ClusterConfig>,
) -> Option<RouteStatus> {
    let meta = route.meta();
    let parents: Vec<_> = (route.parent_refs().iter())
        .filter(|p| names_gateway(p, &meta.namespace, gateway))
        .collect();
    if parents.is_empty() {
        return None;
    }
    let mut unresolved = Vec::new();
    let mut route_clusters = BTreeMap::new();
    let rules: Vec<Rule> = match route {
        AnyRoute::Http(http) => (http.spec.rules.iter().enumerate())
            .map(|(i, rule)| {
                let clusters = (&*clusters, &mut route_clusters);
                translate_rule(
                    world,
                    (rank, http),
                    i,
                    rule,
                    clusters,
                    &mut unresolved,
                    None,
                )
            })
            .collect(),
        AnyRoute::Grpc(grpc) => (grpc.spec.rules.iter().enumerate())
            .map(|(i, rule)| {
                let clusters = (&*clusters, &mut route_clusters);
                let unresolved = &mut unresolved;
                super::grpc::translate_rule(
                    world,
                    (rank, grpc),
                    i,
                    rule,
                    clusters,
                    unresolved,
                    None,
                )
            })
            .collect(),
    };
    let generation = meta.generation;
    let resolved = match unresolved.first() {
        None => Condition::new("ResolvedRefs", true, "ResolvedRefs", "", generation),
        Some((reason, _)) => {
            let all: Vec<&str> = unresolved.iter().map(|(_, m)| m.as_str()).collect();
            Condition::new("ResolvedRefs", false, reason, all.join("; "), generation)
        }
    };
    let valid = rules.iter().filter(|r| r.is_ok()).count();
    let hostnames: Vec<HostPattern> = route
        .hostnames()
        .iter()
        .map(|h| HostPattern::parse(h))
        .collect();
    let mut statuses = Vec::new();
    // Listeners this route's entries went to already (two references
    // may select the same listener).
    let mut done = std::collections::HashSet::new();
    for parent in parents {
        let chosen = select(world, route, parent, listeners, &hostnames)
            .and_then(|attached| other_kind_first(route, attached, listeners));
        let accepted = match &chosen {
            Err((reason, message)) => {
                Condition::new("Accepted", false, reason, message.clone(), generation)
            }
            Ok(_) if valid == 0 && !rules.is_empty() => {
                let (reason, message) = rules
                    .iter()
                    .find_map(|r| r.as_ref().err())
                    .cloned()
                    .unwrap_or(("UnsupportedValue", String::new()));
                Condition::new("Accepted", false, reason, message, generation)
            }
            Ok(_) => Condition::new("Accepted", true, "Accepted", "", generation),
        };
        let mut conditions = vec![accepted.clone(), resolved.clone()];
        if valid > 0 && valid < rules.len() {
            let dropped: Vec<String> = (rules.iter().enumerate())
                .filter_map(|(i, r)| r.as_ref().err().map(|(_, m)| format!("rule {i}: {m}")))
                .collect();
            let message = format!("Dropped Rule: {}", dropped.join("; "));
            conditions.push(Condition::new(
                "PartiallyInvalid",
                true,
                "UnsupportedValue",
                message,
                generation,
            ));
        }
        if let (Ok(attached), true) = (chosen, accepted.is_true()) {
            for (listener, hosts) in attached {
                // A route counts once on a listener, however many of its
                // references select it.
                if !done.insert(listener) {
                    continue;
                }
                listeners[listener].attached += 1;
                listeners[listener].served[route.kind_index()].push((meta.key(), hosts.clone()));
                for (key, config) in rules.iter().flatten().flatten() {
                    entries.push(Entry {
                        key: key.clone(),
                        listener,
                        route: RouteConfig {
                            hosts: host_matches(&hosts),
                            ..config.clone()
                        },
                    });
                }
            }
            clusters.append(&mut route_clusters);
        }
        statuses.push(RouteParentStatus {
            parent_ref: parent.clone(),
            controller_name: controller.to_string(),
            conditions,
        });
    }
    Some(RouteStatus {
        kind: route.kind(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        parents: statuses,
    })
}

/// The listeners a parent reference attaches the route to, each with the
/// hostnames it serves there (empty: any), or why none does.
fn select(
    world: &World,
    route: AnyRoute<'_>,
    parent: &crate::objects::ParentRef,
    listeners: &[Checked<'_>],
    hostnames: &[HostPattern],
) -> Result<Vec<(usize, Vec<HostPattern>)>, Invalid> {
    let candidates: Vec<usize> = (0..listeners.len())
        .filter(|&i| {
            let l = listeners[i].spec;
            parent.section_name.as_ref().is_none_or(|s| *s == l.name)
                && parent.port.is_none_or(|p| p == l.port)
        })
        .collect();
    if candidates.is_empty() {
        return Err((
            "NoMatchingParent",
            "no listener has this sectionName and port".into(),
        ));
    }
    let namespace = &route.meta().namespace;
    let kind = route.kind();
    let allowed: Vec<usize> = candidates
        .into_iter()
        .filter(|&i| allows(world, &listeners[i], kind, namespace))
        .collect();
    if allowed.is_empty() {
        return Err((
            "NotAllowedByListeners",
            format!("no listener allows {kind}s from namespace {namespace}"),
        ));
    }
    let attached: Vec<(usize, Vec<HostPattern>)> = allowed
        .into_iter()
        .filter_map(|i| {
            let listener = listeners[i].host.as_ref();
            if hostnames.is_empty() {
                return Some((i, listener.into_iter().cloned().collect()));
            }
            let mut hosts: Vec<HostPattern> = hostnames
                .iter()
                .filter_map(|h| intersect(listener, h))
                .collect();
            hosts.dedup();
            (!hosts.is_empty()).then_some((i, hosts))
        })
        .collect();
    if attached.is_empty() {
        return Err((
            "NoMatchingListenerHostname",
            "no listener's hostname matches the route's hostnames".into(),
        ));
    }
    Ok(attached)
}

/// The listeners `attached` where no route of the other kind (HTTPRoute,
/// GRPCRoute) already serves one of the same hostnames: the
/// specification accepts only the older of the two there (routes are
/// attached oldest first, so the one already there wins).
fn other_kind_first(
    route: AnyRoute<'_>,
    attached: Vec<(usize, Vec<HostPattern>)>,
    listeners: &[Checked<'_>],
) -> Result<Vec<(usize, Vec<HostPattern>)>, Invalid> {
    let overlap = |a: &[HostPattern], b: &[HostPattern]| {
        a.is_empty()
            || b.is_empty()
            || a.iter()
                .any(|x| b.iter().any(|y| intersect(Some(x), y).is_some()))
    };
    let mut blocked_by = None;
    let kept: Vec<(usize, Vec<HostPattern>)> = attached
        .into_iter()
        .filter(|(i, hosts)| {
            let other_kind = 1 - route.kind_index();
            let other = listeners[*i].served[other_kind]
                .iter()
                .find(|(_, theirs)| overlap(hosts, theirs));
            if let Some((name, _)) = other {
                let kind = ["HTTPRoute", "GRPCRoute"][other_kind];
                blocked_by = Some(format!("{kind} {name}"));
            }
            other.is_none()
        })
        .collect();
    match (kept.is_empty(), blocked_by) {
        (true, Some(other)) => Err((
            "NotAllowedByListeners",
            format!(
                "the older {other} serves the same hostnames on this listener, and an HTTPRoute and a GRPCRoute may not share one"
            ),
        )),
        _ => Ok(kept),
    }
}

/// Whether a listener takes routes of `kind` from `namespace`.
fn allows(world: &World, listener: &Checked<'_>, kind: &str, namespace: &str) -> bool {
    let kind_ok = listener.kinds.iter().any(|k| k.kind == kind);
    let gateway_namespace = listener.gateway_namespace.as_str();
    let from = listener
        .spec
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    let namespace_ok = match from.and_then(|n| n.from.as_deref()).unwrap_or("Same") {
        "All" => true,
        "Same" => namespace == gateway_namespace,
        "Selector" => from
            .and_then(|n| n.selector.as_ref())
            .is_some_and(|s| s.matches(&world.namespace_labels(namespace))),
        _ => false,
    };
    kind_ok && namespace_ok && listener.takes_routes()
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

pub(super) fn unsupported(message: impl Into<String>) -> Invalid {
    ("UnsupportedValue", message.into())
}

/// One rule, as route config per match; backend references that do not
/// resolve are added to `unresolved` (the rule still serves, with 500s
/// for their share).
pub(super) fn translate_rule(
    world: &World,
    (rank, route): (usize, &HttpRoute),
    index: usize,
    rule: &HttpRouteRule,
    (known, new): (
        &BTreeMap<String, ClusterConfig>,
        &mut BTreeMap<String, ClusterConfig>,
    ),
    unresolved: &mut Vec<Unresolved>,
    parent_service: Option<(&str, &str)>,
) -> Rule {
    let meta = &route.metadata;
    let mut rules = RouteRules::default();
    let mut redirect = None;
    filters(&rule.filters, &mut rules, &mut redirect)?;
    let terms = Terms {
        h2: false,
        parent_service,
    };
    let from = (AnyRoute::Http(route), terms);
    let clusters = (known, &mut *new);
    rules.mirrors = mirrors(world, from, &rule.filters, clusters, unresolved)?;
    if let Some(t) = &rule.timeouts {
        let read = |text: &Option<String>| -> Result<Option<std::time::Duration>, Invalid> {
            let Some(text) = text else { return Ok(None) };
            let d =
                duration(text).ok_or_else(|| unsupported(format!("`{text}` is not a duration")))?;
            // `0s`: no timeout.
            Ok((!d.is_zero()).then_some(d))
        };
        rules.timeout = read(&t.request)?;
        rules.per_try_timeout = read(&t.backend_request)?;
        if let (Some(request), Some(backend)) = (rules.timeout, rules.per_try_timeout) {
            if backend > request {
                return Err(unsupported(
                    "timeouts.backendRequest is longer than timeouts.request",
                ));
            }
        }
    }
    if let Some(r) = &rule.retry {
        let mut status_codes = Vec::new();
        for &code in &r.codes {
            if !(400..=599).contains(&code) {
                return Err(unsupported(format!("retry code {code}")));
            }
            status_codes.push(code as u16);
        }
        let backoff = match &r.backoff {
            None => None,
            Some(text) => Some(
                duration(text).ok_or_else(|| unsupported(format!("`{text}` is not a duration")))?,
            ),
        };
        rules.retries = Some(RouteRetries {
            // Unsaid: skiff's default, the cluster's 2.
            attempts: r.attempts.unwrap_or(2).min(10),
            status_codes,
            backoff,
        });
    }
    let backends = backends(world, from, &rule.backend_refs, (known, new), unresolved)?;
    let action = match redirect {
        Some(_) if !backends.is_empty() => {
            return Err((
                "IncompatibleFilters",
                "a rule that redirects cannot have backendRefs".into(),
            ))
        }
        Some(_) if rules.rewrite.is_some() => {
            return Err((
                "IncompatibleFilters",
                "RequestRedirect and URLRewrite cannot be combined".into(),
            ))
        }
        Some(r) => Action::Redirect(r),
        None => Action::Forward(backends),
    };
    let name = match &rule.name {
        Some(n) => format!("HTTPRoute/{}/{n}", meta.key()),
        None => format!("HTTPRoute/{}/rule/{index}", meta.key()),
    };
    let default = [HttpRouteMatch::default()];
    let matches = match &rule.matches {
        Some(m) if !m.is_empty() => m.as_slice(),
        _ => &default,
    };
    let mut out = Vec::new();
    for (m, spec) in matches.iter().enumerate() {
        let (path, path_rank, prefix) = path_match(spec)?;
        let prefix_rewrite = |p: &Option<PathRewrite>| matches!(p, Some(PathRewrite::Prefix(_)));
        let redirects_prefix = matches!(&action, Action::Redirect(r) if prefix_rewrite(&r.path));
        let rewrites_prefix = rules
            .rewrite
            .as_ref()
            .is_some_and(|r| prefix_rewrite(&r.path));
        if (redirects_prefix || rewrites_prefix) && !matches!(path, PathMatch::SeparatedPrefix(_)) {
            return Err(unsupported("ReplacePrefixMatch needs a PathPrefix match"));
        }
        let headers = header_matches(&spec.headers)?;
        let query = query_matches(&spec.query_params)?;
        let method = match &spec.method {
            Some(m) if METHODS.contains(&m.as_str()) => Some(m.clone()),
            Some(m) => return Err(unsupported(format!("method `{m}`"))),
            None => None,
        };
        let key = Key {
            path_rank,
            prefix: Reverse(prefix),
            no_method: method.is_none(),
            grpc_service: Reverse(0),
            grpc_method: Reverse(0),
            headers: Reverse(headers.len()),
            query: Reverse(query.len()),
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
                method,
                headers,
                query,
                action: action.clone(),
                rules: rules.clone(),
            },
        ));
    }
    Ok(out)
}

/// A rule's backends: each reference resolved to a cluster (speaking
/// HTTP/2 whatever the Service port says when `h2`: gRPC's), or none
/// with the reason in `unresolved`; a backend's filters may edit
/// headers only.
pub(super) fn backends(
    world: &World,
    (route, terms): (AnyRoute<'_>, Terms<'_>),
    refs: &[BackendRef],
    (known, new): Clusters<'_>,
    unresolved: &mut Vec<Unresolved>,
) -> Result<Vec<Backend>, Invalid> {
    let mut backends = Vec::new();
    for r in refs {
        let reference = Reference::of(r);
        let clusters = (known, &mut *new);
        let from = (route.kind(), route.meta());
        let cluster = match backend::resolve(world, from, &reference, clusters, terms) {
            Ok(c) => Some(c),
            Err(problem) => {
                unresolved.push(problem);
                None
            }
        };
        let mut edits = RouteRules::default();
        let mut none = None;
        filters(&r.filters, &mut edits, &mut none)?;
        let mirrors = r.filters.iter().any(|f| f.kind == "RequestMirror");
        if none.is_some() || edits.rewrite.is_some() || edits.cors.is_some() || mirrors {
            return Err(unsupported("a backend's filters can only edit headers"));
        }
        backends.push(Backend {
            cluster,
            weight: r.weight.unwrap_or(1),
            request_headers: edits.request_headers,
            response_headers: edits.response_headers,
        });
    }
    Ok(backends)
}

/// A rule's `RequestMirror` filters: each mirror's cluster and share; one
/// whose backend does not resolve is left out, the reason in
/// `unresolved`.
pub(super) fn mirrors(
    world: &World,
    (route, terms): (AnyRoute<'_>, Terms<'_>),
    filters: &[HttpRouteFilter],
    (known, new): Clusters<'_>,
    unresolved: &mut Vec<Unresolved>,
) -> Result<Vec<Mirror>, Invalid> {
    let mut out = Vec::new();
    for filter in filters.iter().filter(|f| f.kind == "RequestMirror") {
        let Some(m) = &filter.request_mirror else {
            return Err(unsupported("a RequestMirror filter without its settings"));
        };
        let per_million = match (m.percent, &m.fraction) {
            (Some(_), Some(_)) => {
                return Err(unsupported("a mirror takes percent or fraction, not both"))
            }
            (Some(p), None) if p <= 100 => p * 10_000,
            (None, Some(f)) => {
                let denominator = f.denominator.unwrap_or(100);
                if denominator == 0 || f.numerator > denominator {
                    return Err(unsupported(format!(
                        "mirror fraction {}/{denominator}",
                        f.numerator
                    )));
                }
                (u64::from(f.numerator) * 1_000_000 / u64::from(denominator)) as u32
            }
            (None, None) => 1_000_000,
            (Some(p), None) => return Err(unsupported(format!("mirror percent {p}"))),
        };
        let r = &m.backend_ref;
        let reference = Reference::of(r);
        let from = (route.kind(), route.meta());
        match backend::resolve(world, from, &reference, (known, &mut *new), terms) {
            Ok(cluster) => out.push(Mirror {
                cluster,
                per_million,
            }),
            Err(problem) => unresolved.push(problem),
        }
    }
    Ok(out)
}

/// A match's path: the condition, its precedence rank, and its length.
fn path_match(spec: &HttpRouteMatch) -> Result<(PathMatch, u8, usize), Invalid> {
    let kind = spec
        .path
        .as_ref()
        .and_then(|p| p.kind.as_deref())
        .unwrap_or("PathPrefix");
    let value = spec
        .path
        .as_ref()
        .and_then(|p| p.value.clone())
        .unwrap_or_else(|| "/".into());
    match kind {
        "Exact" | "PathPrefix" if !value.starts_with('/') => Err(unsupported(format!(
            "path `{value}` does not start with `/`"
        ))),
        "Exact" => Ok((PathMatch::Exact(value.clone()), 0, value.len())),
        "PathPrefix" => Ok((PathMatch::SeparatedPrefix(value.clone()), 2, value.len())),
        "RegularExpression" => {
            regex::Regex::new(&value).map_err(|e| unsupported(format!("path `{value}`: {e}")))?;
            Ok((PathMatch::Regex(value), 1, 0))
        }
        other => Err(unsupported(format!("path match type `{other}`"))),
    }
}

/// Header matches; only the first of several for one name counts, as
/// the specification says.
pub(super) fn header_matches(
    specs: &[crate::objects::ValueMatch],
) -> Result<Vec<HeaderMatch>, Invalid> {
    let mut out: Vec<HeaderMatch> = Vec::new();
    for spec in specs {
        let name = spec.name.to_ascii_lowercase();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return Err(unsupported(format!("`{}` is not a header name", spec.name)));
        }
        if out.iter().any(|h| h.name == name) {
            continue;
        }
        out.push(HeaderMatch {
            name,
            value: value_match(spec)?,
        });
    }
    Ok(out)
}

/// Query parameter matches (names are case-sensitive); only the first of
/// several for one name counts.
fn query_matches(specs: &[crate::objects::ValueMatch]) -> Result<Vec<QueryMatch>, Invalid> {
    let mut out: Vec<QueryMatch> = Vec::new();
    for spec in specs {
        if spec.name.is_empty() {
            return Err(unsupported("a query parameter match needs a name"));
        }
        if out.iter().any(|q| q.name == spec.name) {
            continue;
        }
        out.push(QueryMatch {
            name: spec.name.clone(),
            value: value_match(spec)?,
        });
    }
    Ok(out)
}

fn value_match(spec: &crate::objects::ValueMatch) -> Result<ValueMatch, Invalid> {
    match spec.kind.as_deref().unwrap_or("Exact") {
        "Exact" => Ok(ValueMatch::Exact(spec.value.clone())),
        "RegularExpression" => match regex::Regex::new(&spec.value) {
            Ok(_) => Ok(ValueMatch::Regex(spec.value.clone())),
            Err(e) => Err(unsupported(format!("`{}`: {e}", spec.value))),
        },
        other => Err(unsupported(format!("match type `{other}`"))),
    }
}

/// Applies `filters` to a rule's (or a backend's) rules; a redirect is
/// put in `redirect`.
pub(super) fn filters(
    filters: &[HttpRouteFilter],
    rules: &mut RouteRules,
    redirect: &mut Option<Redirect>,
) -> Result<(), Invalid> {
    for filter in filters {
        match filter.kind.as_str() {
            "RequestHeaderModifier" => {
                let m = filter.request_header_modifier.as_ref();
                edits(m, &mut rules.request_headers)?;
            }
            "ResponseHeaderModifier" => {
                let m = filter.response_header_modifier.as_ref();
                edits(m, &mut rules.response_headers)?;
            }
            "RequestRedirect" => {
                let r = filter.request_redirect.clone().unwrap_or_default();
                let code = r.status_code.unwrap_or(302);
                if ![301, 302, 303, 307, 308].contains(&code) {
                    return Err(unsupported(format!("redirect status {code}")));
                }
                if let Some(s) = r
                    .scheme
                    .as_deref()
                    .filter(|s| !matches!(*s, "http" | "https"))
                {
                    return Err(unsupported(format!("redirect scheme `{s}`")));
                }
                let port = match r.port {
                    Some(p) => Some(
                        u16::try_from(p)
                            .ok()
                            .filter(|p| *p > 0)
                            .ok_or_else(|| unsupported(format!("port {p}")))?,
                    ),
                    None => None,
                };
                *redirect = Some(Redirect {
                    scheme: r.scheme,
                    host: r.hostname.map(|h| h.to_ascii_lowercase()),
                    port,
                    path: path_modifier(r.path.as_ref())?,
                    code: code as u16,
                });
            }
            // Resolved by `mirrors`, which needs the world.
            "RequestMirror" => {}
            "CORS" => {
                let Some(c) = &filter.cors else {
                    return Err(unsupported("a CORS filter without its settings"));
                };
                if let Some(o) = c.allow_origins.iter().find(|o| !Cors::valid_origin(o)) {
                    return Err(unsupported(format!("CORS origin `{o}`")));
                }
                let header = |h: &String| h.to_ascii_lowercase();
                rules.cors = Some(Cors {
                    allow_origins: c.allow_origins.clone(),
                    allow_methods: c.allow_methods.clone(),
                    allow_headers: c.allow_headers.iter().map(header).collect(),
                    expose_headers: c.expose_headers.iter().map(header).collect(),
                    allow_credentials: c.allow_credentials.unwrap_or(false),
                    max_age: std::time::Duration::from_secs(c.max_age.unwrap_or(5).into()),
                });
            }
            "URLRewrite" => {
                let r = filter.url_rewrite.clone().unwrap_or_default();
                rules.rewrite = Some(Rewrite {
                    host: r.hostname.map(|h| h.to_ascii_lowercase()),
                    path: path_modifier(r.path.as_ref())?,
                });
            }
            other => return Err(unsupported(format!("filter `{other}` is not supported"))),
        }
    }
    Ok(())
}

fn path_modifier(modifier: Option<&PathModifier>) -> Result<Option<PathRewrite>, Invalid> {
    let Some(m) = modifier else {
        return Ok(None);
    };
    match m.kind.as_str() {
        "ReplaceFullPath" => Ok(Some(PathRewrite::Full(
            m.replace_full_path.clone().unwrap_or_else(|| "/".into()),
        ))),
        "ReplacePrefixMatch" => Ok(Some(PathRewrite::Prefix(
            m.replace_prefix_match.clone().unwrap_or_else(|| "/".into()),
        ))),
        other => Err(unsupported(format!("path modifier `{other}`"))),
    }
}

/// A header modifier's edits added to `into` (names lowercase).
fn edits(modifier: Option<&HeaderModifier>, into: &mut HeaderEdits) -> Result<(), Invalid> {
    let Some(m) = modifier else {
        return Err(unsupported("a header modifier filter without its settings"));
    };
    let valid = |name: &str| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    for (list, to) in [(&m.set, &mut into.set), (&m.add, &mut into.add)] {
        for nv in list {
            if !valid(&nv.name) {
                return Err(unsupported(format!("`{}` is not a header name", nv.name)));
            }
            to.push((nv.name.to_ascii_lowercase(), nv.value.clone()));
        }
    }
    for name in &m.remove {
        if !valid(name) {
            return Err(unsupported(format!("`{name}` is not a header name")));
        }
        into.remove.push(name.to_ascii_lowercase());
    }
    Ok(())
}

/// A GEP-2257 duration: one to four `<number><unit>` parts, units `h`,
/// `m`, `s`, `ms` (`1h30m`, `500ms`, `0s`).
pub(super) fn duration(text: &str) -> Option<std::time::Duration> {
    let mut rest = text;
    let mut total = std::time::Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (std::time::Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (std::time::Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (std::time::Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (std::time::Duration::from_secs(1), 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += unit * n as u32;
        parts += 1;
    }
    (parts > 0 && parts <= 4).then_some(total)
}
