#!/usr/bin/env bash
# Proxy overhead of Switchyard vs nginx and HAProxy in front of the same static
# KServe V2 backend, measured open-loop at fixed rates in one run.
#
#   benches/proxy_overhead.sh            # builds, measures, prints a markdown report
#
# Paths: direct to the backend; Switchyard (listeners.http.threads 1 and 2);
# nginx reverse proxy (keepalive upstream, 1 worker); HAProxy (mode http,
# keep-alive to the server, nbthread 1). The backend is nginx (1 worker)
# answering POST /v2/models/mlp/infer with a fixed, valid V2 response.
# Everything binds 127.0.0.1 on free ports and is stopped on exit.
#
# Knobs (environment):
#   DURATION=12s        length of each measured point
#   SAT_DURATION=8s     length of each closed-loop saturation run
#   CONNS=8             client connections (oha -c)
#   FRACTIONS="0.25 0.5" rates as fractions of Switchyard's (threads 1) saturation
#   RATES="..."         explicit rates (req/s), skips the saturation search
#   SY_THREADS="1 2"    listeners.http.threads values to measure
#   SKIP_BUILD=1        use the existing target/release/switchyard
#   KEEP=1              keep the work directory (configs, logs, oha JSON)
#   OHA=path            load generator binary (default: oha on PATH or ~/.cargo/bin)
set -euo pipefail

DURATION="${DURATION:-12s}"
SAT_DURATION="${SAT_DURATION:-8s}"
CONNS="${CONNS:-8}"
FRACTIONS="${FRACTIONS:-0.25 0.5}"
SY_THREADS="${SY_THREADS:-1 2}"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELPER="$REPO/benches/proxy_overhead.py"
log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------------ tools
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
HAPROXY="$(command -v haproxy || echo /usr/sbin/haproxy)"
if [ ! -x "$NGINX" ] || [ ! -x "$HAPROXY" ]; then
  log "nginx/haproxy missing: running scripts/setup.sh"
  "$REPO/scripts/setup.sh" >/dev/null
  NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
  HAPROXY="$(command -v haproxy || echo /usr/sbin/haproxy)"
fi
OHA="${OHA:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}"
if [ ! -x "$OHA" ]; then
  log "oha missing: cargo install oha --locked (a few minutes)"
  cargo install oha --locked >&2
  OHA="$HOME/.cargo/bin/oha"
fi
[ -x "$OHA" ] || die "no oha at $OHA"
# oha ≥ 1.5 names its JSON switch --output-format json; older ones -j.
if "$OHA" --help 2>/dev/null | grep -q -- '--output-format'; then
  OHA_JSON=(--output-format json)
else
  OHA_JSON=(-j)
fi
"$OHA" --help 2>/dev/null | grep -q -- '--latency-correction' || die "$OHA has no --latency-correction"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release"
  (cd "$REPO" && cargo build --release --quiet) >&2
fi
SWITCHYARD="$REPO/target/release/switchyard"
[ -x "$SWITCHYARD" ] || die "no $SWITCHYARD"

# ------------------------------------------------------------------ work dir, cleanup
WORK="$(mktemp -d -t switchyard-bench.XXXXXX)"
chmod 755 "$WORK"   # nginx workers drop to an unprivileged user when started as root
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

python3 "$HELPER" payloads "$WORK"
BODY="$WORK/request.json"
RESP="$(cat "$WORK/response.json")"
META="$(cat "$WORK/metadata.json")"
mapfile -t PORTS < <(python3 "$HELPER" freeports 15)
P_BACKEND=${PORTS[0]} P_NGINX=${PORTS[1]} P_HAPROXY=${PORTS[2]}
# Data, metrics, control and gRPC port of each Switchyard instance: two
# measured, one for the saturation search. Every listener Switchyard opens by
# default gets a free loopback port, so instances never collide.
SY_PORTS=("${PORTS[3]}" "${PORTS[4]}" "${PORTS[5]}")
SY_METRICS=("${PORTS[6]}" "${PORTS[7]}" "${PORTS[8]}")
SY_CONTROL=("${PORTS[9]}" "${PORTS[10]}" "${PORTS[11]}")
SY_GRPC=("${PORTS[12]}" "${PORTS[13]}" "${PORTS[14]}")

RESULTS="$WORK/results.tsv"
: > "$RESULTS"
record() { local IFS=$'\t'; printf '%s\n' "$*" >> "$RESULTS"; }

# ------------------------------------------------------------------ configs
nginx_common() { # $1 = instance dir
  cat <<EOF
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
EOF
}
nginx_http_common() { # $1 = instance dir
  cat <<EOF
  access_log off;
  client_body_temp_path $1/tmp/body;
  proxy_temp_path $1/tmp/proxy;
  fastcgi_temp_path $1/tmp/fastcgi;
  uwsgi_temp_path $1/tmp/uwsgi;
  scgi_temp_path $1/tmp/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
EOF
}

