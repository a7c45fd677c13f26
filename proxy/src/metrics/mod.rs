//! Prometheus metrics: the counters, gauges and histograms the request
//! path bumps ([`crate::admin::prometheus`] writes them out).
//!
//! The request path holds pre-resolved handles (an `Arc` to a row of
//! atomics, found when a route table or endpoint is built), so recording a
//! request is a few relaxed atomic adds: no label lookup, no lock, no
//! allocation. Series live as long as the thing they describe: an
//! endpoint's counters sit in the endpoint and leave with it, which keeps
//! label values bounded without a registry sweep. This is why skiff keeps
//! its own small registry rather than the `metrics` facade, whose
//! label-keyed handles cannot be dropped per endpoint.
//!
//! A scrape of 100 clusters × 10 endpoints writes about 4,000 lines, so the
//! text is written with copies and integer formatting only: each series'
//! labels are escaped and joined once, when its handle is made, and a
//! scrape appends `name{labels} value` from those pieces (issue 8).

pub(crate) mod tls;

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Status classes used as the `code_class` label.
pub(crate) const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Upper bounds (seconds) of the request duration histogram: 0.5 ms to 30 s.
pub(crate) const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
    30.0,
];

/// [`DURATION_BUCKETS`] as their `le` label values (Rust's `{}` of each;
/// a test keeps the two lists together).
pub(crate) const DURATION_BUCKET_LABELS: [&str; DURATION_BUCKETS.len()] = [
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
    "2.5", "5", "10", "15", "30",
];

/// Request counts by status class.
#[derive(Debug, Default)]
pub struct CodeCounters([AtomicU64; 5]);

impl CodeCounters {
    /// Counts one response with `status`.
    #[inline]
    pub fn record(&self, status: u16) {
        if cfg!(feature = "no-metrics") {
            return;
        }
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.0[class].fetch_add(1, Relaxed);
    }

    /// Count for class index `i` (0 = 1xx).
    pub(crate) fn get(&self, i: usize) -> u64 {
        self.0[i].load(Relaxed)
    }

    /// Total over all classes.
    pub(crate) fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Relaxed)).sum()
    }
}

/// A gauge that goes up and down, and remembers how high it went.
#[derive(Debug, Default)]
pub(crate) struct Gauge(AtomicI64, AtomicI64);

impl Gauge {
    #[inline]
    pub(crate) fn inc(&self) {
        let now = self.0.fetch_add(1, Relaxed) + 1;
        // A load first: in steady state the peak is not written at all.
        if now > self.1.load(Relaxed) {
            self.1.fetch_max(now, Relaxed);
        }
    }
    /// The highest value since the last call, which starts a new period.
    pub(crate) fn take_peak(&self) -> i64 {
        self.1.swap(self.get(), Relaxed).max(self.get())
    }
    #[inline]
    pub(crate) fn dec(&self) {
        self.0.fetch_sub(1, Relaxed);
    }
    pub(crate) fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// A fixed-bucket latency histogram (buckets in [`DURATION_BUCKETS`]).
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    #[inline]
    pub(crate) fn observe(&self, d: Duration) {
        if cfg!(feature = "no-metrics") {
            return;
        }
        let secs = d.as_secs_f64();
        if let Some(i) = DURATION_BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// The sum of the observations, in nanoseconds.
    pub(crate) fn sum_nanos(&self) -> u64 {
        self.sum_nanos.load(Relaxed)
    }

    /// Observations up to each bound of [`DURATION_BUCKETS`], cumulative
    /// (as Prometheus' `le` buckets count).
    pub(crate) fn cumulative(&self) -> impl Iterator<Item = u64> + '_ {
        self.buckets.iter().scan(0, |sum, b| {
            *sum += b.load(Relaxed);
            Some(*sum)
        })
    }

    /// Observations per bucket (not cumulative), then those over the last bound.
    pub(crate) fn buckets(&self) -> Vec<u64> {
        let mut out: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let counted: u64 = out.iter().sum();
        out.push(self.count().saturating_sub(counted));
        out
    }
}

/// Why skiff refused what a client sent before (or instead of) forwarding
/// it: the `protocol` and `reason` labels of
/// `skiff_client_protocol_errors_total`. A fixed set, so the series per
/// listener are bounded whatever clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProtocolError {
    /// HTTP/1: a request head or chunked body that does not parse (400).
    Http1Malformed,
    /// HTTP/1: a request head past the listener's limits (431).
    Http1TooLarge,
    /// HTTP/1: a request skiff does not serve (405 for `CONNECT`, 417,
    /// 501 for an unknown transfer coding).
    Http1Unsupported,
    /// HTTP/1: the head did not arrive within `request_head_timeout` (408).
    Http1Timeout,
    /// HTTP/2: a request head or trailers breaking RFC 9113 §8 (the
    /// stream is reset, or answered 400).
    Http2Malformed,
    /// HTTP/2: a request head past the listener's limits (431).
    Http2TooLarge,
    /// HTTP/2: a request skiff does not serve (405 for `CONNECT`).
    Http2Unsupported,
    /// HTTP/2: another stream error (flow control, a frame on a closed
    /// stream): the stream is reset.
    Http2Stream,
    /// HTTP/2: a connection error: the connection is ended with `GOAWAY`.
    Http2Connection,
    /// HTTP/2: a flood limit (rapid reset, streams reset for errors, a
    /// header block too large): `GOAWAY` with `ENHANCE_YOUR_CALM`.
    Http2Flood,
    /// HTTP/2: a stream opened past `max_concurrent_streams`, refused
    /// with `REFUSED_STREAM`.
    Http2Refused,
}

