//! Route tables: from a request's host, path and headers to its route.
//!
//! Routes are grouped by host pattern as Envoy groups virtual hosts: an
//! exact host first, then `*.suffix` patterns longest first, then routes
//! with no host. Within that order the first route whose path and header
//! conditions match wins, so a request for a known host that matches none
//! of its paths falls through to the host-less routes, as a reader of the
//! flat config expects.
//!
//! The table is generic over what a forwarding route leads to (`T`): the
//! proxy's is a cluster handle with its counters and edits, a test's or a
//! fuzz target's can be an index. Nothing here allocates per lookup
//! unless the host has capitals in it.

use std::collections::HashMap;

use http::header::{HeaderMap, HeaderName};
use skiff_config::route::{HeaderMatch, HostMatch, PathMatch, Redirect, RouteConfig, ValueMatch};

/// A header condition, ready for lookups.
#[derive(Debug)]
pub struct HeaderCheck {
    name: HeaderName,
    value: ValueMatch,
}

impl HeaderCheck {
    #[inline]
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        match (&self.value, headers.get(&self.name)) {
            (ValueMatch::Present, found) => found.is_some(),
            (ValueMatch::Absent, found) => found.is_none(),
            (ValueMatch::Exact(want), Some(v)) => v.as_bytes() == want.as_bytes(),
            (ValueMatch::Prefix(want), Some(v)) => v.as_bytes().starts_with(want.as_bytes()),
            (_, None) => false,
        }
    }
}

/// Compiles header conditions (names were checked when read).
pub fn header_checks(matches: &[HeaderMatch]) -> Box<[HeaderCheck]> {
    matches
        .iter()
        .filter_map(|m| {
            Some(HeaderCheck {
                name: HeaderName::from_bytes(m.name.as_bytes()).ok()?,
                value: m.value.clone(),
            })
        })
        .collect()
}

/// What a matched route does.
#[derive(Debug)]
enum Action<T> {
    Forward(T),
    Redirect(Redirect),
}

/// One route: its conditions and what it does.
#[derive(Debug)]
struct Entry<T> {
    path: PathMatch,
    /// Header conditions, all of which must hold (usually none).
    headers: Box<[HeaderCheck]>,
    action: Action<T>,
}

/// What a request matched.
#[derive(Debug)]
pub enum Found<'a, T> {
    Route(&'a T),
    Redirect(&'a Redirect),
}

#[inline]
pub fn path_matches(want: &PathMatch, path: &str) -> bool {
    match want {
        PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        PathMatch::Exact(p) => path == p,
    }
}

impl<T> Entry<T> {
    #[inline]
    fn matches(&self, path: &str, headers: &HeaderMap) -> bool {
        path_matches(&self.path, path) && self.headers.iter().all(|c| c.matches(headers))
    }

    #[inline]
    fn found(&self) -> Found<'_, T> {
        match &self.action {
            Action::Forward(target) => Found::Route(target),
            Action::Redirect(redirect) => Found::Redirect(redirect),
        }
    }
}

/// A listener's routes, ready for lookups.
#[derive(Debug)]
pub struct Table<T> {
    entries: Vec<Entry<T>>,
    exact: HashMap<Box<str>, Vec<usize>>,
    /// (`.suffix`, route indices), longest suffix first.
    suffixes: Vec<(Box<str>, Vec<usize>)>,
    any_host: Vec<usize>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            entries: Vec::new(),
            exact: HashMap::new(),
            suffixes: Vec::new(),
            any_host: Vec::new(),
        }
    }
}

impl<T> Table<T> {
    /// Builds the table of `routes`, in their order; `target` makes what
    /// each forwarding route leads to (not called for redirects), and its
    /// first error ends the build.
    pub fn build<E>(
        routes: &[RouteConfig],
        mut target: impl FnMut(&RouteConfig) -> Result<T, E>,
    ) -> Result<Table<T>, E> {
        let mut table = Table::default();
        for (i, route) in routes.iter().enumerate() {
            let action = match &route.rules.redirect {
                Some(redirect) => Action::Redirect(redirect.clone()),
                None => Action::Forward(target(route)?),
            };
            table.entries.push(Entry {
                path: route.path.clone(),
                headers: header_checks(&route.rules.headers),
                action,
            });
            match &route.host {
                Some(HostMatch::Exact(h)) => {
                    table.exact.entry(h.as_str().into()).or_default().push(i)
                }
                Some(HostMatch::Suffix(s)) => {
                    match table.suffixes.iter_mut().find(|(k, _)| **k == **s) {
                        Some((_, list)) => list.push(i),
                        None => table.suffixes.push((s.as_str().into(), vec![i])),
                    }
                }
                None => table.any_host.push(i),
            }
        }
        table
            .suffixes
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Ok(table)
    }

    /// Finds the route for `host` (as sent: any case, maybe with a port),
    /// `path` and `headers`. A host no route names goes to the routes
    /// without a host (the default route), else nowhere (404).
    #[inline]
    pub fn find(
        &self,
        host: Option<&str>,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<Found<'_, T>> {
        if let Some(host) = host {
            let host = normalize_host(host);
            if let Some(list) = self.exact.get(&*host) {
                if let Some(r) = self.first_match(list, path, headers) {
                    return Some(r);
                }
            }
            for (suffix, list) in &self.suffixes {
                if host.len() > suffix.len() && host.ends_with(&**suffix) {
                    if let Some(r) = self.first_match(list, path, headers) {
                        return Some(r);
                    }
                }
            }
        }
        self.first_match(&self.any_host, path, headers)
    }

    #[inline]
    fn first_match(&self, list: &[usize], path: &str, headers: &HeaderMap) -> Option<Found<'_, T>> {
        list.iter()
            .map(|&i| &self.entries[i])
            .find(|e| e.matches(path, headers))
            .map(Entry::found)
    }

    /// What every forwarding route leads to, in config order.
    pub fn targets(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().filter_map(|e| match &e.action {
            Action::Forward(target) => Some(target),
            Action::Redirect(_) => None,
        })
    }
}

/// Lowercases and strips the port and a trailing dot; borrows when it can.
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let without_port = if host.starts_with('[') {
        // [v6]:port
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        // Bytes, not chars: a short host needs no `memrchr` call.
        match host.bytes().rposition(|b| b == b':') {
            Some(colon) => &host[..colon],
            None => host,
        }
    };
    let trimmed = without_port.strip_suffix('.').unwrap_or(without_port);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        trimmed.to_ascii_lowercase().into()
    } else {
        trimmed.into()
    }
}

#[cfg(test)]
mod tests;
