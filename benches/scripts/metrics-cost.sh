#!/usr/bin/env bash
# The cost of skiff's metrics (issue 8): builds skiff as is and with the
# request path's metric recording compiled out, then runs the comparison,
# the /metrics scrape timing and the p99-under-scrapes run.
#
#   bash benches/scripts/metrics-cost.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p skiff --bin skiff
cargo build --release -p skiff --bin skiff --features no-metrics --target-dir target/no-metrics
cp target/no-metrics/release/skiff /tmp/skiff-no-metrics
SKIFF_NO_METRICS_BIN=/tmp/skiff-no-metrics cargo run --release -p skiff-bench --example metrics_cost
