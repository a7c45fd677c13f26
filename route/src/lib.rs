//! Route matching: from a request's host, path, method, headers and query
//! to what its route does. Pure (no sockets, no runtime), generic over
//! the route's target, and shared by skiff's own config and the
//! Kubernetes routing objects translated into it.
//!
//! - [`host`]: request hosts normalised, host patterns, the Gateway API's
//!   listener/route hostname intersection.
//! - [`conditions`]: path, method, header and query conditions.
//! - [`table`]: the lookup structure, entries tried in the order given.
//!
//! Nothing here allocates per lookup unless the host has capitals in it
//! or a route asks about the query.

pub mod conditions;
pub mod host;
pub mod table;

pub use conditions::{
    Conditions, HeaderCheck, Lookup, PathCondition, QueryCheck, ValueCheck, Whole,
};
pub use host::{intersect, normalize_host, HostPattern};
pub use table::{Builder, Table};

use http::header::HeaderName;
use skiff_config::route::{HeaderMatch, HostMatch, PathMatch, RouteConfig, ValueMatch};

/// Builds the table of skiff's own config routes, in their order; `target`
/// makes what each does, and its first error ends the build.
pub fn from_config<T, E>(
    routes: &[RouteConfig],
    mut target: impl FnMut(&RouteConfig) -> Result<T, E>,
) -> Result<Table<T>, E> {
    let mut builder = Builder::default();
    for route in routes {
        let t = builder.target(target(route)?);
        let hosts: Vec<HostPattern> = route.host.iter().map(host_pattern).collect();
        builder.entry(&hosts, config_conditions(route), t);
    }
    Ok(builder.build())
}

fn host_pattern(host: &HostMatch) -> HostPattern {
    match host {
        HostMatch::Exact(h) => HostPattern::Exact(h.clone()),
        HostMatch::Suffix(s) => HostPattern::Wildcard(s.clone()),
    }
}

/// A config route's conditions: its path and header matches.
pub fn config_conditions(route: &RouteConfig) -> Conditions {
    let path = match &route.path {
        PathMatch::Prefix(p) => PathCondition::Prefix(p.clone()),
        PathMatch::Exact(p) => PathCondition::Exact(p.clone()),
    };
    Conditions {
        headers: header_checks(&route.rules.headers),
        ..Conditions::path(path)
    }
}

/// Compiles config header conditions (names were checked when read).
pub fn header_checks(matches: &[HeaderMatch]) -> Box<[HeaderCheck]> {
    matches
        .iter()
        .filter_map(|m| {
            Some(HeaderCheck {
                name: HeaderName::from_bytes(m.name.as_bytes()).ok()?,
                value: match &m.value {
                    ValueMatch::Exact(v) => ValueCheck::Exact(v.clone()),
                    ValueMatch::Prefix(v) => ValueCheck::Prefix(v.clone()),
                    ValueMatch::Present => ValueCheck::Present,
                    ValueMatch::Absent => ValueCheck::Absent,
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
