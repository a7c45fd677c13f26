# Shared by the scripts here: three upstreams on core 1 and a skiff config
# in front of them. Source it; needs wrk and a release skiff-bench.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH=${SKIFF_BENCH:-$ROOT/target/release/skiff-bench}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT

start_upstreams() {
  taskset -c 1 "$BENCH" upstream --listen 127.0.0.1:28081,127.0.0.1:28082,127.0.0.1:28083 >/dev/null 2>&1 &
  sleep 0.5
}

# A self-signed ECDSA P-256 certificate for localhost: $WORK/cert.pem, key.pem.
make_cert() {
  [ -f "$WORK/cert.pem" ] && return
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
}

# skiff_config NAME ADMIN_PORT LISTEN_PORT [tls]: writes $WORK/NAME.yaml;
# with `tls`, the listener terminates TLS with make_cert's certificate.
skiff_config() {
  local tls=""
  if [ "${4:-}" = tls ]; then
    make_cert
    tls="    tls: { cert: $WORK/cert.pem, key: $WORK/key.pem }"
  fi
  cat > "$WORK/$1.yaml" <<EOT
admin: { listen: 127.0.0.1:$2 }
listeners:
  - name: web
    listen: 127.0.0.1:$3
$tls
    routes:
      - match: { path_prefix: / }
        cluster: up
clusters:
  - name: up
    lb: round_robin
    endpoints: [127.0.0.1:28081, 127.0.0.1:28082, 127.0.0.1:28083]
EOT
}
