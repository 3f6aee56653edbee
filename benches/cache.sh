#!/usr/bin/env bash
# Response cache benchmarks (docs/benchmarks.md ("Response cache"), issue 6 item 9):
#   1. L1 hit vs a static answer (GET /v2/health/live, GET /v2) from the same
#      listener, and vs the uncached inference (cache-control: no-store).
#      Goal: L1 hit p50 ≤ 1.1 × static p50.
#   2. L2 hit: a replica whose L1 is smaller than one answer (every lookup goes
#      to Redis) vs the L1 hit, next to `redis-benchmark -c 1 -n 20000 -t get`
#      on the same Redis. Goal: L2-hit added latency ≤ 1.5 × redis-benchmark's GET p50.
#   3. Hit ratio under Zipf (10k distinct inputs, s = 1.0, 50k requests) with L1
#      sized to hold ~10 % of the keys: L1 only, and L1 + L2; next to LRU, Belady
#      (OPT) and static top-k simulated on the same sequence.
#
# The server is like examples/cache.yaml: embedded ONNX Runtime (examples/models,
# `mlp` version 1), L1 + Redis L2 on a redis-server started here on a free port.
#
#   benches/cache.sh                     # cargo build --release, then ~10 min; markdown on stdout
#   SKIP_BUILD=1 PARTS="l1 l2" benches/cache.sh
#
# Placement: on a small VM a request's latency depends mostly on whether
# client and server wake up on the same vCPU or on different ones (a
# cross-vCPU wake-up costs ~40 µs here), and closed-loop p50s of one run
# swung 16 ↔ 77 µs for the same GET. So by default (PIN=1) Switchyard runs
# with `listeners.http.threads: 1` pinned to CPU 1, oha / redis-server on CPU
# 0, redis-benchmark on CPU 1 (where the Redis client, Switchyard, runs): every
# request crosses vCPUs, as one from another host would. The cases of a section
# run interleaved, ROUNDS times, and the report takes the median p50/p99.
#
# Knobs: DURATION=5s per point, ROUNDS=3, LOADS="closed-c1 closed-c4 2000"
# (closed-cN: closed loop, N connections; a number: open loop at that rate,
# oha -q --latency-correction, 8 connections), ZIPF_KEYS=10000
# ZIPF_REQUESTS=50000 ZIPF_S=1.0 ZIPF_SEED=7, PARTS="l1 l2 zipf", PIN=1,
# SY_THREADS=1, SKIP_BUILD=1, KEEP=1.
# Every process it starts is stopped on exit; everything binds 127.0.0.1 free ports.
set -euo pipefail

