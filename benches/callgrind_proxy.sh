#!/usr/bin/env bash
# Instructions per proxied V2 request, counted by callgrind: the quiet number
# for a hot-path change's cost (docs/benchmarks.md). Wall-clock CPU on a
# shared 2-core box moves ±30% between runs; instruction counts do not.
#
#   benches/callgrind_proxy.sh [SWITCHYARD_BINARY ...]
#
# Each binary (default target/release/switchyard, built unless SKIP_BUILD=1)
# runs under `valgrind --tool=callgrind` with `listeners.http.threads: 1` in
# front of a static nginx V2 backend (the proxy_overhead.sh payloads: a 1 KB
# JSON request, a fixed response). 200 warm-up requests, then counting is
# switched on for N=2000 keep-alive requests from one client, every thread
# counted (instrumentation is switched on for exactly that window). nginx as a reverse proxy (1 worker, keep-alive upstream) is
# measured the same way beside it. Prints one markdown row per proxy.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${N:-2000}"
WARMUP="${WARMUP:-200}"
PIN=0
log() { printf '[callgrind] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"
command -v valgrind >/dev/null || die "valgrind is not installed (apt-get install valgrind)"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
[ -x "$NGINX" ] || "$REPO/scripts/setup.sh" >/dev/null

BINARIES=("$@")
if [ "${#BINARIES[@]}" -eq 0 ]; then
  switchyard_binary
  BINARIES=("$SWITCHYARD")
fi
work_dir callgrind
chmod 755 "$WORK"
python3 "$REPO/benches/proxy_overhead.py" payloads "$WORK"
mapfile -t PORTS < <(python3 "$REPO/benches/proxy_overhead.py" freeports 6)
P_BACKEND=${PORTS[0]} P_PROXY=${PORTS[1]} P_METRICS=${PORTS[2]} P_CONTROL=${PORTS[3]} P_GRPC=${PORTS[4]}

nginx_conf() { # $1 = dir, $2 = server block
  mkdir -p "$1/tmp"
  cat > "$1/nginx.conf" <<NGX
worker_processes 1;
master_process off;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $1/tmp/body;
  proxy_temp_path $1/tmp/proxy;
  fastcgi_temp_path $1/tmp/fastcgi;
  uwsgi_temp_path $1/tmp/uwsgi;
  scgi_temp_path $1/tmp/scgi;
  keepalive_requests 10000000;
  upstream v2 { server 127.0.0.1:$P_BACKEND; keepalive 8; }
  $2
}
NGX
}
nginx_conf "$WORK/backend" "server { listen 127.0.0.1:$P_BACKEND; default_type application/json;
    location = /v2 { return 200 '{\"name\":\"static\",\"version\":\"1\",\"extensions\":[]}'; }
    location = /v2/models/mlp/infer { return 200 '$(cat "$WORK/response.json")'; } }"
nginx_conf "$WORK/nginx" "server { listen 127.0.0.1:$P_PROXY;
    location / { proxy_pass http://v2; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
start backend "$NGINX" -c "$WORK/backend/nginx.conf"

cat > "$WORK/switchyard.yaml" <<YAML
listeners:
  http: { address: 127.0.0.1:$P_PROXY, default_upstream: http://127.0.0.1:$P_BACKEND, threads: 1 }
  metrics: { address: 127.0.0.1:$P_METRICS }
  control: { address: 127.0.0.1:$P_CONTROL }
  grpc: { address: 127.0.0.1:$P_GRPC }
logging: { level: warn }
backends:
  server: { kind: v2-http, endpoints: ["http://127.0.0.1:$P_BACKEND"], timeout: 30s }
models:
  "*":
    variants:
      - { name: default, backend: server }
YAML

# drive WARMUP N: keep-alive POSTs of the payload; the counted phase starts
# when the script prints "go" and waits for a line on stdin.
client() {
  python3 - "$P_PROXY" "$WORK/request.json" "$@" <<'PY'
import http.client, sys, time
port, body, phase = int(sys.argv[1]), open(sys.argv[2], "rb").read(), sys.argv[3]
n = int(sys.argv[4])
deadline = time.time() + 120
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("POST", "/v2/models/mlp/infer", body, {"Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        if r.status == 200:
            break
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit("proxy never answered")
    time.sleep(0.2)
for _ in range(n):
    c.request("POST", "/v2/models/mlp/infer", body, {"Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
}

# measure NAME COMMAND...: instructions per request of COMMAND as the proxy.
measure() {
  local name=$1; shift
  local slug; slug="$(printf '%s' "$name" | tr -c 'A-Za-z0-9_-' '_')"
  local out="$WORK/$slug.callgrind"
  start "$slug" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" "$@"
  local pid=$LAST_PID
  client warmup "$WARMUP"
  callgrind_control -i on "$pid" >/dev/null
  client count "$N"
  callgrind_control -i off "$pid" >/dev/null
  stop "$pid"
  local total
  total="$(grep -h '^summary:\|^totals:' "$out"* | awk '{s+=$2} END {print s}')"
  printf '| %s | %d |\n' "$name" "$(( total / N ))"
}

echo "| proxy | instructions / proxied request |"
echo "|---|---:|"
for b in "${BINARIES[@]}"; do
  measure "switchyard (${b#"$REPO/"}, threads 1)" "$b" serve --config "$WORK/switchyard.yaml"
done
measure "nginx (reverse proxy, 1 worker)" "$NGINX" -c "$WORK/nginx/nginx.conf"
