#!/usr/bin/env bash
# System calls per proxied request (strace -c), 1 KiB responses:
#   benches/scripts/syscalls.sh [--h2] SKIFF_BIN
# (--h2: h2c clients, 2 connections x 50 streams)
set -euo pipefail
if [ "${1:-}" = --h2 ]; then LOAD=h2; shift; fi
source "$(dirname "$0")/common.sh"
start_upstreams
skiff_config s 29903 28003
taskset -c 0 "$1" run -c "$WORK/s.yaml" --threads 1 --log-level warn & P=$!
sleep 1
strace -c -f -p $P -o "$WORK/strace" & S=$!
sleep 0.5
n=$(load 28003 3)
kill -INT $S; wait $S || true
echo "$n requests"
awk -v n="$n" 'NR>2 && $4 ~ /^[0-9]+$/ && $4/n > 0.01 {printf "%-12s %6.3f per request\n", $NF, $4/n}' "$WORK/strace"
