"""A real TorchServe for the Python tests: its Java front end and Python worker
from .switchyard/venvs/torchserve (scripts/requirements-torchserve.txt), every
port free, the test handler (tests/torchserve/handler.py) archived into a
scratch model store as `adder` versions 1.0 and 2.0.

No torch is installed: the worker's one `import torch` is answered by
tests/torchserve/shim (see its docstring), put on the worker's PYTHONPATH only.
"""

from harness import REPO, Proc, free_port

import os
import subprocess
import time

import pytest
import requests

TS_VENV = REPO / ".switchyard" / "venvs" / "torchserve" / "bin"
HANDLER = REPO / "tests" / "torchserve" / "handler.py"
SHIM = REPO / "tests" / "torchserve" / "shim"
TS_PATIENCE_S = 120.0
POLL_S = 0.05


class TorchServe:
    """`torchserve --foreground` with its five ports free; `start()` again after `kill()` reuses them."""

    def __init__(self, tmp, procs):
        if not (TS_VENV / "torchserve").exists():
            pytest.fail(f"no TorchServe at {TS_VENV}: run scripts/setup.sh")
        self.tmp, self.procs = tmp, procs
        self.ports = {k: free_port() for k in ("inference", "management", "metrics", "grpc", "grpc_management")}
        self.inference = f"http://127.0.0.1:{self.ports['inference']}"
        self.management = f"http://127.0.0.1:{self.ports['management']}"
        self.store = tmp / "model-store"
        self.store.mkdir()
        self.proc = None
        for version in ("1.0", "2.0"):
            self.archive("adder", version)

    def archive(self, name, version):
        """`torch-model-archiver --archive-format no-archive` into the store as NAME-VERSION/."""
        out = self.tmp / "archiving"
        out.mkdir(exist_ok=True)
        subprocess.run(
            [
                str(TS_VENV / "torch-model-archiver"), "--model-name", name, "--version", version,
                "--handler", str(HANDLER), "--export-path", str(out), "--archive-format", "no-archive", "-f",
            ],
            check=True, capture_output=True, timeout=60,
        )
        (out / name).rename(self.store / f"{name}-{version}")

    def start(self):
        config = self.tmp / "config.properties"
        p = self.ports
        config.write_text(
            f"inference_address=http://127.0.0.1:{p['inference']}\n"
            f"management_address=http://127.0.0.1:{p['management']}\n"
            f"metrics_address=http://127.0.0.1:{p['metrics']}\n"
            f"grpc_inference_address=127.0.0.1\ngrpc_inference_port={p['grpc']}\n"
            f"grpc_management_address=127.0.0.1\ngrpc_management_port={p['grpc_management']}\n"
            f"model_store={self.store}\n"
            # 0.11+: token auth on and model registration off by default.
            "disable_token_authorization=true\nenable_model_api=true\n"
            "install_py_dep_per_model=false\ndefault_workers_per_model=1\n"
        )
        env = dict(
            os.environ,
            PATH=f"{TS_VENV}:{os.environ['PATH']}",
            PYTHONPATH=str(SHIM),
            # TorchServe keeps its pid file in the temp dir and its logs in ./logs.
            TMPDIR=str(self.tmp), LOG_LOCATION=str(self.tmp / "logs"), METRICS_LOCATION=str(self.tmp / "logs"),
        )
        self.proc = Proc(
            "torchserve",
            [str(TS_VENV / "torchserve"), "--foreground", "--ncs", "--ts-config", str(config),
             "--model-store", str(self.store)],
            self.tmp / "torchserve.log", env=env, cwd=str(self.tmp),
        )
        self.procs.append(self.proc)
        self.proc.wait_until_ok(f"{self.inference}/ping", TS_PATIENCE_S)

    def register(self, archive, workers=1, batch_size=1, max_batch_delay_ms=100, response_timeout_s=120):
        r = requests.post(
            f"{self.management}/models",
            params={
                "url": archive, "initial_workers": workers, "synchronous": "true",
                "batch_size": batch_size, "max_batch_delay": max_batch_delay_ms,
                "response_timeout": response_timeout_s,
            },
            timeout=TS_PATIENCE_S,
        )
        assert r.status_code == 200, r.text

    def kill(self):
        self.proc.stop()

    def predict(self, model, body, version=None):
        path = f"{model}/{version}" if version else model
        return requests.post(f"{self.inference}/predictions/{path}", data=body,
                             headers={"Content-Type": "application/json"}, timeout=30)
