//! Host names as routes see them: a request's host normalised, the
//! patterns routes name (`shop.example.com`, `*.example.com`), and the
//! Gateway API's intersection of a listener's pattern with a route's.

use std::borrow::Cow;

/// A host name a route matches, lowercase, without a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// `shop.example.com`.
    Exact(String),
    /// `*.example.com`, kept as `.example.com`: any host ending in it with
    /// at least one label in front (`a.example.com`, `a.b.example.com`,
    /// never `example.com`).
    Wildcard(String),
}

impl HostPattern {
    /// Reads `shop.example.com` or `*.example.com` (any case).
    pub fn parse(text: &str) -> HostPattern {
        let lower = text.to_ascii_lowercase();
        match lower.strip_prefix('*') {
            Some(suffix) => HostPattern::Wildcard(suffix.to_string()),
            None => HostPattern::Exact(lower),
        }
    }

    /// Whether a normalised request host matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(&**suffix),
        }
    }

    /// As written: `shop.example.com` or `*.example.com`.
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            HostPattern::Exact(h) => Cow::Borrowed(h),
            HostPattern::Wildcard(suffix) => Cow::Owned(format!("*{suffix}")),
        }
    }

    /// Its length as written, which orders patterns by specificity.
    pub fn len(&self) -> usize {
        match self {
            HostPattern::Exact(h) => h.len(),
            HostPattern::Wildcard(suffix) => suffix.len() + 1,
        }
    }

    /// Never true: a pattern names at least one character.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The hosts a route serves on a listener (the Gateway API's hostname
/// intersection): `None` when they share none. A listener without a
/// hostname takes the route's as they are; a route without hostnames
/// takes the listener's; a route's wildcard narrowed by a listener's
/// exact host (or by a more specific wildcard) serves only that.
pub fn intersect(listener: Option<&HostPattern>, route: &HostPattern) -> Option<HostPattern> {
    let Some(listener) = listener else {
        return Some(route.clone());
    };
    use HostPattern::{Exact, Wildcard};
    match (listener, route) {
        (Exact(l), Exact(r)) => (l == r).then(|| route.clone()),
        (Wildcard(_), Exact(r)) => listener.matches(r).then(|| route.clone()),
        (Exact(l), Wildcard(_)) => route.matches(l).then(|| listener.clone()),
        (Wildcard(l), Wildcard(r)) => {
            if l == r || r.ends_with(&**l) {
                Some(route.clone())
            } else if l.ends_with(&**r) {
                Some(listener.clone())
            } else {
                None
            }
        }
    }
}

/// Lowercases and strips the port and a trailing dot; borrows when it can.
pub fn normalize_host(host: &str) -> Cow<'_, str> {
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
