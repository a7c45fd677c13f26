//! Prometheus metrics: the counters the request path bumps, and the text
//! exposition the admin server renders.
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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Status classes used as the `code_class` label.
pub const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Upper bounds (seconds) of the request duration histogram: 0.5 ms to 30 s.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
    30.0,
];

/// [`DURATION_BUCKETS`] as their `le` label values (Rust's `{}` of each;
/// a test keeps the two lists together).
const DURATION_BUCKET_LABELS: [&str; DURATION_BUCKETS.len()] = [
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
    pub fn get(&self, i: usize) -> u64 {
        self.0[i].load(Relaxed)
    }

    /// Total over all classes.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Relaxed)).sum()
    }
}

/// A gauge that goes up and down, and remembers how high it went.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64, AtomicI64);

impl Gauge {
    #[inline]
    pub fn inc(&self) {
        let now = self.0.fetch_add(1, Relaxed) + 1;
        // A load first: in steady state the peak is not written at all.
        if now > self.1.load(Relaxed) {
            self.1.fetch_max(now, Relaxed);
        }
    }
    /// The highest value since the last call, which starts a new period.
    pub fn take_peak(&self) -> i64 {
        self.1.swap(self.get(), Relaxed).max(self.get())
    }
    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// A fixed-bucket latency histogram (buckets in [`DURATION_BUCKETS`]).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    #[inline]
    pub fn observe(&self, d: Duration) {
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

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Observations per bucket (not cumulative), then those over the last bound.
    pub fn buckets(&self) -> Vec<u64> {
        let mut out: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let counted: u64 = out.iter().sum();
        out.push(self.count().saturating_sub(counted));
        out
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines with `labels`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bucket, le) in self.buckets.iter().zip(DURATION_BUCKET_LABELS) {
            cumulative += bucket.load(Relaxed);
            sample(
                out,
                &[name, "_bucket"],
                &[labels, ",le=\"", le, "\""],
                cumulative,
            );
        }
        let count = self.count.load(Relaxed);
        sample(out, &[name, "_bucket"], &[labels, ",le=\"+Inf\""], count);
        let sum = Seconds(self.sum_nanos.load(Relaxed));
        sample(out, &[name, "_sum"], &[labels], sum);
        sample(out, &[name, "_count"], &[labels], count);
    }
}

/// Why skiff refused what a client sent before (or instead of) forwarding
/// it: the `protocol` and `reason` labels of
/// `skiff_client_protocol_errors_total`. A fixed set, so the series per
/// listener are bounded whatever clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
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
    const ALL: [ProtocolError; 11] = [
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
    pub fn of_status(http2: bool, status: u16) -> ProtocolError {
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
    fn labels(self) -> (&'static str, &'static str) {
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
pub struct ProtocolErrors([AtomicU64; ProtocolError::ALL.len()]);

impl ProtocolErrors {
    pub fn count(&self, e: ProtocolError) {
        self.0[e as usize].fetch_add(1, Relaxed);
    }

    pub fn get(&self, e: ProtocolError) -> u64 {
        self.0[e as usize].load(Relaxed)
    }
}

/// A `skiff_requests_total` row: its labels (`listener="…",cluster="…"`)
/// and its counters.
type RequestsRow = (Arc<str>, Arc<CodeCounters>);

/// Metrics that are not owned by a cluster or endpoint.
#[derive(Debug, Default)]
pub struct Registry {
    /// `skiff_requests_total` rows by (listener, cluster), each with its
    /// labels (`listener="…",cluster="…"`) written when it is made.
    requests: Mutex<BTreeMap<(String, String), RequestsRow>>,
    /// Requests that matched no route, by listener.
    unrouted: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    /// Open downstream connections by listener.
    connections: Mutex<BTreeMap<String, Arc<Gauge>>>,
    /// Connections closed at accept past `max_connections`, by listener.
    refused: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    /// What clients sent that skiff refused as a protocol error, by listener.
    protocol_errors: Mutex<BTreeMap<String, Arc<ProtocolErrors>>>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// TLS handshakes, errors and certificate reloads, by listener.
    pub tls: crate::tls::metrics::TlsMetrics,
}

impl Registry {
    /// The counter row for requests from `listener` routed to `cluster`;
    /// resolved when a route table is built, never per request.
    pub fn requests(&self, listener: &str, cluster: &str) -> Arc<CodeCounters> {
        let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
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

    pub fn unrouted(&self, listener: &str) -> Arc<AtomicU64> {
        let mut map = self.unrouted.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(listener.to_string()).or_default().clone()
    }

    pub fn connections(&self, listener: &str) -> Arc<Gauge> {
        let mut map = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(listener.to_string()).or_default().clone()
    }

    pub fn refused(&self, listener: &str) -> Arc<AtomicU64> {
        let mut map = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(listener.to_string()).or_default().clone()
    }

    pub fn protocol_errors(&self, listener: &str) -> Arc<ProtocolErrors> {
        let mut map = self
            .protocol_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(listener.to_string()).or_default().clone()
    }

    /// Open downstream connections over all listeners: (now, the most
    /// since the last call).
    pub fn connections_now_and_peak(&self) -> (i64, i64) {
        let map = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        map.values().fold((0, 0), |(now, peak), g| {
            (now + g.get(), peak + g.take_peak())
        })
    }

    /// Forgets rows for listener/cluster pairs no longer configured, so a
    /// reload that removes them also removes their series.
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool, keep_listener: impl Fn(&str) -> bool) {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(l, c), _| keep(l, c));
        self.unrouted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|l, _| keep_listener(l));
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|l, g| keep_listener(l) || g.get() > 0);
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|l, _| keep_listener(l));
        self.protocol_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|l, _| keep_listener(l));
    }

    /// Counts a config reload attempt.
    pub fn reload(&self, ok: bool) {
        if ok {
            self.reloads_ok.fetch_add(1, Relaxed);
        } else {
            self.reloads_failed.fetch_add(1, Relaxed);
        }
    }
}

