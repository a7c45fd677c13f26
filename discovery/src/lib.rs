//! Endpoint sets for skiff and the sources they come from.
//!
//! A source produces whole endpoint sets ([`EndpointSet`]); the proxy's
//! cluster task diffs each new set against the live one, so a source never
//! needs to know about in-flight requests or connection pools. Sources keep
//! their last good set when they fail: an unreadable or malformed file is
//! logged with its position, an unreachable Kubernetes API server with a
//! warning, and the set last produced stays in force. Each failure is
//! counted on the cluster's error counter (`skiff_discovery_errors_total`).

#![forbid(unsafe_code)]

pub mod file;
pub mod kubernetes;
pub mod yaml;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Weight an endpoint gets when none is given.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Largest weight accepted; keeps weighted schedules small.
pub const MAX_WEIGHT: u32 = 10_000;

/// One backend as a source describes it.
///
/// The proxy tells endpoints apart by `address` alone: a new `weight` or
/// `origin` for the same address updates the live endpoint in place.
#[derive(Debug, Clone, Eq, serde::Serialize)]
pub struct EndpointSpec {
    pub address: SocketAddr,
    pub weight: u32,
    /// Where a discovered endpoint came from; `None` for static and file
    /// endpoints. Shared, so copying a set copies no strings.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "origin")]
    pub origin: Option<Arc<Origin>>,
}

/// Equal when address, weight and origin are; a shared origin compares by
/// pointer first, so comparing two sets of one Service costs no string
/// comparisons for the endpoints that did not change.
impl PartialEq for EndpointSpec {
    fn eq(&self, other: &EndpointSpec) -> bool {
        self.address == other.address
            && self.weight == other.weight
            && match (&self.origin, &other.origin) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                (None, None) => true,
                _ => false,
            }
    }
}

/// By content, as equality is (a shared pointer only shortcuts equality).
impl std::hash::Hash for EndpointSpec {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.address.hash(state);
        self.weight.hash(state);
        self.origin.as_deref().hash(state);
    }
}

impl EndpointSpec {
    /// An endpoint with no origin (static or file).
    pub fn new(address: SocketAddr, weight: u32) -> EndpointSpec {
        EndpointSpec {
            address,
            weight,
            origin: None,
        }
    }
}

/// What a Kubernetes EndpointSlice says about one endpoint: the slice it was
/// read from, its topology (kept for zone-aware routing) and its conditions
/// as the API defines them (absent `ready`/`serving` read as true, absent
/// `terminating` as false).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Origin {
    pub slice: String,
    pub zone: Option<String>,
    pub node: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// A complete set of endpoints, as of one update from a source.
pub type EndpointSet = Arc<[EndpointSpec]>;

/// Where a cluster's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A fixed list from the config file.
    Static(Vec<EndpointSpec>),
    /// A YAML file (a list of `address` with optional `weight`), checked
    /// for changes every `interval`.
    File {
        path: std::path::PathBuf,
        #[serde(serialize_with = "millis")]
        interval: std::time::Duration,
    },
    /// A Kubernetes Service's EndpointSlices, watched on the API server.
    Kubernetes(kubernetes::Target),
}

/// Starts sources, and holds what they share: one Kubernetes watch per
/// namespace however many clusters use it. Cheap to clone; clones share.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    kubernetes: kubernetes::Registry,
}

impl Discovery {
    /// Starts `source` for `cluster` and returns a receiver that always
    /// holds its latest set; failures are counted on `errors`.
    ///
    /// The receiver starts at `None` until the source has produced its first
    /// set; the source stops when every receiver is dropped.
    pub fn spawn(
        &self,
        source: &Source,
        cluster: &str,
        errors: Arc<AtomicU64>,
    ) -> tokio::sync::watch::Receiver<Option<EndpointSet>> {
        match source {
            Source::Static(list) => {
                let (tx, rx) = tokio::sync::watch::channel(Some(EndpointSet::from(list.clone())));
                // Keep the sender alive for as long as anyone listens, so the
                // receiver never sees the source as closed.
                tokio::spawn(async move { tx.closed().await });
                rx
            }
            Source::File { path, interval } => {
                file::spawn(path.clone(), cluster.to_string(), *interval, errors)
            }
            Source::Kubernetes(target) => self.kubernetes.subscribe(target, cluster, errors),
        }
    }
}

fn origin<S: serde::Serializer>(o: &Option<Arc<Origin>>, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&o.as_deref(), s)
}

fn millis<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}
