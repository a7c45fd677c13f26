//! The sidecar role: listeners that take the connections `skiff iptables`
//! captures, find where each was going, and balance it.
//!
//! A listener with `capture:` serves captured connections instead of
//! routing by host and path:
//!
//! ```yaml
//! listeners:
//!   - name: outbound            # the app's calls, redirected to 127.0.0.1:4140
//!     listen: 127.0.0.1:4140
//!     capture: { direction: outbound, namespaces: [shop], watch_idle_timeout: 5m }
//!   - name: inbound             # calls to the app, redirected to 4143
//!     listen: 0.0.0.0:4143
//!     capture: { direction: inbound, opaque_ports: [5432] }
//! ```
//!
//! Each accepted connection's original destination is read
//! (`SO_ORIGINAL_DST`), then its protocol detected ([`detect`]). Outbound,
//! a destination that is a Service's ClusterIP and port is balanced over
//! that Service's EndpointSlice endpoints: per request for HTTP/1 and
//! HTTP/2 (so one HTTP/2 connection's requests spread over every pod), per
//! connection for anything else. Any other destination passes through to
//! the address it was going to. Inbound, HTTP is proxied per request to
//! the app (counted in skiff's metrics) and anything else is copied as is.
//! With a `mesh:` section, sidecars speak mTLS to each other ([`mesh`]).
//!
//! `skiff run --sidecar` runs this with the defaults below, the ports
//! `skiff inject` and `skiff iptables` use.

pub mod detect;
pub mod mesh;
mod serve;

pub use serve::{Accepted, Captured, Shared, IDLE_AFTER};

use std::time::Duration;

use serde::Serialize;
use skiff_discovery::yaml::{self, Diagnostics, MapReader, Node};

/// Where captured outbound connections (the app's calls) are redirected.
pub const OUTBOUND_PORT: u16 = 4140;
/// Where captured inbound connections (calls to the app) are redirected.
pub const INBOUND_PORT: u16 = 4143;
/// The sidecar's admin server: probes and metrics; never captured. skiff's
/// usual admin port, so the Prometheus annotations and scrape config in
/// deploy/observability hold for sidecars too.
pub const ADMIN_PORT: u16 = 9901;
/// The uid the sidecar runs as; its own connections are never captured.
/// (This and the two traffic ports are linkerd2-proxy's numbers.)
pub const PROXY_UID: u32 = 2102;
/// How long a captured connection may stay silent before it is taken for
/// a protocol where the server speaks first (MySQL, SMTP) and passed on
/// as opaque TCP. Clients of HTTP send their request at once.
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_millis(100);
/// The environment variable with the pod's namespace (downward API, set by
/// `skiff inject`): the namespace whose Services are watched by default.
pub const NAMESPACE_ENV: &str = "SKIFF_POD_NAMESPACE";

/// Which way a capture listener's connections go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Calls to the pod's app.
    Inbound,
    /// Calls the pod's app makes.
    Outbound,
}

/// A capture listener's settings (`capture:` on a listener).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptureConfig {
    pub direction: Direction,
    /// Silence this long means opaque TCP.
    #[serde(serialize_with = "ser_duration")]
    pub detect_timeout: Duration,
    /// Destination ports proxied as opaque TCP without detection.
    pub opaque_ports: Vec<u16>,
    /// Namespaces whose Services outbound destinations are matched against;
    /// empty: the pod's own (`$SKIFF_POD_NAMESPACE`, else `default`).
    pub namespaces: Vec<String>,
    /// Outbound: the Service watches stop after this long without a
    /// lookup (a new connection); the next starts them again.
    #[serde(serialize_with = "ser_duration")]
    pub watch_idle_timeout: Duration,
}

impl CaptureConfig {
    /// The namespaces to watch Services in, with the default applied.
    pub fn service_namespaces(&self) -> Vec<String> {
        if !self.namespaces.is_empty() {
            return self.namespaces.clone();
        }
        let own = std::env::var(NAMESPACE_ENV)
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        vec![own]
    }
}

/// How long the Service watches may go without a lookup, by default: as
/// long as an unused destination is kept ([`IDLE_AFTER`]).
pub const DEFAULT_WATCH_IDLE_TIMEOUT: Duration = IDLE_AFTER;

const CAPTURE_FIELDS: &[&str] = &[
    "direction",
    "detect_timeout",
    "opaque_ports",
    "namespaces",
    "watch_idle_timeout",
];

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::config::format_duration(*d))
}

