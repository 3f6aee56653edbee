"""Shared pieces of the Python client tests: a scratch XDG cache (onnxruntime
writes telemetry there on first use, so import this module before it), free
ports, child processes that are always stopped, and the binary under test.

`tritonclient.grpc` and `mlserver` register the same protobuf symbols and
cannot share a process: MLServer only ever runs as a child here.
"""
import os
import random
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


def _ephemeral_floor():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return low if low > 12_000 else None


_EPHEMERAL_FLOOR = _ephemeral_floor()
_GIVEN = set()


def free_port() -> int:
    """A port on 127.0.0.1 free a moment ago, never the same twice in this process.

    Drawn at random below the kernel's ephemeral range where that leaves room:
    a port from bind(0) is one the kernel may hand next to an outgoing
    connection (the load tests open thousands) before the server binds it.
    """
    for attempt in range(1000):
        if _EPHEMERAL_FLOOR:
            port = random.randrange(10_000, _EPHEMERAL_FLOOR)
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise RuntimeError("no free port on 127.0.0.1")


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


MLSERVER_PATIENCE_S = 60.0
SWITCHYARD_PATIENCE_S = 30.0


def start_mlserver(tmp, procs, http_port=None, grpc_port=None):
    """MLServer (tests/mlserver: mlp v1+v2, slow) on the given or free ports; returns (http_port, grpc_port)."""
    http_port, grpc_port = http_port or free_port(), grpc_port or free_port()
    env = dict(os.environ, TMPDIR=str(tmp), XDG_CACHE_HOME=str(tmp / "xdg"))
    ml = Proc(
        "mlserver",
        [str(REPO / "tests" / "mlserver" / "start.sh"), str(http_port), str(grpc_port)],
        tmp / "mlserver.log",
        env=env,
    )
    procs.append(ml)
    ml.wait_until_ok(f"http://127.0.0.1:{http_port}/v2/health/ready", MLSERVER_PATIENCE_S)
    return http_port, grpc_port


def start_switchyard(tmp, body, procs, grpc_max_message_bytes=None, default_upstream=None, default_upstream_tls=None):
    """`switchyard serve` with every listener on a free loopback port (gRPC only when
    `grpc_max_message_bytes` is given; `default_upstream` and `default_upstream_tls`, a
    YAML flow mapping, on the HTTP listener when given)
    followed by `body`; returns the ports by listener."""
    ports = {name: free_port() for name in ("http", "metrics", "control")}
    listeners = (
        "listeners:\n"
        f"  http:\n    address: 127.0.0.1:{ports['http']}\n"
        + (f"    default_upstream: {default_upstream}\n" if default_upstream else "")
        + (f"    default_upstream_tls: {default_upstream_tls}\n" if default_upstream_tls else "")
        + f"  metrics:\n    address: 127.0.0.1:{ports['metrics']}\n"
        f"  control:\n    address: 127.0.0.1:{ports['control']}\n"
    )
    if grpc_max_message_bytes is None:
        listeners += "  grpc:\n    enabled: false\n"
    else:
        ports["grpc"] = free_port()
        listeners += (
            f"  grpc:\n    address: 127.0.0.1:{ports['grpc']}\n    max_message_bytes: {grpc_max_message_bytes}\n"
        )
    config = tmp / "switchyard.yaml"
    config.write_text(listeners + body)
    sy = Proc(
        "switchyard",
        [switchyard_bin(), "serve", "--config", str(config)],
        tmp / "switchyard.log",
        env=dict(os.environ, SWITCHYARD_LOG_FORMAT="text"),
        cwd=str(tmp),
    )
    procs.append(sy)
    sy.wait_until_ok(f"http://127.0.0.1:{ports['http']}/startup", SWITCHYARD_PATIENCE_S)
    return ports
