#!/usr/bin/env bash
# Control-plane benchmark (docs/benchmarks.md, "Control plane"; issue 7 item 9):
#   1. p50/p99 of V2 infer (embedded runtime, model mlp, JSON, open loop at a
#      fixed rate) in steady state vs the same load during a reload storm (the
#      config rewritten by tmp+rename every STORM_MS, weights alternating)
#   2. time from a config write (tmp+rename flipping mlp v1:100/v2:0 <-> 0/100)
#      to the first data-plane answer from the new variant
#   3. time from canary breach to weight 0: a rollout (steps [10, 50, 100],
#      interval 1s, min_requests 20) whose canary fails every request
#
#   benches/control.sh                      # cargo build --release, then ~4 min
#   SKIP_BUILD=1 KEEP=1 benches/control.sh  # reuse the build, keep the work dir
#
# Knobs (environment): RATE (1000 req/s), CONNS (8), DURATION (15s per point),
# POINTS ("steady storm storm-slow" ×3, then "steady": the part-1 points in order),
# STORM_MS ("20 50": fast storm gap range), STORM_SLOW_MS ("60 100"),
# IDLE_S (10: seconds per no-load CPU point), FLIPS (20), ROLLOUT_REPS (5), ROLLOUT_RATE (400 req/s), PARTS ("storm flip
# rollout"), SKIP_BUILD=1, KEEP=1, OHA=path.
#
# Every process it starts is stopped on exit (trap); every listener (http,
# metrics, grpc off, control) is on a free 127.0.0.1 port. Each Switchyard's
# config file sits alone in its own directory (the directory is watched; the
# state file, logs and oha output live elsewhere). On a shared machine only
# ratios from one run mean anything: the load average is recorded.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RATE=${RATE:-1000}
CONNS=${CONNS:-8}
DURATION=${DURATION:-15s}
POINTS=${POINTS:-"steady storm storm-slow steady storm storm-slow steady storm storm-slow steady"}
STORM_MS=${STORM_MS:-"20 50"}
STORM_SLOW_MS=${STORM_SLOW_MS:-"60 100"}
FLIPS=${FLIPS:-20}
ROLLOUT_REPS=${ROLLOUT_REPS:-5}
ROLLOUT_RATE=${ROLLOUT_RATE:-400}
PARTS=${PARTS:-"storm flip rollout"}
IDLE_S=${IDLE_S:-10}
HELPER="$ROOT/benches/control.py"
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$ROOT/.switchyard/lib/libonnxruntime.so}

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

OHA="${OHA:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}"
[ -x "$OHA" ] || die "no oha at $OHA (cargo install oha --locked)"
"$OHA" --help 2>/dev/null | grep -q -- '--latency-correction' || die "$OHA has no --latency-correction"
if "$OHA" --help 2>/dev/null | grep -q -- '--output-format'; then OHA_JSON=(--output-format json); else OHA_JSON=(-j); fi
[ -f "$ORT_DYLIB_PATH" ] || die "ONNX Runtime library not found at $ORT_DYLIB_PATH: run scripts/setup.sh"

if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release >&2
fi
SWITCHYARD=${SWITCHYARD_BIN:-$ROOT/target/release/switchyard}
[ -x "$SWITCHYARD" ] || die "no $SWITCHYARD"

# ------------------------------------------------------------------ work dir, cleanup
WORK="$(mktemp -d /tmp/switchyard-bench-control.XXXXXX)"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

