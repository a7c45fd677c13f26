#!/usr/bin/env bash
# User and system CPU time per request, and TCP segments per request, of
# skiff and HAProxy under the same load, interleaved:
#   benches/scripts/kernel-share.sh SKIFF_BIN [ROUNDS] [SECONDS]
# Both pinned to core 0 (skiff with --threads 1, HAProxy with nbthread 1,
# the `compare` configuration); wrk (50 HTTP/1.1 connections, 1 KiB) and
# the upstreams on core 1. utime and stime from /proc; segments from
# nstat, so run it in a network namespace of its own.
set -euo pipefail
source "$(dirname "$0")/common.sh"
SKIFF=$1; ROUNDS=${2:-3}; SECS=${3:-5}
TCK=$(getconf CLK_TCK)
start_upstreams
haproxy_config "$WORK/h.cfg" "127.0.0.1:$((28005 + OFF))"
taskset -c 0 haproxy -db -f "$WORK/h.cfg" >/dev/null 2>&1 & PH=$!
skiff_config s 29903 28003
taskset -c 0 "$SKIFF" run -c "$WORK/s.yaml" --threads 1 --log-level warn & PS=$!
sleep 1
times() { awk '{print $14, $15}' "/proc/$1/stat"; }
segments() { nstat -az TcpOutSegs | awk '/TcpOutSegs/{print $2}'; }
per() { echo "scale=2; $1 / $2" | bc; }
for r in $(seq "$ROUNDS"); do
  for x in haproxy skiff; do
    if [ $x = haproxy ]; then P=$PH; PORT=28005; else P=$PS; PORT=28003; fi
    load $PORT 1 >/dev/null
    read -r u0 s0 < <(times $P)
    g0=$(segments)
    n=$(load $PORT "$SECS")
    g1=$(segments)
    read -r u1 s1 < <(times $P)
    printf "round %s %-8s %8s requests: user %5s µs, system %5s µs, %s TCP segments a request\n" \
      "$r" $x "$n" "$(per "($u1-$u0)*1000000/$TCK" "$n")" "$(per "($s1-$s0)*1000000/$TCK" "$n")" \
      "$(per "($g1-$g0)" "$n")"
  done
done
