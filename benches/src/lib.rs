//! skiff's benchmarks and measurement tools.
//!
//! - [`load`]: the HTTP load generator behind `skiff-bench load`: closed or
//!   open loop (no coordinated omission), HTTP/1.1, h2c and HTTPS, latency in
//!   an HDR histogram. Callers that compare several targets (the peer runner)
//!   run one [`load::LoadSpec`] after another and hand every
//!   [`load::LoadResult`] to [`report`] for one table, JSON file and chart.
//! - [`compare`] and [`peers`]: the peer runner behind `skiff-bench
//!   compare` (skiff against the direct path, nginx, HAProxy and Pingora),
//!   and [`upstream`], the upstream pool it loads them with.
//! - [`report`]: those results as a terminal table, JSON and an SVG chart of
//!   the latency percentile curves.
//! - `benches/hot_path.rs`: criterion microbenches of the per-request
//!   pieces (endpoint pick, route match, header handling), run with
//!   `cargo bench -p skiff-bench`.
//! - `examples/memory.rs`: idle RSS of `skiff run` and RSS growth while
//!   streaming through it, run with
//!   `cargo run --release -p skiff-bench --example memory`.

#![forbid(unsafe_code)]

pub mod compare;
pub mod load;
pub mod peers;
pub mod report;
pub mod upstream;