DURATION="${DURATION:-5s}"
ROUNDS="${ROUNDS:-3}"
LOADS="${LOADS:-closed-c1 closed-c4 2000}"
PIN="${PIN:-1}"
SY_THREADS="${SY_THREADS:-1}"
ROUND=1
ZIPF_KEYS="${ZIPF_KEYS:-10000}"
ZIPF_REQUESTS="${ZIPF_REQUESTS:-50000}"
ZIPF_S="${ZIPF_S:-1.0}"
ZIPF_SEED="${ZIPF_SEED:-7}"
PARTS="${PARTS:-l1 l2 zipf}"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CT="python3 $REPO/benches/cache_tools.py"
PO="python3 $REPO/benches/proxy_overhead.py"    # freeports, cputicks, hwm
ET="python3 $REPO/benches/embedded_tools.py"    # bodies, oha-summary
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$REPO/.switchyard/lib/libonnxruntime.so}"
log() { printf '[cache-bench] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

OHA="${OHA:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}"
[ -x "$OHA" ] || die "no oha: cargo install oha --locked"
command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null || die "redis-server/redis-benchmark missing: apt-get install redis-server"
[ -f "$ORT_DYLIB_PATH" ] || die "no ONNX Runtime at $ORT_DYLIB_PATH: run scripts/setup.sh"
# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"
switchyard_binary
pin_cpus
work_dir cache

B="$WORK/bodies"; mkdir -p "$B"
# Configs in a directory of their own: Switchyard watches its config file's directory.
ETC="$WORK/etc"; mkdir -p "$ETC"
$ET bodies "$B"
mapfile -t PORTS < <($PO freeports 17)
P_REDIS=${PORTS[0]}
RESULTS="$WORK/results.tsv"; : > "$RESULTS"
record() { local IFS=$'\t'; printf '%s\n' "$*" >> "$RESULTS"; }
record meta clk_tck "$(getconf CLK_TCK)"
record meta machine "$(nproc) vCPU ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -sr)); $("$OHA" --version); $(redis-server --version | cut -d' ' -f1-3)"
record meta binary "$(cd "$REPO" && git rev-parse --short HEAD)$(cd "$REPO" && git diff --quiet -- '*.rs' '*.toml' || echo ' + uncommitted changes'), built $(date -r "$SWITCHYARD" '+%F %T')"
record meta load_start "$(cut -d' ' -f1-3 /proc/loadavg)"

start redis "${CLI[@]}" redis-server --bind 127.0.0.1 --port "$P_REDIS" --save '' --appendonly no --protected-mode no
for _ in $(seq 50); do redis-cli -p "$P_REDIS" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
redis-cli -p "$P_REDIS" ping | grep -q PONG || die "redis-server did not start"

# sy NAME INDEX L1_BYTES L2(true|false): a Switchyard like examples/cache.yaml on free ports.
# Sets SY_PID, SY_URL, SY_METRICS.
sy() {
  local name=$1 i=$2 l1=$3 l2=$4
  local ph=${PORTS[$((1 + 4 * i))]} pm=${PORTS[$((2 + 4 * i))]} pc=${PORTS[$((3 + 4 * i))]} pg=${PORTS[$((4 + 4 * i))]}
  cat > "$ETC/$name.yaml" <<EOF
# examples/cache.yaml on free loopback ports; L1 $l1 bytes, L2 $l2.
listeners:
  http: { address: "127.0.0.1:$ph", threads: $SY_THREADS }
  grpc: { address: "127.0.0.1:$pg" }
  metrics: { address: "127.0.0.1:$pm" }
  control: { address: "127.0.0.1:$pc" }
logging: { level: warn }
cache:
  l1_max_bytes: $l1
  redis:
    url: redis://127.0.0.1:$P_REDIS
    timeout: 20ms
    breaker_failures: 5
    breaker_cooldown: 2s
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
    cache: { ttl: 600s, max_entry_bytes: 1048576, l2: $l2 }
    variants:
      - { name: default, backend: local, version: 1 }
EOF
  "$SWITCHYARD" validate "$ETC/$name.yaml" >&2
  start "$name" "${SRV[@]}" "$SWITCHYARD" serve --config "$ETC/$name.yaml"
  SY_PID=$LAST_PID SY_URL="http://127.0.0.1:$ph" SY_METRICS="http://127.0.0.1:$pm/metrics"
  for _ in $(seq 200); do
    curl -sf "$SY_URL/v2/health/ready" > /dev/null 2>&1 && return 0
    kill -0 "$SY_PID" 2>/dev/null || { cat "$WORK/$name.log" >&2; die "$name exited"; }
    sleep 0.1
  done
  die "$name never became ready"
}
JSON_H='{"Content-Type":"application/json"}'
bin_h() { echo "{\"Content-Type\":\"application/octet-stream\",\"Inference-Header-Content-Length\":\"$(cat "$B/mlp_b$1.binlen")\"}"; }
expect() { # URL BODY HEADERS WANT: the POST must answer 200 with x-switchyard-cache WANT
  local got; got=$($CT status "$1" "$2" "$3")
  [ "$got" = "200 $4" ] || die "expected '200 $4' from $1 with $(basename "$2"), got '$got'"
}

# point SECTION CASE LOAD KIND [extra oha args...]; KIND: get:/path | json:b | bin:b
point() {
  local sec=$1 case=$2 load=$3 kind=$4; shift 4
  local a=() url
  case $kind in
    get:*) url="$SY_URL${kind#get:}" ;;
    json:*) url="$SY_URL/v2/models/mlp/infer"; a=(-m POST -T application/json -D "$B/mlp_b${kind#json:}.json") ;;
    bin:*) local b=${kind#bin:}; url="$SY_URL/v2/models/mlp/infer"
           a=(-m POST -T application/octet-stream -H "Inference-Header-Content-Length: $(cat "$B/mlp_b$b.binlen")" -D "$B/mlp_b$b.bin") ;;
  esac
  local l=()
  case $load in
    closed-c*) l=(-c "${load#closed-c}") ;;
    *) l=(-c 8 -q "$load" --latency-correction) ;;
  esac
  "${CLI[@]}" "$OHA" --no-tui --output-format json "${a[@]}" "$@" "${l[@]}" -n 300 "$url" > "$WORK/warm.json"   # warm-up
  local m0 m1 t0 t1 c0 c1
  m0=$($CT metrics "$SY_METRICS"); t0=$($PO cputicks "$SY_PID"); c0=$($CT ctxsw "$SY_PID")
  log "$sec: $case @ $load for $DURATION (round $ROUND)"
  "${CLI[@]}" "$OHA" --no-tui --output-format json "${a[@]}" "$@" "${l[@]}" -z "$DURATION" "$url" > "$WORK/oha.json"
  t1=$($PO cputicks "$SY_PID"); c1=$($CT ctxsw "$SY_PID"); m1=$($CT metrics "$SY_METRICS")
  local line d
  line=$($ET oha-summary "$WORK/oha.json")
  d=$(python3 -c 'import json,sys; a,b=json.loads(sys.argv[1]),json.loads(sys.argv[2]); d={k:b[k]-a[k] for k in a}
print(d["hit_l1"], d["hit_l2"], d["miss_l2"] + d["bypass"], sep="\t")' "$m0" "$m1")
  record point "$sec" "$case" "$load" $line $((t1 - t0)) $d $((c1 - c0)) "$ROUND"
  log "  -> $line ticks=$((t1 - t0)) hits/misses=$(echo $d)"
}

