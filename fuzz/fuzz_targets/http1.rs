//! Arbitrary bytes into a skiff listener, as a client would send them.
//!
//! Invariants: skiff never panics or hangs; what it forwards, a strict
//! upstream reads one way only (one length, one framing); and the upstream
//! never gets more requests than the client's bytes hold, counted by
//! reading them as skiff's parser does, body by body (a request smuggled
//! in a body would be one more).
#![no_main]

use bytes::{Buf, BytesMut};
use libfuzzer_sys::fuzz_target;
use skiff::http::h1::body::{Chunk, ChunkedDecoder};
use skiff::http::h1::parse::{self, Framing};

/// What an HTTP/2 client sends first; the `h2` target covers those.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How many requests `data` holds, read back to back.
fn requests_in(data: &[u8]) -> u64 {
    let mut buf = BytesMut::from(data);
    let mut count = 0;
    while let Ok(Some(head)) = parse::parse(&buf, parse::HeadLimits::default()) {
        count += 1;
        buf.advance(head.head_len);
        match head.framing {
            Framing::Empty => {}
            Framing::Length(n) => match usize::try_from(n) {
                Ok(n) if n <= buf.len() => buf.advance(n),
                _ => break,
            },
            Framing::Chunked => {
                let mut decoder = ChunkedDecoder::default();
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Some(Chunk::End)) => break,
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => return count,
                    }
                }
            }
        }
    }
    count
}

fuzz_target!(|data: &[u8]| {
    if data.starts_with(H2_PREFACE) {
        return;
    }
    let harness = skiff_fuzz::harness();
    harness.run(data, requests_in(data));
});
