#!/usr/bin/env bash
# Embedded ONNX Runtime benchmarks (docs/benchmarks.md, "Embedded ONNX Runtime"):
#   raw      in-process Session::run per batch size (benches/onnx_raw.rs)        issue 3 item 8
#   served   the same models through Switchyard over HTTP (oha), batch 1 and 32  issue 3 item 8
#   batching batch-1 open-loop load, batching off / fixed delay / adaptive      issue 4 item 9
#
#   benches/embedded.sh                     # everything (~8 min)
#   PARTS="raw served" DUR=3 benches/embedded.sh
#   SKIP_BUILD=1 benches/embedded.sh        # reuse target/release builds
#
# Every process it starts is stopped on exit; everything listens on 127.0.0.1
# free ports. Results: $OUT/*.tsv and a summary on stdout. On a shared machine
# only ratios from one run mean anything: `uptime` is recorded before each part.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DUR=${DUR:-5}                 # seconds per load point
RAW_SECONDS=${RAW_SECONDS:-2} # seconds per raw point
LOW_RATE=${LOW_RATE:-100}     # requests/s of the low-load open-loop latency runs
PARTS=${PARTS:-"raw served batching"}
MODELS=${MODELS:-"mlp mlp_heavy"}
OUT=${OUT:-$ROOT/target/bench-embedded}
OHA=${OHA:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}
TOOLS="python3 $ROOT/benches/embedded_tools.py"
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$ROOT/.switchyard/lib/libonnxruntime.so}
mkdir -p "$OUT"
rm -f "$OUT"/*.tsv "$OUT"/*.log

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '%s\n' "$*" >&2; }
load() { echo "$(date +%T) $1: $(uptime | sed 's/.*load average/load average/')" >>"$OUT/load.log"; }

[ -x "$OHA" ] || { log "oha not found: cargo install oha --locked"; exit 1; }
[ -f "$ORT_DYLIB_PATH" ] || { log "ONNX Runtime library not found at $ORT_DYLIB_PATH: run scripts/setup.sh"; exit 1; }

if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release >&2
fi
SY=${SWITCHYARD_BIN:-$ROOT/target/release/switchyard}
RAW=${ONNX_RAW_BIN:-$(cargo bench --bench onnx_raw --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "onnx_raw" and m.get("executable"):
        print(m["executable"])')}

BODIES="$OUT/bodies"
mkdir -p "$BODIES"
$TOOLS bodies "$BODIES"

features() { case $1 in mlp) echo 16 ;; mlp_heavy) echo 256 ;; esac; }

# ---- Switchyard ---------------------------------------------------------------
# start_sy NAME INSTANCES BATCHING_YAML  -> sets SY_URL, SY_METRICS, SY_PID
start_sy() {
  local name=$1 instances=$2 batching=$3 port mport cfg
  port=$($TOOLS free-port)
  mport=$($TOOLS free-port)
  cfg="$OUT/$name.yaml"
  cat >"$cfg" <<EOF
listeners:
  http:
    address: "127.0.0.1:$port"
  metrics:
    address: "127.0.0.1:$mport"
runtime:
  onnx: { pool_threads: 2, intra_op_threads: 1 }
backends:
  local:
    kind: onnx
    repository: $ROOT/examples/models
    version_policy: { specific: [1] }
    warmup: 3
    instances: $instances
models:
  mlp:
    variants:
      - { name: default, backend: local, version: 1$batching }
  mlp_heavy:
    variants:
      - { name: default, backend: local, version: 1$batching }
EOF
  "$SY" serve --config "$cfg" >"$OUT/$name.log" 2>&1 &
  SY_PID=$!
  PIDS+=("$SY_PID")
  SY_URL="http://127.0.0.1:$port"
  SY_METRICS="http://127.0.0.1:$mport/metrics"
  for _ in $(seq 100); do
    curl -sf "$SY_URL/ready" >/dev/null 2>&1 && return 0
    kill -0 "$SY_PID" 2>/dev/null || { cat "$OUT/$name.log" >&2; exit 1; }
    sleep 0.1
  done
  log "switchyard ($name) did not become ready"
  exit 1
}
stop_sy() { kill "$SY_PID" 2>/dev/null || true; wait "$SY_PID" 2>/dev/null || true; }

# oha_infer MODEL KIND BATCH OHA_ARGS... -> TSV: rps p50_ms p99_ms ok errors
oha_infer() {
  local model=$1 kind=$2 batch=$3
  shift 3
  local body="$BODIES/${model}_b${batch}.$kind" j="$OUT/oha.json"
  local hdr=(-T application/json)
  [ "$kind" = bin ] && hdr=(-T application/octet-stream -H "Inference-Header-Content-Length: $(cat "$BODIES/${model}_b${batch}.binlen")")
  "$OHA" --no-tui --output-format json -z "${DUR}s" -m POST "${hdr[@]}" -D "$body" "$@" \
    "$SY_URL/v2/models/$model/infer" >"$j"
  $TOOLS oha-summary "$j"
}
headers_json() {
  local model=$1 kind=$2 batch=$3
  if [ "$kind" = bin ]; then
    echo "{\"Content-Type\":\"application/octet-stream\",\"Inference-Header-Content-Length\":\"$(cat "$BODIES/${model}_b${batch}.binlen")\"}"
  else
    echo '{"Content-Type":"application/json"}'
  fi
}

# raw_point MODEL BATCHES THREADS -> rows/s per batch, space-separated. Run next to a
# served point so both see the same machine (other work on a shared host moves both).
raw_point() {
  "$RAW" --model "examples/models/$1/1/model.onnx" --batches "$2" --threads "$3" --seconds "$RAW_SECONDS" |
    awk -F'\t' 'NR > 1 { printf "%s%s", sep, $8; sep = " " } END { print "" }'
}
mean2() { python3 -c 'import sys; print(round((float(sys.argv[1]) + float(sys.argv[2])) / 2))' "$1" "$2"; }

# ---- A1: raw --------------------------------------------------------------------
raw() {
  load raw
  local args=()
  for m in $MODELS; do args+=(--model "examples/models/$m/1/model.onnx"); done
  "$RAW" "${args[@]}" --batches 1,2,4,8,16,32,64 --threads 1,2 --seconds "$RAW_SECONDS" | tee "$OUT/raw.tsv" >&2
  # The same calls at the low open-loop rate of the served latency runs: a call after a
  # pause runs with cold caches, so this, not the tight loop, is their raw baseline.
  "$RAW" "${args[@]}" --batches 1,32 --paced "$LOW_RATE" --seconds "$DUR" | tee "$OUT/raw_paced.tsv" >&2
}

# ---- A2: served, no batching ----------------------------------------------------
served() {
  printf 'model\tinstances\tkind\tbatch\tmode\trps\tp50_ms\tp99_ms\tok\terrors\toverhead_hdr_us\tclient_rtt_us\traw_rows_per_s\n' >"$OUT/served.tsv"
  for inst in 1 2; do
    start_sy "served_i$inst" "$inst" ""
    load "served instances=$inst"
    # The HTTP floor of the same server: a liveness GET (no body, no inference).
    local j="$OUT/oha.json" line
    "$OHA" --no-tui --output-format json -z "${DUR}s" -c 4 "$SY_URL/v2/health/live" >"$j"
    printf 'health\t%s\t-\t0\tclosed_c4\t%s\t-\t-\n' "$inst" "$($TOOLS oha-summary "$j")" >>"$OUT/served.tsv"
    "$OHA" --no-tui --output-format json -z "${DUR}s" -c 4 -q "$LOW_RATE" --latency-correction "$SY_URL/v2/health/live" >"$j"
    printf 'health\t%s\t-\t0\topen_q%s\t%s\t-\t-\n' "$inst" "$LOW_RATE" "$($TOOLS oha-summary "$j")" >>"$OUT/served.tsv"
    "$OHA" --no-tui --output-format json -z "${DUR}s" -c 1 "$SY_URL/v2/health/live" >"$j"
    printf 'health\t%s\t-\t0\tclosed_c1\t%s\t-\t-\n' "$inst" "$($TOOLS oha-summary "$j")" >>"$OUT/served.tsv"
    for m in $MODELS; do
      for b in 1 32; do
        for kind in bin json; do
          [ "$inst" = 2 ] && [ "$kind" = json ] && continue
          # Throughput: closed loop, bracketed by raw runs with as many sessions as the server has.
          local r0 r1 ov
          r0=$(raw_point "$m" "$b" "$inst")
          line=$(oha_infer "$m" "$kind" "$b" -c 4)
          r1=$(raw_point "$m" "$b" "$inst")
          printf '%s\t%s\t%s\t%s\tclosed_c4\t%s\t-\t-\t%s\n' "$m" "$inst" "$kind" "$b" "$line" "$(mean2 "$r0" "$r1")" >>"$OUT/served.tsv"
          tail -n 1 "$OUT/served.tsv" >&2
          [ "$inst" = 2 ] && continue
          if [ "$b" = 1 ]; then
            # Back-to-back single requests: the warm-path latency (and the header, back to back).
            line=$(oha_infer "$m" "$kind" "$b" -c 1)
            ov=$($TOOLS overhead "$SY_URL/v2/models/$m/infer" "$BODIES/${m}_b${b}.$kind" "$(headers_json "$m" "$kind" "$b")" 300 0)
            printf '%s\t%s\t%s\t%s\tclosed_c1\t%s\t%s\t-\n' "$m" "$inst" "$kind" "$b" "$line" "$ov" >>"$OUT/served.tsv"
          fi
          # Latency: a low fixed rate, open loop; the header sampled at the same rate.
          line=$(oha_infer "$m" "$kind" "$b" -c 4 -q "$LOW_RATE" --latency-correction)
          ov=$($TOOLS overhead "$SY_URL/v2/models/$m/infer" "$BODIES/${m}_b${b}.$kind" "$(headers_json "$m" "$kind" "$b")" 200 "$LOW_RATE")
          printf '%s\t%s\t%s\t%s\topen_q%s\t%s\t%s\t-\n' "$m" "$inst" "$kind" "$b" "$LOW_RATE" "$line" "$ov" >>"$OUT/served.tsv"
          tail -n 1 "$OUT/served.tsv" >&2
        done
      done
    done
    stop_sy
  done
  column -t "$OUT/served.tsv" >&2
}

# ---- B: batching ----------------------------------------------------------------
batch_point() { # MODEL MODE RATE|closed -> appends a line
  local m=$1 mode=$2 rate=$3 before after line
  before=$($TOOLS batch-metrics "$SY_METRICS")
  if [ "$rate" = closed ]; then
    line=$(oha_infer "$m" bin 1 -c 64)
  else
    line=$(oha_infer "$m" bin 1 -c 256 -q "$rate" --latency-correction)
  fi
  after=$($TOOLS batch-metrics "$SY_METRICS")
  local mean
  mean=$(python3 -c 'import json,sys
b, a, m = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
s = a.get(m, {}).get("sum", 0) - b.get(m, {}).get("sum", 0)
c = a.get(m, {}).get("count", 0) - b.get(m, {}).get("count", 0)
print(f"{s / c:.2f}" if c else "-")' "$before" "$after" "$m")
  local raw="-\t-"
  if [ "$rate" = closed ]; then
    # Raw one-session throughput at batch 16 and 32, right after, to compare at the mean batch size.
    raw=$(raw_point "$m" 16,32 1 | tr ' ' '\t')
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%b\n' "$m" "$mode" "$rate" "$line" "$mean" "$raw" | tee -a "$OUT/batching.tsv" >&2
}

batching() {
  printf 'model\tmode\toffered\trps\tp50_ms\tp99_ms\tok\terrors\tmean_batch\traw16_rows_per_s\traw32_rows_per_s\n' >"$OUT/batching.tsv"
  local fixed=", batching: { max_batch_size: 32, max_queue_delay: 2ms, max_queue_size: 2048 }"
  local adaptive=", batching: { max_batch_size: 32, max_queue_delay: 2ms, max_queue_size: 2048, adaptive: true }"
  declare -A sat
  # Unbatched saturation per model: closed loop, batch-1 binary requests, 16 connections.
  start_sy batch_off 1 ""
  load "batching off"
  for m in $MODELS; do
    line=$(oha_infer "$m" bin 1 -c 16)
    sat[$m]=$(cut -f1 <<<"$line")
    printf '%s\toff\tsat_c16\t%s\t-\t-\t-\n' "$m" "$line" | tee -a "$OUT/batching.tsv" >&2
  done
  for mode in off fixed adaptive; do
    if [ "$mode" != off ]; then
      stop_sy
      local cfgvar=$mode
      start_sy "batch_$mode" 1 "${!cfgvar}"
      load "batching $mode"
    fi
    for m in $MODELS; do
      batch_point "$m" "$mode" "$LOW_RATE"
      for f in 0.25 0.5 0.75 1.0 1.5 2.0; do
        batch_point "$m" "$mode" "$(python3 -c "print(max(1, round(${sat[$m]} * $f)))")"
      done
      batch_point "$m" "$mode" closed
    done
  done
  stop_sy
}

for part in $PARTS; do $part; done
if [[ " $PARTS " == *" raw "* ]]; then
  # Raw again at the two batch sizes the served runs compare to, to bracket machine noise.
  args=()
  for m in $MODELS; do args+=(--model "examples/models/$m/1/model.onnx"); done
  load raw-after
  "$RAW" "${args[@]}" --batches 1,32 --threads 1,2 --seconds "$RAW_SECONDS" | tee "$OUT/raw_after.tsv" >&2
fi
cat "$OUT/load.log" >&2
$TOOLS report "$OUT"
