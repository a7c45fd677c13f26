//! TLS counters per listener: handshakes, failed handshakes by reason,
//! and certificate reloads by result.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Why a handshake failed, as the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The client's certificate was missing, not from the CA, or not allowed.
    ClientCert,
    /// The handshake took longer than the limit.
    Timeout,
    /// Anything else: protocol errors, no shared cipher, no certificate for the name.
    Handshake,
    /// A plaintext (or other than mesh TLS) connection refused by a
    /// sidecar's inbound listener in `mode: strict`.
    Plaintext,
}

impl Failure {
    pub(crate) const ALL: [Failure; 4] = [
        Failure::ClientCert,
        Failure::Timeout,
        Failure::Handshake,
        Failure::Plaintext,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Failure::ClientCert => "client_cert",
            Failure::Timeout => "timeout",
            Failure::Handshake => "handshake",
            Failure::Plaintext => "plaintext",
        }
    }
}

/// One listener's TLS counters.
#[derive(Debug, Default)]
pub(crate) struct TlsStats {
    pub(crate) handshakes: AtomicU64,
    /// Handshakes that resumed an earlier session.
    pub(crate) resumed: AtomicU64,
    errors: [AtomicU64; 4],
    pub(crate) reloads_ok: AtomicU64,
    pub(crate) reloads_failed: AtomicU64,
    /// When the first served certificate expires, Unix seconds (0: unknown).
    pub(crate) expires: AtomicI64,
}

impl TlsStats {
    pub(crate) fn failed(&self, why: Failure) {
        self.errors[why as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn errors(&self, why: Failure) -> u64 {
        self.errors[why as usize].load(Relaxed)
    }
}

/// Every TLS listener's counters.
#[derive(Debug, Default)]
pub(crate) struct TlsMetrics {
    listeners: Mutex<BTreeMap<String, Arc<TlsStats>>>,
}

impl TlsMetrics {
    /// The counters of `listener`, kept across reloads.
    pub(crate) fn stats(&self, listener: &str) -> Arc<TlsStats> {
        let mut map = self.listeners.lock();
        map.entry(listener.to_string()).or_default().clone()
    }

    /// Forgets listeners no longer configured with TLS.
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.listeners.lock().retain(|l, _| keep(l));
    }

    /// Each listener's counters, in listener order.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&str, &TlsStats)) {
        let map = self.listeners.lock();
        for (listener, stats) in map.iter() {
            f(listener, stats);
        }
    }
}
