//! Bytes → `server::sidecar::detect::classify`, the protocol detection of
//! captured connections (linkerd2-proxy's rule: the HTTP/2 preface, an
//! HTTP/1 method and a space, else opaque).
//!
//! Invariants: undecided only for a strict prefix of the preface or of a
//! method; a decision, once made, stands as more bytes arrive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::server::sidecar::detect::{classify, Protocol};

fuzz_target!(|data: &[u8]| {
    let whole = classify(data);
    if whole.is_none() {
        let preface = skiff::http::h2::frame::PREFACE;
        let methods = ["GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "CONNECT ", "OPTIONS ", "TRACE ", "PATCH "];
        assert!(
            data.is_empty()
                || (data.len() < preface.len() && preface.starts_with(data))
                || methods.iter().any(|m| data.len() < m.len() && m.as_bytes().starts_with(data)),
            "undecided on {data:?}"
        );
    }
    for cut in 1..data.len() {
        if let Some(early) = classify(&data[..cut]) {
            assert_eq!(Some(early), whole, "more bytes changed {early:?}");
            break;
        }
    }
    if whole == Some(Protocol::Http2) {
        assert!(data.starts_with(skiff::http::h2::frame::PREFACE));
    }
});
