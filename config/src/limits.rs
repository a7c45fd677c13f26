//! Limits on what clients may send and hold: a listener's `limits:` block
//! and a route's `max_request_body`, with their defaults and how they are
//! read.
//!
//! ```yaml
//! listeners:
//!   - name: web
//!     limits:
//!       max_header_bytes: 64KiB        # request line + fields; HTTP/2 header list
//!       max_headers: 100               # header fields per request
//!       request_head_timeout: 30s      # first byte to end of head (slowloris): 408
//!       idle_timeout: 1h               # keep-alive connection with no request
//!       max_connections: 10000         # past it new connections are closed at once
//!       http2: { max_concurrent_streams: 200, max_pending_accept_reset_streams: 20,
//!                max_local_error_reset_streams: 1024 }
//!     routes:
//!       - match: { path_prefix: /upload }
//!         cluster: files
//!         max_request_body: 10MiB      # 413 past it
//! ```
//!
//! Defaults are what skiff did before they were configurable, which are
//! Envoy's, hyper's and h2's (each named below). A listener's limits are
//! read once per connection when it is accepted, so the request path pays
//! nothing for them; a reload applies them to connections accepted after
//! it. A route's body limit is resolved with its route table.

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Serialize;

use crate::read;
use crate::units::{ser_duration, ser_size};
use crate::yaml::{Diagnostics, MapReader, Node};

/// Largest request head, request line and fields (skiff's since the
/// start; Envoy's `max_request_headers_kb` is 60 KiB).
pub const DEFAULT_MAX_HEADER_BYTES: u32 = 64 * 1024;
/// Header fields per request (Envoy's `max_headers_count`, hyper's).
pub const DEFAULT_MAX_HEADERS: u32 = 100;
/// From a request's first byte to the end of its head (hyper's header
/// read timeout). Slow heads are a slowloris attack: 408, close.
pub const DEFAULT_REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// An idle keep-alive client connection (Envoy's `idle_timeout`): longer
/// than clients' pool timeouts, so they close first and never reuse a
/// connection skiff is closing.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// HTTP/2 streams a client may have open at once (hyper's default).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 200;
/// HTTP/2 streams reset by the client before skiff accepted them, past
/// which the connection gets GOAWAY (h2's default; rapid reset, CVE-2023-44487).
pub const DEFAULT_MAX_PENDING_ACCEPT_RESET_STREAMS: u32 = 20;
/// HTTP/2 streams skiff reset for the client's protocol errors, past which
/// the connection gets GOAWAY (hyper's default; RUSTSEC-2024-0003).
pub const DEFAULT_MAX_LOCAL_ERROR_RESET_STREAMS: u32 = 1024;

/// Smallest and largest `max_header_bytes` accepted (Envoy's upper bound).
const HEADER_BYTES_RANGE: RangeInclusive<u64> = 1024..=8 * 1024 * 1024;
/// Largest `max_headers` accepted.
pub const MAX_HEADERS_ACCEPTED: usize = 10_000;
/// Largest `max_connections` accepted (a file descriptor each).
const MAX_MAX_CONNECTIONS: u64 = 1 << 24;
/// Largest `max_request_body` accepted (1 TiB: "no limit" is leaving it out).
const MAX_BODY_LIMIT: u64 = 1 << 40;
/// The shortest limit on time a listener accepts.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// What a listener allows its clients. Envoy's semantics, by its names
/// where it has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ListenerLimits {
    /// Largest request head: request line and fields in HTTP/1 (`431`),
    /// `SETTINGS_MAX_HEADER_LIST_SIZE` in HTTP/2 (`431` too).
    #[serde(serialize_with = "ser_size")]
    pub max_header_bytes: u32,
    /// Header fields per request (`431`).
    pub max_headers: u32,
    /// From a request's first byte to the end of its head (`408`, close).
    #[serde(serialize_with = "ser_duration")]
    pub request_head_timeout: Duration,
    /// A keep-alive connection waiting for its next request is closed after this.
    #[serde(serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    /// Open connections; past it a new one is closed at once and counted.
    /// None: no cap but the process's file descriptors.
    pub max_connections: Option<u32>,
    pub http2: Http2Limits,
}

