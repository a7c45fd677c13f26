//! YAML text → `skiff inject`: any input is injected or refused with an
//! error naming the document, never a panic; what it accepts injects again
//! to the same text (idempotent), so its own output always parses (for
//! now only inputs without anchors, aliases or tags, which the emitter
//! does not carry yet).
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::cli::inject::{inject, Options};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let options = Options::default();
    match inject(text, &options) {
        Err(e) => assert!(!e.to_string().is_empty(), "an empty error for {text:?}"),
        // Known gap: anchors, aliases and tags are not carried through to the
        // output yet, so only inputs without them are held to idempotence.
        Ok(_) if text.contains(['&', '*', '!']) => {}
        Ok(first) => {
            let second = inject(&first.yaml, &options).unwrap_or_else(|e| {
                panic!("skiff inject refused its own output: {e}\n{}", first.yaml)
            });
            assert_eq!(
                second.yaml, first.yaml,
                "injecting twice changed the output"
            );
        }
    }
});
