#!/usr/bin/env bash
# TLS termination, skiff against nginx and HAProxy configured alike:
#   benches/scripts/tls.sh SKIFF_BIN [ROUNDS] [DURATION]
#
# Each proxy: one worker pinned to core 0, the same ECDSA P-256
# certificate, TLS 1.2 and 1.3, session cache and tickets on, HTTP/1.1
# keep-alive to the same three upstreams (`skiff-bench upstream`, core 1).
# Clients on core 1:
#   keep-alive   wrk, 50 kept-alive HTTPS connections, 1 KiB responses;
#   reconnect    wrk with `Connection: close` on every request: a new TCP
#                connection per request, whose TLS session wrk resumes;
#   full         a full handshake for every request: `skiff-bench load
#                --new-connections` (8 connections at a time, no session
#                resumption, a new connection per request). OpenSSL's
#                `s_time -new` spends more CPU per handshake than any of the
#                servers, so it measured itself; rustls' client spends less.
# CPU/req is the proxy's utime + stime (all its processes) over the run,
# divided by its requests (or handshakes). Runs are interleaved over
# ROUNDS rounds, each starting with another peer; the medians are printed
# at the end. Use 3 or 6 rounds so that each peer goes first as often.
set -euo pipefail
source "$(dirname "$0")/common.sh"
SKIFF=${1:?usage: tls.sh SKIFF_BIN [ROUNDS] [DURATION]}
ROUNDS=${2:-3}
DURATION=${3:-5s}
HZ=$(getconf CLK_TCK)

make_cert
cat "$WORK/cert.pem" "$WORK/key.pem" > "$WORK/combined.pem"
mkdir -p "$WORK/nginx-body" "$WORK/nginx-proxy"

cat > "$WORK/skiff.yaml" <<EOT
admin: { listen: 127.0.0.1:29901 }
shutdown: { drain_delay: 0s, grace_period: 1s }
listeners:
  - name: web
    listen: 127.0.0.1:28443
    tls: { cert: $WORK/cert.pem, key: $WORK/key.pem }
    routes:
      - cluster: up
clusters:
  - name: up
    lb: round_robin
    endpoints: [127.0.0.1:28081, 127.0.0.1:28082, 127.0.0.1:28083]
EOT

cat > "$WORK/nginx.conf" <<EOT
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log stderr warn;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/nginx-body;
  proxy_temp_path $WORK/nginx-proxy;
  upstream app {
    server 127.0.0.1:28081; server 127.0.0.1:28082; server 127.0.0.1:28083;
    keepalive 256;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:28444 ssl;
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOT

haproxy_config "$WORK/haproxy.cfg" "127.0.0.1:28445 ssl crt $WORK/combined.pem alpn h2,http/1.1" \
  "ssl-default-bind-options ssl-min-ver TLSv1.2"

start_upstreams
taskset -c 0 "$SKIFF" run -c "$WORK/skiff.yaml" --threads 1 --log-level warn 2>"$WORK/skiff.log" &
SKIFF_PID=$!
taskset -c 0 nginx -c "$WORK/nginx.conf" -e stderr 2>"$WORK/nginx.log" &
NGINX_PID=$!
taskset -c 0 haproxy -f "$WORK/haproxy.cfg" 2>"$WORK/haproxy.log" &
HAPROXY_PID=$!
sleep 1.5

# ticks PID: utime + stime of PID and its children (nginx's worker).
ticks() {
  local sum=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    sum=$(( sum + $(awk '{print $14 + $15}' "/proc/$p/stat") ))
  done
  echo "$sum"
}

declare -A PORT=([skiff]=28443 [nginx]=28444 [haproxy]=28445)
declare -A PID=([skiff]=$SKIFF_PID [nginx]=$NGINX_PID [haproxy]=$HAPROXY_PID)

for peer in skiff nginx haproxy; do
  # What each negotiates with an OpenSSL client, for the record.
  echo | openssl s_client -connect "127.0.0.1:${PORT[$peer]}" 2>/dev/null \
    | awk -v p="$peer" '/^New, /{print p": "$0}'
  curl -sk -o /dev/null -w "$peer: curl %{http_code}\n" "https://127.0.0.1:${PORT[$peer]}/"
done

echo "scenario round peer requests/s cpu_us_per_request"
: > "$WORK/runs"
PEERS=(skiff nginx haproxy)
for round in $(seq 1 "$ROUNDS"); do
  # Each round starts with another peer: the first run after a scenario
  # that opened thousands of connections meets their TIME_WAIT sockets.
  first=$(( (round - 1) % 3 ))
  order=("${PEERS[@]:first}" "${PEERS[@]:0:first}")
  for scenario in keep-alive reconnect full; do
    for peer in "${order[@]}"; do
      before=$(ticks "${PID[$peer]}")
      if [ "$scenario" = full ]; then
        out=$(taskset -c 1 "$BENCH" load --new-connections --insecure -c 8 --threads 1 \
          -d "$DURATION" -w 0s "https://127.0.0.1:${PORT[$peer]}/" 2>&1)
        after=$(ticks "${PID[$peer]}")
        n=$(awk '/^https:/{print $4}' <<<"$out")
        rps=$(awk '/^https:/{print $5}' <<<"$out")
        errors=$(awk '/^https:/ && $7 > 0 {print "failed " $7}' <<<"$out")
      else
        extra=()
        [ "$scenario" = reconnect ] && extra=(-H "Connection: close")
        out=$(taskset -c 1 wrk -t1 -c50 -d"$DURATION" "${extra[@]}" "https://127.0.0.1:${PORT[$peer]}/")
        after=$(ticks "${PID[$peer]}")
        n=$(awk '/requests in/{print $1}' <<<"$out")
        rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
        errors=$(awk '/Socket errors|Non-2xx/{print}' <<<"$out" | tr '\n' ' ')
      fi
      cpu=$(awk -v t=$(( after - before )) -v hz="$HZ" -v n="$n" 'BEGIN{printf "%.2f", t / hz * 1e6 / n}')
      echo "$scenario $round $peer $rps $cpu $errors" | tee -a "$WORK/runs"
    done
  done
done

echo
echo "median over $ROUNDS rounds: scenario peer requests/s cpu_us_per_request"
for scenario in keep-alive reconnect full; do
  for peer in skiff nginx haproxy; do
    med() { awk -v s="$scenario" -v p="$peer" -v c="$1" '$1 == s && $3 == p {print $c}' "$WORK/runs" \
      | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
    echo "$scenario $peer $(med 4) $(med 5)"
  done
done
# skiff's own count: how many of its handshakes were resumptions.
curl -s http://127.0.0.1:29901/metrics | grep -E '^skiff_tls_(handshakes|resumed)_total'
