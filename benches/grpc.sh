#!/usr/bin/env bash
# KServe V2 gRPC benchmarks (docs/benchmarks.md ("KServe V2 gRPC"), issue 5 item 6):
#   1. gRPC ModelInfer direct to MLServer's gRPC port vs through Switchyard
#      (a `v2-grpc` backend pointing at the same MLServer), model `mlp`.
#   2. The embedded ONNX Runtime (`kind: onnx`, examples/models `mlp`) served over
#      gRPC vs HTTP binary vs HTTP JSON, batch 1 and 32, with each protocol's
#      no-inference floor (gRPC ServerLive, HTTP GET /v2/health/live).
#
#   benches/grpc.sh                      # cargo build --release, then ~8 min of measuring; markdown on stdout
#   SKIP_BUILD=1 PARTS=embedded benches/grpc.sh
#
# Load: h2load (nghttp2-client) for every path and protocol — h2c prior
# knowledge for gRPC with a prebuilt framed protobuf body, --h1 for HTTP — so
# the client's own cost is the same tool's. Open loop: h2load --rps (per
# client) with enough clients/streams that a request never waits for a
# previous one at these rates; latencies from --log-file (per request, µs).
# Closed loop (throughput): 4 clients, 1 request in flight each.
#
# Placement: a request's latency on a small VM depends mostly on whether
# client and server wake on the same vCPU; by default (PIN=1) Switchyard runs
# pinned to CPU 1 (`listeners.http.threads: 1`, so one gRPC and one HTTP
# worker) and h2load to CPU 0, so every request crosses vCPUs as one from
# another host would; MLServer is not pinned. Every point is measured ROUNDS
# times, the cases of a load interleaved, and the report takes medians.
#
# Knobs (environment):
#   DURATION=5s           each measured point
#   ROUNDS=2              interleaved repetitions of every point
#   PIN=1
#   MLS_RATES="200 400"   open-loop rates (req/s) of part 1 (MLServer saturates near 800 here)
#   EMB_RATES="400 2000"  open-loop rates (req/s) of part 2 (multiples of CLIENTS)
#   CLIENTS=8             connections of the open-loop points
#   SY_THREADS=1          listeners.http.threads (the gRPC listener gets as many)
#   PARTS="mlserver embedded"
#   SKIP_BUILD=1, KEEP=1 (keep the work directory: configs, logs, h2load logs)
# Every process it starts is stopped on exit; everything binds 127.0.0.1 free ports.
set -euo pipefail

