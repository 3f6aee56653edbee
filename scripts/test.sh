#!/usr/bin/env bash
# Runs every test of Switchyard on a fresh machine of this kind: installs what
# the tests need (Debian packages, the Python venv with MLServer, tritonclient
# and ONNX Runtime), builds, then runs the Rust unit and integration tests and
# the Python client tests. Usage: scripts/test.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

scripts/setup.sh
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$REPO/.switchyard/lib/libonnxruntime.so}"
XDG_CACHE_HOME="$(mktemp -d -t switchyard-test-xdg.XXXXXX)"
export XDG_CACHE_HOME
trap 'rm -rf "$XDG_CACHE_HOME"' EXIT

echo "== cargo build"
cargo build --locked --bins
echo "== cargo test"
cargo test --workspace --locked
echo "== pytest (real tritonclient through Switchyard)"
SWITCHYARD_BIN="$REPO/target/debug/switchyard" .venv/bin/python -m pytest tests/python -q