D="$WORK/backend"; mkdir -p "$D/tmp"
{
  nginx_common "$D"
  echo "http {"
  nginx_http_common "$D"
  cat <<EOF
  server {
    listen 127.0.0.1:$P_BACKEND;
    default_type application/json;
    location = /v2 { return 200 '{"name":"static","version":"1","extensions":[]}'; }
    location = /v2/health/live { return 200 ''; }
    location = /v2/health/ready { return 200 ''; }
    location = /v2/models/mlp { return 200 '$META'; }
    location = /v2/models/mlp/ready { return 200 ''; }
    location = /v2/models/mlp/infer {
      if (\$request_method != POST) { return 405; }
      return 200 '$RESP';
    }
  }
}
EOF
} > "$D/nginx.conf"

D="$WORK/nginx"; mkdir -p "$D/tmp"
{
  nginx_common "$D"
  echo "http {"
  nginx_http_common "$D"
  cat <<EOF
  upstream v2 {
    server 127.0.0.1:$P_BACKEND;
    keepalive 32;
    keepalive_requests 10000000;
  }
  server {
    listen 127.0.0.1:$P_NGINX;
    location / {
      proxy_pass http://v2;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
} > "$D/nginx.conf"

mkdir -p "$WORK/haproxy"
cat > "$WORK/haproxy/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 1s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:$P_HAPROXY
  default_backend be
backend be
  server s1 127.0.0.1:$P_BACKEND
EOF

sy_config() { # $1 = data port, $2 = metrics port, $3 = threads, $4 = control port, $5 = gRPC port
  cat <<EOF
# Like examples/v2-proxy.yaml, on free loopback ports.
listeners:
  http:
    address: 127.0.0.1:$1
    default_upstream: http://127.0.0.1:$P_BACKEND
    threads: $3
  metrics:
    address: 127.0.0.1:$2
  control:
    address: 127.0.0.1:$4
  grpc:
    address: 127.0.0.1:$5
logging:
  level: warn
backends:
  server:
    kind: v2-http
    endpoints: ["http://127.0.0.1:$P_BACKEND"]
    timeout: 30s
models:
  "*":
    variants:
      - name: default
        backend: server
EOF
}

# ------------------------------------------------------------------ process control
LAST_PID=""
start() { # name, command...: starts in the background, logs to WORK/name.log
  local name=$1; shift
  "$@" > "$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}
stop() { # pid: stops it and forgets it, so cleanup never signals a reused pid
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local keep=() pid
  for pid in "${PIDS[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
  PIDS=("${keep[@]}")
}
wait_infer() { # url: until a POST infer answers 200 (10 s patience)
  local i
  for i in $(seq 1 100); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
             --data-binary @"$BODY" "$1/v2/models/mlp/infer" || true)" = 200 ]; then
      return 0
    fi
    sleep 0.1
  done
  tail -n 3 "$WORK"/*.log >&2 || true
  die "$1 never answered 200 (logs in $WORK; rerun with KEEP=1)"
}
children() { # pid: the pid and its direct children (nginx master + workers)
  echo "$1"; (pgrep -P "$1" || true)
}
oha_run() { # out.json, url, extra oha args...
  local out=$1 url=$2; shift 2
  "$OHA" --no-tui "${OHA_JSON[@]}" -c "$CONNS" -m POST -T application/json -D "$BODY" "$@" \
    "$url/v2/models/mlp/infer" > "$out"
}

# ------------------------------------------------------------------ start backend + proxies
start backend "$NGINX" -p "$WORK/backend" -e "$WORK/backend/error.log" -c "$WORK/backend/nginx.conf"
PID_BACKEND=$LAST_PID
wait_infer "http://127.0.0.1:$P_BACKEND"

declare -A URL PROXY_PID LABEL
URL[direct]="http://127.0.0.1:$P_BACKEND"; LABEL[direct]="direct (no proxy)"
ORDER=(direct)
i=0
for t in $SY_THREADS; do
  [ "$i" -lt 2 ] || die "at most two SY_THREADS values"
  sy_config "${SY_PORTS[$i]}" "${SY_METRICS[$i]}" "$t" "${SY_CONTROL[$i]}" "${SY_GRPC[$i]}" > "$WORK/switchyard-t$t.yaml"
  "$SWITCHYARD" validate "$WORK/switchyard-t$t.yaml" >&2
  start "switchyard-t$t" "$SWITCHYARD" serve --config "$WORK/switchyard-t$t.yaml"
  PROXY_PID[switchyard-t$t]=$LAST_PID
  URL[switchyard-t$t]="http://127.0.0.1:${SY_PORTS[$i]}"
  LABEL[switchyard-t$t]="Switchyard (threads $t)"
  ORDER+=("switchyard-t$t")
  i=$((i + 1))
done
start nginx "$NGINX" -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf"
PROXY_PID[nginx]=$LAST_PID; URL[nginx]="http://127.0.0.1:$P_NGINX"; LABEL[nginx]="nginx (1 worker)"
start haproxy "$HAPROXY" -db -f "$WORK/haproxy/haproxy.cfg"
PROXY_PID[haproxy]=$LAST_PID; URL[haproxy]="http://127.0.0.1:$P_HAPROXY"; LABEL[haproxy]="HAProxy (nbthread 1)"
ORDER+=(nginx haproxy)
for p in "${ORDER[@]}"; do wait_infer "${URL[$p]}"; done
# Every proxy must give the client the backend's answer, byte for byte.
for p in "${ORDER[@]}"; do
  got="$(curl -s -H 'Content-Type: application/json' --data-binary @"$BODY" "${URL[$p]}/v2/models/mlp/infer")"
  python3 -c 'import json,sys; a,b=json.loads(sys.argv[1]),json.loads(sys.argv[2]); a.pop("id",None); b.pop("id",None); assert a==b, (a,b)' \
    "$got" "$RESP" || die "$p returned a different body: $got"
done
log "all paths up: ${ORDER[*]} (work dir $WORK)"

CLK_TCK="$(getconf CLK_TCK)"
record meta clk_tck "$CLK_TCK"
record meta conns "$CONNS"
record meta duration "$DURATION"
record meta sat_duration "$SAT_DURATION"
record meta body_bytes "$(wc -c < "$BODY")"
record meta resp_bytes "$(wc -c < "$WORK/response.json")"
record meta machine "$(nproc) CPU ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -sr)); nginx $("$NGINX" -v 2>&1 | cut -d/ -f2), $("$HAPROXY" -v | head -1 | cut -d' ' -f1-3), $("$OHA" --version)"
record meta load_start "$(cut -d' ' -f1-3 /proc/loadavg)"
labels_json="$(for p in "${ORDER[@]}"; do printf '%s\t%s\n' "$p" "${LABEL[$p]}"; done |
  python3 -c 'import json,sys; print(json.dumps(dict(l.rstrip("\n").split("\t") for l in sys.stdin)))')"
record meta labels "$labels_json"

# ------------------------------------------------------------------ saturation (closed loop)
# On a Switchyard instance of its own, so the measured instances' peak RSS is
# that of the open-loop points only.
first_t="${SY_THREADS%% *}"
if [ -z "${RATES:-}" ]; then
  sy_config "${SY_PORTS[2]}" "${SY_METRICS[2]}" "$first_t" "${SY_CONTROL[2]}" "${SY_GRPC[2]}" > "$WORK/switchyard-sat.yaml"
  start switchyard-sat "$SWITCHYARD" serve --config "$WORK/switchyard-sat.yaml"
  sat_pid=$LAST_PID
  URL[switchyard-sat]="http://127.0.0.1:${SY_PORTS[2]}"
  wait_infer "${URL[switchyard-sat]}"
  for p in direct switchyard-sat; do
    log "saturation: $p (closed loop, $SAT_DURATION)"
    oha_run "$WORK/sat-$p.json" "${URL[$p]}" -n 500 > /dev/null   # warm-up
    oha_run "$WORK/sat-$p.json" "${URL[$p]}" -z "$SAT_DURATION"
  done
  stop "$sat_pid"
  record sat direct "$WORK/sat-direct.json"
  record sat "switchyard-t$first_t" "$WORK/sat-switchyard-sat.json"
  sat_rps="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["summary"]["requestsPerSec"])' "$WORK/sat-switchyard-sat.json")"
  RATES="$(for f in $FRACTIONS; do python3 -c "import sys; print(int(float(sys.argv[1]) * float(sys.argv[2]) // 10 * 10))" "$f" "$sat_rps"; done | xargs)"
  record meta fractions "$FRACTIONS"
else
  record meta fractions "explicit"
fi
record meta rates "$RATES"
log "rates: $RATES req/s"

# ------------------------------------------------------------------ open-loop points
# Per rate, every path in turn, so slow drifts of the shared machine's load
# hit all paths alike.
backend_pids=($(children "$PID_BACKEND"))
for rate in $RATES; do
  for p in "${ORDER[@]}"; do
    if [ "$p" = direct ]; then proxy_pids=(); else proxy_pids=($(children "${PROXY_PID[$p]}")); fi
    oha_run "$WORK/warm.json" "${URL[$p]}" -n 300 -q "$rate" > /dev/null
    before_p=0; [ ${#proxy_pids[@]} -eq 0 ] || before_p="$(python3 "$HELPER" cputicks "${proxy_pids[@]}")"
    before_b="$(python3 "$HELPER" cputicks "${backend_pids[@]}")"
    log "point: $p @ $rate req/s for $DURATION"
    oha_run "$WORK/point-$p-$rate.json" "${URL[$p]}" -z "$DURATION" -q "$rate" --latency-correction
    after_p=0; [ ${#proxy_pids[@]} -eq 0 ] || after_p="$(python3 "$HELPER" cputicks "${proxy_pids[@]}")"
    after_b="$(python3 "$HELPER" cputicks "${backend_pids[@]}")"
    record point "$p" "$rate" "$WORK/point-$p-$rate.json" $((after_p - before_p)) $((after_b - before_b))
  done
done
record meta load_end "$(cut -d' ' -f1-3 /proc/loadavg)"
for p in "${ORDER[@]}"; do
  [ "$p" = direct ] && continue
  record rss "$p" "$(python3 "$HELPER" hwm $(children "${PROXY_PID[$p]}"))"
done

python3 "$HELPER" report "$RESULTS"
