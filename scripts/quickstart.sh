#!/usr/bin/env bash
# Builds Switchyard and serves the shipped example models with the embedded
# ONNX Runtime (examples/quickstart.yaml) on :8000 (HTTP), :8002 (metrics).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh --runtime-only
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.switchyard/lib/libonnxruntime.so}"
cargo build --release --locked
exec ./target/release/switchyard serve --config examples/quickstart.yaml
