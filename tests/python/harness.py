"""Shared pieces of the Python client tests: a scratch XDG cache (onnxruntime
writes telemetry there on first use, so import this module before it), free
ports, child processes that are always stopped, and the binary under test.

`tritonclient.grpc` and `mlserver` register the same protobuf symbols and
cannot share a process: MLServer only ever runs as a child here.
"""
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

_XDG = tempfile.TemporaryDirectory(prefix="switchyard-pytest-xdg-")
os.environ["XDG_CACHE_HOME"] = _XDG.name

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
POLL_S = 0.05


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child in its own process group, killed with its group by stop()."""

    def __init__(self, name, argv, log_path, env=None, cwd=None):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def wait_until_ok(self, url, patience_s):
        deadline = time.monotonic() + patience_s
        while True:
            if self.p.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.p.returncode}:\n{self.log()}")
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() >= deadline:
                pytest.fail(f"{self.name} not ready at {url} within {patience_s}s:\n{self.log()}")
            time.sleep(POLL_S)

    def stop(self):
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait()
        self._log.close()


def switchyard_bin() -> str:
    path = os.environ.get("SWITCHYARD_BIN") or str(REPO / "target" / "debug" / "switchyard")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no switchyard binary at {path}: run `cargo build` or set SWITCHYARD_BIN")
    return path


def mlp_reference():
    """onnxruntime sessions on the shipped `mlp` ONNX files: f(version, x) -> probabilities."""
    sessions = {}
    for v in ("1", "2"):
        path = REPO / "examples" / "models" / "mlp" / v / "model.onnx"
        sessions[v] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda version, x: sessions[version].run(["probabilities"], {"input": x})[0]


def batch(rows=4, seed=0):
    """Deterministic FP32 `mlp` inputs, shape [rows, 16]."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, 16)).astype(np.float32)
