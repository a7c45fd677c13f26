//! A cluster's endpoint state under an arbitrary sequence of what the
//! control path and the request path do to it: new endpoint sets (adds,
//! removals, weight changes), active health results, outlier-detection
//! outcomes, settings reloads, picks, and requests finishing.
//!
//! Invariants, after every step:
//! - a pick is a current member, never a removed (draining) one;
//! - outside panic mode it is neither ejected nor failing its checks;
//!   in panic mode it is never one still waiting for its first check;
//! - in-flight counts never go below zero (they are unsigned: a wrap
//!   shows as a huge number) and are back at zero once every request ends.
#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use skiff::cluster::endpoint::{self, Endpoint, InFlight};
use skiff::cluster::{Cluster, Settings};
use skiff_config::endpoints::{EndpointSpec, MAX_WEIGHT};
use skiff_config::{ClusterConfig, Config};
use skiff_discovery::EndpointSet;

/// One step, read from a line of the input (readable seeds and reproducers):
///
/// ```text
/// apply 1:1 2:3 3:1          # a set of port:weight (127.0.0.1)
/// pick
/// finish <n> ok|fail         # ends the n-th held request
/// check <n> pass|fail <k>    # active check of member n, k in a row
/// outcome <n> ok|fail        # a request outcome for member n
/// settings <i>
/// sweep
/// ```
#[derive(Debug)]
enum Op {
    /// A new set from discovery: (port, weight) pairs, duplicates allowed.
    Apply(Vec<(u16, u32)>),
    Pick,
    /// Ends the n-th held request, as a success or a failure (5xx/reset).
    Finish {
        n: u8,
        failed: bool,
    },
    /// An active check result for the n-th member.
    Check {
        n: u8,
        pass: bool,
        in_a_row: u8,
    },
    /// A request outcome reported for the n-th member without a pick.
    Outcome {
        n: u8,
        failed: bool,
    },
    /// Reload with one of the prepared settings.
    Settings(u8),
    /// The periodic upkeep.
    Sweep,
}

/// Settings a reload may switch between: policies, health checks on and
/// off, panic thresholds, outlier detection that ejects easily.
const SETTINGS: &[&str] = &[
    "lb: round_robin",
    "lb: least_request",
    "lb: round_robin\n    health_check: { tcp: {}, interval: 1h, healthy_threshold: 2, unhealthy_threshold: 2 }",
    "lb: least_request\n    health_check: { tcp: {}, interval: 1h, healthy_threshold: 1, unhealthy_threshold: 1 }\n    panic_threshold: 0",
    "lb: round_robin\n    panic_threshold: 100\n    outlier_detection: { consecutive_failures: 1, max_ejection_percent: 100, base_ejection_time: 1h }",
    "lb: least_request\n    outlier_detection: { consecutive_failures: 2, max_ejection_percent: 50, base_ejection_time: 1h }\n    slow_start: { window: 1h }",
];

fn settings(i: usize) -> ClusterConfig {
    let text = format!(
        "listeners: []\nclusters:\n  - name: app\n    endpoints: []\n    {}\n",
        SETTINGS[i % SETTINGS.len()]
    );
    match Config::parse(&text, "fuzz.yaml", Path::new("/nonexistent")) {
        Ok(config) => config.clusters[0].clone(),
        Err(e) => panic!("the target's own settings are invalid: {e}"),
    }
}

fn check_pick(cluster: &Cluster, picked: &InFlight) {
    let snapshot = cluster.snapshot();
    let e = &picked.endpoint;
    assert!(
        snapshot.members.iter().any(|m| Arc::ptr_eq(m, e)),
        "picked {} which is not a member",
        e.address
    );
    assert!(!e.is_draining(), "picked draining {}", e.address);
    let checked = cluster.settings().health_check.is_some();
    if snapshot.panic {
        assert!(
            !checked || e.health() != endpoint::PENDING,
            "panic mode picked {} before its first check",
            e.address
        );
    } else {
        assert!(
            !e.is_ejected(),
            "picked ejected {} outside panic mode",
            e.address
        );
        if checked {
            assert!(
                e.takes_traffic(),
                "picked unhealthy {} outside panic mode",
                e.address
            );
        }
    }
}

