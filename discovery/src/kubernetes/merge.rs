//! From EndpointSlices to one endpoint set, the way kube-proxy reads them.
//!
//! [`Slice::parse`] checks one slice and keeps what routing needs (the
//! first address of each endpoint, its conditions and topology, the slice's
//! ports); [`merge`] is a pure function from a Service's parsed slices to
//! its [`EndpointSpec`]s:
//!
//! - every slice of the Service counts; the port is picked by name (or
//!   number) in each slice, since target ports may differ per pod;
//! - IPv4 and IPv6 slices are both used; FQDN slices are refused by
//!   [`Slice::parse`] (skiff routes to addresses, not names);
//! - an address and port listed twice counts once, the non-terminating
//!   listing winning (a pod moving between slices shows in both for a moment);
//! - `ready` endpoints are used; when none is, the `serving` and
//!   `terminating` ones are (kube-proxy's fallback, so a Service whose pods
//!   are all shutting down still answers while they drain);
//! - absent conditions read as the API defines them: `ready` and `serving`
//!   true, `terminating` false.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use skiff_config::endpoints::{EndpointSpec, Origin, ServicePort, DEFAULT_WEIGHT};

/// Why a slice was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SliceError {
    #[error(
        "slice `{slice}` lists FQDN endpoints; skiff routes to IP addresses only, so it is skipped"
    )]
    Fqdn { slice: String },
    #[error("slice `{slice}` is malformed and skipped: {reason}")]
    Malformed { slice: String, reason: String },
}