# ------------------------------------------------------------------ 1. L1 hit vs static
l1() {
  sy sy-a 0 268435456 true
  local inf="$SY_URL/v2/models/mlp/infer"
  expect "$inf" "$B/mlp_b1.json" "$JSON_H" miss
  expect "$inf" "$B/mlp_b1.json" "$JSON_H" hit-l1
  expect "$inf" "$B/mlp_b1.bin" "$(bin_h 1)" hit-l1      # same tensor, other encoding: same key
  expect "$inf" "$B/mlp_b32.json" "$JSON_H" miss
  expect "$inf" "$B/mlp_b32.json" "$JSON_H" hit-l1
  local m; m=$($CT metrics "$SY_METRICS")
  record meta l1_after_two "$m"
  for load in $LOADS; do for ROUND in $(seq "$ROUNDS"); do
    point l1 "static GET /v2/health/live" "$load" get:/v2/health/live
    point l1 "static GET /v2 (server metadata)" "$load" get:/v2
    point l1 "L1 hit, JSON batch 1 (298 B body)" "$load" json:1
    point l1 "L1 hit, binary batch 1" "$load" bin:1
    point l1 "L1 hit, JSON batch 32 (7.3 KB body)" "$load" json:32
    point l1 "no cache (no-store), JSON batch 1" "$load" json:1 -H 'cache-control: no-store'
  done; done
  stop "$SY_PID"
}

