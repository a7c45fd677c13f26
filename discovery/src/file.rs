//! The file source: a YAML list of endpoints (its format is
//! [`skiff_config::endpoints`]'s), watched for changes.
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

use skiff_config::endpoints;

use crate::EndpointSet;

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
            match endpoints::parse_file(&text, &path.display().to_string()) {
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
