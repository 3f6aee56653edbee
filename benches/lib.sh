# Shared by the benchmark scripts (source it after setting REPO, PIN and
# defining log/die): the release binary, CPU pinning, a work directory, and
# background processes that are always stopped on exit.

# switchyard_binary: builds target/release/switchyard unless SKIP_BUILD=1; sets SWITCHYARD.
switchyard_binary() {
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release"
    (cd "$REPO" && cargo build --release --quiet) >&2
  fi
  SWITCHYARD="$REPO/target/release/switchyard"
  [ -x "$SWITCHYARD" ] || die "no $SWITCHYARD"
}

# pin_cpus: with PIN=1 on 2+ cores, SRV=(taskset -c 1) for servers, CLI=(taskset -c 0) for load tools.
pin_cpus() {
  if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then
    SRV=(taskset -c 1) CLI=(taskset -c 0)
  else
    SRV=() CLI=()
  fi
}

# work_dir NAME: a fresh WORK directory; every process started with `start` is
# stopped on exit, and WORK is removed unless KEEP=1.
work_dir() {
  WORK="$(mktemp -d -t "switchyard-$1-bench.XXXXXX")"
  PIDS=()
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

bench_cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}

LAST_PID=""
# start NAME COMMAND...: in the background, output to WORK/NAME.log; its pid in LAST_PID.
start() {
  local name=$1; shift
  "$@" > "$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# stop PID: stop it and forget it.
stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local keep=() pid
  for pid in "${PIDS[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
  PIDS=("${keep[@]}")
}