fn read_op(line: &str) -> Option<Op> {
    let mut words = line.split_ascii_whitespace();
    let number = |w: Option<&str>| w.and_then(|w| w.parse::<u8>().ok());
    let failed = |w: Option<&str>| w == Some("fail");
    Some(match words.next()? {
        "apply" => Op::Apply(
            words
                .filter_map(|w| {
                    let (port, weight) = w.split_once(':').unwrap_or((w, "1"));
                    Some((port.parse().ok()?, weight.parse().ok()?))
                })
                .collect(),
        ),
        "pick" => Op::Pick,
        "finish" => Op::Finish {
            n: number(words.next())?,
            failed: failed(words.next()),
        },
        "check" => Op::Check {
            n: number(words.next())?,
            pass: !failed(words.next()),
            in_a_row: number(words.next()).unwrap_or(1),
        },
        "outcome" => Op::Outcome {
            n: number(words.next())?,
            failed: failed(words.next()),
        },
        "settings" => Op::Settings(number(words.next())?),
        "sweep" => Op::Sweep,
        _ => return None,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ops = text.lines().filter_map(read_op);
    let cluster = Cluster::new(settings(0)).expect("a plaintext cluster");
    let mut held: Vec<InFlight> = Vec::new();
    // Every endpoint ever created, to check its count at the end.
    let mut seen: HashMap<SocketAddr, Vec<Arc<Endpoint>>> = HashMap::new();
    for op in ops.take(1024) {
        match op {
            Op::Apply(list) => {
                let set: EndpointSet = list
                    .iter()
                    .take(64)
                    .map(|&(port, weight)| {
                        EndpointSpec::new(
                            SocketAddr::from(([127, 0, 0, 1], port)),
                            weight.clamp(1, MAX_WEIGHT),
                        )
                    })
                    .collect();
                cluster.apply(&set);
                for e in cluster.snapshot().members.iter() {
                    let list = seen.entry(e.address).or_default();
                    if !list.iter().any(|s| Arc::ptr_eq(s, e)) {
                        list.push(e.clone());
                    }
                }
            }
            Op::Pick => {
                if let Some(picked) = cluster.pick() {
                    check_pick(&cluster, &picked);
                    held.push(picked);
                } else {
                    assert!(
                        cluster.snapshot().endpoints.is_empty(),
                        "no pick from endpoints"
                    );
                }
            }
            Op::Finish { n, failed } => {
                if !held.is_empty() {
                    let request = held.swap_remove(n as usize % held.len());
                    cluster.record_outcome(&request.endpoint, failed);
                }
            }
            Op::Check { n, pass, in_a_row } => {
                let members = cluster.snapshot().members.clone();
                let settings = cluster.settings_full();
                if let (Some(check), false) = (&settings.health_check, members.is_empty()) {
                    let e = &members[n as usize % members.len()];
                    let failure = (!pass).then(|| "fuzzed failure".to_string());
                    cluster.record_check(e, failure, u32::from(in_a_row).max(1), check);
                }
            }
            Op::Outcome { n, failed } => {
                let members = cluster.snapshot().members.clone();
                if !members.is_empty() {
                    cluster.record_outcome(&members[n as usize % members.len()], failed);
                }
            }
            Op::Settings(i) => {
                let settings =
                    Settings::new(settings(i as usize), None).expect("a plaintext cluster");
                cluster.update_settings(settings)
            }
            Op::Sweep => cluster.sweep(),
        }
        for e in seen.values().flatten() {
            assert!(
                e.in_flight() < 1 << 32,
                "in-flight of {} went below zero",
                e.address
            );
        }
        let counted: u64 = seen.values().flatten().map(|e| e.in_flight()).sum();
        assert_eq!(
            counted,
            held.len() as u64,
            "in-flight counts differ from requests held"
        );
    }
    drop(held);
    for e in seen.values().flatten() {
        assert_eq!(e.in_flight(), 0, "{} still counts requests", e.address);
    }
    assert_eq!(cluster.in_flight(), 0);
    assert_eq!(
        cluster
            .stats
            .active
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the circuit breaker still counts requests"
    );
    let counts = cluster.endpoint_counts();
    assert_eq!(counts.draining, 0, "drained endpoints still listed");
});
