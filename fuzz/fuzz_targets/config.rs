//! Config text → `Config::parse`: any input is either a config or a list of
//! diagnostics, never a panic; a config it accepts names only clusters it
//! has, has unique names, and serialises (as `/config` shows it). Built
//! against `skiff-config` alone, as `skiff check` reads a file.
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use skiff_config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, "fuzz.yaml", Path::new("/nonexistent")) {
        Err(diags) => {
            // Every refusal says something, and says where.
            assert!(!diags.to_string().is_empty(), "an empty error for {text:?}");
            assert!(
                diags.items.iter().all(|d| d.line >= 1 && d.col >= 1),
                "a diagnostic without a position for {text:?}: {diags}"
            );
        }
        Ok(config) => {
            let names: HashSet<&str> = config.clusters.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(
                names.len(),
                config.clusters.len(),
                "duplicate cluster names accepted"
            );
            let listeners: HashSet<&str> =
                config.listeners.iter().map(|l| l.name.as_str()).collect();
            assert_eq!(
                listeners.len(),
                config.listeners.len(),
                "duplicate listener names accepted"
            );
            for listener in &config.listeners {
                for route in &listener.routes {
                    for cluster in route.clusters() {
                        assert!(
                            names.contains(cluster),
                            "a validated route names no cluster: {cluster:?}"
                        );
                    }
                }
            }
            // What `/config` shows serialises.
            serde_json::to_string(&config).expect("config serialises");
        }
    }
});