/// Escapes a label value for the text format.
pub fn escape(value: &str) -> std::borrow::Cow<'_, str> {
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
pub fn label(key: &str, value: &str) -> String {
    format!("{key}=\"{}\"", escape(value))
}

/// A sample value as the text format writes it.
pub(crate) trait Value {
    fn write_to(self, out: &mut String);
}

macro_rules! integer_value {
    ($($t:ty),*) => {$(
        impl Value for $t {
            #[inline]
            fn write_to(self, out: &mut String) {
                out.push_str(itoa::Buffer::new().format(self));
            }
        }
    )*};
}
integer_value!(u64, i64, usize);

/// Whole nanoseconds written as decimal seconds, exactly: what `{}` of
/// `nanos as f64 / 1e9` writes, without the float or the formatter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seconds(pub u64);

impl Value for Seconds {
    fn write_to(self, out: &mut String) {
        const NANOS: u64 = 1_000_000_000;
        out.push_str(itoa::Buffer::new().format(self.0 / NANOS));
        let fraction = self.0 % NANOS;
        if fraction != 0 {
            // Nine digits with the leading zeros (1 + 10^9 keeps them),
            // less the trailing ones.
            let mut digits = itoa::Buffer::new();
            let digits = &digits.format(NANOS + fraction)[1..];
            out.push('.');
            out.push_str(digits.trim_end_matches('0'));
        }
    }
}

/// `# HELP` and `# TYPE` for the family `name`.
pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    for part in [
        "# HELP ",
        name,
        " ",
        help,
        "\n# TYPE ",
        name,
        " ",
        kind,
        "\n",
    ] {
        out.push_str(part);
    }
}

/// One sample line, `name{labels} value`: the name and the labels come in
/// pieces that are appended as they are (label values already escaped).
#[inline]
pub(crate) fn sample(out: &mut String, name: &[&str], labels: &[&str], value: impl Value) {
    for part in name {
        out.push_str(part);
    }
    if !labels.is_empty() {
        out.push('{');
        for part in labels {
            out.push_str(part);
        }
        out.push('}');
    }
    out.push(' ');
    value.write_to(out);
    out.push('\n');
}

/// A family with one series per cluster, labelled `cluster`.
fn per_cluster(
    out: &mut String,
    clusters: &[Arc<crate::cluster::Cluster>],
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&crate::cluster::Cluster) -> u64,
) {
    header(out, name, kind, help);
    for c in clusters {
        sample(out, &[name], &[&c.stats.metric_labels], value(c));
    }
}

