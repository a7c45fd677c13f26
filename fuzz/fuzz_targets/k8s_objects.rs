//! Kubernetes objects as the API server sends them (JSON) → the decoders
//! the sidecar and the Kubernetes source build skiff's view with:
//! `services::entries` for a Service, `Slice::parse` for an EndpointSlice.
//! The first byte picks the kind; the rest is the object.
//!
//! Invariants: no object makes a decoder panic; a Service's entries are
//! its TCP ports on its cluster IPs, each named after the Service; a slice
//! is parsed or refused with a reason.
#![no_main]

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use libfuzzer_sys::fuzz_target;
use skiff_discovery::kubernetes::services::entries;
use skiff_discovery::kubernetes::Slice;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, json)) = data.split_first() else {
        return;
    };
    if kind & 1 == 0 {
        let Ok(service) = serde_json::from_slice::<Service>(json) else {
            return;
        };
        let spec = service.spec.as_ref();
        let ips: Vec<IpAddr> = spec
            .into_iter()
            .flat_map(|s| s.cluster_ips.iter().flatten().chain(s.cluster_ip.iter()))
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let ports: Vec<i32> = spec
            .into_iter()
            .flat_map(|s| s.ports.iter().flatten())
            .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
            .map(|p| p.port)
            .collect();
        let name = service.metadata.name.clone().unwrap_or_default();
        for (address, service_ref) in entries("fuzz", &service) {
            assert!(ips.contains(&address.ip()), "{address} is not a cluster IP");
            assert!(ports.contains(&i32::from(address.port())), "{address}: not a TCP port");
            assert_eq!(service_ref.service, name);
            assert_eq!(service_ref.port, address.port());
        }
    } else {
        let Ok(slice) = serde_json::from_slice::<EndpointSlice>(json) else {
            return;
        };
        if let Err(e) = Slice::parse(&slice) {
            assert!(!e.to_string().is_empty(), "an empty reason");
        }
    }
});