impl ProtocolError {
    pub(crate) const ALL: [ProtocolError; 11] = [
        ProtocolError::Http1Malformed,
        ProtocolError::Http1TooLarge,
        ProtocolError::Http1Unsupported,
        ProtocolError::Http1Timeout,
        ProtocolError::Http2Malformed,
        ProtocolError::Http2TooLarge,
        ProtocolError::Http2Unsupported,
        ProtocolError::Http2Stream,
        ProtocolError::Http2Connection,
        ProtocolError::Http2Flood,
        ProtocolError::Http2Refused,
    ];

    /// A refused request head by the status skiff answers it with.
    pub(crate) fn of_status(http2: bool, status: u16) -> ProtocolError {
        match (http2, status) {
            (false, 400) => ProtocolError::Http1Malformed,
            (false, 431) => ProtocolError::Http1TooLarge,
            (false, 408) => ProtocolError::Http1Timeout,
            (false, _) => ProtocolError::Http1Unsupported,
            (true, 400) => ProtocolError::Http2Malformed,
            (true, 431) => ProtocolError::Http2TooLarge,
            (true, _) => ProtocolError::Http2Unsupported,
        }
    }

    /// The `protocol` and `reason` label values.
    pub(crate) fn labels(self) -> (&'static str, &'static str) {
        match self {
            ProtocolError::Http1Malformed => ("http1", "malformed"),
            ProtocolError::Http1TooLarge => ("http1", "too_large"),
            ProtocolError::Http1Unsupported => ("http1", "unsupported"),
            ProtocolError::Http1Timeout => ("http1", "timeout"),
            ProtocolError::Http2Malformed => ("http2", "malformed"),
            ProtocolError::Http2TooLarge => ("http2", "too_large"),
            ProtocolError::Http2Unsupported => ("http2", "unsupported"),
            ProtocolError::Http2Stream => ("http2", "stream_error"),
            ProtocolError::Http2Connection => ("http2", "connection_error"),
            ProtocolError::Http2Flood => ("http2", "flood"),
            ProtocolError::Http2Refused => ("http2", "refused_stream"),
        }
    }
}

/// A listener's client protocol errors, one counter per [`ProtocolError`].
#[derive(Debug, Default)]
pub(crate) struct ProtocolErrors([AtomicU64; ProtocolError::ALL.len()]);