/// One slice, checked and reduced to what routing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    pub name: String,
    pub(super) ports: Vec<Port>,
    pub(super) endpoints: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Port {
    /// `""` for a Service's single unnamed port, as the API writes it.
    pub(super) name: String,
    pub(super) number: u16,
    pub(super) tcp: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Member {
    pub(super) ip: IpAddr,
    /// Built once per slice update and shared by every set that includes
    /// the endpoint, so a merge copies pointers, not strings.
    pub(super) origin: Arc<Origin>,
}

impl Slice {
    /// Checks a slice: its address type, every endpoint's first address
    /// (the API calls a slice's addresses fungible; kube-proxy uses the
    /// first) and its port numbers. Anything wrong refuses the whole slice,
    /// naming it, so a half-read slice never routes traffic.
    pub fn parse(slice: &EndpointSlice) -> Result<Slice, SliceError> {
        let name = slice.metadata.name.clone().unwrap_or_default();
        let malformed = |reason: String| SliceError::Malformed {
            slice: name.clone(),
            reason,
        };
        if name.is_empty() {
            return Err(malformed("it has no metadata.name".into()));
        }
        let want_v6 = match slice.address_type.as_str() {
            "IPv4" => false,
            "IPv6" => true,
            "FQDN" => return Err(SliceError::Fqdn { slice: name }),
            other => return Err(malformed(format!("unknown addressType `{other}`"))),
        };
        let mut ports = Vec::new();
        for (i, p) in slice.ports.iter().flatten().enumerate() {
            // A nil port means "all ports" and is for slices not made for a
            // Service; there is nothing to pick from it.
            let Some(number) = p.port else { continue };
            let number = u16::try_from(number)
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| malformed(format!("ports[{i}].port {number} is not 1-65535")))?;
            ports.push(Port {
                name: p.name.clone().unwrap_or_default(),
                number,
                tcp: p.protocol.as_deref().is_none_or(|p| p == "TCP"),
            });
        }
        let mut endpoints = Vec::new();
        for (i, e) in slice.endpoints.iter().flatten().enumerate() {
            let Some(first) = e.addresses.first() else {
                return Err(malformed(format!("endpoints[{i}] has no address")));
            };
            let ip: IpAddr = first.parse().map_err(|_| {
                malformed(format!(
                    "endpoints[{i}] address `{first}` is not an IP address"
                ))
            })?;
            if ip.is_ipv6() != want_v6 {
                return Err(malformed(format!(
                    "endpoints[{i}] address `{first}` is not {}",
                    slice.address_type
                )));
            }
            let conditions = e.conditions.as_ref();
            endpoints.push(Member {
                ip,
                origin: Arc::new(Origin {
                    slice: name.clone(),
                    zone: e.zone.clone(),
                    node: e.node_name.clone(),
                    ready: conditions.and_then(|c| c.ready).unwrap_or(true),
                    serving: conditions.and_then(|c| c.serving).unwrap_or(true),
                    terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                }),
            });
        }
        Ok(Slice {
            name,
            ports,
            endpoints,
        })
    }

    /// The slice's port number for `port`, TCP preferred.
    pub(super) fn port(&self, port: &ServicePort) -> Option<u16> {
        let matches = |p: &&Port| match port {
            ServicePort::Name(name) => p.name == *name,
            ServicePort::Number(n) => p.number == *n,
        };
        let mut found = self.ports.iter().filter(matches);
        let first = found.next()?;
        if first.tcp {
            return Some(first.number);
        }
        Some(found.find(|p| p.tcp).unwrap_or(first).number)
    }

    /// Endpoints in the slice.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether the slice lists no endpoint.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

/// Merges a Service's slices into the endpoints that should get traffic.
/// The order follows the slices' order, then each slice's; give the slices
/// in a stable order (by name) so an unchanged Service merges the same.
pub fn merge<'a>(
    slices: impl IntoIterator<Item = &'a Slice>,
    port: &ServicePort,
) -> Vec<EndpointSpec> {
    struct Candidate<'s> {
        address: SocketAddr,
        member: &'s Arc<Origin>,
    }
    let slices: Vec<&Slice> = slices.into_iter().collect();
    let total = slices.iter().map(|s| s.len()).sum();
    let mut candidates: Vec<Candidate<'a>> = Vec::with_capacity(total);
    let mut seen: HashMap<SocketAddr, usize> = HashMap::with_capacity(total);
    for slice in slices {
        let Some(number) = slice.port(port) else {
            continue;
        };
        for member in &slice.endpoints {
            let candidate = Candidate {
                address: SocketAddr::new(member.ip, number),
                member: &member.origin,
            };
            match seen.get(&candidate.address) {
                // Listed twice: the non-terminating listing wins, then the
                // ready one; otherwise the first stays.
                Some(&i) => {
                    if rank(&member.origin) > rank(candidates[i].member) {
                        candidates[i] = candidate;
                    }
                }
                None => {
                    seen.insert(candidate.address, candidates.len());
                    candidates.push(candidate);
                }
            }
        }
    }
    let any_ready = candidates.iter().any(|c| c.member.ready);
    candidates
        .into_iter()
        .filter(|c| routes(c.member, any_ready))
        .map(|c| EndpointSpec {
            address: c.address,
            weight: DEFAULT_WEIGHT,
            origin: Some(c.member.clone()),
        })
        .collect()
}

/// How a listing of an address competes with another listing of it: the
/// non-terminating one wins, then the ready one; on a tie the first stays.
pub(super) fn rank(origin: &Origin) -> (bool, bool) {
    (!origin.terminating, origin.ready)
}

