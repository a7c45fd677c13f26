//! A Service's endpoints on one port, kept up to date one slice at a time.
//!
//! [`ServiceEndpoints`] holds what [`merge`](super::merge) would return for
//! the Service's current slices, in the same order, but an added, changed or
//! deleted slice costs time in proportion to that slice, not to the Service:
//!
//! - each slice's contribution (its endpoints on the routed port) is kept;
//! - an index by address and port lists, in merge order, the slices listing
//!   each endpoint, so the listing that wins a duplicate (non-terminating,
//!   then ready, then first) and the one that fixes its position (the first)
//!   are read off the index instead of merging again;
//! - each slice's segment of the set (the endpoints it lists first, as
//!   their winning listing has them, filtered as the merge filters) is kept
//!   built, and a change rebuilds only the segments of the slices that list
//!   the first time an address the change touched: the changed slice, and
//!   any slice sharing one of its addresses (a pod moving between slices).
//!
//! One event is about the whole Service and costs O(N): kube-proxy's
//! fallback switching (the last ready endpoint going, so serving and
//! terminating ones take over, or the first ready one coming back) changes
//! which endpoints route everywhere, so every segment is rebuilt.
//!
//! [`ServiceEndpoints::set`] concatenates the segments into a new
//! [`EndpointSet`]: a copy of N specs (an address and a shared pointer
//! each), O(N) but with no hashing and no merging.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use super::merge::{rank, routes};
use super::Slice;
use crate::EndpointSet;
use skiff_config::endpoints::{EndpointSpec, Origin, ServicePort, DEFAULT_WEIGHT};

/// A Service's endpoints on one port, updated slice by slice; always equal,
/// order included, to [`merge`](super::merge) over its current slices.
#[derive(Debug)]
pub struct ServiceEndpoints {
    port: ServicePort,
    /// By slice name, the merge's order.
    slices: BTreeMap<Arc<str>, Contribution>,
    /// Every listing of each address, in merge order (slice, then position).
    listings: HashMap<SocketAddr, Vec<Listing>>,
    /// Addresses whose winning listing is ready; at 0 the fallback applies.
    ready: usize,
    /// Endpoints in the set: the segments' lengths summed.
    len: usize,
}

#[derive(Debug, Default)]
struct Contribution {
    /// The slice's endpoints on the routed port, in the slice's order.
    listed: Vec<(SocketAddr, Arc<Origin>)>,
    /// The part of the set this slice places: the endpoints it lists first.
    segment: Vec<EndpointSpec>,
}

#[derive(Debug)]
struct Listing {
    slice: Arc<str>,
    position: usize,
    origin: Arc<Origin>,
}

impl Listing {
    fn is(&self, slice: &str, position: usize) -> bool {
        self.position == position && &*self.slice == slice
    }
}

/// The listing that counts for an address: the first of the best rank, as
/// [`merge`](super::merge) keeps it. `listings` is never empty.
fn winner(listings: &[Listing]) -> &Listing {
    let mut best = &listings[0];
    for listing in &listings[1..] {
        if rank(&listing.origin) > rank(&best.origin) {
            best = listing;
        }
    }
    best
}

impl ServiceEndpoints {
    /// No slices yet: an empty set.
    pub fn new(port: ServicePort) -> ServiceEndpoints {
        ServiceEndpoints {
            port,
            slices: BTreeMap::new(),
            listings: HashMap::new(),
            ready: 0,
            len: 0,
        }
    }

