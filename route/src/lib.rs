//! Route matching: from a request's host, path, method, headers and query
//! to what its route does. Pure (no sockets, no runtime), generic over
//! the route's target, and shared by skiff's own config and the
//! Kubernetes routing objects translated into it.
//!
//! - [`host`]: request hosts normalised, host patterns, the Gateway API's
//!   listener/route hostname intersection.
//! - [`conditions`]: path, method, header and query conditions.
//! - [`table`]: the lookup structure, entries tried in the order given.
//! - [`rewrite`]: the path a rewrite or a redirect makes.
//!
//! Nothing here allocates per lookup unless the host has capitals in it
//! or a route asks about the query.

pub mod conditions;
pub mod host;
pub mod rewrite;
pub mod table;

pub use conditions::{
    Conditions, HeaderCheck, Lookup, PathCondition, QueryCheck, ValueCheck, Whole,
};
pub use host::{intersect, normalize_host, HostPattern};
pub use table::{Builder, Table};

use http::header::HeaderName;
use http::Method;
use skiff_config::route::{HeaderMatch, HostMatch, PathMatch, QueryMatch, RouteConfig, ValueMatch};

/// A regular expression in a route that does not compile (the config
/// reader refuses these, so only a route built in code can have one).
#[derive(Debug, thiserror::Error)]
#[error("`{pattern}` is not a regular expression: {reason}")]
pub struct BadPattern {
    pub pattern: String,
    pub reason: String,
}

/// Builds the table of skiff's own config routes, in their order; `target`
/// makes what each does, and its first error ends the build.
pub fn from_config<T, E: From<BadPattern>>(
    routes: &[RouteConfig],
    mut target: impl FnMut(&RouteConfig) -> Result<T, E>,
) -> Result<Table<T>, E> {
    let mut builder = Builder::default();
    for route in routes {
        let conditions = config_conditions(route)?;
        let t = builder.target(target(route)?);
        let hosts: Vec<HostPattern> = route.hosts.iter().map(host_pattern).collect();
        let group = builder.group(route.listener_host.as_ref().map(host_pattern).as_ref());
        builder.entry_in(group, &hosts, conditions, t);
    }
    Ok(builder.build())
}

fn host_pattern(host: &HostMatch) -> HostPattern {
    match host {
        HostMatch::Exact(h) => HostPattern::Exact(h.clone()),
        HostMatch::Suffix(s) => HostPattern::Wildcard(s.clone()),
    }
}

/// A config route's conditions: path, method, headers and query.
pub fn config_conditions(route: &RouteConfig) -> Result<Conditions, BadPattern> {
    let path = match &route.path {
        PathMatch::Prefix(p) => PathCondition::Prefix(p.clone()),
        PathMatch::SeparatedPrefix(p) => PathCondition::segments(p),
        PathMatch::Exact(p) => PathCondition::Exact(p.clone()),
        PathMatch::Regex(p) => PathCondition::Regex(whole(p)?),
    };
    Ok(Conditions {
        path,
        method: match &route.method {
            Some(m) => Some(Method::from_bytes(m.as_bytes()).map_err(|e| BadPattern {
                pattern: m.clone(),
                reason: e.to_string(),
            })?),
            None => None,
        },
        headers: header_checks(&route.headers)?,
        query: query_checks(&route.query)?,
    })
}

fn whole(pattern: &str) -> Result<Whole, BadPattern> {
    Whole::new(pattern).map_err(|e| BadPattern {
        pattern: pattern.to_string(),
        reason: e.to_string(),
    })
}

fn value_check(value: &ValueMatch) -> Result<ValueCheck, BadPattern> {
    Ok(match value {
        ValueMatch::Exact(v) => ValueCheck::Exact(v.clone()),
        ValueMatch::Prefix(v) => ValueCheck::Prefix(v.clone()),
        ValueMatch::Regex(v) => ValueCheck::Regex(whole(v)?),
        ValueMatch::Present => ValueCheck::Present,
        ValueMatch::Absent => ValueCheck::Absent,
    })
}

/// Compiles config header conditions.
pub fn header_checks(matches: &[HeaderMatch]) -> Result<Box<[HeaderCheck]>, BadPattern> {
    matches
        .iter()
        .map(|m| {
            Ok(HeaderCheck {
                name: HeaderName::from_bytes(m.name.as_bytes()).map_err(|e| BadPattern {
                    pattern: m.name.clone(),
                    reason: e.to_string(),
                })?,
                value: value_check(&m.value)?,
            })
        })
        .collect()
}

/// Compiles config query conditions.
pub fn query_checks(matches: &[QueryMatch]) -> Result<Box<[QueryCheck]>, BadPattern> {
    matches
        .iter()
        .map(|m| {
            Ok(QueryCheck {
                name: m.name.clone(),
                value: value_check(&m.value)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
