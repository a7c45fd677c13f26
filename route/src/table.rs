//! The table: routes grouped by host as Envoy groups virtual hosts. An
//! exact host first, then wildcards longest first, then routes with no
//! host; within that order the first entry whose conditions hold wins,
//! so a request for a known host that matches none of its entries falls
//! through to the host-less ones. Entries keep the order they were added
//! in: skiff's config order, or the Gateway API's precedence, which its
//! translation sorts by. Groups of entries keep Gateway listeners that
//! share a port apart.

use std::collections::HashMap;

use crate::conditions::{Conditions, Lookup};
use crate::host::{normalize_host, HostPattern};

/// One way to reach a target: its conditions, and the target's index.
#[derive(Debug)]
struct Entry {
    conditions: Conditions,
    target: usize,
}

/// Entries by the hosts they serve, as one virtual host of Envoy's or
/// one listener of a Gateway: an exact host first, then wildcards longest
/// first, then entries for any host.
#[derive(Debug, Default)]
struct Hosts {
    exact: HashMap<Box<str>, List>,
    /// (`.suffix`, entries), longest suffix first.
    wildcards: Vec<(Box<str>, List)>,
    any_host: List,
}

/// Lists longer than this are indexed by the first path segment.
const INDEX_FROM: usize = 16;

/// The entries of one host, in the order they are tried (ascending entry
/// index). A long list is also indexed by the first path segment its
/// entries need, so a lookup tries only the entries that could match
/// (those for the request's segment and those for any), still in order:
/// a host with 5,000 entries costs about what one with a few does.
#[derive(Debug, Default)]
struct List {
    entries: Vec<usize>,
    index: Option<Box<SegmentIndex>>,
}

#[derive(Debug, Default)]
struct SegmentIndex {
    by_segment: HashMap<Box<str>, Vec<usize>>,
    any_segment: Vec<usize>,
}

impl List {
    fn push(&mut self, entry: usize) {
        self.entries.push(entry);
    }

    fn index(&mut self, entries: &[Entry]) {
        if self.entries.len() <= INDEX_FROM {
            return;
        }
        let mut index = SegmentIndex::default();
        for &i in &self.entries {
            match entries[i].conditions.path.first_segment() {
                Some(segment) => index.by_segment.entry(segment.into()).or_default().push(i),
                None => index.any_segment.push(i),
            }
        }
        self.index = Some(Box::new(index));
    }
}

/// The first segment of a request path (`api` of `/api/v1`); none when it
/// does not start with `/`.
#[inline]
fn first_segment(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    Some(rest.split('/').next().unwrap_or(""))
}

/// A listener's routes, ready for lookups. `T` is what a route does (the
/// proxy's: forward to a cluster or redirect; a test's: a name).
///
/// Entries live in groups, each for the hosts of one Gateway listener
/// (skiff's own config has one group, for any host): a request is looked
/// up in the group of the most specific listener host that matches it
/// (exact, then the longest wildcard, then the group without one) and
/// never in another, which is the Gateway API's listener isolation.
#[derive(Debug)]
pub struct Table<T> {
    targets: Vec<T>,
    entries: Vec<Entry>,
    groups: Vec<Hosts>,
    group_exact: HashMap<Box<str>, usize>,
    /// (`.suffix`, group), longest suffix first.
    group_wildcards: Vec<(Box<str>, usize)>,
    group_any: Option<usize>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            targets: Vec::new(),
            entries: Vec::new(),
            groups: Vec::new(),
            group_exact: HashMap::new(),
            group_wildcards: Vec::new(),
            group_any: None,
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

    /// The group for the listener host `host` (none: any host), made
    /// the first time it is named.
    pub fn group(&mut self, host: Option<&HostPattern>) -> usize {
        let table = &mut self.table;
        let existing = match host {
            None => table.group_any,
            Some(HostPattern::Exact(h)) => table.group_exact.get(h.as_str()).copied(),
            Some(HostPattern::Wildcard(s)) => table
                .group_wildcards
                .iter()
                .find(|(k, _)| **k == **s)
                .map(|(_, g)| *g),
        };
        if let Some(g) = existing {
            return g;
        }
        let g = table.groups.len();
        table.groups.push(Hosts::default());
        match host {
            None => table.group_any = Some(g),
            Some(HostPattern::Exact(h)) => {
                table.group_exact.insert(h.as_str().into(), g);
            }
            Some(HostPattern::Wildcard(s)) => table.group_wildcards.push((s.as_str().into(), g)),
        }
        g
    }