    /// A Service's set built from its slices, one slice at a time.
    pub fn from_slices<'a>(
        slices: impl IntoIterator<Item = &'a Slice>,
        port: ServicePort,
    ) -> ServiceEndpoints {
        let mut endpoints = ServiceEndpoints::new(port);
        for slice in slices {
            endpoints.upsert(slice);
        }
        endpoints
    }

    /// Adds a slice, or replaces the slice of the same name. Returns whether
    /// the set may have changed: `false` means it did not (`true` can come
    /// from an endpoint moving to the next slice's segment, same set).
    pub fn upsert(&mut self, slice: &Slice) -> bool {
        let listed = match slice.port(&self.port) {
            Some(number) => slice
                .endpoints
                .iter()
                .map(|m| (SocketAddr::new(m.ip, number), m.origin.clone()))
                .collect(),
            None => Vec::new(),
        };
        // Every listing of a slice shares its name with the map's key.
        let name = match self.slices.get_key_value(slice.name.as_str()) {
            Some((name, _)) => name.clone(),
            None => Arc::from(slice.name.as_str()),
        };
        self.replace(name, Some(listed))
    }

    /// Removes the slice named `name`, if present. Returns whether the set
    /// may have changed, as [`upsert`](Self::upsert) does.
    pub fn remove(&mut self, name: &str) -> bool {
        match self.slices.get_key_value(name) {
            Some((name, _)) => {
                let name = name.clone();
                self.replace(name, None)
            }
            None => false,
        }
    }

    /// The port routed to.
    pub fn port(&self) -> &ServicePort {
        &self.port
    }

    /// Endpoints in the set.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The set, as [`merge`](super::merge) orders it.
    pub fn set(&self) -> EndpointSet {
        let mut all = Vec::with_capacity(self.len);
        for contribution in self.slices.values() {
            all.extend_from_slice(&contribution.segment);
        }
        all.into()
    }

    /// Puts `listed` (or nothing, for a delete) in place of slice `name`'s
    /// contribution, updates the index for the addresses it lists or
    /// listed, and rebuilds the segments those addresses touch.
    fn replace(&mut self, name: Arc<str>, listed: Option<Vec<(SocketAddr, Arc<Origin>)>>) -> bool {
        let was_any_ready = self.ready > 0;
        let old = self.slices.remove(&name).unwrap_or_default();
        let new = listed.as_deref().unwrap_or_default();
        let mut touched: Vec<SocketAddr> = old.listed.iter().chain(new).map(|(a, _)| *a).collect();
        touched.sort_unstable();
        touched.dedup();

        // Segments to rebuild: those that placed a touched address before
        // the change, and those that place one after it.
        let mut segments: Vec<Arc<str>> = Vec::new();
        for address in &touched {
            if let Some(listings) = self.listings.get(address) {
                segments.push(listings[0].slice.clone());
                if winner(listings).origin.ready {
                    self.ready -= 1;
                }
            }
        }
        for (address, _) in &old.listed {
            if let Some(listings) = self.listings.get_mut(address) {
                listings.retain(|l| l.slice != name);
                if listings.is_empty() {
                    self.listings.remove(address);
                }
            }
        }
        for (position, (address, origin)) in new.iter().enumerate() {
            let listings = self.listings.entry(*address).or_default();
            let at = listings.partition_point(|l| (&*l.slice, l.position) < (&*name, position));
            listings.insert(
                at,
                Listing {
                    slice: name.clone(),
                    position,
                    origin: origin.clone(),
                },
            );
        }
        for address in &touched {
            if let Some(listings) = self.listings.get(address) {
                segments.push(listings[0].slice.clone());
                if winner(listings).origin.ready {
                    self.ready += 1;
                }
            }
        }

        let mut changed = false;
        match listed {
            Some(listed) => {
                self.slices.insert(
                    name,
                    Contribution {
                        listed,
                        segment: old.segment,
                    },
                );
            }
            None => {
                changed = !old.segment.is_empty();
                self.len -= old.segment.len();
            }
        }
        let any_ready = self.ready > 0;
        if any_ready != was_any_ready {
            // The fallback switched: which endpoints route changed everywhere.
            segments = self.slices.keys().cloned().collect();
        } else {
            segments.sort_unstable();
            segments.dedup();
        }
        for slice in segments {
            let Some(contribution) = self.slices.get_mut(&slice) else {
                continue;
            };
            let segment = build_segment(&slice, &contribution.listed, &self.listings, any_ready);
            if segment != contribution.segment {
                self.len = self.len - contribution.segment.len() + segment.len();
                contribution.segment = segment;
                changed = true;
            }
        }
        changed
    }
}

