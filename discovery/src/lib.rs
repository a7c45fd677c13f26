//! Endpoint sets for skiff and the sources they come from.
//!
//! A source produces whole endpoint sets ([`EndpointSet`]); the proxy's
//! cluster task diffs each new set against the live one, so a source never
//! needs to know about in-flight requests or connection pools. Sources keep
//! their last good set when they fail: an unreadable or malformed file is
//! logged with its position and the set it last produced stays in force.

#![forbid(unsafe_code)]

pub mod file;
pub mod yaml;

use std::net::SocketAddr;
use std::sync::Arc;

/// Weight an endpoint gets when none is given.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Largest weight accepted; keeps weighted schedules small.
pub const MAX_WEIGHT: u32 = 10_000;

/// One backend as a source describes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct EndpointSpec {
    pub address: SocketAddr,
    pub weight: u32,
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
}

/// Starts a source and returns a receiver that always holds its latest set.
///
/// The receiver starts at `None` until the source has produced its first
/// set; the task stops when every receiver is dropped.
pub fn spawn(source: &Source, cluster: &str) -> tokio::sync::watch::Receiver<Option<EndpointSet>> {
    match source {
        Source::Static(list) => {
            let (tx, rx) = tokio::sync::watch::channel(Some(EndpointSet::from(list.clone())));
            // Keep the sender alive for as long as anyone listens, so the
            // receiver never sees the source as closed.
            tokio::spawn(async move { tx.closed().await });
            rx
        }
        Source::File { path, interval } => {
            file::spawn(path.clone(), cluster.to_string(), *interval)
        }
    }
}

fn millis<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}