/// Whether a deduplicated endpoint gets traffic, given whether any of the
/// Service's endpoints is ready (kube-proxy's fallback when none is).
pub(super) fn routes(origin: &Origin, any_ready: bool) -> bool {
    if any_ready {
        origin.ready
    } else {
        origin.serving && origin.terminating
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A slice as the API server sends it.
    fn slice(value: Value) -> Slice {
        let object: EndpointSlice = serde_json::from_value(value).unwrap();
        Slice::parse(&object).unwrap()
    }

    fn ipv4(name: &str, ports: Value, endpoints: Value) -> Slice {
        slice(json!({
            "metadata": { "name": name },
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        }))
    }

    fn http(port: u16) -> Value {
        json!([{ "name": "http", "port": port, "protocol": "TCP" }])
    }

    fn addresses(set: &[EndpointSpec]) -> Vec<String> {
        set.iter().map(|e| e.address.to_string()).collect()
    }

    fn by_name(name: &str) -> ServicePort {
        ServicePort::Name(name.into())
    }

    #[test]
    fn all_slices_of_a_service_are_merged() {
        let a = ipv4("web-a", http(8080), json!([{ "addresses": ["10.0.0.1"] }]));
        let b = ipv4(
            "web-b",
            http(8080),
            json!([{ "addresses": ["10.0.0.2"] }, { "addresses": ["10.0.0.3"] }]),
        );
        let c = ipv4("web-c", http(8080), json!([]));
        let set = merge([&a, &b, &c], &by_name("http"));
        assert_eq!(
            addresses(&set),
            ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]
        );
    }

    #[test]
    fn a_duplicate_address_counts_once_and_the_non_terminating_listing_wins() {
        let old = ipv4(
            "web-a",
            http(8080),
            json!([{ "addresses": ["10.0.0.1"], "conditions": { "ready": false, "serving": true, "terminating": true } }]),
        );
        let new = ipv4(
            "web-b",
            http(8080),
            json!([{ "addresses": ["10.0.0.1"], "conditions": { "ready": true } }, { "addresses": ["10.0.0.2"] }]),
        );
        let set = merge([&old, &new], &by_name("http"));
        assert_eq!(addresses(&set), ["10.0.0.1:8080", "10.0.0.2:8080"]);
        let origin = set[0].origin.as_ref().unwrap();
        assert_eq!(origin.slice, "web-b");
        assert!(!origin.terminating);
    }

    #[test]
    fn the_same_ip_on_different_target_ports_is_two_endpoints() {
        let a = ipv4("web-a", http(8080), json!([{ "addresses": ["10.0.0.1"] }]));
        let b = ipv4("web-b", http(9090), json!([{ "addresses": ["10.0.0.1"] }]));
        let set = merge([&a, &b], &by_name("http"));
        assert_eq!(addresses(&set), ["10.0.0.1:8080", "10.0.0.1:9090"]);
    }

    #[test]
    fn a_named_port_maps_to_each_slices_own_target_port() {
        let a = ipv4(
            "web-a",
            json!([{ "name": "metrics", "port": 9100 }, { "name": "http", "port": 8080 }]),
            json!([{ "addresses": ["10.0.0.1"] }]),
        );
        let b = ipv4(
            "web-b",
            json!([{ "name": "http", "port": 8081 }, { "name": "metrics", "port": 9100 }]),
            json!([{ "addresses": ["10.0.0.2"] }]),
        );
        assert_eq!(
            addresses(&merge([&a, &b], &by_name("http"))),
            ["10.0.0.1:8080", "10.0.0.2:8081"]
        );
        assert_eq!(
            addresses(&merge([&a, &b], &by_name("metrics"))),
            ["10.0.0.1:9100", "10.0.0.2:9100"]
        );
    }

    #[test]
    fn a_slice_without_the_port_contributes_nothing() {
        let a = ipv4("web-a", http(8080), json!([{ "addresses": ["10.0.0.1"] }]));
        let b = ipv4(
            "web-b",
            json!([{ "name": "grpc", "port": 9000 }]),
            json!([{ "addresses": ["10.0.0.2"] }]),
        );
        assert_eq!(
            addresses(&merge([&a, &b], &by_name("http"))),
            ["10.0.0.1:8080"]
        );
        assert!(merge([&a, &b], &by_name("admin")).is_empty());
    }

    #[test]
    fn a_port_number_picks_the_listed_target_port() {
        // A Service with one unnamed port: the API writes its name as "".
        let a = ipv4(
            "web-a",
            json!([{ "name": "", "port": 8080 }]),
            json!([{ "addresses": ["10.0.0.1"] }]),
        );
        assert_eq!(
            addresses(&merge([&a], &ServicePort::Number(8080))),
            ["10.0.0.1:8080"]
        );
        assert_eq!(addresses(&merge([&a], &by_name(""))), ["10.0.0.1:8080"]);
        assert!(merge([&a], &ServicePort::Number(80)).is_empty());
    }

    #[test]
    fn tcp_is_preferred_when_a_number_is_listed_for_two_protocols() {
        let a = ipv4(
            "dns-a",
            json!([{ "name": "dns-udp", "port": 53, "protocol": "UDP" }, { "name": "dns-tcp", "port": 53, "protocol": "TCP" }]),
            json!([{ "addresses": ["10.0.0.1"] }]),
        );
        assert_eq!(
            addresses(&merge([&a], &ServicePort::Number(53))),
            ["10.0.0.1:53"]
        );
    }

    #[test]
    fn ipv4_and_ipv6_slices_are_both_used() {
        let v4 = ipv4("web-v4", http(8080), json!([{ "addresses": ["10.0.0.1"] }]));
        let v6 = slice(json!({
            "metadata": { "name": "web-v6" },
            "addressType": "IPv6",
            "ports": http(8080),
            "endpoints": [{ "addresses": ["fd00::1"] }],
        }));
        assert_eq!(
            addresses(&merge([&v4, &v6], &by_name("http"))),
            ["10.0.0.1:8080", "[fd00::1]:8080"]
        );
    }

    #[test]
    fn fqdn_slices_are_refused_with_their_name() {
        let object: EndpointSlice = serde_json::from_value(json!({
            "metadata": { "name": "web-fqdn" },
            "addressType": "FQDN",
            "ports": http(8080),
            "endpoints": [{ "addresses": ["db.example.com"] }],
        }))
        .unwrap();
        let err = Slice::parse(&object).unwrap_err();
        assert!(matches!(err, SliceError::Fqdn { ref slice } if slice == "web-fqdn"));
        assert!(err.to_string().contains("web-fqdn"), "{err}");
    }

    #[test]
    fn only_ready_endpoints_are_used_when_some_are_ready() {
        let a = ipv4(
            "web-a",
            http(8080),
            json!([
                { "addresses": ["10.0.0.1"], "conditions": { "ready": true, "serving": true, "terminating": false } },
                { "addresses": ["10.0.0.2"], "conditions": { "ready": false, "serving": true, "terminating": true } },
                { "addresses": ["10.0.0.3"], "conditions": { "ready": false, "serving": false, "terminating": false } },
            ]),
        );
        assert_eq!(addresses(&merge([&a], &by_name("http"))), ["10.0.0.1:8080"]);
    }

    #[test]
    fn serving_terminating_endpoints_are_used_when_none_is_ready() {
        let a = ipv4(
            "web-a",
            http(8080),
            json!([
                { "addresses": ["10.0.0.1"], "conditions": { "ready": false, "serving": true, "terminating": true } },
                { "addresses": ["10.0.0.2"], "conditions": { "ready": false, "serving": false, "terminating": true } },
                { "addresses": ["10.0.0.3"], "conditions": { "ready": false, "serving": true, "terminating": false } },
            ]),
        );
        let set = merge([&a], &by_name("http"));
        assert_eq!(addresses(&set), ["10.0.0.1:8080"]);
        let origin = set[0].origin.as_ref().unwrap();
        assert!(!origin.ready && origin.serving && origin.terminating);
    }

    #[test]
    fn no_ready_and_no_serving_terminating_endpoint_is_an_empty_set() {
        let a = ipv4(
            "web-a",
            http(8080),
            json!([{ "addresses": ["10.0.0.1"], "conditions": { "ready": false, "serving": false } }]),
        );
        assert!(merge([&a], &by_name("http")).is_empty());
    }

    #[test]
    fn absent_conditions_read_as_ready_serving_and_not_terminating() {
        let a = ipv4(
            "web-a",
            http(8080),
            json!([
                { "addresses": ["10.0.0.1"] },
                { "addresses": ["10.0.0.2"], "conditions": {} },
                { "addresses": ["10.0.0.3"], "conditions": { "terminating": true, "ready": false } },
            ]),
        );
        let set = merge([&a], &by_name("http"));
        assert_eq!(addresses(&set), ["10.0.0.1:8080", "10.0.0.2:8080"]);
        for e in &set {
            let origin = e.origin.as_ref().unwrap();
            assert!(origin.ready && origin.serving && !origin.terminating);
        }
        // Absent `serving` is true too: a terminating endpoint without it
        // is still a fallback.
        let only_terminating = ipv4(
            "web-b",
            http(8080),
            json!([{ "addresses": ["10.0.0.4"], "conditions": { "ready": false, "terminating": true } }]),
        );
        assert_eq!(
            addresses(&merge([&only_terminating], &by_name("http"))),
            ["10.0.0.4:8080"]
        );
    }

    #[test]
    fn zone_node_and_slice_are_kept_on_the_endpoint() {
        let a = ipv4(
            "web-a",
            http(8080),
            json!([{ "addresses": ["10.0.0.1"], "zone": "eu-west-1a", "nodeName": "node-7" }]),
        );
        let set = merge([&a], &by_name("http"));
        let origin = set[0].origin.as_ref().unwrap();
        assert_eq!(origin.slice, "web-a");
        assert_eq!(origin.zone.as_deref(), Some("eu-west-1a"));
        assert_eq!(origin.node.as_deref(), Some("node-7"));
        assert_eq!(set[0].weight, DEFAULT_WEIGHT);
    }

    #[test]
    fn the_first_of_several_addresses_is_used() {
        let a = ipv4(
            "web-a",
            http(8080),
            json!([{ "addresses": ["10.0.0.1", "10.0.0.9"] }]),
        );
        assert_eq!(addresses(&merge([&a], &by_name("http"))), ["10.0.0.1:8080"]);
    }

    #[test]
    fn an_unchanged_service_merges_to_an_equal_set() {
        let a = ipv4(
            "web-a",
            http(8080),
            json!([{ "addresses": ["10.0.0.1"], "zone": "z" }]),
        );
        let again = a.clone();
        assert_eq!(
            merge([&a], &by_name("http")),
            merge([&again], &by_name("http"))
        );
    }

    #[test]
    fn malformed_slices_are_refused_with_their_name_and_reason() {
        let cases = [
            (
                json!({ "metadata": { "name": "bad-ip" }, "addressType": "IPv4", "endpoints": [{ "addresses": ["10.0.0.300"] }] }),
                "`10.0.0.300` is not an IP address",
            ),
            (
                json!({ "metadata": { "name": "no-address" }, "addressType": "IPv4", "endpoints": [{ "addresses": [] }] }),
                "endpoints[0] has no address",
            ),
            (
                json!({ "metadata": { "name": "wrong-family" }, "addressType": "IPv4", "endpoints": [{ "addresses": ["fd00::1"] }] }),
                "is not IPv4",
            ),
            (
                json!({ "metadata": { "name": "bad-port" }, "addressType": "IPv4", "ports": [{ "name": "http", "port": 70000 }] }),
                "ports[0].port 70000 is not 1-65535",
            ),
            (
                json!({ "metadata": { "name": "bad-type" }, "addressType": "IPX" }),
                "unknown addressType `IPX`",
            ),
        ];
        for (value, reason) in cases {
            let name = value["metadata"]["name"].as_str().unwrap().to_string();
            let object: EndpointSlice = serde_json::from_value(value).unwrap();
            let err = Slice::parse(&object).unwrap_err().to_string();
            assert!(err.contains(&format!("slice `{name}`")), "{err}");
            assert!(err.contains(reason), "{err}");
        }
    }
}