LAST_PID=""
start() { # name, command...: in the background, logs to WORK/logs/name.log
  local name=$1; shift
  "$@" > "$WORK/logs/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}
stop() { # pid [signal]: stops it and forgets it, so cleanup never signals a reused pid
  kill "${2:--TERM}" "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local keep=() pid
  for pid in "${PIDS[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
  PIDS=("${keep[@]}")
}
py() { python3 "$HELPER" "$@"; }
RESULTS="$WORK/results.tsv"
: > "$RESULTS"
record() { local IFS=$'\t'; echo "$*" >> "$RESULTS"; }
load() { echo "$(date +%T) $1: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$WORK/load.log"; }
mkdir -p "$WORK/logs" "$WORK/oha" "$WORK/state"
BODY="$WORK/request.json"
py body "$BODY"

# ------------------------------------------------------------------ the failing canary backend
read -r P_FAIL <<< "$(py freeports 1)"
FAIL_URL="http://127.0.0.1:$P_FAIL"
FAIL_LOG="$WORK/logs/failserver.stamps"
: > "$FAIL_LOG"
start failserver python3 "$HELPER" failserver "$P_FAIL" "$FAIL_LOG"
for _ in $(seq 50); do curl -sf "$FAIL_URL/v2" > /dev/null && break; sleep 0.1; done
curl -sf "$FAIL_URL/v2" > /dev/null || die "failing backend did not start"

# ------------------------------------------------------------------ Switchyard instances
# sy_start NAME W1 W2 [FAILURL]: own config dir; sets SY_PID SY_URL SY_METRICS SY_CTL SY_HEAD SY_CFG
sy_start() {
  local name=$1 w1=$2 w2=$3 fail=${4:-} p_http p_metrics p_grpc p_ctl dir
  read -r p_http p_metrics p_grpc p_ctl <<< "$(py freeports 4 | xargs)"
  dir="$WORK/cfg-$name"
  mkdir -p "$dir"
  SY_HEAD="$WORK/head-$name.yaml"
  SY_CFG="$dir/switchyard.yaml"
  cat > "$SY_HEAD" <<EOF
listeners:
  http: { address: "127.0.0.1:$p_http" }
  metrics: { address: "127.0.0.1:$p_metrics" }
  grpc: { enabled: false, address: "127.0.0.1:$p_grpc" }
  control: { address: "127.0.0.1:$p_ctl", state_file: "$WORK/state/$name.state.json" }
logging: { level: warn }
runtime:
  onnx: { pool_threads: 2, intra_op_threads: 1 }
backends:
  local:
    kind: onnx
    repository: $ROOT/examples/models
    version_policy: { specific: [1, 2] }
    warmup: 3
EOF
  py config "$SY_HEAD" "$SY_CFG" "$w1" "$w2" $fail
  "$SWITCHYARD" validate "$SY_CFG" > /dev/null || die "invalid config $SY_CFG"
  start "switchyard-$name" "$SWITCHYARD" serve --config "$SY_CFG"
  SY_PID=$LAST_PID
  SY_URL="http://127.0.0.1:$p_http"
  SY_METRICS="http://127.0.0.1:$p_metrics/metrics"
  SY_CTL="http://127.0.0.1:$p_ctl"
  for _ in $(seq 150); do
    curl -sf "$SY_URL/ready" > /dev/null 2>&1 && return 0
    kill -0 "$SY_PID" 2>/dev/null || { cat "$WORK/logs/switchyard-$name.log" >&2; die "switchyard $name exited"; }
    sleep 0.1
  done
  die "switchyard $name did not become ready (log: $WORK/logs/switchyard-$name.log)"
}
oha_run() { # out.json, url, oha args...
  local out=$1 url=$2; shift 2
  "$OHA" --no-tui "${OHA_JSON[@]}" -c "$CONNS" -m POST -T application/json -D "$BODY" "$@" \
    "$url/v2/models/mlp/infer" > "$out"
}
gen() { py metric "$SY_METRICS" switchyard_config_generation; }
refused() { py metric "$SY_METRICS" switchyard_config_reloads_total result=refused; }

record meta machine "$(nproc) vCPU ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -sr)); $("$OHA" --version)"
record meta load_start "$(cut -d' ' -f1-3 /proc/loadavg)"
record meta rate "$RATE"
record meta conns "$CONNS"
record meta duration "$DURATION"
record meta rollout_rate "$ROLLOUT_RATE"
record meta clk_tck "$(getconf CLK_TCK)"
record meta commit "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo ?)$(git -C "$ROOT" diff --quiet HEAD -- control proxy runtime src config stats 2>/dev/null || echo ' + uncommitted changes')"

# ------------------------------------------------------------------ 1. reload storm vs steady
if [[ " $PARTS " == *" storm "* ]]; then
  sy_start storm 70 30
  log "part 1: $RATE req/s, points: $POINTS (work dir $WORK)"
  oha_run "$WORK/oha/warm.json" "$SY_URL" -z 4s -q "$RATE" > /dev/null   # warm-up
  declare -A SEEN=()
  for p in $POINTS; do
    SEEN[$p]=$(( ${SEEN[$p]:-0} + 1 ))
    label="$p #${SEEN[$p]}"
    load "part 1 $label"
    g0=$(gen); r0=$(refused); storm_pid=""; t0=$(py cputicks "$SY_PID")
    case $p in
      steady) ;;
      storm)      read -r lo hi <<< "$STORM_MS" ;;
      storm-slow) read -r lo hi <<< "$STORM_SLOW_MS" ;;
      *) die "unknown point $p" ;;
    esac
    if [ "$p" != steady ]; then
      label="$p $lo–$hi ms #${SEEN[$p]}"
      start "storm-$p-${SEEN[$p]}" python3 "$HELPER" storm "$SY_HEAD" "$SY_CFG" "$lo" "$hi" "$WORK/storm-$p-${SEEN[$p]}.tsv"
      storm_pid=$LAST_PID
      sleep 0.2
    fi
    log "point: $label for $DURATION"
    oha_run "$WORK/oha/$p-${SEEN[$p]}.json" "$SY_URL" -z "$DURATION" -q "$RATE" --latency-correction
    t1=$(py cputicks "$SY_PID"); g1=$(gen); r1=$(refused)   # CPU and generations while the load ran
    writes=0; gaps=""; last_live="—"
    if [ -n "$storm_pid" ]; then
      stop "$storm_pid"
      writes=$(awk '$1=="writes"{print $2}' "$WORK/storm-$p-${SEEN[$p]}.tsv")
      gaps="$(awk '$1=="gap_min_ms"{a=$2} $1=="gap_max_ms"{b=$2} END{print a "–" b}' "$WORK/storm-$p-${SEEN[$p]}.tsv")"
      sleep 0.5   # quiet: the last write applies before the next point
      want=$(( (writes - 1) % 2 == 0 ? 70 : 30 ))
      got=$(curl -sf "$SY_CTL/config" | python3 -c 'import json,sys; c=json.load(sys.stdin); print([v["weight"] for v in c["config"]["models"]["mlp"]["variants"] if v["name"]=="v1"][0] if "config" in c else [v["weight"] for v in c["models"]["mlp"]["variants"] if v["name"]=="v1"][0])' || echo "?")
      if [ "${got%.0}" = "$want" ]; then last_live="yes (v1 $want)"; else last_live="NO (v1 $got, last write $want)"; fi
    fi
    record point "$label" "$p" "$WORK/oha/$p-${SEEN[$p]}.json" "$writes" "$((g1 - g0))" "$((r1 - r0))" "$gaps" "$last_live" "$((t1 - t0))"
  done

  # What one reload costs in CPU, without load: Switchyard's CPU over IDLE_S
  # seconds idle, then over IDLE_S seconds of each storm.
  for p in idle storm storm-slow; do
    load "part 1 cpu $p"
    log "cpu: $p for ${IDLE_S}s without load"
    g0=$(gen); t0=$(py cputicks "$SY_PID"); storm_pid=""
    case $p in
      storm)      read -r lo hi <<< "$STORM_MS" ;;
      storm-slow) read -r lo hi <<< "$STORM_SLOW_MS" ;;
    esac
    if [ "$p" != idle ]; then
      start "storm-cpu-$p" python3 "$HELPER" storm "$SY_HEAD" "$SY_CFG" "$lo" "$hi" "$WORK/storm-cpu-$p.tsv"
      storm_pid=$LAST_PID
    fi
    sleep "$IDLE_S"
    t1=$(py cputicks "$SY_PID"); g1=$(gen); writes=0
    if [ -n "$storm_pid" ]; then
      stop "$storm_pid"
      writes=$(awk '$1=="writes"{print $2}' "$WORK/storm-cpu-$p.tsv")
      sleep 0.5
    fi
    record cpu "$p" "$IDLE_S" "$((t1 - t0))" "$writes" "$((g1 - g0))"
  done

  # ---------------------------------------------------------------- 2. write -> new generation serving
  if [[ " $PARTS " == *" flip "* ]]; then
    load "part 2 flips"
    log "part 2: $FLIPS flips"
    py config "$SY_HEAD" "$SY_CFG" 100 0
    sleep 1
    py flip "$SY_HEAD" "$SY_CFG" "$SY_URL" "$FLIPS" "$WORK/flip.tsv" "$BODY"
    record flip "$WORK/flip.tsv"
  fi
  stop "$SY_PID"
