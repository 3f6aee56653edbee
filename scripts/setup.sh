#!/usr/bin/env bash
# Switchyard environment setup: Debian packages, Python venv, ONNX Runtime dylib link.
# Idempotent; fast when everything is already in place.
#
#   scripts/setup.sh                 everything the tests and benchmarks need
#   scripts/setup.sh --runtime-only  what the quickstart needs: the build tools and ONNX Runtime
set -euo pipefail
RUNTIME_ONLY=0
[ "${1:-}" = "--runtime-only" ] && RUNTIME_ONLY=1

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(git -C "$SCRIPT_DIR" rev-parse --show-toplevel 2>/dev/null || (cd "$SCRIPT_DIR/.." && pwd))"
cd "$REPO"

log() { printf '[setup] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# ---------------------------------------------------------------- apt
# What building Switchyard needs (both modes): cmake builds pingora's zlib,
# protoc compiles the gRPC protocol. The tests and benchmarks add the peers.
BUILD_PKGS=(cmake:cmake protoc:protobuf-compiler)
TEST_PKGS=(redis-server:redis-server nginx:nginx haproxy:haproxy wrk:wrk)
WANT=("${BUILD_PKGS[@]}")
[ "$RUNTIME_ONLY" -eq 0 ] && WANT+=("${TEST_PKGS[@]}")

APT_PKGS=()
for pair in "${WANT[@]}"; do
  bin="${pair%%:*}"; pkg="${pair#*:}"
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ] && [ ! -x "/usr/bin/$bin" ]; then
    log "missing: $bin (Debian package $pkg)"; APT_PKGS+=("$pkg")
  fi
done
if [ "${#APT_PKGS[@]}" -gt 0 ]; then
  # Keep Debian postinst scripts from starting nginx/redis/haproxy services.
  POLICY=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod +x "$POLICY"
    made_policy=1
  fi
  log "apt-get update && install ${APT_PKGS[*]}"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${APT_PKGS[@]}" >/dev/null
  if [ "$made_policy" -eq 1 ]; then $SUDO rm -f "$POLICY"; fi
  # If a service got started anyway, stop it: tests start their own on free ports.
  for svc in nginx redis-server haproxy; do
    if command -v service >/dev/null 2>&1 && $SUDO service "$svc" status >/dev/null 2>&1; then
      log "stopping service $svc"
      $SUDO service "$svc" stop >/dev/null 2>&1 || true
    fi
  done
fi

# ---------------------------------------------------------------- venv
export XDG_CACHE_HOME="${XDG_CACHE_HOME_SETUP:-$(mktemp -d -t switchyard-xdg.XXXXXX)}"
trap 'rm -rf "$XDG_CACHE_HOME"' EXIT

VENV="$REPO/.venv"
REQ="$REPO/scripts/requirements.txt"
STAMP="$VENV/.switchyard-stamp"
PY="${PYTHON:-python3}"
req_hash="$( { "$PY" --version 2>&1; cat "$REQ"; } | sha256sum | cut -d' ' -f1)"

if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv at $VENV"
  "$PY" -m venv "$VENV"
fi
if [ "$RUNTIME_ONLY" -eq 1 ]; then
  if ! "$VENV/bin/python" -c "import onnxruntime" >/dev/null 2>&1; then
    log "installing ONNX Runtime"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$(grep -E '^onnxruntime==' "$REQ")"
  fi
elif [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$req_hash" ]; then
  log "installing Python requirements (this takes ~1 min)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
  "$VENV/bin/python" -m pip check >&2
  "$VENV/bin/python" -c "import mlserver, tritonclient.http, onnxruntime, onnx, numpy, requests, pytest, kubernetes_validate, jsonpatch, cryptography, yaml"
  "$VENV/bin/python" -c "import tritonclient.grpc"   # separate process: clashes with mlserver's protos
  echo "$req_hash" > "$STAMP"
else
  log "venv up to date"
fi

# ---------------------------------------------------------------- ORT dylib
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
ORT_LIB="$(ls -1 "$SITE"/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | sort -V | tail -n1 || true)"
if [ -z "$ORT_LIB" ]; then
  echo "[setup] ERROR: libonnxruntime.so.* not found under $SITE/onnxruntime/capi" >&2
  exit 1
fi
mkdir -p "$REPO/.switchyard/lib"
LINK="$REPO/.switchyard/lib/libonnxruntime.so"
if [ "$(readlink "$LINK" 2>/dev/null || true)" != "$ORT_LIB" ]; then
  ln -sfn "$ORT_LIB" "$LINK"
fi

echo "ORT_DYLIB_PATH=$LINK"