/// HTTP/2 settings that bound what one client connection can make skiff do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Http2Limits {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`: streams past it are refused.
    pub max_concurrent_streams: u32,
    /// Streams the client opened and reset before skiff accepted them.
    pub max_pending_accept_reset_streams: u32,
    /// Streams skiff reset because of the client's errors.
    pub max_local_error_reset_streams: u32,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Http2Limits {
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_pending_accept_reset_streams: DEFAULT_MAX_PENDING_ACCEPT_RESET_STREAMS,
            max_local_error_reset_streams: DEFAULT_MAX_LOCAL_ERROR_RESET_STREAMS,
        }
    }
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            request_head_timeout: DEFAULT_REQUEST_HEAD_TIMEOUT,
            idle_timeout: DEFAULT_CLIENT_IDLE_TIMEOUT,
            max_connections: None,
            http2: Http2Limits::default(),
        }
    }
}

/// The fields of a listener's `limits:`.
const LIMIT_FIELDS: &[&str] = &[
    "max_header_bytes",
    "max_headers",
    "request_head_timeout",
    "idle_timeout",
    "max_connections",
    "http2",
];

/// Reads a listener's `limits:` block; absent fields keep their defaults.
pub(crate) fn read_listener_limits(
    node: &Node,
    path: &str,
    diags: &mut Diagnostics,
) -> Option<ListenerLimits> {
    let mut map = MapReader::new(node, path, diags)?;
    let defaults = ListenerLimits::default();
    let header_bytes_path = map.path_of("max_header_bytes");
    let max_header_bytes = match map.optional("max_header_bytes") {
        Some(n) => read::size(n, &header_bytes_path, HEADER_BYTES_RANGE, diags).map(|n| n as u32),
        None => Some(defaults.max_header_bytes),
    };
    let max_headers = map.uint_or(
        "max_headers",
        1..=MAX_HEADERS_ACCEPTED as u64,
        defaults.max_headers,
        diags,
    );
    let request_head_timeout = map.duration_at_least(
        "request_head_timeout",
        MIN_TIMEOUT,
        defaults.request_head_timeout,
        diags,
    );
    let idle_timeout =
        map.duration_at_least("idle_timeout", MIN_TIMEOUT, defaults.idle_timeout, diags);
    let connections_path = map.path_of("max_connections");
    let max_connections = match map.optional("max_connections") {
        Some(n) => {
            read::uint(n, &connections_path, 1..=MAX_MAX_CONNECTIONS, diags).map(|n| Some(n as u32))
        }
        None => Some(None),
    };
    let http2_path = map.path_of("http2");
    let http2 = match map.optional("http2") {
        Some(n) => read_http2_limits(n, &http2_path, diags),
        None => Some(defaults.http2),
    };
    map.finish(diags, LIMIT_FIELDS);
    Some(ListenerLimits {
        max_header_bytes: max_header_bytes?,
        max_headers: max_headers?,
        request_head_timeout: request_head_timeout?,
        idle_timeout: idle_timeout?,
        max_connections: max_connections?,
        http2: http2?,
    })
}

