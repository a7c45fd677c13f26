//! Config text → `Config::parse`: any input is either a config or a list of
//! diagnostics, never a panic; a config it accepts has routes that resolve.
#![no_main]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use skiff::cluster::Cluster;
use skiff::config::Config;
use skiff::metrics::Registry;
use skiff::route::RouteTable;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, "fuzz.yaml", Path::new("/nonexistent")) {
        Err(diags) => {
            // Every refusal says something.
            assert!(!diags.to_string().is_empty(), "an empty error for {text:?}");
        }
        Ok(config) => {
            let clusters: HashMap<String, Arc<Cluster>> = config
                .clusters
                .iter()
                .map(|c| (c.name.clone(), Arc::new(Cluster::new(c.clone()))))
                .collect();
            assert_eq!(
                clusters.len(),
                config.clusters.len(),
                "duplicate cluster names accepted"
            );
            for listener in &config.listeners {
                if let Err(e) = RouteTable::build(listener, &clusters, &Registry::default()) {
                    panic!("a validated config routes nowhere: {e}");
                }
            }
            // What `/config` shows serialises.
            serde_json::to_string(&config).expect("config serialises");
        }
    }
});
