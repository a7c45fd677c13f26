#!/usr/bin/env bash
# User-space instructions per request under callgrind (repeatable on a
# noisy machine; includes start-up, about 1% at these counts):
#   benches/scripts/callgrind.sh SKIFF_BIN [OUT_FILE]
set -euo pipefail
source "$(dirname "$0")/common.sh"
OUT=${2:-$WORK/callgrind.out}
start_upstreams
skiff_config c 29904 28004
valgrind --tool=callgrind --callgrind-out-file="$OUT" "$1" run -c "$WORK/c.yaml" --threads 1 --log-level warn 2>/dev/null & V=$!
sleep 4
n=$(taskset -c 1 wrk -t1 -c50 -d10s http://127.0.0.1:28004/ | awk '/requests in/{print $1}')
kill -INT $V; wait $V || true
ir=$(awk '/^(summary|totals):/{print $2; exit}' "$OUT")
echo "$n requests, $ir instructions, $(( ir / n )) per request"
