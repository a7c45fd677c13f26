//! The table: routes grouped by host as Envoy groups virtual hosts. An
//! exact host first, then wildcards longest first, then routes with no
//! host; within that order the first entry whose conditions hold wins,
//! so a request for a known host that matches none of its entries falls
//! through to the host-less ones. Entries keep the order they were added
//! in: skiff's config order, or the Gateway API's precedence, which its
//! translation sorts by.

use std::collections::HashMap;

use crate::conditions::{Conditions, Lookup};
use crate::host::{normalize_host, HostPattern};

/// One way to reach a target: its conditions, and the target's index.
#[derive(Debug)]
struct Entry {
    conditions: Conditions,
    target: usize,
}

/// A listener's routes, ready for lookups. `T` is what a route does (the
/// proxy's: forward to a cluster or redirect; a test's: a name).
#[derive(Debug)]
pub struct Table<T> {
    targets: Vec<T>,
    entries: Vec<Entry>,
    exact: HashMap<Box<str>, Vec<usize>>,
    /// (`.suffix`, entry indices), longest suffix first.
    wildcards: Vec<(Box<str>, Vec<usize>)>,
    any_host: Vec<usize>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            targets: Vec::new(),
            entries: Vec::new(),
            exact: HashMap::new(),
            wildcards: Vec::new(),
            any_host: Vec::new(),
        }
    }
}

/// Builds a [`Table`]: targets, then the entries that lead to them, in
/// the order lookups try them.
#[derive(Debug)]
pub struct Builder<T> {
    table: Table<T>,
}

impl<T> Default for Builder<T> {
    fn default() -> Self {
        Builder {
            table: Table::default(),
        }
    }
}

impl<T> Builder<T> {
    /// Adds a target; entries name it by the index returned.
    pub fn target(&mut self, target: T) -> usize {
        self.table.targets.push(target);
        self.table.targets.len() - 1
    }

    /// Requests for any of `hosts` (any host, when empty) that meet
    /// `conditions` go to `target`, unless an entry added before takes them.
    ///
    /// # Panics
    /// When `target` was not returned by [`Builder::target`].
    pub fn entry(&mut self, hosts: &[HostPattern], conditions: Conditions, target: usize) {
        assert!(
            target < self.table.targets.len(),
            "an entry names a target it was not given"
        );
        let table = &mut self.table;
        let i = table.entries.len();
        table.entries.push(Entry { conditions, target });
        if hosts.is_empty() {
            table.any_host.push(i);
        }
        for host in hosts {
            match host {
                HostPattern::Exact(h) => table.exact.entry(h.as_str().into()).or_default().push(i),
                HostPattern::Wildcard(s) => {
                    match table.wildcards.iter_mut().find(|(k, _)| **k == **s) {
                        Some((_, list)) => list.push(i),
                        None => table.wildcards.push((s.as_str().into(), vec![i])),
                    }
                }
            }
        }
    }

    pub fn build(mut self) -> Table<T> {
        // Stable: equal lengths keep the order they were named in.
        self.table
            .wildcards
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        self.table
    }
}

impl<T> Table<T> {
    /// Finds what `req` goes to. A host no entry names goes to the entries
    /// without a host (the default route), else nowhere (404).
    #[inline]
    pub fn find(&self, req: &Lookup<'_>) -> Option<&T> {
        if let Some(host) = req.host {
            let host = normalize_host(host);
            if let Some(list) = self.exact.get(&*host) {
                if let Some(found) = self.first_match(list, req) {
                    return Some(found);
                }
            }
            for (suffix, list) in &self.wildcards {
                if host.len() > suffix.len() && host.ends_with(&**suffix) {
                    if let Some(found) = self.first_match(list, req) {
                        return Some(found);
                    }
                }
            }
        }
        self.first_match(&self.any_host, req)
    }

    #[inline]
    fn first_match(&self, list: &[usize], req: &Lookup<'_>) -> Option<&T> {
        list.iter()
            .map(|&i| &self.entries[i])
            .find(|e| e.conditions.matches(req))
            .map(|e| &self.targets[e.target])
    }

    /// Every target, in the order they were added.
    pub fn targets(&self) -> impl Iterator<Item = &T> {
        self.targets.iter()
    }

    /// How many entries lead to the targets.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