fn read_http2_limits(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<Http2Limits> {
    let mut map = MapReader::new(node, path, diags)?;
    let defaults = Http2Limits::default();
    // RFC 9113 §6.5.2: the largest stream count is 2^31 - 1.
    let max_concurrent_streams = map.uint_or(
        "max_concurrent_streams",
        1..=(1 << 31) - 1,
        defaults.max_concurrent_streams,
        diags,
    );
    let max_pending_accept_reset_streams = map.uint_or(
        "max_pending_accept_reset_streams",
        1..=1_000_000,
        defaults.max_pending_accept_reset_streams,
        diags,
    );
    let max_local_error_reset_streams = map.uint_or(
        "max_local_error_reset_streams",
        1..=1_000_000,
        defaults.max_local_error_reset_streams,
        diags,
    );
    map.finish(
        diags,
        &[
            "max_concurrent_streams",
            "max_pending_accept_reset_streams",
            "max_local_error_reset_streams",
        ],
    );
    Some(Http2Limits {
        max_concurrent_streams: max_concurrent_streams?,
        max_pending_accept_reset_streams: max_pending_accept_reset_streams?,
        max_local_error_reset_streams: max_local_error_reset_streams?,
    })
}

/// Reads a route's `max_request_body`.
pub(crate) fn read_max_request_body(
    node: &Node,
    path: &str,
    diags: &mut Diagnostics,
) -> Option<u64> {
    read::size(node, path, 0..=MAX_BODY_LIMIT, diags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::{format_size, parse_size};
    use std::path::Path;

    fn parse(text: &str) -> Result<crate::Config, String> {
        crate::Config::parse(text, "skiff.yaml", Path::new("/etc/skiff")).map_err(|d| d.to_string())
    }

    const BASE: &str = "listeners:\n  - name: web\n    listen: 127.0.0.1:8080\n    routes:\n      - cluster: a\nclusters:\n  - name: a\n    endpoints: [127.0.0.1:1]\n";

    fn with_limits(limits: &str) -> String {
        BASE.replace(
            "    routes:\n",
            &format!("    limits: {limits}\n    routes:\n"),
        )
    }

    #[test]
    fn sizes_read_in_bytes_and_binary_units() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("10 MiB"), Ok(10 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        for bad in [
            "",
            "KiB",
            "1.5MiB",
            "10MB",
            "-1",
            "64 kib",
            "99999999999999GiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_size(64 * 1024), "64KiB");
        assert_eq!(format_size(10 << 20), "10MiB");
        assert_eq!(format_size(1000), "1000");
    }

    #[test]
    fn listener_limits_default_to_what_skiff_did_before() {
        let config = parse(BASE).unwrap();
        let limits = config.listeners[0].limits;
        assert_eq!(limits, ListenerLimits::default());
        assert_eq!(limits.max_header_bytes, 64 * 1024);
        assert_eq!(limits.max_headers, 100);
        assert_eq!(limits.request_head_timeout, Duration::from_secs(30));
        assert_eq!(limits.idle_timeout, Duration::from_secs(3600));
        assert_eq!(limits.max_connections, None);
        assert_eq!(limits.http2.max_concurrent_streams, 200);
        assert_eq!(limits.http2.max_pending_accept_reset_streams, 20);
        assert_eq!(limits.http2.max_local_error_reset_streams, 1024);
        assert_eq!(config.listeners[0].routes[0].rules.max_request_body, None);
    }

    #[test]
    fn listener_limits_are_read_and_others_keep_their_defaults() {
        let config = parse(&with_limits(
            "{ max_header_bytes: 8KiB, max_headers: 20, request_head_timeout: 2s, idle_timeout: 500ms, max_connections: 50, http2: { max_concurrent_streams: 10 } }",
        ))
        .unwrap();
        let limits = config.listeners[0].limits;
        assert_eq!(limits.max_header_bytes, 8192);
        assert_eq!(limits.max_headers, 20);
        assert_eq!(limits.request_head_timeout, Duration::from_secs(2));
        assert_eq!(limits.idle_timeout, Duration::from_millis(500));
        assert_eq!(limits.max_connections, Some(50));
        assert_eq!(limits.http2.max_concurrent_streams, 10);
        assert_eq!(limits.http2.max_pending_accept_reset_streams, 20);
        let json = serde_json::to_value(&config.listeners[0]).unwrap();
        assert_eq!(json["limits"]["max_header_bytes"], "8KiB");
        assert_eq!(json["limits"]["idle_timeout"], "500ms");
    }

    #[test]
    fn limit_mistakes_name_the_field() {
        let err = parse(&with_limits(
            "{ max_header_bytes: 10, max_headers: 0, request_head_timeout: 0s, idle_timeout: soon, max_connections: lots, http2: { max_concurrent_streams: 0, colour: red }, max_body: 1 }",
        ))
        .unwrap_err();
        for expected in [
            "skiff.yaml:4:",
            "listeners[0].limits.max_header_bytes: `10` is out of range (1KiB..=8MiB)",
            "listeners[0].limits.max_headers: 0 is out of range",
            "listeners[0].limits.request_head_timeout: must be at least 1ms",
            "listeners[0].limits.idle_timeout: `soon` is not a duration",
            "listeners[0].limits.max_connections: expected a whole number, found `lots`",
            "listeners[0].limits.http2.max_concurrent_streams: 0 is out of range",
            "listeners[0].limits.http2.colour: unknown field",
            "listeners[0].limits.max_body: unknown field",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
    }

    #[test]
    fn a_route_reads_its_body_limit() {
        let config = parse(&BASE.replace(
            "      - cluster: a\n",
            "      - cluster: a\n        max_request_body: 1MiB\n      - cluster: a\n        max_request_body: 1.5MiB\n",
        ));
        let err = config.unwrap_err();
        assert!(
            err.contains("listeners[0].routes[1].max_request_body: `1.5MiB` is not a size"),
            "{err}"
        );
        let config = parse(&BASE.replace(
            "      - cluster: a\n",
            "      - cluster: a\n        max_request_body: 1MiB\n",
        ))
        .unwrap();
        assert_eq!(
            config.listeners[0].routes[0].rules.max_request_body,
            Some(1 << 20)
        );
    }
}
