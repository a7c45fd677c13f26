//! Arbitrary bytes after the HTTP/2 preface: frames as a hostile h2c
//! client would send them (floods of RST_STREAM, CONTINUATION, SETTINGS,
//! bad HPACK, streams reset mid-body).
//!
//! Invariants: skiff never panics or hangs; what it forwards upstream
//! (HTTP/1.1) reads one way only; and the upstream never gets more
//! requests than the input has HEADERS frames.
#![no_main]

use libfuzzer_sys::fuzz_target;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;

/// HEADERS frames on a stream, walking the frames' length fields: at most
/// one request each (trailers are HEADERS too, so this only bounds).
fn headers_frames(mut frames: &[u8]) -> u64 {
    let mut count = 0;
    while frames.len() >= 9 {
        let len = u32::from_be_bytes([0, frames[0], frames[1], frames[2]]) as usize;
        let stream = u32::from_be_bytes([frames[5], frames[6], frames[7], frames[8]]) & 0x7fff_ffff;
        if frames[3] == HEADERS && stream != 0 {
            count += 1;
        }
        frames = frames.get(9 + len..).unwrap_or_default();
    }
    count
}

fuzz_target!(|data: &[u8]| {
    let harness = skiff_fuzz::harness();
    let mut input = H2_PREFACE.to_vec();
    input.extend_from_slice(data);
    harness.run(&input, headers_frames(data));
});
