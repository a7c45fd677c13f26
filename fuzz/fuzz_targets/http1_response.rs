//! Bytes → `http::h1::response::parse`, the one HTTP/1 response head
//! parser (skiff's upstream client and its health checks): any input is a
//! partial head, an interim response, a final head or an error, never a
//! panic. The first byte says whether the request was HEAD.
//!
//! Invariants: a head is never longer than the bytes; interim heads are
//! 1xx (not 101); a final head's framing follows RFC 9112 §6.3 (no body
//! for HEAD, 204 and 304; a length dropped beside a coding closes the
//! connection; a body to the connection's end closes it); the client
//! path builds a response from the same bytes without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::http::h1::response::{parse, Framing, Parsed, MAX_HEADERS};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, wire)) = data.split_first() else {
        return;
    };
    let head_request = flags & 1 == 1;
    let mut at = 0;
    // Interim responses come before the final one, as the client reads them.
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let rest = &wire[at..];
        match parse(rest, head_request, &mut fields) {
            Err(why) => {
                assert!(!why.is_empty());
                return;
            }
            Ok(Parsed::Partial) => return,
            Ok(Parsed::Interim { len }) => {
                assert!(len > 0 && len <= rest.len(), "interim head of {len} bytes in {}", rest.len());
                at += len;
            }
            Ok(Parsed::Final(head)) => {
                assert!(head.len > 0 && head.len <= rest.len());
                assert!(!head.status.is_informational(), "{}", head.status);
                assert!(head.fields.len() <= MAX_HEADERS);
                let bodiless = head_request || matches!(head.status.as_u16(), 204 | 304);
                if bodiless {
                    assert_eq!(head.framing, Framing::Length(0), "{}", head.status);
                }
                if head.drop_length || head.framing == Framing::Close {
                    assert!(!head.keep_alive, "a connection kept after an untrusted framing");
                }
                return;
            }
        }
    }
});