/// Reads a listener's `capture:` mapping.
pub fn read_capture(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<CaptureConfig> {
    let mut map = MapReader::new(node, path, diags)?;
    let direction_path = map.path_of("direction");
    let direction = match map.required("direction", diags) {
        Some(n) => match yaml::string(n, &direction_path, diags)?.as_str() {
            "inbound" => Some(Direction::Inbound),
            "outbound" => Some(Direction::Outbound),
            other => {
                diags.error(
                    n,
                    &direction_path,
                    format!("unknown direction `{other}` (expected inbound or outbound)"),
                );
                None
            }
        },
        None => None,
    };
    let timeout_path = map.path_of("detect_timeout");
    let detect_timeout = match map.optional("detect_timeout") {
        Some(n) => yaml::duration(n, &timeout_path, diags),
        None => Some(DEFAULT_DETECT_TIMEOUT),
    };
    let ports_path = map.path_of("opaque_ports");
    let mut opaque_ports = Vec::new();
    if let Some(n) = map.optional("opaque_ports") {
        for (i, item) in yaml::seq(n, &ports_path, diags)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            if let Some(p) = yaml::uint(item, &format!("{ports_path}[{i}]"), 1..=65535, diags) {
                opaque_ports.push(p as u16);
            }
        }
    }
    let ns_path = map.path_of("namespaces");
    let mut namespaces = Vec::new();
    if let Some(n) = map.optional("namespaces") {
        for (i, item) in yaml::seq(n, &ns_path, diags)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            if let Some(ns) = yaml::string(item, &format!("{ns_path}[{i}]"), diags) {
                namespaces.push(ns);
            }
        }
    }
    let idle_path = map.path_of("watch_idle_timeout");
    let watch_idle_timeout = match map.optional("watch_idle_timeout") {
        Some(n) => yaml::duration(n, &idle_path, diags),
        None => Some(DEFAULT_WATCH_IDLE_TIMEOUT),
    };
    map.finish(diags, CAPTURE_FIELDS);
    Some(CaptureConfig {
        direction: direction?,
        detect_timeout: detect_timeout?,
        opaque_ports,
        namespaces,
        watch_idle_timeout: watch_idle_timeout?,
    })
}

/// The config `skiff run --sidecar` runs without a file: the admin server
/// on the pod's address (for kubelet's probes) and the two capture
/// listeners on the ports `skiff iptables` redirects to. With IPv6 (as
/// `skiff iptables` decides it), the admin and inbound sockets are dual
/// stack and outbound listens on `::1` too, where ip6tables redirects.
pub fn default_config_text(ipv6: bool) -> String {
    let any = if ipv6 { "[::]" } else { "0.0.0.0" };
    let mut text = format!(
        "admin: {{ listen: \"{any}:{ADMIN_PORT}\" }}\n\
         listeners:\n\
         \x20 - name: inbound\n    listen: \"{any}:{INBOUND_PORT}\"\n    capture: {{ direction: inbound }}\n\
         \x20 - name: outbound\n    listen: 127.0.0.1:{OUTBOUND_PORT}\n    capture: {{ direction: outbound }}\n"
    );
    if ipv6 {
        text.push_str(&format!(
            "  - name: outbound6\n    listen: \"[::1]:{OUTBOUND_PORT}\"\n    capture: {{ direction: outbound }}\n"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv6_default_listens_dual_stack_and_on_the_v6_loopback() {
        let config = crate::config::Config::parse(
            &default_config_text(true),
            "sidecar",
            std::path::Path::new("."),
        )
        .unwrap_or_else(|d| panic!("{d}"));
        let listens: Vec<String> = config
            .listeners
            .iter()
            .map(|l| l.listen.to_string())
            .collect();
        assert_eq!(listens, ["[::]:4143", "127.0.0.1:4140", "[::1]:4140"]);
        assert_eq!(config.admin.listen.to_string(), "[::]:9901");
    }

    #[test]
    fn the_default_sidecar_config_is_valid_and_captures_both_ways() {
        let config = crate::config::Config::parse(
            &default_config_text(false),
            "sidecar",
            std::path::Path::new("."),
        )
        .unwrap_or_else(|d| panic!("{d}"));
        let directions: Vec<_> = config
            .listeners
            .iter()
            .map(|l| l.capture.as_ref().map(|c| c.direction))
            .collect();
        assert_eq!(
            directions,
            [Some(Direction::Inbound), Some(Direction::Outbound)]
        );
        assert_eq!(config.admin.listen.port(), ADMIN_PORT);
    }

    #[test]
    fn a_capture_listener_cannot_terminate_tls() {
        let text = "listeners:\n  - name: out\n    listen: 127.0.0.1:4140\n    capture: { direction: outbound }\n    tls: { cert: a.crt, key: a.key }\n";
        let err = crate::config::Config::parse(text, "s.yaml", std::path::Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("listeners[0].tls: a capture listener passes"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_capture_is_named_with_its_field() {
        let text = "listeners:\n  - name: out\n    listen: 127.0.0.1:4140\n    capture: { direction: sideways, opaque_ports: [0] }\n";
        let err = crate::config::Config::parse(text, "s.yaml", std::path::Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "s.yaml:4:27: listeners[0].capture.direction: unknown direction `sideways`"
            ),
            "{err}"
        );
        assert!(
            err.contains("listeners[0].capture.opaque_ports[0]: 0 is out of range"),
            "{err}"
        );
    }
}
