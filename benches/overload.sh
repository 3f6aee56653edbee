#!/usr/bin/env bash
# Overload at 3x capacity (docs/reliability.md, "Overload"; issue 17):
# the embedded runtime serving mlp_heavy, saturation measured first, then
# open-loop runs at 0.5x and 3x capacity, with admission off (today's
# behaviour) and on (an adaptive concurrency limit with a bounded queue).
#
#   benches/overload.sh                 # ~2 min, then the release build
#   DUR=15 FACTOR=3 benches/overload.sh
#   SKIP_BUILD=1 benches/overload.sh    # reuse target/release/switchyard
#
# Everything listens on 127.0.0.1 free ports; every process it starts is
# stopped on exit. Results: $OUT/*.json and a markdown table on stdout.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DUR=${DUR:-15}
FACTOR=${FACTOR:-3}
OUT=${OUT:-$ROOT/target/bench-overload}
PY=${PY:-$ROOT/.venv/bin/python}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$ROOT/.switchyard/lib/libonnxruntime.so}
mkdir -p "$OUT"
rm -rf "$OUT"/*.json "$OUT"/*.log "$OUT"/runs

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

if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release --bins >&2
fi
SY=${SWITCHYARD_BIN:-$ROOT/target/release/switchyard}
# 128 rows per request (binary extension: little to decode) on one ONNX thread:
# the backend is the bottleneck, at a rate a Python load generator can offer
# three times over on a small machine.
BODY=$OUT/mlp_heavy_b128.bin
$PY benches/overload.py body 128 256 "$BODY"
mkdir -p "$OUT/runs"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# $1: name, $2: admission section (YAML, may be empty)
start() {
  local name=$1 admission=$2
  HTTP=$(port); METRICS=$(port); GRPC=$(port); CONTROL=$(port)
  cat >"$OUT/$name.yaml" <<YAML
listeners:
  http: { address: 127.0.0.1:$HTTP }
  metrics: { address: 127.0.0.1:$METRICS }
  grpc: { address: 127.0.0.1:$GRPC }
  control: { address: 127.0.0.1:$CONTROL }
runtime:
  onnx: { pool_threads: 1, intra_op_threads: 1 }
backends:
  local: { kind: onnx, repository: $ROOT/examples/models, version_policy: { latest: 1 }, warmup: 3 }
models:
  mlp_heavy:
    variants:
      - { name: default, backend: local }
$admission
YAML
  "$SY" serve --config "$OUT/$name.yaml" >"$OUT/$name.log" 2>&1 &
  SY_PID=$!
  PIDS+=("$SY_PID")
  for _ in $(seq 200); do
    curl -fs "http://127.0.0.1:$HTTP/v2/health/ready" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  log "switchyard did not become ready: $(tail -5 "$OUT/$name.log")"; exit 1
}
stop() { kill "$SY_PID"; wait "$SY_PID" 2>/dev/null || true; }
URL() { echo "http://127.0.0.1:$HTTP/v2/models/mlp_heavy/infer"; }

start capacity ""
CAP=$($PY benches/overload.py capacity "$(URL)" "$BODY" 5)
stop
log "saturation: $CAP req/s"
HALF=$(python3 -c "print(round($CAP * 0.5))")
HIGH=$(python3 -c "print(round($CAP * $FACTOR))")

ADMISSION="admission:
  retry_after: 1s
  models:
    mlp_heavy: { limit: 4, adaptive: true, min_limit: 2, max_limit: 64, queue: 16, queue_timeout: 1s }"

for mode in off on; do
  sec=""; [ "$mode" = on ] && sec=$ADMISSION
  start "admission-$mode" "$sec"
  for point in "0.5x $HALF" "${FACTOR}x $HIGH"; do
    set -- $point
    # The readiness probe runs in a process of its own, beside the load.
    $PY benches/overload.py probe "http://127.0.0.1:$HTTP/v2/health/ready" "$DUR" "$OUT/probe.json" &
    PROBE=$!
    $PY benches/overload.py run "$(URL)" "$BODY" "$2" "$DUR" "$SY_PID" "$OUT/runs/admission-$mode-$1.json" >/dev/null
    wait "$PROBE"
    $PY benches/overload.py merge "$OUT/runs/admission-$mode-$1.json" "$OUT/probe.json"
  done
  curl -fs "http://127.0.0.1:$METRICS/metrics" | grep -E '^switchyard_(concurrency|admission)' >"$OUT/admission-$mode.metrics" || true
  stop
done
echo "saturation (closed loop, 8 clients): $CAP req/s; $(uptime | sed 's/.*load average/load average/')"
$PY benches/overload.py report "$OUT"/runs/admission-*.json