    /// Requests for any of `hosts` (any host, when empty) that meet
    /// `conditions` go to `target`, unless an entry added before takes them.
    ///
    /// # Panics
    /// When `target` was not returned by [`Builder::target`].
    pub fn entry(&mut self, hosts: &[HostPattern], conditions: Conditions, target: usize) {
        let group = self.group(None);
        self.entry_in(group, hosts, conditions, target);
    }

    /// [`Builder::entry`] in the group `group` (from [`Builder::group`]).
    ///
    /// # Panics
    /// When `target` or `group` was not returned by this builder.
    pub fn entry_in(
        &mut self,
        group: usize,
        hosts: &[HostPattern],
        conditions: Conditions,
        target: usize,
    ) {
        assert!(
            target < self.table.targets.len(),
            "an entry names a target it was not given"
        );
        let table = &mut self.table;
        let i = table.entries.len();
        table.entries.push(Entry { conditions, target });
        let group = &mut table.groups[group];
        if hosts.is_empty() {
            group.any_host.push(i);
        }
        for host in hosts {
            match host {
                HostPattern::Exact(h) => group.exact.entry(h.as_str().into()).or_default().push(i),
                HostPattern::Wildcard(s) => {
                    match group.wildcards.iter_mut().find(|(k, _)| **k == **s) {
                        Some((_, list)) => list.push(i),
                        None => {
                            let mut list = List::default();
                            list.push(i);
                            group.wildcards.push((s.as_str().into(), list));
                        }
                    }
                }
            }
        }
    }

    pub fn build(mut self) -> Table<T> {
        let entries = &self.table.entries;
        for group in &mut self.table.groups {
            // Stable: equal lengths keep the order they were named in.
            group
                .wildcards
                .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
            let lists = (group.exact.values_mut())
                .chain(group.wildcards.iter_mut().map(|(_, l)| l))
                .chain(std::iter::once(&mut group.any_host));
            for list in lists {
                list.index(entries);
            }
        }
        self.table
            .group_wildcards
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        self.table
    }
}

/// Whether `host` is under the wildcard `.suffix` (one label or more in
/// front of it).
#[inline]
fn under(host: &str, suffix: &str) -> bool {
    host.len() > suffix.len() && host.ends_with(suffix)
}

impl<T> Table<T> {
    /// Finds what `req` goes to. A host no entry names goes to the entries
    /// without a host (the default route), else nowhere (404).
    #[inline]
    pub fn find(&self, req: &Lookup<'_>) -> Option<&T> {
        let host = req.host.map(normalize_host);
        let group = match (self.groups.len(), &host) {
            (0, _) => return None,
            // skiff's own config: one group, for any host.
            (1, _) if self.group_any.is_some() => &self.groups[0],
            (_, host) => &self.groups[self.group_of(host.as_deref())?],
        };
        if let Some(host) = &host {
            if let Some(list) = group.exact.get(&**host) {
                if let Some(found) = self.first_match(list, req) {
                    return Some(found);
                }
            }
            for (suffix, list) in &group.wildcards {
                if under(host, suffix) {
                    if let Some(found) = self.first_match(list, req) {
                        return Some(found);
                    }
                }
            }
        }
        self.first_match(&group.any_host, req)
    }

    /// The group of the most specific listener host `host` matches.
    fn group_of(&self, host: Option<&str>) -> Option<usize> {
        if let Some(host) = host {
            if let Some(&g) = self.group_exact.get(host) {
                return Some(g);
            }
            if let Some((_, g)) = self.group_wildcards.iter().find(|(s, _)| under(host, s)) {
                return Some(*g);
            }
        }
        self.group_any
    }

    #[inline]
    fn first_match(&self, list: &List, req: &Lookup<'_>) -> Option<&T> {
        let Some(index) = &list.index else {
            return self.first_in(&list.entries, req);
        };
        let named = first_segment(req.path)
            .and_then(|s| index.by_segment.get(s))
            .map_or(&[][..], Vec::as_slice);
        let any = index.any_segment.as_slice();
        // Both ascend: walk them together, in the list's order.
        let (mut a, mut b) = (0, 0);
        loop {
            let next = match (named.get(a), any.get(b)) {
                (Some(&x), Some(&y)) if x < y => {
                    a += 1;
                    x
                }
                (_, Some(&y)) => {
                    b += 1;
                    y
                }
                (Some(&x), None) => {
                    a += 1;
                    x
                }
                (None, None) => return None,
            };
            let e = &self.entries[next];
            if e.conditions.matches(req) {
                return Some(&self.targets[e.target]);
            }
        }
    }

    #[inline]
    fn first_in(&self, list: &[usize], req: &Lookup<'_>) -> Option<&T> {
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
