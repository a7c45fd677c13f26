//! skiff's benchmarks.
//!
//! - `benches/hot_path.rs`: criterion microbenches of the per-request
//!   pieces (endpoint pick, route match, header handling), run with
//!   `cargo bench -p skiff-bench`.
//! - `examples/memory.rs`: idle RSS of `skiff run` and RSS growth while
//!   streaming through it, run with
//!   `cargo run --release -p skiff-bench --example memory`.
//!
//! The load generator and peer runner (`skiff-bench` against nginx, HAProxy
//! and Pingora) come with the benchmark-harness issue.

#![forbid(unsafe_code)]
