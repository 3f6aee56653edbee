#!/usr/bin/env bash
# Builds Switchyard and serves the shipped example models with the embedded
# ONNX Runtime (examples/quickstart.yaml) on :8000 (HTTP), :8002 (metrics).
#
#   scripts/quickstart.sh           install what the build needs, build, serve (foreground)
#   scripts/quickstart.sh --check   the same install and build, then serve on free
#                                   loopback ports, send the README's request, stop
#
# On a fresh machine it installs the build tools (cmake, protoc) and ONNX
# Runtime itself (scripts/setup.sh --runtime-only): nothing else is needed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CHECK=0
[ "${1:-}" = "--check" ] && CHECK=1

scripts/setup.sh --runtime-only
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.switchyard/lib/libonnxruntime.so}"
cargo build --release --locked --bin switchyard
if [ "$CHECK" -eq 0 ]; then
  exec ./target/release/switchyard serve --config examples/quickstart.yaml
fi

# --check: the quickstart config on free ports, the README's request, a clean stop.
work="$(mktemp -d -t switchyard-quickstart.XXXXXX)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_port="$(free_port)"; metrics_port="$(free_port)"; control_port="$(free_port)"
sed -e "s#0.0.0.0:8000#127.0.0.1:$http_port#" -e "s#0.0.0.0:8002#127.0.0.1:$metrics_port#" \
    -e "s#127.0.0.1:9901#127.0.0.1:$control_port#" -e "s#repository: models#repository: $PWD/examples/models#" \
    examples/quickstart.yaml > "$work/quickstart.yaml"
./target/release/switchyard serve --config "$work/quickstart.yaml" > "$work/log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
  curl -sf "127.0.0.1:$http_port/ready" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/log"; echo "quickstart: switchyard exited" >&2; exit 1; }
  sleep 0.1
done
body="$(curl -sS "127.0.0.1:$http_port/v2/models/mlp/infer" -H 'x-user-id: alice' \
  -d '{"inputs":[{"name":"input","shape":[1,16],"datatype":"FP32",
       "data":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5,1.6]}]}')"
echo "$body"
case "$body" in
  *'"model_name":"mlp"'*'"outputs":[{"name":"probabilities","datatype":"FP32","shape":[1,4],"data":['*) ;;
  *) cat "$work/log"; echo "quickstart: unexpected answer" >&2; exit 1 ;;
esac
echo "quickstart: ok"
