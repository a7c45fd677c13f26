#!/usr/bin/env bash
# User-space instructions per request under callgrind (repeatable on a
# noisy machine; counters are zeroed once skiff has started, so start-up
# is left out):
#   benches/scripts/callgrind.sh [--h2] SKIFF_BIN [OUT_FILE]
# (--h2: h2c clients, 2 connections x 50 streams, instead of wrk's 50
# HTTP/1.1 connections). With TLS=1 the listener terminates TLS and wrk
# speaks HTTPS/1.1 (not with --h2).
set -euo pipefail
if [ "${1:-}" = --h2 ]; then LOAD=h2; shift; fi
source "$(dirname "$0")/common.sh"
OUT=${2:-$WORK/callgrind.out}
start_upstreams
if [ "${TLS:-0}" = 1 ]; then SCHEME=https; skiff_config c 29904 28004 tls; else skiff_config c 29904 28004; fi
valgrind --tool=callgrind --callgrind-out-file="$OUT" "$1" run -c "$WORK/c.yaml" --threads 1 --log-level warn 2>/dev/null & V=$!
sleep 4
callgrind_control -z $V >/dev/null
n=$(load 28004 10)
kill -INT $V; wait $V || true
ir=$(awk '/^(summary|totals):/{print $2; exit}' "$OUT")
echo "$n requests, $ir instructions, $(( ir / n )) per request"