# ------------------------------------------------------------------ 2. L2 hit
l2() {
  # Replica A (big L1) and replica B (L1 of 64 bytes: no answer fits, so every
  # lookup misses L1 and is answered by Redis), sharing the Redis.
  sy sy-a2 1 268435456 true
  local A_URL=$SY_URL A_PID=$SY_PID A_MET=$SY_METRICS
  $CT status "$A_URL/v2/models/mlp/infer" "$B/mlp_b1.json" "$JSON_H" > /dev/null   # miss, or hit-l2 after part 1
  sy sy-b 2 64 true
  local B_URL=$SY_URL B_PID=$SY_PID B_MET=$SY_METRICS
  local inf="$B_URL/v2/models/mlp/infer"
  $CT status "$inf" "$B/mlp_b1.json" "$JSON_H" > /dev/null   # a miss if part 1 did not run
  sleep 0.2                                                   # the SET is written off the request path
  expect "$inf" "$B/mlp_b1.json" "$JSON_H" hit-l2
  expect "$inf" "$B/mlp_b1.json" "$JSON_H" hit-l2
  expect "$A_URL/v2/models/mlp/infer" "$B/mlp_b1.json" "$JSON_H" hit-l1
  local key; key=$(redis-cli -p "$P_REDIS" --scan --pattern 'switchyard:mlp:*' | head -1)
  local vlen; vlen=$(redis-cli -p "$P_REDIS" strlen "$key")
  record meta redis_value_bytes "$vlen"
  for load in $LOADS; do for ROUND in $(seq "$ROUNDS"); do
    SY_URL=$A_URL SY_PID=$A_PID SY_METRICS=$A_MET
    point l2 "static GET /v2/health/live (replica A)" "$load" get:/v2/health/live
    point l2 "L1 hit, JSON batch 1 (replica A)" "$load" json:1
    SY_URL=$B_URL SY_PID=$B_PID SY_METRICS=$B_MET
    point l2 "L2 hit, JSON batch 1 (replica B, L1 64 B)" "$load" json:1
    point l2 "static GET /v2/health/live (replica B)" "$load" get:/v2/health/live
  done; done
  # Redis' own round trip, one connection, as the goal states it; then with a
  # value the size of the cache entry (GET of an absent key answers nil).
  for ROUND in $(seq "$ROUNDS"); do
    "${SRV[@]}" redis-benchmark -h 127.0.0.1 -p "$P_REDIS" -c 1 -n 20000 -t get --csv > "$WORK/rb1.csv"
    record redis-benchmark "redis-benchmark -c 1 -n 20000 -t get" $($CT redis-csv "$WORK/rb1.csv")
    "${SRV[@]}" redis-benchmark -h 127.0.0.1 -p "$P_REDIS" -c 1 -n 20000 -t set,get -d "$vlen" --csv > "$WORK/rb2.csv"
    record redis-benchmark "redis-benchmark -c 1 -n 20000 -t set,get -d $vlen" $($CT redis-csv "$WORK/rb2.csv")
  done
  stop "$A_PID"; stop "$B_PID"
}

# ------------------------------------------------------------------ 3. Zipf hit ratio
zipf() {
  # Weight of one answer in L1, from a replica holding exactly one.
  redis-cli -p "$P_REDIS" flushall > /dev/null
  sy sy-w 3 268435456 false
  $CT status "$SY_URL/v2/models/mlp/infer" "$B/mlp_b1.json" "$JSON_H" > /dev/null
  local w; w=$($CT metrics "$SY_METRICS" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(m["l1_bytes"] // max(1, m["l1_entries"]))')
  stop "$SY_PID"
  record meta entry_weight "$w"
  local cap=$((ZIPF_KEYS / 10)) l1=$((ZIPF_KEYS / 10 * w))
  log "zipf: entry weight $w B, L1 $l1 B (~$cap entries)"
  local sim; sim=$($CT simulate "$ZIPF_KEYS" "$ZIPF_REQUESTS" "$ZIPF_S" "$ZIPF_SEED" "$cap")
  record zipf "simulated on the same sequence, capacity $cap" "$sim"
  local mode l2
  for mode in l1-only l1+l2; do
    l2=false; [ "$mode" = l1+l2 ] && l2=true
    redis-cli -p "$P_REDIS" flushall > /dev/null
    sy "sy-zipf-$mode" 3 "$l1" "$l2"
    local m0 m1 out
    m0=$($CT metrics "$SY_METRICS")
    log "zipf $mode: $ZIPF_REQUESTS requests over $ZIPF_KEYS keys, s=$ZIPF_S"
    out=$("${CLI[@]}" $CT zipf "$SY_URL/v2/models/mlp/infer" "$ZIPF_KEYS" "$ZIPF_REQUESTS" "$ZIPF_S" "$ZIPF_SEED" "$WORK/zipf-$mode.json")
    m1=$($CT metrics "$SY_METRICS")
    record zipf "Switchyard $mode (L1 $l1 B)" "$out"
    record zipf "Switchyard $mode metrics after" "$m1"
    stop "$SY_PID"
  done
}

for part in $PARTS; do $part; done
record meta load_end "$(cut -d' ' -f1-3 /proc/loadavg)"
$CT report "$RESULTS"
cat "$RESULTS" >&2