impl ProtocolErrors {
    pub(crate) fn count(&self, e: ProtocolError) {
        self.0[e as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn get(&self, e: ProtocolError) -> u64 {
        self.0[e as usize].load(Relaxed)
    }
}

/// A `skiff_requests_total` row: its labels (`listener="…",cluster="…"`)
/// and its counters.
pub(crate) type RequestsRow = (Arc<str>, Arc<CodeCounters>);

/// Metrics that are not owned by a cluster or endpoint.
#[derive(Debug, Default)]
pub struct Registry {
    /// `skiff_requests_total` rows by (listener, cluster), each with its
    /// labels (`listener="…",cluster="…"`) written when it is made.
    pub(crate) requests: Mutex<BTreeMap<(String, String), RequestsRow>>,
    /// `skiff_route_requests_total` rows by (listener, route name), for
    /// named routes (bounded by the routes of the config and the
    /// Gateway API objects).
    pub(crate) route_requests: Mutex<BTreeMap<(String, String), RequestsRow>>,
    /// Requests that matched no route, by listener.
    pub(crate) unrouted: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    /// Open downstream connections by listener.
    pub(crate) connections: Mutex<BTreeMap<String, Arc<Gauge>>>,
    /// Connections closed at accept past `max_connections`, by listener.
    pub(crate) refused: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    /// What clients sent that skiff refused as a protocol error, by listener.
    pub(crate) protocol_errors: Mutex<BTreeMap<String, Arc<ProtocolErrors>>>,
    pub(crate) reloads_ok: AtomicU64,
    pub(crate) reloads_failed: AtomicU64,
    /// TLS handshakes, errors and certificate reloads, by listener.
    pub(crate) tls: tls::TlsMetrics,
}

impl Registry {
    /// The counter row for requests from `listener` routed to `cluster`;
    /// resolved when a route table is built, never per request.
    pub(crate) fn requests(&self, listener: &str, cluster: &str) -> Arc<CodeCounters> {
        let mut map = self.requests.lock();
        let (_, counters) = map
            .entry((listener.to_string(), cluster.to_string()))
            .or_insert_with(|| {
                let labels = format!(
                    "{},{}",
                    label("listener", listener),
                    label("cluster", cluster)
                );
                (labels.into(), Arc::default())
            });
        counters.clone()
    }

    /// The counter row for requests from `listener` that took the route
    /// named `route`; resolved when a route table is built.
    pub(crate) fn route_requests(&self, listener: &str, route: &str) -> Arc<CodeCounters> {
        let mut map = self.route_requests.lock();
        let (_, counters) = map
            .entry((listener.to_string(), route.to_string()))
            .or_insert_with(|| {
                let labels = format!("{},{}", label("listener", listener), label("route", route));
                (labels.into(), Arc::default())
            });
        counters.clone()
    }

    pub(crate) fn unrouted(&self, listener: &str) -> Arc<AtomicU64> {
        let mut map = self.unrouted.lock();
        map.entry(listener.to_string()).or_default().clone()
    }

    pub(crate) fn connections(&self, listener: &str) -> Arc<Gauge> {
        let mut map = self.connections.lock();
        map.entry(listener.to_string()).or_default().clone()
    }

    pub(crate) fn refused(&self, listener: &str) -> Arc<AtomicU64> {
        let mut map = self.refused.lock();
        map.entry(listener.to_string()).or_default().clone()
    }

    pub(crate) fn protocol_errors(&self, listener: &str) -> Arc<ProtocolErrors> {
        let mut map = self.protocol_errors.lock();
        map.entry(listener.to_string()).or_default().clone()
    }

    /// Open downstream connections over all listeners: (now, the most
    /// since the last call).
    pub fn connections_now_and_peak(&self) -> (i64, i64) {
        let map = self.connections.lock();
        map.values().fold((0, 0), |(now, peak), g| {
            (now + g.get(), peak + g.take_peak())
        })
    }

    /// Forgets rows for listener/cluster pairs no longer configured, so a
    /// reload that removes them also removes their series.
    pub(crate) fn retain(
        &self,
        keep: impl Fn(&str, &str) -> bool,
        keep_route: impl Fn(&str, &str) -> bool,
        keep_listener: impl Fn(&str) -> bool,
    ) {
        self.requests.lock().retain(|(l, c), _| keep(l, c));
        self.route_requests
            .lock()
            .retain(|(l, r), _| keep_route(l, r));
        self.unrouted.lock().retain(|l, _| keep_listener(l));
        self.connections
            .lock()
            .retain(|l, g| keep_listener(l) || g.get() > 0);
        self.refused.lock().retain(|l, _| keep_listener(l));
        self.protocol_errors.lock().retain(|l, _| keep_listener(l));
    }

    /// Counts a config reload attempt.
    pub(crate) fn reload(&self, ok: bool) {
        if ok {
            self.reloads_ok.fetch_add(1, Relaxed);
        } else {
            self.reloads_failed.fetch_add(1, Relaxed);
        }
    }
}

/// Escapes a label value for the text format.
pub(crate) fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if value.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        value.into()
    }
}

/// `key="value"`, the value escaped: made once per series, when its
/// handle is, so that a scrape only copies it.
pub(crate) fn label(key: &str, value: &str) -> String {
    format!("{key}=\"{}\"", escape(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_classes_bucket_statuses() {
        let c = CodeCounters::default();
        c.record(200);
        c.record(204);
        c.record(503);
        c.record(101);
        assert_eq!(c.get(1), 2);
        assert_eq!(c.get(4), 1);
        assert_eq!(c.get(0), 1);
        assert_eq!(c.total(), 4);
    }

    #[test]
    fn protocol_errors_index_their_own_counter() {
        let counts = ProtocolErrors::default();
        for (i, e) in ProtocolError::ALL.into_iter().enumerate() {
            assert_eq!(e as usize, i, "{e:?}");
            for _ in 0..=i {
                counts.count(e);
            }
        }
        for (i, e) in ProtocolError::ALL.into_iter().enumerate() {
            assert_eq!(counts.get(e), i as u64 + 1, "{e:?}");
        }
        let labels: std::collections::BTreeSet<_> =
            ProtocolError::ALL.iter().map(|e| e.labels()).collect();
        assert_eq!(labels.len(), ProtocolError::ALL.len(), "label pairs repeat");
        assert_eq!(
            ProtocolError::of_status(false, 431),
            ProtocolError::Http1TooLarge
        );
        assert_eq!(
            ProtocolError::of_status(true, 405),
            ProtocolError::Http2Unsupported
        );
    }

    #[test]
    fn bucket_labels_are_the_bounds() {
        let written: Vec<String> = DURATION_BUCKETS.iter().map(|b| b.to_string()).collect();
        assert_eq!(written, DURATION_BUCKET_LABELS);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\n"), "a\\\"b\\\\c\\n");
        assert_eq!(escape("plain"), "plain");
    }
}