/// The standard `process_*` families (as Prometheus' client libraries
/// export them), read from `/proc/self`.
fn render_process(out: &mut String) {
    // /proc reports times in USER_HZ, which Linux fixes at 100 for
    // userspace: one tick is 10 ms.
    const TICK_NANOS: u64 = 10_000_000;
    // Fields after the command name (which may hold spaces), from field 3.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        let name = "process_cpu_seconds_total";
        header(
            out,
            name,
            "counter",
            "User and system CPU time spent, in seconds.",
        );
        sample(out, &[name], &[], Seconds((utime + stime) * TICK_NANOS));
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    if let Some(rss) = kib("VmRSS:") {
        let name = "process_resident_memory_bytes";
        header(out, name, "gauge", "Resident memory size, in bytes.");
        sample(out, &[name], &[], rss * 1024);
    }
    if let Some(vsize) = field(23) {
        let name = "process_virtual_memory_bytes";
        header(out, name, "gauge", "Virtual memory size, in bytes.");
        sample(out, &[name], &[], vsize);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let name = "process_open_fds";
        header(out, name, "gauge", "Open file descriptors.");
        sample(out, &[name], &[], fds.count());
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let max_fds = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(max) = max_fds {
        let name = "process_max_fds";
        header(out, name, "gauge", "Limit of open file descriptors.");
        sample(out, &[name], &[], max);
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    if let (Some(boot), Some(start)) = (boot, field(22)) {
        let name = "process_start_time_seconds";
        header(
            out,
            name,
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
        );
        let nanos = boot * 1_000_000_000 + start * TICK_NANOS;
        sample(out, &[name], &[], Seconds(nanos));
    }
}

/// Renders every metric family in the Prometheus text format (0.0.4).
pub fn render(registry: &Registry, clusters: &[Arc<crate::cluster::Cluster>]) -> String {
    let mut out = String::new();
    render_into(&mut out, registry, clusters);
    out
}

/// Appends every metric family to `out`: a caller that keeps `out` between
/// scrapes (cleared) keeps its capacity, and a scrape then allocates
/// nothing for the text.
pub fn render_into(
    out: &mut String,
    registry: &Registry,
    clusters: &[Arc<crate::cluster::Cluster>],
) {
    // Roughly what 1 cluster with 10 endpoints takes, for the first scrape.
    out.reserve(4096 + clusters.len() * 2048);
    render_process(out);

    let name = "skiff_requests_total";
    header(
        out,
        name,
        "counter",
        "Requests answered, by listener, cluster and status class.",
    );
    // Copied out, so that a slow render (it runs at the lowest priority)
    // never holds the lock a route table build takes.
    let rows: Vec<RequestsRow> = registry
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    for (labels, counters) in &rows {
        for (i, class) in CODE_CLASSES.iter().enumerate() {
            let n = counters.get(i);
            if n > 0 {
                sample(out, &[name], &[labels, ",code_class=\"", class, "\""], n);
            }
        }
    }

    let name = "skiff_unrouted_requests_total";
    header(
        out,
        name,
        "counter",
        "Requests that matched no route (answered 404), by listener.",
    );
    for (listener, n) in registry
        .unrouted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let labels = ["listener=\"", &escape(listener), "\""];
        sample(out, &[name], &labels, n.load(Relaxed));
    }

    let name = "skiff_connections_active";
    header(
        out,
        name,
        "gauge",
        "Open downstream connections, by listener.",
    );
    for (listener, g) in registry
        .connections
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        sample(
            out,
            &[name],
            &["listener=\"", &escape(listener), "\""],
            g.get(),
        );
    }

    let name = "skiff_request_duration_seconds";
    header(
        out,
        "skiff_connections_refused_total",
        "counter",
        "Connections closed as soon as accepted, by listener and reason \
         (limit: the listener's max_connections were open).",
    );
    for (listener, n) in registry
        .refused
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let labels = ["listener=\"", &escape(listener), "\",reason=\"limit\""];
        sample(
            out,
            &["skiff_connections_refused_total"],
            &labels,
            n.load(Relaxed),
        );
    }

    let errors = "skiff_client_protocol_errors_total";
    header(
        out,
        errors,
        "counter",
        "What clients sent that skiff refused as a protocol error, by listener, \
         protocol (http1, http2) and reason.",
    );
    for (listener, counts) in registry
        .protocol_errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let listener = escape(listener);
        for e in ProtocolError::ALL {
            // Every reason, zeros too: an alert on `increase()` needs the
            // series before the first error.
            let (protocol, reason) = e.labels();
            let labels = [
                "listener=\"",
                &listener,
                "\",protocol=\"",
                protocol,
                "\",reason=\"",
                reason,
                "\"",
            ];
            sample(out, &[errors], &labels, counts.get(e));
        }
    }

    header(
        out,
        name,
        "histogram",
        "Time from request received to response body end, by cluster.",
    );
    for c in clusters {
        c.stats.duration.render(out, name, &c.stats.metric_labels);
    }

    per_cluster(
        out,
        clusters,
        "skiff_requests_in_flight",
        "gauge",
        "Requests sent upstream whose response has not ended, by cluster.",
        |c| c.stats.active.load(Relaxed) as u64,
    );

    let name = "skiff_endpoint_requests_total";
    header(
        out,
        name,
        "counter",
        "Requests per endpoint by status class; series leave with the endpoint.",
    );
    for c in clusters {
        c.for_each_endpoint_for_display(|ep| {
            for (i, class) in CODE_CLASSES.iter().enumerate() {
                let n = ep.requests.get(i);
                if n > 0 {
                    let labels = [&*ep.metric_labels, ",code_class=\"", class, "\""];
                    sample(out, &[name], &labels, n);
                }
            }
        });
    }

    let name = "skiff_endpoints";
    header(out, name, "gauge", "Endpoints per cluster by state.");
    for c in clusters {
        let counts = c.endpoint_counts();
        for (state, n) in [
            ("healthy", counts.healthy),
            ("unhealthy", counts.unhealthy),
            ("ejected", counts.ejected),
            ("draining", counts.draining),
        ] {
            let labels = [&*c.stats.metric_labels, ",state=\"", state, "\""];
            sample(out, &[name], &labels, n);
        }
    }

    let name = "skiff_health_checks_total";
    header(
        out,
        name,
        "counter",
        "Active health checks by cluster and result (passed, failed: unexpected status, timeout, error).",
    );
    for c in clusters {
        for (result, n) in c.stats.health_checks.iter() {
            let labels = [&*c.stats.metric_labels, ",result=\"", result, "\""];
            sample(out, &[name], &labels, n);
        }
    }

    per_cluster(
        out,
        clusters,
        "skiff_discovery_updates_total",
        "counter",
        "Endpoint set updates applied, by cluster.",
        |c| c.stats.discovery_updates.load(Relaxed),
    );

    per_cluster(
        out,
        clusters,
        "skiff_discovery_errors_total",
        "counter",
        "Discovery source failures (API server unreachable, unreadable file), by cluster; \
         the last known endpoints stay.",
        |c| c.stats.discovery_errors.load(Relaxed),
    );

    let name = "skiff_upstream_errors_total";
    header(
        out,
        name,
        "counter",
        "Upstream failures answered locally, by cluster and kind.",
    );
    for c in clusters {
        for (kind, n) in c.stats.errors.iter() {
            let labels = [&*c.stats.metric_labels, ",kind=\"", kind, "\""];
            sample(out, &[name], &labels, n);
        }
    }

    per_cluster(
        out,
        clusters,
        "skiff_overflow_total",
        "counter",
        "Requests refused by the circuit breaker (max_requests or max_pending), by cluster.",
        |c| c.stats.overflow.load(Relaxed),
    );

    per_cluster(
        out,
        clusters,
        "skiff_ejections_total",
        "counter",
        "Endpoints ejected by outlier detection, by cluster.",
        |c| c.stats.ejections.load(Relaxed),
    );

    per_cluster(
        out,
        clusters,
        "skiff_panic_total",
        "counter",
        "Requests balanced over all endpoints because too few took traffic (panic mode), by cluster.",
        |c| c.stats.panic.load(Relaxed),
    );

    per_cluster(
        out,
        clusters,
        "skiff_retries_total",
        "counter",
        "Tries after the first, by cluster (each within the retry budget).",
        |c| c.stats.retries.load(Relaxed),
    );

    let name = "skiff_config_reloads_total";
    header(out, name, "counter", "Config reload attempts by result.");
    let ok = registry.reloads_ok.load(Relaxed);
    sample(out, &[name], &["result=\"success\""], ok);
    let failed = registry.reloads_failed.load(Relaxed);
    sample(out, &[name], &["result=\"failure\""], failed);
    registry.tls.render(out);
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
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x", "cluster=\"a\"");
        assert!(
            out.contains("x_bucket{cluster=\"a\",le=\"0.0005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{cluster=\"a\",le=\"0.005\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{cluster=\"a\",le=\"30\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{cluster=\"a\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_count{cluster=\"a\"} 3\n"), "{out}");
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
    fn seconds_are_written_as_the_float_would_be() {
        for nanos in [
            0,
            1,
            10,
            999_999_999,
            1_000_000_000,
            1_500_000_000,
            2_000_000_001,
            123_456_789_012,
            1_764_262_800_570_000_000,
        ] {
            let mut out = String::new();
            Seconds(nanos).write_to(&mut out);
            assert_eq!(out, (nanos as f64 / 1e9).to_string(), "{nanos} ns");
        }
    }

    #[test]
    fn samples_join_their_pieces() {
        let mut out = String::new();
        sample(&mut out, &["x", "_count"], &["a=\"1\"", ",b=\"2\""], 42u64);
        sample(&mut out, &["y"], &[], -3i64);
        assert_eq!(out, "x_count{a=\"1\",b=\"2\"} 42\ny -3\n");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\n"), "a\\\"b\\\\c\\n");
        assert_eq!(escape("plain"), "plain");
    }
}