elif [[ " $PARTS " == *" flip "* ]]; then
  sy_start flip 100 0
  load "part 2 flips"
  py flip "$SY_HEAD" "$SY_CFG" "$SY_URL" "$FLIPS" "$WORK/flip.tsv" "$BODY"
  record flip "$WORK/flip.tsv"
  stop "$SY_PID"
fi

# ------------------------------------------------------------------ 3. canary breach -> weight 0
if [[ " $PARTS " == *" rollout "* ]]; then
  : > "$WORK/rollout.tsv"
  for rep in $(seq "$ROLLOUT_REPS"); do
    load "part 3 rollout $rep"
    # Fresh process and state; the failing canary is configured (weight 0)
    # from the start, so the timed reload only adds the rollout block.
    sy_start "rollout-$rep" 100 0 "$FAIL_URL"
    oha_run "$WORK/oha/rollout-$rep.json" "$SY_URL" -z 6s -q "$ROLLOUT_RATE" --latency-correction &
    oha_pid=$!
    PIDS+=("$oha_pid")
    sleep 1.5   # steady load before the rollout starts
    log "part 3: rollout $rep of $ROLLOUT_REPS"
    py rollout "$SY_HEAD" "$SY_CFG" "$SY_CTL" "$FAIL_LOG" "$WORK/rollout.tsv" "$FAIL_URL"
    wait "$oha_pid" || true
    stop "$oha_pid"
    stop "$SY_PID"
  done
  record rollout "$WORK/rollout.tsv"
fi

record meta load_end "$(cut -d' ' -f1-3 /proc/loadavg)"
cat "$WORK/load.log" >&2
py report "$RESULTS"
