#!/usr/bin/env bash
# User-space instructions per request under callgrind (repeatable on a
# noisy machine; counters are zeroed once skiff has started, so start-up
# is left out):
#   benches/scripts/callgrind.sh SKIFF_BIN [OUT_FILE]
# With TLS=1 the listener terminates TLS and wrk speaks HTTPS/1.1.
set -euo pipefail
source "$(dirname "$0")/common.sh"
OUT=${2:-$WORK/callgrind.out}
start_upstreams
scheme=http
if [ "${TLS:-0}" = 1 ]; then scheme=https; skiff_config c 29904 28004 tls; else skiff_config c 29904 28004; fi
valgrind --tool=callgrind --callgrind-out-file="$OUT" "$1" run -c "$WORK/c.yaml" --threads 1 --log-level warn 2>/dev/null & V=$!
sleep 4
callgrind_control -z $V >/dev/null
out=$(taskset -c 1 wrk -t1 -c50 -d10s $scheme://127.0.0.1:28004/)
n=$(echo "$out" | awk '/requests in/{print $1}')
# Reconnections (timeouts, errors) add handshakes: say so.
echo "$out" | grep -E "Socket errors|Non-2xx" || true
kill -INT $V; wait $V || true
ir=$(awk '/^(summary|totals):/{print $2; exit}' "$OUT")
echo "$n requests, $ir instructions, $(( ir / n )) per request"
