//! The ingress role: serve the `networking.k8s.io/v1` Ingress objects of
//! one class, read from the API server, as ingress-nginx would.
//!
//! ```yaml
//! ingress:
//!   class: skiff                 # ingressClassName served (or the default IngressClass)
//!   listen_address: 0.0.0.0      # default
//!   port_offset: 0               # added to both ports (10000: 80 binds as 10080)
//!   http_port: 80                # the ports clients use (defaults)
//!   https_port: 443
//!   status_address: 203.0.113.7  # written to status.loadBalancer (IP or hostname);
//!                                # default: the pod's POD_IP
//!   namespace: ingress           # where the status writer's Lease is held
//!                                # (default: POD_NAMESPACE, else `default`)
//!   lease_duration: 15s
//! ```

use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use crate::gateway_api::{object_name, read_listen_address, DEFAULT_LEASE_DURATION};
use crate::read;
use crate::yaml::{Diagnostics, MapReader, Node};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IngressConfig {
    pub class: String,
    pub listen_address: IpAddr,
    pub port_offset: u16,
    pub http_port: u16,
    pub https_port: u16,
    /// What Ingress status says clients reach: an IP or a hostname.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_address: Option<String>,
    /// Where the Lease is; none: `POD_NAMESPACE`, else `default`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(serialize_with = "crate::units::ser_duration")]
    pub lease_duration: Duration,
}

impl IngressConfig {
    /// The class `class` (the `--ingress-class` flag), with the defaults.
    pub fn new(class: &str) -> IngressConfig {
        IngressConfig {
            class: class.to_string(),
            listen_address: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            port_offset: 0,
            http_port: 80,
            https_port: 443,
            status_address: None,
            namespace: None,
            lease_duration: DEFAULT_LEASE_DURATION,
        }
    }

    /// Reads a class name (the `--ingress-class` flag).
    pub fn parse_class(text: &str) -> Result<IngressConfig, String> {
        match object_name(text) {
            true => Ok(IngressConfig::new(text)),
            false => Err(format!("`{text}` is not an IngressClass name")),
        }
    }
}

pub(crate) fn read_ingress(node: &Node, diags: &mut Diagnostics) -> Option<IngressConfig> {
    let mut map = MapReader::new(node, "ingress", diags)?;
    let class_path = map.path_of("class");
    let class = map.required("class", diags).and_then(|v| {
        let text = read::string(v, &class_path, diags)?;
        if !object_name(&text) {
            diags.error(
                v,
                &class_path,
                format!("`{text}` is not an IngressClass name"),
            );
            return None;
        }
        Some(text)
    });
    let listen_address = read_listen_address(&mut map, diags);
    let port_offset = map.uint_or("port_offset", 0..=65535, 0, diags);
    let http_port = map.uint_or("http_port", 1..=65535, 80, diags);
    let https_port = map.uint_or("https_port", 1..=65535, 443, diags);
    let text = |map: &mut MapReader<'_>, name: &str, diags: &mut Diagnostics| {
        let path = map.path_of(name);
        match map.optional(name) {
            None => Some(None),
            Some(n) => read::string(n, &path, diags).map(Some),
        }
    };
    let status_address = text(&mut map, "status_address", diags);
    let namespace_path = map.path_of("namespace");
    let namespace_node = map.optional("namespace");
    let namespace = match namespace_node {
        None => Some(None),
        Some(n) => read::string(n, &namespace_path, diags).and_then(|ns| {
            if !read::is_dns_label(&ns) {
                diags.error(
                    n,
                    &namespace_path,
                    format!("`{ns}` is not a namespace name"),
                );
                return None;
            }
            Some(Some(ns))
        }),
    };
    let lease_duration = map.duration_at_least(
        "lease_duration",
        Duration::from_secs(1),
        DEFAULT_LEASE_DURATION,
        diags,
    );
    map.finish(
        diags,
        &[
            "class",
            "listen_address",
            "port_offset",
            "http_port",
            "https_port",
            "status_address",
            "namespace",
            "lease_duration",
        ],
    );
    let (http_port, https_port) = (http_port? as u16, https_port? as u16);
    if http_port == https_port {
        diags.error(
            node,
            "ingress.https_port",
            "http_port and https_port must differ",
        );
        return None;
    }
    Some(IngressConfig {
        class: class?,
        listen_address: listen_address?,
        port_offset: port_offset? as u16,
        http_port,
        https_port,
        status_address: status_address?,
        namespace: namespace?,
        lease_duration: lease_duration?,
    })
}
