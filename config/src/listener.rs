//! A listener's config: where it listens, its routes, and what it does
//! beside routing (TLS termination, capture for the sidecar role, an
//! access log, limits on its clients).
//!
//! ```yaml
//! listeners:
//!   - name: web
//!     listen: 0.0.0.0:8080                 # HTTP/1.1 and h2c on one port
//!     access_log: { sample: 0.01 }         # a skiff::access line for 1% of requests
//!     limits: { max_header_bytes: 64KiB }
//!     tls: { cert: tls.crt, key: tls.key }
//!     routes: [ { match: { path_prefix: / }, cluster: catalog } ]
//! ```

use std::net::SocketAddr;

use serde::Serialize;

use crate::limits::{self, ListenerLimits};
use crate::read;
use crate::route::{self, RouteConfig};
use crate::sidecar::{self, CaptureConfig};
use crate::tls::{self, Context, ListenerTls};
use crate::yaml::{Diagnostics, MapReader, Node};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// The port clients reach the listener by, when it is not the one
    /// bound (a Gateway listener bound with `port_offset`): what a
    /// redirect keeping the port writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertised_port: Option<u16>,
    pub routes: Vec<RouteConfig>,
    /// TLS termination; none: plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Serve connections captured by `skiff iptables` (the sidecar role).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture: Option<CaptureConfig>,
    /// One log line per request (or a sample of them); off when absent.
    pub access_log: Option<AccessLog>,
    /// What the listener's clients may send and hold.
    pub limits: ListenerLimits,
}

/// The access log of a listener: a `skiff::access` line per request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AccessLog {
    /// The share of requests logged, in (0, 1].
    pub sample: f64,
}

const LISTENER_FIELDS: &[&str] = &[
    "name",
    "listen",
    "routes",
    "tls",
    "capture",
    "access_log",
    "limits",
];

pub(crate) fn read_listener(
    node: &Node,
    path: &str,
    cx: &Context<'_>,
    diags: &mut Diagnostics,
) -> Option<ListenerConfig> {
    let mut map = MapReader::new(node, path, diags)?;
    let name = read::name(&mut map, diags);
    let listen_path = map.path_of("listen");
    let listen = map
        .required("listen", diags)
        .and_then(|n| read::address(n, &listen_path, diags));
    let capture_path = map.path_of("capture");
    let capture = map
        .optional("capture")
        .map(|n| sidecar::read_capture(n, &capture_path, diags));
    let routes_path = map.path_of("routes");
    // A capture listener routes by original destination; routes optional.
    let routes_node = match capture {
        Some(_) => map.optional("routes"),
        None => map.required("routes", diags),
    };
    let routes = match routes_node {
        Some(n) => crate::read_list(n, &routes_path, diags, route::read_route)
            .into_iter()
            .map(|(_, r)| r)
            .collect(),
        None => Vec::new(),
    };
    let access_path = map.path_of("access_log");
    let access_log = match map.optional("access_log") {
        None => Some(None),
        Some(n) => read_access_log(n, &access_path, diags).map(Some),
    };
    let limits_path = map.path_of("limits");
    let limits = match map.optional("limits") {
        Some(n) => limits::read_listener_limits(n, &limits_path, diags),
        None => Some(ListenerLimits::default()),
    };
    let tls_path = map.path_of("tls");
    let tls = match map.optional("tls") {
        Some(n) => tls::read_listener_tls(n, &tls_path, cx, diags).map(Some),
        None => Some(None),
    };
    if let (Some(_), Some(n)) = (&capture, map.optional("tls")) {
        diags.error(
            n,
            &tls_path,
            "a capture listener passes the app's bytes on as sent; it cannot terminate TLS (for mTLS between sidecars, give the top-level `mesh:` section)",
        );
    }
    map.finish(diags, LISTENER_FIELDS);
    Some(ListenerConfig {
        name: name?,
        listen: listen?,
        advertised_port: None,
        routes,
        capture: capture.map(|c| c.ok_or(())).transpose().ok()?,
        access_log: access_log?,
        tls: tls?,
        limits: limits?,
    })
}

fn read_access_log(node: &Node, path: &str, diags: &mut Diagnostics) -> Option<AccessLog> {
    let mut map = MapReader::new(node, path, diags)?;
    let sample_path = map.path_of("sample");
    let sample = match map.optional("sample") {
        None => Some(1.0),
        Some(n) => read::string(n, &sample_path, diags).and_then(|t| {
            let v = t
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| *v > 0.0 && *v <= 1.0);
            if v.is_none() {
                diags.error(
                    n,
                    &sample_path,
                    format!("expected a share in (0, 1] such as 0.01, found `{t}`"),
                );
            }
            v
        }),
    };
    map.finish(diags, &["sample"]);
    Some(AccessLog { sample: sample? })
}
