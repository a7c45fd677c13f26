//! Bytes → `tls::hello::read`, the ClientHello peek a sidecar's inbound
//! listener decides on (mesh TLS, an app's own TLS, or plaintext): any
//! input is read without a panic.
//!
//! Invariants: anything not opening with a handshake record is not TLS;
//! only a prefix shorter than the largest ClientHello is incomplete; an
//! answer, once given, does not change as more bytes arrive, unless more
//! bytes complete what was incomplete.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::tls::hello::{read, Hello, HANDSHAKE_RECORD, MAX_CLIENT_HELLO};

fuzz_target!(|data: &[u8]| {
    let whole = read(data);
    match data.first() {
        None => assert_eq!(whole, Hello::Incomplete),
        Some(&b) if b != HANDSHAKE_RECORD => assert_eq!(whole, Hello::NotTls),
        Some(_) => assert_ne!(whole, Hello::NotTls),
    }
    if whole == Hello::Incomplete {
        assert!(data.len() < MAX_CLIENT_HELLO);
    }
    // What the first half already said stands.
    let half = read(&data[..data.len() / 2]);
    if half != Hello::Incomplete {
        assert_eq!(half, whole, "more bytes changed a settled answer");
    }
});
