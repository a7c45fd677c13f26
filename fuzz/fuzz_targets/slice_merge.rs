//! EndpointSlices → `Slice::parse` → `merge`, as the Kubernetes source
//! does. The input is JSON as the API server sends it:
//! `{"port": "http" | 8080, "slices": [EndpointSlice, ...]}`.
//!
//! Invariants: parsing refuses or accepts a slice, never panics; the merge
//! lists each address once, only addresses and ports the slices give, only
//! ready endpoints when any is ready (else serving and terminating ones,
//! kube-proxy's fallback); giving the same slices twice changes nothing.
#![no_main]

use std::collections::HashSet;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use libfuzzer_sys::fuzz_target;
use skiff_config::endpoints::ServicePort;
use skiff_discovery::kubernetes::{merge, Slice};

#[derive(serde::Deserialize)]
struct Input {
    port: serde_json::Value,
    slices: Vec<EndpointSlice>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<Input>(data) else {
        return;
    };
    let port = match &input.port {
        serde_json::Value::String(name) => ServicePort::Name(name.clone()),
        serde_json::Value::Number(n) => match n.as_u64().and_then(|n| u16::try_from(n).ok()) {
            Some(n) => ServicePort::Number(n),
            None => return,
        },
        _ => return,
    };
    let slices: Vec<Slice> = input
        .slices
        .iter()
        .filter_map(|s| match Slice::parse(s) {
            Ok(slice) => Some(slice),
            Err(e) => {
                assert!(!e.to_string().is_empty());
                None
            }
        })
        .collect();
    let merged = merge(&slices, &port);

    let mut addresses = HashSet::new();
    for spec in merged.iter() {
        assert!(
            addresses.insert(spec.address),
            "{} listed twice",
            spec.address
        );
        assert_ne!(spec.address.port(), 0, "port 0 routed to");
        let origin = spec
            .origin
            .as_ref()
            .expect("a Kubernetes endpoint has an origin");
        assert!(
            origin.ready || (origin.serving && origin.terminating),
            "{} routed to while neither ready nor serving-terminating",
            spec.address
        );
        // The address is one some slice lists with this IP.
        let listed = input.slices.iter().any(|s| {
            s.endpoints.iter().flatten().any(|e| {
                e.addresses
                    .first()
                    .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                    == Some(spec.address.ip())
            })
        });
        assert!(listed, "{} is in no slice", spec.address);
    }
    let any_ready = merged
        .iter()
        .any(|s| s.origin.as_ref().is_some_and(|o| o.ready));
    if any_ready {
        assert!(
            merged
                .iter()
                .all(|s| s.origin.as_ref().is_some_and(|o| o.ready)),
            "a not-ready endpoint routed to while others are ready"
        );
    }

    // Deterministic, and a slice given twice counts once.
    assert_eq!(merge(&slices, &port), merged);
    let twice: Vec<&Slice> = slices.iter().chain(slices.iter()).collect();
    assert_eq!(
        merge(twice, &port),
        merged,
        "slices given twice merged differently"
    );
});