DURATION="${DURATION:-5s}"
ROUNDS="${ROUNDS:-2}"
PIN="${PIN:-1}"
ROUND=1
MLS_RATES="${MLS_RATES:-200 400}"
EMB_RATES="${EMB_RATES:-400 2000}"
CLIENTS="${CLIENTS:-8}"
SY_THREADS="${SY_THREADS:-1}"
PARTS="${PARTS:-mlserver embedded}"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VPY="$REPO/.venv/bin/python"
TOOLS="$VPY $REPO/benches/grpc_tools.py"
PO="python3 $REPO/benches/proxy_overhead.py"      # freeports, cputicks, hwm
ET="python3 $REPO/benches/embedded_tools.py"      # HTTP JSON / binary bodies
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$REPO/.switchyard/lib/libonnxruntime.so}"
log() { printf '[grpc-bench] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------------ tools
if ! command -v h2load >/dev/null; then
  log "h2load missing: apt-get install nghttp2-client"
  apt-get install -y nghttp2-client >&2 || die "cannot install nghttp2-client"
fi
h2load --help | grep -q -- '--rps' || die "this h2load has no --rps (open loop needs nghttp2 ≥ 1.44)"
[ -x "$VPY" ] || die "no $VPY: run scripts/setup.sh"
[ -f "$ORT_DYLIB_PATH" ] || die "no ONNX Runtime at $ORT_DYLIB_PATH: run scripts/setup.sh"
# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"
switchyard_binary
pin_cpus
work_dir grpc
tree() { echo "$1"; (pgrep -P "$1" || true); } # a pid and its direct children

B="$WORK/bodies"; mkdir -p "$B"
# Configs in a directory of their own: Switchyard watches its config file's
# directory, and MLServer's per-request log lines or h2load's --log-file
# written next to it would wake that watcher on every write.
ETC="$WORK/etc"; mkdir -p "$ETC"
$TOOLS bodies "$B"
$ET bodies "$B"                     # mlp_b{1,32}.{json,bin,binlen} (and mlp_heavy, unused)
mapfile -t PORTS < <($PO freeports 10)

RESULTS="$WORK/results.tsv"; : > "$RESULTS"
record() { local IFS=$'\t'; printf '%s\n' "$*" >> "$RESULTS"; }
record meta clk_tck "$(getconf CLK_TCK)"
record meta machine "$(nproc) vCPU ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -sr)); $(h2load --version | head -1); MLServer $("$REPO/.venv/bin/mlserver" --version 2>/dev/null | awk '{print $NF}')"
record meta binary "$(cd "$REPO" && git rev-parse --short HEAD)$(cd "$REPO" && git diff --quiet -- '*.rs' '*.toml' || echo ' + uncommitted changes'), built $(date -r "$SWITCHYARD" '+%F %T')"
record meta load_start "$(cut -d' ' -f1-3 /proc/loadavg)"

sy_config() { # http metrics control grpc + backends/models YAML on stdin
  cat <<EOF
listeners:
  http: { address: "127.0.0.1:$1", threads: $SY_THREADS }
  metrics: { address: "127.0.0.1:$2" }
  control: { address: "127.0.0.1:$3" }
  grpc: { address: "127.0.0.1:$4" }
logging: { level: warn }
EOF
  cat
}
wait_grpc() { # host:port batch -> digest (20 s patience)
  local i d
  for i in $(seq 1 200); do
    if d="$($TOOLS check "$1" "$2" 2>/dev/null)"; then echo "$d"; return 0; fi
    sleep 0.1
  done
  tail -n 5 "$WORK"/*.log >&2 || true
  die "no gRPC infer answer from $1"
}

# h2 KIND URL BODY OUTNAME ARGS...: one h2load run (KIND grpc|http-json|http-bin|get)
h2() {
  local kind=$1 url=$2 body=$3 out=$4; shift 4
  local a=()
  case $kind in
    grpc) a=(-d "$body" -H 'content-type: application/grpc' -H 'te: trailers') ;;
    http-json) a=(--h1 -d "$body" -H 'content-type: application/json') ;;
    http-bin) a=(--h1 -d "$body" -H 'content-type: application/octet-stream'
                 -H "inference-header-content-length: $(cat "${body%.bin}.binlen")") ;;
    get) a=(--h1) ;;
  esac
  "${CLI[@]}" h2load "${a[@]}" "$@" --log-file="$WORK/$out.h2log" "$url" > "$WORK/$out.out" 2>&1 ||
    { cat "$WORK/$out.out" >&2; die "h2load failed ($out)"; }
}

# point PART CASE LOAD KIND URL BODY SY_PID BE_PID: warm-up, then a measured run with CPU deltas
point() {
  local part=$1 case=$2 load=$3 kind=$4 url=$5 body=$6 sy=$7 be=$8 name
  name="$part-${case//:/-}-$load"
  local args m=4
  # HTTP/1.1 has no multiplexing; h2load would pipeline GETs (a body forces 1 anyway),
  # and Switchyard's HTTP listener stalls on pipelined requests.
  [ "$kind" = grpc ] || m=1
  if [ "$load" = closed ]; then
    args=(-c 4 -m 1 -D "$DURATION")
    h2 "$kind" "$url" "$body" warm -c 4 -m 1 -n 500
  else
    args=(-c "$CLIENTS" -m "$m" --rps "$((load / CLIENTS))" -D "$DURATION")
    h2 "$kind" "$url" "$body" warm -c "$CLIENTS" -m "$m" --rps "$((load / CLIENTS))" -n 300
  fi
  local s0=0 s1=0 b0=0 b1=0
  [ "$sy" = - ] || s0=$($PO cputicks $(tree "$sy"))
  [ "$be" = - ] || b0=$($PO cputicks $(tree "$be"))
  log "$part $case @ $load for $DURATION (round $ROUND)"
  h2 "$kind" "$url" "$body" "$name" "${args[@]}"
  [ "$sy" = - ] || s1=$($PO cputicks $(tree "$sy"))
  [ "$be" = - ] || b1=$($PO cputicks $(tree "$be"))
  local line
  line=$($TOOLS h2 "$WORK/$name.out" "$WORK/$name.h2log")
  record point "$part" "$case" "$load" $line $((s1 - s0)) $((b1 - b0)) "$ROUND"
  log "  -> $line sy_ticks=$((s1 - s0)) be_ticks=$((b1 - b0))"
}

# ------------------------------------------------------------------ part 1: MLServer
mlserver() {
  local P_MH=${PORTS[0]} P_MG=${PORTS[1]}
  start mlserver "$REPO/tests/mlserver/start.sh" "$P_MH" "$P_MG"
  local mls_pid=$LAST_PID
  sy_config "${PORTS[2]}" "${PORTS[3]}" "${PORTS[4]}" "${PORTS[5]}" > "$ETC/sy-mlserver.yaml" <<EOF
backends:
  mls:
    kind: v2-grpc
    endpoints: ["127.0.0.1:$P_MG"]
    timeout: 30s
models:
  mlp:
    variants:
      - { name: default, backend: mls }
EOF
  "$SWITCHYARD" validate "$ETC/sy-mlserver.yaml" >&2
  local d_direct d_sy
  d_direct=$(wait_grpc "127.0.0.1:$P_MG" 1)
  start sy-mlserver "${SRV[@]}" "$SWITCHYARD" serve --config "$ETC/sy-mlserver.yaml"
  local sy_pid=$LAST_PID
  d_sy=$(wait_grpc "127.0.0.1:${PORTS[5]}" 1)
  [ "$d_direct" = "$d_sy" ] || die "Switchyard's answer differs from MLServer's ($d_sy vs $d_direct)"
  log "MLServer and Switchyard up, same outputs ($d_direct)"
  local gurl_d="http://127.0.0.1:$P_MG/inference.GRPCInferenceService/ModelInfer"
  local gurl_s="http://127.0.0.1:${PORTS[5]}/inference.GRPCInferenceService/ModelInfer"
  for load in $MLS_RATES closed; do for ROUND in $(seq "$ROUNDS"); do
    point mlserver direct "$load" grpc "$gurl_d" "$B/mlp_b1.grpc" - "$mls_pid"
    point mlserver switchyard "$load" grpc "$gurl_s" "$B/mlp_b1.grpc" "$sy_pid" "$mls_pid"
  done; done
  record meta rss_mlserver_sy "$($PO hwm "$sy_pid")"
  stop "$sy_pid"; stop "$mls_pid"
}

# ------------------------------------------------------------------ part 2: embedded runtime
embedded() {
  record meta load_mid "$(cut -d' ' -f1-3 /proc/loadavg)"
  local P_H=${PORTS[6]} P_M=${PORTS[7]} P_C=${PORTS[8]} P_G=${PORTS[9]}
  sy_config "$P_H" "$P_M" "$P_C" "$P_G" > "$ETC/sy-embedded.yaml" <<EOF
runtime:
  onnx: { pool_threads: 2, intra_op_threads: 1 }
backends:
  local:
    kind: onnx
    repository: $REPO/examples/models
    version_policy: { specific: [1] }
    warmup: 3
models:
  mlp:
    variants:
      - { name: default, backend: local, version: 1 }
EOF
  "$SWITCHYARD" validate "$ETC/sy-embedded.yaml" >&2
  start sy-embedded "${SRV[@]}" "$SWITCHYARD" serve --config "$ETC/sy-embedded.yaml"
  local sy=$LAST_PID
  wait_grpc "127.0.0.1:$P_G" 1 > /dev/null
  # The three encodings must give the same answer before anything is timed.
  for b in 1 32; do
    curl -sf -H 'content-type: application/json' --data-binary @"$B/mlp_b$b.json" "http://127.0.0.1:$P_H/v2/models/mlp/infer" > /dev/null ||
      die "HTTP JSON batch $b failed"
    curl -sf -H 'content-type: application/octet-stream' -H "inference-header-content-length: $(cat "$B/mlp_b$b.binlen")" \
      --data-binary @"$B/mlp_b$b.bin" "http://127.0.0.1:$P_H/v2/models/mlp/infer" > /dev/null || die "HTTP binary batch $b failed"
    wait_grpc "127.0.0.1:$P_G" "$b" > /dev/null
  done
  local gi="http://127.0.0.1:$P_G/inference.GRPCInferenceService/ModelInfer"
  local gl="http://127.0.0.1:$P_G/inference.GRPCInferenceService/ServerLive"
  local hi="http://127.0.0.1:$P_H/v2/models/mlp/infer"
  local hl="http://127.0.0.1:$P_H/v2/health/live"
  for load in $EMB_RATES closed; do for ROUND in $(seq "$ROUNDS"); do
    point embedded grpc:floor "$load" grpc "$gl" "$B/live.grpc" "$sy" -
    point embedded http:floor "$load" get "$hl" - "$sy" -
    for b in 1 32; do
      point embedded "grpc:$b" "$load" grpc "$gi" "$B/mlp_b$b.grpc" "$sy" -
      point embedded "http-bin:$b" "$load" http-bin "$hi" "$B/mlp_b$b.bin" "$sy" -
      point embedded "http-json:$b" "$load" http-json "$hi" "$B/mlp_b$b.json" "$sy" -
    done
  done; done
  record meta rss_embedded_sy "$($PO hwm "$sy")"
  # Switchyard's own count of failures, all protocols (non-2xx statuses).
  record meta sy_errors "$(curl -s "http://127.0.0.1:$P_M/metrics" | awk '/^switchyard_requests_total/ && $0 !~ /code="2/ {printf "%s ", $0} END {print ""}')"
  stop "$sy"
}

for part in $PARTS; do $part; done
record meta load_end "$(cut -d' ' -f1-3 /proc/loadavg)"
$TOOLS report "$RESULTS"
cat "$RESULTS" >&2
