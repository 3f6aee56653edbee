#!/usr/bin/env bash
# Start MLServer on the given ports serving tests/mlserver/models (mlp v1+v2, slow).
# Usage: tests/mlserver/start.sh HTTP_PORT GRPC_PORT [METRICS_PORT]
#   Without METRICS_PORT the metrics server is disabled.
# Runs in the foreground (exec); stop it with SIGTERM/SIGINT to its pid.
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 HTTP_PORT GRPC_PORT [METRICS_PORT]" >&2; exit 2; fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || (cd "$HERE/../.." && pwd))"
MLSERVER="$REPO/.venv/bin/mlserver"
[ -x "$MLSERVER" ] || { echo "missing $MLSERVER: run scripts/setup.sh" >&2; exit 1; }

# Scratch space (telemetry cache, .envs/.metrics dirs) outside the repo, one per port.
SCRATCH="${TMPDIR:-/tmp}/switchyard-mlserver-$1"
mkdir -p "$SCRATCH/xdg"
export XDG_CACHE_HOME="${XDG_CACHE_HOME:-$SCRATCH/xdg}"

export MLSERVER_HOST=127.0.0.1
export MLSERVER_HTTP_PORT="$1"
export MLSERVER_GRPC_PORT="$2"
if [ $# -ge 3 ]; then
  export MLSERVER_METRICS_PORT="$3"
else
  export MLSERVER_METRICS_ENDPOINT=""   # falsy -> no metrics server, no extra port
fi
export MLSERVER_PARALLEL_WORKERS=0       # inference in the main process
export MLSERVER_ENVIRONMENTS_DIR="$SCRATCH/envs"
export MLSERVER_METRICS_DIR="$SCRATCH/metrics"
export MLSERVER_LOAD_MODELS_AT_STARTUP=true
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"   # onnx_runtime.OnnxRuntimeModel
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

cd "$SCRATCH"
exec "$MLSERVER" start "$HERE/models"
