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

# skiff_config NAME ADMIN_PORT LISTEN_PORT: writes $WORK/NAME.yaml
skiff_config() {
  cat > "$WORK/$1.yaml" <<EOT
admin: { listen: 127.0.0.1:$2 }
listeners:
  - name: web
    listen: 127.0.0.1:$3
    routes:
      - match: { path_prefix: / }
        cluster: up
clusters:
  - name: up
    lb: round_robin
    endpoints: [127.0.0.1:28081, 127.0.0.1:28082, 127.0.0.1:28083]
EOT
}
