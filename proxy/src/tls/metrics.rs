//! TLS counters per listener: handshakes, failed handshakes by reason,
//! and certificate reloads by result.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::metrics::{escape, header, sample};

/// Why a handshake failed, as the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
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
    const ALL: [Failure; 4] = [
        Failure::ClientCert,
        Failure::Timeout,
        Failure::Handshake,
        Failure::Plaintext,
    ];

    fn label(self) -> &'static str {
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
pub struct TlsStats {
    pub handshakes: AtomicU64,
    /// Handshakes that resumed an earlier session.
    pub resumed: AtomicU64,
    errors: [AtomicU64; 4],
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// When the first served certificate expires, Unix seconds (0: unknown).
    pub expires: AtomicI64,
}

impl TlsStats {
    pub fn failed(&self, why: Failure) {
        self.errors[why as usize].fetch_add(1, Relaxed);
    }

    pub fn errors(&self, why: Failure) -> u64 {
        self.errors[why as usize].load(Relaxed)
    }
}

/// Every TLS listener's counters.
#[derive(Debug, Default)]
pub struct TlsMetrics {
    listeners: Mutex<BTreeMap<String, Arc<TlsStats>>>,
}

impl TlsMetrics {
    /// The counters of `listener`, kept across reloads.
    pub fn stats(&self, listener: &str) -> Arc<TlsStats> {
        let mut map = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(listener.to_string()).or_default().clone()
    }

    /// Forgets listeners no longer configured with TLS.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|l, _| keep(l));
    }

    /// Appends the TLS families in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        // Each family's rows for one listener, given its `listener="…"` pieces.
        type Rows = fn(&mut String, &str, &[&str; 3], &TlsStats);
        let families: [(&str, &str, Rows); 4] = [
            (
                "skiff_tls_handshakes_total",
                "Completed TLS handshakes, by listener.",
                |out, name, l, s| sample(out, &[name], l, s.handshakes.load(Relaxed)),
            ),
            (
                "skiff_tls_resumed_total",
                "TLS handshakes that resumed a session, by listener.",
                |out, name, l, s| sample(out, &[name], l, s.resumed.load(Relaxed)),
            ),
            (
                "skiff_tls_errors_total",
                "Failed TLS handshakes, by listener and reason (client_cert, timeout, handshake, plaintext).",
                |out, name, l, s| {
                    for why in Failure::ALL {
                        let labels = [l[0], l[1], l[2], ",reason=\"", why.label(), "\""];
                        sample(out, &[name], &labels, s.errors(why));
                    }
                },
            ),
            (
                "skiff_tls_certificate_reloads_total",
                "Certificate file reloads, by listener and result.",
                |out, name, l, s| {
                    for (result, n) in [("success", &s.reloads_ok), ("failure", &s.reloads_failed)]
                    {
                        let labels = [l[0], l[1], l[2], ",result=\"", result, "\""];
                        sample(out, &[name], &labels, n.load(Relaxed));
                    }
                },
            ),
        ];
        let map = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        for (name, help, rows) in families {
            header(out, name, "counter", help);
            for (listener, stats) in map.iter() {
                rows(out, name, &["listener=\"", &escape(listener), "\""], stats);
            }
        }
        // Envoy's days_until_first_cert_expiring, as a timestamp to alert on:
        // `skiff_tls_certificate_expiry_timestamp_seconds - time() < 14 * 86400`.
        let name = "skiff_tls_certificate_expiry_timestamp_seconds";
        header(
            out,
            name,
            "gauge",
            "When the first certificate a listener serves expires (Unix time).",
        );
        for (listener, stats) in map.iter() {
            let expires = stats.expires.load(Relaxed);
            if expires > 0 {
                sample(
                    out,
                    &[name],
                    &["listener=\"", &escape(listener), "\""],
                    expires,
                );
            }
        }
    }
}
