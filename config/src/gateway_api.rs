//! The gateway role: serve one Gateway API `Gateway`, read with its
//! routes from the API server, beside (or instead of) the file's own
//! listeners.
//!
//! ```yaml
//! gateway_api:
//!   gateway: { namespace: shop, name: web }   # the Gateway this deployment serves
//!   listen_address: 0.0.0.0                   # default
//!   port_offset: 0                            # added to every listener port
//!   lease_duration: 15s                       # status writer election among replicas
//! ```
//!
//! `port_offset: 10000` binds the Gateway's port 80 as 10080, which an
//! unprivileged container can; clients still see port 80 (the Service in
//! front maps it), so redirects and host matching speak of 80.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde::Serialize;

use crate::read;
use crate::yaml::{Diagnostics, MapReader, Node};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatewayApiConfig {
    pub namespace: String,
    pub name: String,
    pub listen_address: IpAddr,
    pub port_offset: u16,
    /// How long the status writer's Lease lasts unrenewed: another
    /// replica takes over this long after the writer is gone.
    #[serde(serialize_with = "crate::units::ser_duration")]
    pub lease_duration: Duration,
}

/// The Lease duration client-go's leader election uses by default.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);

impl GatewayApiConfig {
    /// The Gateway `namespace/name`, bound on every address, no offset.
    pub fn new(namespace: &str, name: &str) -> GatewayApiConfig {
        GatewayApiConfig {
            namespace: namespace.to_string(),
            name: name.to_string(),
            listen_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port_offset: 0,
            lease_duration: DEFAULT_LEASE_DURATION,
        }
    }

    /// Reads `NAMESPACE/NAME` (the `--gateway` flag).
    pub fn parse_reference(text: &str) -> Result<GatewayApiConfig, String> {
        match text.split_once('/') {
            Some((ns, name)) if read::is_dns_label(ns) && is_object_name(name) => {
                Ok(GatewayApiConfig::new(ns, name))
            }
            _ => Err(format!("`{text}` is not NAMESPACE/NAME of a Gateway")),
        }
    }
}

/// A Kubernetes object name (RFC 1123 subdomain).
fn is_object_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(read::is_dns_label)
}

pub(crate) fn read_gateway_api(node: &Node, diags: &mut Diagnostics) -> Option<GatewayApiConfig> {
    let mut map = MapReader::new(node, "gateway_api", diags)?;
    let gateway_path = map.path_of("gateway");
    let gateway = map.required("gateway", diags).and_then(|n| {
        let mut g = MapReader::new(n, &gateway_path, diags)?;
        let ns_path = g.path_of("namespace");
        let namespace = g.required("namespace", diags).and_then(|v| {
            let text = read::string(v, &ns_path, diags)?;
            if !read::is_dns_label(&text) {
                diags.error(v, &ns_path, format!("`{text}` is not a namespace name"));
                return None;
            }
            Some(text)
        });
        let name_path = g.path_of("name");
        let name = g.required("name", diags).and_then(|v| {
            let text = read::string(v, &name_path, diags)?;
            if !is_object_name(&text) {
                diags.error(v, &name_path, format!("`{text}` is not an object name"));
                return None;
            }
            Some(text)
        });
        g.finish(diags, &["namespace", "name"]);
        Some((namespace?, name?))
    });
    let listen_address = read_listen_address(&mut map, diags);
    let port_offset = map.uint_or("port_offset", 0..=65535, 0, diags);
    let lease_duration = map.duration_at_least(
        "lease_duration",
        Duration::from_secs(1),
        DEFAULT_LEASE_DURATION,
        diags,
    );
    map.finish(
        diags,
        &["gateway", "listen_address", "port_offset", "lease_duration"],
    );
    let (namespace, name) = gateway?;
    Some(GatewayApiConfig {
        namespace,
        name,
        listen_address: listen_address?,
        port_offset: port_offset? as u16,
        lease_duration: lease_duration?,
    })
}

/// `listen_address`: an IP address, all of them by default.
pub(crate) fn read_listen_address(
    map: &mut MapReader<'_>,
    diags: &mut Diagnostics,
) -> Option<IpAddr> {
    let address_path = map.path_of("listen_address");
    match map.optional("listen_address") {
        None => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        Some(n) => {
            let text = read::string(n, &address_path, diags);
            text.and_then(|t| match t.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    diags.error(n, &address_path, format!("`{t}` is not an IP address"));
                    None
                }
            })
        }
    }
}

/// A Kubernetes object name (RFC 1123 subdomain), for other sections.
pub(crate) fn object_name(name: &str) -> bool {
    is_object_name(name)
}
