//! The Prometheus text exposition (0.0.4) of skiff's metrics, as the
//! admin server's `/metrics` writes it.
//!
//! A scrape of 100 clusters × 10 endpoints writes about 4,000 lines, so the
//! text is written with copies and integer formatting only: each series'
//! labels are escaped and joined once, when its handle is made
//! ([`crate::metrics::label`]), and a scrape appends `name{labels} value`
//! from those pieces (issue 8).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::cluster::Cluster;
use crate::metrics::tls::{Failure, TlsMetrics, TlsStats};
use crate::metrics::{
    escape, Histogram, ProtocolError, Registry, RequestsRow, CODE_CLASSES, DURATION_BUCKET_LABELS,
};

/// A sample value as the text format writes it.
trait Value {
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
struct Seconds(pub u64);

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
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
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
fn sample(out: &mut String, name: &[&str], labels: &[&str], value: impl Value) {
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
    clusters: &[Arc<Cluster>],
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&Cluster) -> u64,
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
pub fn render(registry: &Registry, clusters: &[Arc<Cluster>]) -> String {
    let mut out = String::new();
    render_into(&mut out, registry, clusters);
    out
}

/// Appends every metric family to `out`: a caller that keeps `out` between
/// scrapes (cleared) keeps its capacity, and a scrape then allocates
/// nothing for the text.
pub fn render_into(out: &mut String, registry: &Registry, clusters: &[Arc<Cluster>]) {
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
    let rows: Vec<RequestsRow> = registry.requests.lock().values().cloned().collect();
    for (labels, counters) in &rows {
        for (i, class) in CODE_CLASSES.iter().enumerate() {
            let n = counters.get(i);
            if n > 0 {
                sample(out, &[name], &[labels, ",code_class=\"", class, "\""], n);
            }
        }
    }

    let name = "skiff_route_requests_total";
    header(
        out,
        name,
        "counter",
        "Requests answered, by listener, named route (a config route's name, or HTTPRoute/NS/NAME/rule/N) and status class.",
    );
    let rows: Vec<RequestsRow> = registry.route_requests.lock().values().cloned().collect();
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
    for (listener, n) in registry.unrouted.lock().iter() {
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
    for (listener, g) in registry.connections.lock().iter() {
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
    for (listener, n) in registry.refused.lock().iter() {
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
    for (listener, counts) in registry.protocol_errors.lock().iter() {
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
        histogram(out, &c.stats.duration, name, &c.stats.metric_labels);
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
    render_tls(out, &registry.tls);
}

/// Writes a histogram's `_bucket`, `_sum` and `_count` lines with `labels`.
fn histogram(out: &mut String, h: &Histogram, name: &str, labels: &str) {
    for (cumulative, le) in h.cumulative().zip(DURATION_BUCKET_LABELS) {
        sample(
            out,
            &[name, "_bucket"],
            &[labels, ",le=\"", le, "\""],
            cumulative,
        );
    }
    let count = h.count();
    sample(out, &[name, "_bucket"], &[labels, ",le=\"+Inf\""], count);
    sample(out, &[name, "_sum"], &[labels], Seconds(h.sum_nanos()));
    sample(out, &[name, "_count"], &[labels], count);
}

/// Appends the TLS families.
fn render_tls(out: &mut String, tls: &TlsMetrics) {
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
    for (name, help, rows) in families {
        header(out, name, "counter", help);
        tls.for_each(|listener, stats| {
            rows(out, name, &["listener=\"", &escape(listener), "\""], stats);
        });
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
    tls.for_each(|listener, stats| {
        let expires = stats.expires.load(Relaxed);
        if expires > 0 {
            sample(
                out,
                &[name],
                &["listener=\"", &escape(listener), "\""],
                expires,
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        histogram(&mut out, &h, "x", "cluster=\"a\"");
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
}
