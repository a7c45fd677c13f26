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

use std::collections::BTreeMap;
use std::fmt::Write as _;
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
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Metrics that are not owned by a cluster or endpoint.
#[derive(Debug, Default)]
pub struct Registry {
    /// `skiff_requests_total` rows by (listener, cluster).
    requests: Mutex<BTreeMap<(String, String), Arc<CodeCounters>>>,
    /// Requests that matched no route, by listener.
    unrouted: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    /// Open downstream connections by listener.
    connections: Mutex<BTreeMap<String, Arc<Gauge>>>,
    /// Connections closed at accept past `max_connections`, by listener.
    refused: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
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
        map.entry((listener.to_string(), cluster.to_string()))
            .or_default()
            .clone()
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

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
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
        let _ = writeln!(
            out,
            "{name}{{cluster=\"{}\"}} {}",
            escape(&c.name),
            value(c)
        );
    }
}

/// The standard `process_*` families (as Prometheus' client libraries
/// export them), read from `/proc/self`.
fn render_process(out: &mut String) {
    // /proc reports times in USER_HZ, which Linux fixes at 100 for userspace.
    const TICKS: f64 = 100.0;
    // Fields after the command name (which may hold spaces), from field 3.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        header(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
        );
        let _ = writeln!(
            out,
            "process_cpu_seconds_total {}",
            (utime + stime) as f64 / TICKS
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    if let Some(rss) = kib("VmRSS:") {
        header(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size, in bytes.",
        );
        let _ = writeln!(out, "process_resident_memory_bytes {}", rss * 1024);
    }
    if let Some(vsize) = field(23) {
        header(
            out,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size, in bytes.",
        );
        let _ = writeln!(out, "process_virtual_memory_bytes {vsize}");
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        header(out, "process_open_fds", "gauge", "Open file descriptors.");
        let _ = writeln!(out, "process_open_fds {}", fds.count());
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let max_fds = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(max) = max_fds {
        header(
            out,
            "process_max_fds",
            "gauge",
            "Limit of open file descriptors.",
        );
        let _ = writeln!(out, "process_max_fds {max}");
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    if let (Some(boot), Some(start)) = (boot, field(22)) {
        header(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
        );
        let _ = writeln!(
            out,
            "process_start_time_seconds {}",
            boot as f64 + start as f64 / TICKS
        );
    }
}

/// Renders every metric family in the Prometheus text format (0.0.4).
pub fn render(registry: &Registry, clusters: &[Arc<crate::cluster::Cluster>]) -> String {
    let mut out = String::with_capacity(4096 + clusters.len() * 2048);
    render_process(&mut out);

    header(
        &mut out,
        "skiff_requests_total",
        "counter",
        "Requests answered, by listener, cluster and status class.",
    );
    for ((listener, cluster), counters) in registry
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        for (i, class) in CODE_CLASSES.iter().enumerate() {
            let n = counters.get(i);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "skiff_requests_total{{listener=\"{}\",cluster=\"{}\",code_class=\"{class}\"}} {n}",
                    escape(listener),
                    escape(cluster)
                );
            }
        }
    }

    header(
        &mut out,
        "skiff_unrouted_requests_total",
        "counter",
        "Requests that matched no route (answered 404), by listener.",
    );
    for (listener, n) in registry
        .unrouted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let _ = writeln!(
            out,
            "skiff_unrouted_requests_total{{listener=\"{}\"}} {}",
            escape(listener),
            n.load(Relaxed)
        );
    }

    header(
        &mut out,
        "skiff_connections_active",
        "gauge",
        "Open downstream connections, by listener.",
    );
    for (listener, g) in registry
        .connections
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let _ = writeln!(
            out,
            "skiff_connections_active{{listener=\"{}\"}} {}",
            escape(listener),
            g.get()
        );
    }

    header(
        &mut out,
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
        let _ = writeln!(
            out,
            "skiff_connections_refused_total{{listener=\"{}\",reason=\"limit\"}} {}",
            escape(listener),
            n.load(Relaxed)
        );
    }

    header(
        &mut out,
        "skiff_request_duration_seconds",
        "histogram",
        "Time from request received to response body end, by cluster.",
    );
    for c in clusters {
        c.stats.duration.render(
            &mut out,
            "skiff_request_duration_seconds",
            &format!("cluster=\"{}\"", escape(&c.name)),
        );
    }

    per_cluster(
        &mut out,
        clusters,
        "skiff_requests_in_flight",
        "gauge",
        "Requests sent upstream whose response has not ended, by cluster.",
        |c| c.stats.active.load(Relaxed) as u64,
    );

    header(
        &mut out,
        "skiff_endpoint_requests_total",
        "counter",
        "Requests per endpoint by status class; series leave with the endpoint.",
    );
    for c in clusters {
        for ep in c.endpoints_for_display() {
            for (i, class) in CODE_CLASSES.iter().enumerate() {
                let n = ep.requests.get(i);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "skiff_endpoint_requests_total{{cluster=\"{}\",endpoint=\"{}\",code_class=\"{class}\"}} {n}",
                        escape(&c.name),
                        ep.address
                    );
                }
            }
        }
    }

    header(
        &mut out,
        "skiff_endpoints",
        "gauge",
        "Endpoints per cluster by state.",
    );
    for c in clusters {
        let counts = c.endpoint_counts();
        let name = escape(&c.name);
        for (state, n) in [
            ("healthy", counts.healthy),
            ("unhealthy", counts.unhealthy),
            ("ejected", counts.ejected),
            ("draining", counts.draining),
        ] {
            let _ = writeln!(
                out,
                "skiff_endpoints{{cluster=\"{name}\",state=\"{state}\"}} {n}"
            );
        }
    }

    header(
        &mut out,
        "skiff_health_checks_total",
        "counter",
        "Active health checks by cluster and result (passed, failed: unexpected status, timeout, error).",
    );
    for c in clusters {
        for (result, n) in c.stats.health_checks.iter() {
            let _ = writeln!(
                out,
                "skiff_health_checks_total{{cluster=\"{}\",result=\"{result}\"}} {n}",
                escape(&c.name)
            );
        }
    }

    per_cluster(
        &mut out,
        clusters,
        "skiff_discovery_updates_total",
        "counter",
        "Endpoint set updates applied, by cluster.",
        |c| c.stats.discovery_updates.load(Relaxed),
    );

    per_cluster(
        &mut out,
        clusters,
        "skiff_discovery_errors_total",
        "counter",
        "Discovery source failures (API server unreachable, unreadable file), by cluster; \
         the last known endpoints stay.",
        |c| c.stats.discovery_errors.load(Relaxed),
    );

    header(
        &mut out,
        "skiff_upstream_errors_total",
        "counter",
        "Upstream failures answered locally, by cluster and kind.",
    );
    for c in clusters {
        for (kind, n) in c.stats.errors.iter() {
            let _ = writeln!(
                out,
                "skiff_upstream_errors_total{{cluster=\"{}\",kind=\"{kind}\"}} {n}",
                escape(&c.name)
            );
        }
    }

    per_cluster(
        &mut out,
        clusters,
        "skiff_overflow_total",
        "counter",
        "Requests refused by the circuit breaker (max_requests or max_pending), by cluster.",
        |c| c.stats.overflow.load(Relaxed),
    );

    per_cluster(
        &mut out,
        clusters,
        "skiff_ejections_total",
        "counter",
        "Endpoints ejected by outlier detection, by cluster.",
        |c| c.stats.ejections.load(Relaxed),
    );

    per_cluster(
        &mut out,
        clusters,
        "skiff_panic_total",
        "counter",
        "Requests balanced over all endpoints because too few took traffic (panic mode), by cluster.",
        |c| c.stats.panic.load(Relaxed),
    );

    per_cluster(
        &mut out,
        clusters,
        "skiff_retries_total",
        "counter",
        "Tries after the first, by cluster (each within the retry budget).",
        |c| c.stats.retries.load(Relaxed),
    );

    header(
        &mut out,
        "skiff_config_reloads_total",
        "counter",
        "Config reload attempts by result.",
    );
    let _ = writeln!(
        out,
        "skiff_config_reloads_total{{result=\"success\"}} {}",
        registry.reloads_ok.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "skiff_config_reloads_total{{result=\"failure\"}} {}",
        registry.reloads_failed.load(Relaxed)
    );
    registry.tls.render(&mut out);
    out
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
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\n"), "a\\\"b\\\\c\\n");
        assert_eq!(escape("plain"), "plain");
    }
}
