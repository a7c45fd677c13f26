#!/usr/bin/env bash
# The cost of skiff's metrics (issue 8): builds skiff as is and with the
# request path's metric recording compiled out, then runs the comparison,
# the /metrics scrape timing and the p99-under-scrapes run.
#
#   bash benches/scripts/metrics-cost.sh            # all three parts
#   bash benches/scripts/metrics-cost.sh render     # render in process only
#   METRICS_COST_ROUNDS=5 SKIFF_COMPARE_BIN=/tmp/skiff-old \
#     bash benches/scripts/metrics-cost.sh scrape   # p99 under scrapes, two builds
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p skiff --bin skiff
if [ $# -gt 0 ]; then
    # Parts named: the on/off comparison (which needs the second build) is skipped.
    exec cargo run --release -p skiff-bench --example metrics_cost -- "$@"
fi
cargo build --release -p skiff --bin skiff --features no-metrics --target-dir target/no-metrics
cp target/no-metrics/release/skiff /tmp/skiff-no-metrics
SKIFF_NO_METRICS_BIN=/tmp/skiff-no-metrics cargo run --release -p skiff-bench --example metrics_cost
