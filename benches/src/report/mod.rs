//! Results for people and for programs: a terminal table with one row per
//! target, JSON with every figure and the percentile curve, and an SVG chart
//! of all the targets' percentile curves ([`svg`]).

mod svg;

use std::time::Duration;

use serde_json::{json, Value};

use crate::load::LoadResult;

pub use svg::{svg, SvgError};

/// The percentiles every report shows, as (heading, percentile).
pub const PERCENTILES: [(&str, f64); 4] =
    [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)];

/// A table with one row per result, columns aligned, ending in a newline.
pub fn table(results: &[LoadResult]) -> String {
    let mut header: Vec<String> = ["target", "load", "requests", "req/s", "non-2xx", "failed"]
        .map(String::from)
        .to_vec();
    header.extend(PERCENTILES.iter().map(|(name, _)| name.to_string()));
    header.extend(["max", "mean", "received"].map(String::from));

    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let mut row = vec![
                r.label.clone(),
                load_shape(r),
                r.requests.to_string(),
                format!("{:.1}", r.requests_per_second()),
                r.status_errors.to_string(),
                r.transport_errors.to_string(),
            ];
            row.extend(PERCENTILES.iter().map(|(_, p)| latency(r.percentile(*p))));
            row.extend([latency(r.max()), latency(r.mean()), bytes(r.bytes_received)]);
            row
        })
        .collect();

    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(column, (cell, width))| {
                // Names read left-aligned, numbers right-aligned.
                if column < 2 {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Every result as a JSON object, in an array.
pub fn json(results: &[LoadResult]) -> Value {
    Value::Array(results.iter().map(result_json).collect())
}

fn result_json(r: &LoadResult) -> Value {
    let spec = &r.spec;
    let mut latency_us = serde_json::Map::new();
    for (name, p) in PERCENTILES {
        latency_us.insert(name.replace('.', "_"), micros(r.percentile(p)).into());
    }
    latency_us.insert("max".into(), micros(r.max()).into());
    latency_us.insert("mean".into(), (r.mean().as_nanos() as f64 / 1e3).into());
    let curve: Vec<Value> = r
        .curve()
        .iter()
        .map(|point| json!({ "percentile": point.percentile, "latency_us": point.latency_us }))
        .collect();
    json!({
        "label": r.label,
        "spec": {
            "url": spec.url.to_string(),
            "protocol": spec.protocol.name(),
            "method": spec.method.as_str(),
            "connections": spec.connections,
            "streams": spec.streams,
            "duration_s": spec.duration.as_secs_f64(),
            "warmup_s": spec.warmup.as_secs_f64(),
            "rate": spec.rate,
            "timeout_s": spec.timeout.as_secs_f64(),
        },
        "requests": r.requests,
        "errors": r.errors(),
        "status_errors": r.status_errors,
        "transport_errors": r.transport_errors,
        "first_transport_error": r.first_transport_error,
        "elapsed_s": r.elapsed.as_secs_f64(),
        "requests_per_second": r.requests_per_second(),
        "bytes_received": r.bytes_received,
        "latency_us": latency_us,
        "curve": curve,
    })
}

/// "h2 4c×100 @5000/s": protocol, connections, streams and rate in brief.
fn load_shape(r: &LoadResult) -> String {
    let spec = &r.spec;
    let mut shape = format!("{} {}c", spec.protocol.name(), spec.connections);
    if spec.streams > 1 {
        shape.push_str(&format!("×{}", spec.streams));
    }
    if let Some(rate) = spec.rate {
        shape.push_str(&format!(" @{rate}/s"));
    }
    shape
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A latency in the unit that keeps three or four digits: 412µs, 1.25ms, 2.50s.
pub fn latency(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

/// A byte count in binary units: 512 B, 1.5 KiB, 12.0 MiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::load::{Latencies, LoadSpec, Protocol};

    /// A result as if a run had recorded `latencies_us`, without a network.
    pub(crate) fn result(label: &str, latencies_us: impl IntoIterator<Item = u64>) -> LoadResult {
        let mut latencies = Latencies::new();
        for us in latencies_us {
            latencies.record(Duration::from_micros(us));
        }
        let mut spec = LoadSpec::new("http://127.0.0.1:8080/".parse().expect("URL"), Protocol::H2);
        spec.label = label.into();
        spec.streams = 10;
        LoadResult {
            label: label.into(),
            spec,
            requests: latencies.count(),
            status_errors: 2,
            transport_errors: 1,
            first_transport_error: Some("connection reset".into()),
            bytes_received: 3 * 1024 * 1024,
            elapsed: Duration::from_secs(2),
            latencies,
        }
    }

    #[test]
    fn table_has_a_header_and_one_aligned_row_per_target() {
        let table = table(&[result("direct", 1..=1000), result("via skiff", 100..=2000)]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("target"));
        assert!(lines[1].starts_with("direct "));
        assert!(lines[2].starts_with("via skiff"));
        assert!(lines[1].contains("h2 10c×10"), "{table}");
        assert!(lines[1].contains("500.0"), "req/s: {table}");
        assert!(lines[1].contains("990µs"), "p99: {table}");
        assert!(lines[2].contains("2.00ms"), "max: {table}");
        assert!(lines[1].contains("3.0 MiB"), "{table}");
        // Right-aligned columns end at the same place on every line.
        let end_of = |line: &str, word: &str| line.find(word).map(|i| i + word.len());
        assert_eq!(end_of(lines[0], "received"), Some(lines[1].chars().count()));
    }

    #[test]
    fn json_has_every_figure_and_the_curve() {
        let value = json(&[result("direct", 1..=1000)]);
        let first = &value[0];
        assert_eq!(first["label"], "direct");
        assert_eq!(first["spec"]["protocol"], "h2");
        assert_eq!(first["spec"]["streams"], 10);
        assert_eq!(first["requests"], 1000);
        assert_eq!(first["errors"], 3);
        assert_eq!(first["status_errors"], 2);
        assert_eq!(first["transport_errors"], 1);
        assert_eq!(first["requests_per_second"], 500.0);
        assert_eq!(first["latency_us"]["p50"], 500);
        assert_eq!(first["latency_us"]["p99"], 990);
        assert_eq!(first["latency_us"]["max"], 1000);
        assert_eq!(first["latency_us"]["mean"], 500.5);
        let curve = first["curve"].as_array().expect("curve");
        assert_eq!(curve.last().expect("point")["percentile"], 100.0);
        assert_eq!(curve.last().expect("point")["latency_us"], 1000);
    }

    #[test]
    fn units_are_chosen_to_stay_readable() {
        assert_eq!(latency(Duration::from_micros(412)), "412µs");
        assert_eq!(latency(Duration::from_micros(1250)), "1.25ms");
        assert_eq!(latency(Duration::from_millis(2500)), "2.50s");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12 * 1024 * 1024), "12.0 MiB");
    }
}
