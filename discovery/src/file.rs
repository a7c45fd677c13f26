//! The file source: a YAML list of endpoints, watched for changes.
//!
//! ```yaml
//! - address: 10.0.0.1:8080
//!   weight: 2
//! - 10.0.0.2:8080          # shorthand: weight 1
//! ```
//!
//! The file is polled (stat, then read when the inode, size or mtime moved)
//! rather than watched with inotify: polling follows Kubernetes' atomic
//! `..data` symlink swap of mounted ConfigMaps without special cases, and a
//! stat every quarter second costs nothing measurable.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::yaml::{self, Diagnostics, MapReader, Node, Value};
use crate::{EndpointSet, EndpointSpec, DEFAULT_WEIGHT, MAX_WEIGHT};

/// How often the file is checked for changes unless configured.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// The shortest check interval accepted.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Parses an endpoint file's text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Vec<EndpointSpec>, Diagnostics> {
    let mut diags = Diagnostics::new(file);
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            diags.syntax(e);
            return Err(diags);
        }
    };
    let mut out = Vec::new();
    if root.value == Value::Null {
        return Ok(out);
    }
    let Some(items) = yaml::seq(&root, "endpoints", &mut diags) else {
        return Err(diags);
    };
    for (i, item) in items.iter().enumerate() {
        let path = format!("endpoints[{i}]");
        if let Some(spec) = endpoint(item, &path, &mut diags) {
            if out.iter().any(|e: &EndpointSpec| e.address == spec.address) {
                diags.error(item, &path, format!("{} is listed twice", spec.address));
            } else {
                out.push(spec);
            }
        }
    }
    diags.into_result(out)
}

/// Reads one endpoint: `ADDRESS` or `{address: ADDRESS, weight: N}`.
pub fn endpoint(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<EndpointSpec> {
    if let Value::Scalar(..) = node.value {
        let address = address(node, path, diags)?;
        return Some(EndpointSpec::new(address, DEFAULT_WEIGHT));
    }
    let mut map = MapReader::new(node, path, diags)?;
    let address = map
        .required("address", diags)
        .and_then(|n| address(n, &yaml::join(path, "address"), diags));
    let weight = match map.optional("weight") {
        Some(n) => yaml::uint(n, &yaml::join(path, "weight"), 1..=MAX_WEIGHT as u64, diags)
            .map(|w| w as u32),
        None => Some(DEFAULT_WEIGHT),
    };
    map.finish(diags, &["address", "weight"]);
    Some(EndpointSpec::new(address?, weight?))
}

/// Reads a socket address (`IP:PORT` or `[IPv6]:PORT`).
pub fn address(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<std::net::SocketAddr> {
    let text = yaml::string(node, path, diags)?;
    match text.trim().parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            diags.error(
                node,
                path,
                format!("`{text}` is not an address like 10.0.0.1:8080 or [fd00::1]:8080"),
            );
            None
        }
    }
}

/// What identifies one version of a file without reading it: device,
/// inode, size and mtime, following symlinks (so Kubernetes' `..data`
/// swap shows as a new inode).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

/// The current [`Stamp`] of `path`.
pub fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let meta = std::fs::metadata(path)?;
    Ok(Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// Polls `path` and publishes each new valid set. Errors are logged with the
/// file's position, counted on `errors`, and the last good set stays published.
pub fn spawn(
    path: PathBuf,
    cluster: String,
    interval: Duration,
    errors: Arc<AtomicU64>,
) -> tokio::sync::watch::Receiver<Option<EndpointSet>> {
    let (tx, rx) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        let mut last: Option<Stamp> = None;
        let mut last_error: Option<String> = None;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = tx.closed() => return,
            }
            let now = match stamp(&path) {
                Ok(s) => s,
                Err(e) => {
                    errors.fetch_add(1, Relaxed);
                    let msg = format!("{}: {e}", path.display());
                    if last_error.as_deref() != Some(&msg) {
                        tracing::warn!(cluster = %cluster, "endpoint file unreadable, keeping the last good set: {msg}");
                        last_error = Some(msg);
                    }
                    continue;
                }
            };
            if last == Some(now) {
                continue;
            }
            last = Some(now);
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(t) => t,
                Err(e) => {
                    errors.fetch_add(1, Relaxed);
                    tracing::warn!(cluster = %cluster, "endpoint file unreadable, keeping the last good set: {}: {e}", path.display());
                    last = None;
                    continue;
                }
            };
            match parse(&text, &path.display().to_string()) {
                Ok(set) => {
                    last_error = None;
                    let set = EndpointSet::from(set);
                    tx.send_if_modified(|cur| {
                        if cur.as_deref() == Some(&*set) {
                            false
                        } else {
                            *cur = Some(set);
                            true
                        }
                    });
                }
                Err(diags) => {
                    errors.fetch_add(1, Relaxed);
                    tracing::warn!(cluster = %cluster, "endpoint file rejected, keeping the last good set:\n{diags}");
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mappings_and_shorthand() {
        let set = parse(
            "- address: 127.0.0.1:1\n  weight: 3\n- 127.0.0.1:2\n- address: '[::1]:3'\n",
            "e.yaml",
        )
        .unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(set[0].weight, 3);
        assert_eq!(set[1].weight, 1);
        assert!(set[2].address.is_ipv6());
    }

    #[test]
    fn every_mistake_is_reported_with_its_position() {
        let err = parse(
            "- address: nope\n- address: 127.0.0.1:1\n  weight: 0\n- 127.0.0.1:1\n- port: 3\n",
            "e.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("e.yaml:1:12: endpoints[0].address: `nope` is not an address"),
            "{err}"
        );
        assert!(
            err.contains("e.yaml:3:11: endpoints[1].weight: 0 is out of range"),
            "{err}"
        );
        assert!(
            err.contains("e.yaml:5:3: endpoints[3]: missing field `address`"),
            "{err}"
        );
        assert!(err.contains("endpoints[3].port: unknown field"), "{err}");
    }

    #[test]
    fn empty_file_is_an_empty_set() {
        assert!(parse("", "e.yaml").unwrap().is_empty());
    }
}
