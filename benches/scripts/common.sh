# Shared by the scripts here: three upstreams on core 1, a skiff config
# in front of them, and the load. Source it; needs wrk and a release
# skiff-bench. A script's first argument `--h2` sets LOAD=h2 (parsed by
# the script, before it sources this). PORT_OFFSET=N moves every port
# by N, so two runs on one machine do not meet. BODY_SIZE=N makes the
# upstreams answer N-byte bodies (default 1024; 65536 for the 64k case).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH=${SKIFF_BENCH:-$ROOT/target/release/skiff-bench}
WORK=$(mktemp -d)
OFF=${PORT_OFFSET:-0}
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT

start_upstreams() {
  taskset -c 1 "$BENCH" upstream --body-size "${BODY_SIZE:-1024}" \
    --listen "127.0.0.1:$((28081 + OFF)),127.0.0.1:$((28082 + OFF)),127.0.0.1:$((28083 + OFF))" >/dev/null 2>&1 &
  sleep 0.5
}

# A self-signed ECDSA P-256 certificate for localhost: $WORK/cert.pem, key.pem.
make_cert() {
  [ -f "$WORK/cert.pem" ] && return
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
}

# haproxy_config FILE BIND [GLOBAL_LINE]: HAProxy as `skiff-bench compare`
# configures it (one thread, keep-alive to the three upstreams, no access
# log), bound as BIND ("ADDR:PORT[ options]"), with one more line for
# its global section if given.
haproxy_config() {
  local extra=""
  if [ -n "${3:-}" ]; then extra="  $3"$'\n'; fi
  cat > "$1" <<EOT
global
  nbthread 1
  maxconn 9900
${extra}defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend bench
  bind $2
  default_backend app
backend app
  balance roundrobin
  server s0 127.0.0.1:$((28081 + OFF))
  server s1 127.0.0.1:$((28082 + OFF))
  server s2 127.0.0.1:$((28083 + OFF))
EOT
}

# skiff_config NAME ADMIN_PORT LISTEN_PORT [tls]: writes $WORK/NAME.yaml;
# with `tls`, the listener terminates TLS with make_cert's certificate.
skiff_config() {
  local tls=""
  if [ "${4:-}" = tls ]; then
    make_cert
    tls="    tls: { cert: $WORK/cert.pem, key: $WORK/key.pem }"
  fi
  # RICH=1: the route also matches a header, rewrites the path and edits
  # the response's headers (what a Gateway API rule often does).
  local route="      - match: { path_prefix: / }
        cluster: up"
  # RICH=2: the header match and the response edit, no rewrite.
  if [ "${RICH:-0}" = 1 ]; then
    route="      - match: { path_prefix: /, headers: [{ name: x-canary, present: false }] }
        cluster: up
        rewrite: { path_prefix: / }
        response_headers: { set: { x-served-by: skiff } }"
  elif [ "${RICH:-0}" = 2 ]; then
    route="      - match: { path_prefix: /, headers: [{ name: x-canary, present: false }] }
        cluster: up
        response_headers: { set: { x-served-by: skiff } }"
  fi
  cat > "$WORK/$1.yaml" <<EOT
admin: { listen: 127.0.0.1:$(($2 + OFF)) }
listeners:
  - name: web
    listen: 127.0.0.1:$(($3 + OFF))
$tls
    routes:
$route
clusters:
  - name: up
    lb: round_robin
    endpoints: [127.0.0.1:$((28081 + OFF)), 127.0.0.1:$((28082 + OFF)), 127.0.0.1:$((28083 + OFF))]
EOT
}

# load PORT SECONDS: puts load on skiff (at PORT + OFF) from core 1, prints the requests
# done. LOAD=h1 (default): wrk, 50 HTTP/1.1 connections. LOAD=h2: the
# `compare` h2 scenario, h2c with 2 connections x 50 streams.
load() {
  if [ "${LOAD:-h1}" = h2 ]; then
    taskset -c 1 "$BENCH" load --protocol h2 -c 2 --streams 50 --threads 1 -w 0s -d "$2s" \
      "http://127.0.0.1:$(($1 + OFF))/" | awk 'NR==2{print $4}'
  else
    # SCHEME=https for a TLS listener. Reconnections (timeouts, errors)
    # would add handshakes: they are reported on stderr.
    local out
    out=$(taskset -c 1 wrk -t1 -c50 -d"$2s" "${SCHEME:-http}://127.0.0.1:$(($1 + OFF))/")
    grep -E "Socket errors|Non-2xx" <<<"$out" >&2 || true
    awk '/requests in/{print $1}' <<<"$out"
  fi
}