/// The endpoints slice `name` places in the set: those it lists first, as
/// their winning listing has them, if that listing routes.
fn build_segment(
    name: &str,
    listed: &[(SocketAddr, Arc<Origin>)],
    index: &HashMap<SocketAddr, Vec<Listing>>,
    any_ready: bool,
) -> Vec<EndpointSpec> {
    listed
        .iter()
        .enumerate()
        .filter_map(|(position, (address, _))| {
            let listings = index.get(address)?;
            if !listings[0].is(name, position) {
                return None;
            }
            let winner = winner(listings);
            routes(&winner.origin, any_ready).then(|| EndpointSpec {
                address: *address,
                weight: DEFAULT_WEIGHT,
                origin: Some(winner.origin.clone()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::merge::{merge, Member, Port};
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    /// xorshift64*: deterministic, no dependency, good enough to shuffle
    /// events.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn chance(&mut self, one_in: u64) -> bool {
            self.below(one_in) == 0
        }
    }

    /// A slice of a few endpoints drawn from a small pool of addresses, so
    /// addresses repeat within and across slices; random conditions; the
    /// `http` port on one of two target ports, or missing.
    fn random_slice(rng: &mut Rng, name: &str) -> Slice {
        let ports = match rng.below(4) {
            0 => vec![Port {
                name: "grpc".into(),
                number: 9000,
                tcp: true,
            }],
            1 => vec![Port {
                name: "http".into(),
                number: 9090,
                tcp: true,
            }],
            _ => vec![Port {
                name: "http".into(),
                number: 8080,
                tcp: true,
            }],
        };
        let endpoints = (0..rng.below(7))
            .map(|_| {
                let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + rng.below(10) as u8));
                // Mostly ready, so the fallback switches now and then.
                let ready = !rng.chance(3);
                Member {
                    ip,
                    origin: Arc::new(Origin {
                        slice: name.into(),
                        zone: rng.chance(2).then(|| format!("z{}", rng.below(3))),
                        node: None,
                        ready,
                        serving: ready || rng.chance(2),
                        terminating: !ready && rng.chance(2),
                    }),
                }
            })
            .collect();
        Slice {
            name: name.into(),
            ports,
            endpoints,
        }
    }

    fn check(port: &ServicePort, seed: u64, steps: usize) {
        let mut rng = Rng(seed);
        let mut slices: BTreeMap<String, Slice> = BTreeMap::new();
        let mut live = ServiceEndpoints::new(port.clone());
        let mut last = merge(slices.values(), port);
        for step in 0..steps {
            let name = format!("web-{}", rng.below(6));
            let changed = if rng.chance(4) {
                slices.remove(&name);
                live.remove(&name)
            } else {
                let slice = random_slice(&mut rng, &name);
                slices.insert(name.clone(), slice.clone());
                live.upsert(&slice)
            };
            let expected = merge(slices.values(), port);
            assert_eq!(
                &*live.set(),
                expected.as_slice(),
                "step {step} (seed {seed}), slice {name}"
            );
            assert_eq!(live.len(), expected.len());
            // A change is never missed; a slice's endpoint moving to the
            // next slice's segment may report one that did not happen.
            assert!(changed || expected == last, "step {step}: change missed");
            last = expected;
        }
    }

    #[test]
    fn slice_by_slice_updates_always_equal_the_merge_of_the_current_slices() {
        for seed in [1, 0x5eed, 0xdead_beef, 42] {
            check(&ServicePort::Name("http".into()), seed, 5_000);
            check(&ServicePort::Number(8080), seed, 2_000);
        }
    }

    #[test]
    fn a_service_built_slice_by_slice_equals_its_merge() {
        let mut rng = Rng(7);
        let slices: Vec<Slice> = (0..8)
            .map(|i| random_slice(&mut rng, &format!("web-{i}")))
            .collect();
        let port = ServicePort::Name("http".into());
        let live = ServiceEndpoints::from_slices(slices.iter().rev(), port.clone());
        assert_eq!(&*live.set(), merge(&slices, &port).as_slice());
    }

    #[test]
    fn deleting_an_unknown_slice_changes_nothing() {
        let mut live = ServiceEndpoints::new(ServicePort::Name("http".into()));
        assert!(!live.remove("web-a"));
        assert!(live.is_empty());
    }
}
