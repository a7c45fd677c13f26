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

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use skiff_config::endpoints::{EndpointSpec, Source};

/// A complete set of endpoints, as of one update from a source.
pub type EndpointSet = Arc<[EndpointSpec]>;

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
