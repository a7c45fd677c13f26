#!/usr/bin/env bash
# CPU time per request of two skiff binaries, interleaved in one run:
#   benches/scripts/ab-cpu.sh [--h2] BIN_A BIN_B [ROUNDS] [SECONDS]
# Both pinned to core 0 with --threads 1; wrk (50 connections; --h2: h2c,
# 2 connections x 50 streams) and the upstreams on core 1; utime+stime
# from /proc over each run / requests.
set -euo pipefail
if [ "${1:-}" = --h2 ]; then LOAD=h2; shift; fi
source "$(dirname "$0")/common.sh"
A=$1; B=$2; ROUNDS=${3:-4}; SECS=${4:-5}
TCK=$(getconf CLK_TCK)
start_upstreams
skiff_config a 29901 28001; skiff_config b 29902 28002
taskset -c 0 "$A" run -c "$WORK/a.yaml" --threads 1 --log-level warn & PA=$!
taskset -c 0 "$B" run -c "$WORK/b.yaml" --threads 1 --log-level warn & PB=$!
sleep 1
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
declare -A REQ CPU
for r in $(seq "$ROUNDS"); do
  for x in a b; do
    if [ $x = a ]; then P=$PA; PORT=28001; else P=$PB; PORT=28002; fi
    load $PORT 1 >/dev/null
    c0=$(cpu $P)
    n=$(load $PORT "$SECS")
    c1=$(cpu $P)
    echo "round $r $x: $n requests, $(echo "scale=2; ($c1-$c0)*1000000/$TCK/$n" | bc) µs/req"
    REQ[$x]=$(( ${REQ[$x]:-0} + n )); CPU[$x]=$(( ${CPU[$x]:-0} + c1 - c0 ))
  done
done
for x in a b; do
  echo "$x: $(echo "scale=2; ${CPU[$x]}*1000000/$TCK/${REQ[$x]}" | bc) µs/req over ${REQ[$x]} requests"
done
