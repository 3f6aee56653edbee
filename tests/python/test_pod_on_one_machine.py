"""A pod on one machine: the sidecar `switchyard inject` adds to a model-server
Deployment, run as processes on loopback exactly as the kubelet would run it —
its args and env from the injected manifest, the ConfigMap laid out as the
kubelet mounts it (`..<timestamp>/`, `..data -> ..<timestamp>`,
`config.yaml -> ..data/config.yaml`), the mount paths moved into a scratch
directory and every port replaced by a free one — in front of a real MLServer
on the "pod's" model-server port, started after the sidecar (a native
sidecar's startup probe must pass before the app containers start). It serves traffic; a kubelet-style `..data`
swap to a ConfigMap with new weights takes effect without a restart; and on
SIGTERM an in-flight request completes and the process exits within the
pod's termination grace period.
"""
import os
import re
import signal
import subprocess
import threading
import time

import pytest
import requests
import yaml

from harness import POLL_S, Proc, batch, free_port, start_mlserver, switchyard_bin
from kube import objects, run_inject

PATIENCE_S = 30.0
CONFIG_MAP = "mlp-switchyard"


def config_text(stable, canary, hold):
    # As a user writes it for the pod: the model server on its own port (8080) on
    # loopback; Switchyard's listeners come from the injected flags.
    return f"""\
listeners:
  http:
    address: 0.0.0.0:8000
  control:
    address: 127.0.0.1:9901
backends:
  ml:
    kind: v2-http
    endpoints: ["http://127.0.0.1:8080"]
models:
  mlp:
    variants:
      - {{name: stable, backend: ml, version: 1, weight: {stable}}}
      - {{name: canary, backend: ml, version: 2, weight: {canary}}}
  # Held in the batch queue, then 200 ms in the model: in flight when SIGTERM comes.
  slow:
    variants:
      - {{name: main, backend: ml, batching: {{max_batch_size: 8, max_queue_delay: {hold}}}}}
"""


def manifest(hold):
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIG_MAP},
          "data": {"config.yaml": config_text(100, 0, hold)}}
    deploy = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "mlserver"},
        "spec": {
            "selector": {"matchLabels": {"app": "mlserver"}},
            "template": {
                "metadata": {"labels": {"app": "mlserver"},
                             "annotations": {"switchyard.io/inject": "enabled", "switchyard.io/config": CONFIG_MAP}},
                "spec": {"containers": [{"name": "mlserver", "image": "seldonio/mlserver:1.7.1",
                                         "ports": [{"name": "http", "containerPort": 8080},
                                                   {"name": "grpc", "containerPort": 8081}]}]},
            },
        },
    }
    return yaml.safe_dump_all([cm, deploy])


class KubeletConfigMap:
    """A ConfigMap volume as the kubelet lays it out and updates it (atomic `..data` swap)."""

    def __init__(self, root):
        self.root = root
        root.mkdir()
        self.n = 0

    def publish(self, files):
        self.n += 1
        stamp = f"..2026_11_30_06_{self.n:02d}_00.{1000 + self.n}"
        (self.root / stamp).mkdir()
        for k, v in files.items():
            (self.root / stamp / k).write_text(v)
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        os.symlink(stamp, self.root / "..data_tmp")
        os.replace(self.root / "..data_tmp", self.root / "..data")
        for k in files:
            if not (self.root / k).is_symlink():
                os.symlink(f"..data/{k}", self.root / k)
        if old:
            for f in (self.root / old).iterdir():
                f.unlink()
            (self.root / old).rmdir()


def remap(text, ports):
    """Every `host:port` of the pod, on a free loopback port instead."""
    return re.sub(
        r"\b(?:0\.0\.0\.0|127\.0\.0\.1):(\d+)\b",
        lambda m: f"127.0.0.1:{ports[int(m.group(1))]}" if int(m.group(1)) in ports else m.group(0),
        text,
    )


def metric(url, name, labels):
    for line in requests.get(url, timeout=5).text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def infer(url, model, rows=2, seed=0):
    x = batch(rows, seed)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.flatten().tolist()}]}
    return requests.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30)


def test_the_injected_sidecar_serves_reloads_on_a_data_swap_and_drains(tmp_path):
    run_pod(tmp_path, hold="300ms")


def test_a_request_still_in_flight_3s_after_sigterm_completes(tmp_path):
    run_pod(tmp_path, hold="3s")


def run_pod(tmp_path, hold):
    code, out, err = run_inject([], stdin=manifest(hold))
    assert code == 0, err
    docs = list(objects(yaml.safe_load_all(out)))
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    spec = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    sidecar = next(c for c in spec["initContainers"] if c["name"] == "switchyard")
    assert sidecar["restartPolicy"] == "Always"
    grace_s = spec.get("terminationGracePeriodSeconds", 30)  # Kubernetes' default when unset
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in sidecar["volumeMounts"]}
    config_volume = mounts["/etc/switchyard"]
    assert config_volume["configMap"]["name"] == CONFIG_MAP and "subPath" not in str(sidecar["volumeMounts"])
    assert "emptyDir" in mounts["/var/lib/switchyard"]

    # The pod's ports, each on a free loopback port.
    pod_ports = [p["containerPort"] for c in spec["containers"] + spec["initContainers"] for p in c.get("ports", [])]
    ports = {p: free_port() for p in pod_ports + [9901]}
    named = {p["name"]: ports[p["containerPort"]] for p in sidecar["ports"]}

    procs = []
    try:
        # The volumes: the ConfigMap as the kubelet mounts it, and the emptyDir.
        etc = KubeletConfigMap(tmp_path / "etc-switchyard")
        etc.publish({k: remap(v, ports) for k, v in cm["data"].items()})
        state = tmp_path / "var-lib-switchyard"
        state.mkdir()
        paths = {"/etc/switchyard": str(etc.root), "/var/lib/switchyard": str(state)}

        def localize(arg):
            for mount, local in paths.items():
                if arg.startswith(mount + "/"):
                    return local + arg[len(mount):]
            return remap(arg, ports)

        argv = [localize(a) for a in sidecar["args"]]
        env = dict(os.environ, SWITCHYARD_LOG_FORMAT="text")
        env.update({e["name"]: localize(e["value"]) for e in sidecar.get("env", [])})
        sy = Proc("switchyard sidecar", [switchyard_bin(), *argv], tmp_path / "switchyard.log", env=env,
                  cwd=str(tmp_path))
        procs.append(sy)
        http = f"http://127.0.0.1:{named['sy-http']}"
        # A native sidecar starts first: the app containers start once its startup
        # probe passes, which it must do before the model server is up.
        sy.wait_until_ok(http + sidecar["startupProbe"]["httpGet"]["path"], PATIENCE_S)
        ready = http + sidecar["readinessProbe"]["httpGet"]["path"]
        assert requests.get(ready, timeout=5).status_code != 200, "ready without its model server"

        # The model server on the pod's ports 8080 and 8081, as its container would listen.
        start_mlserver(tmp_path, procs, http_port=ports[8080], grpc_port=ports[8081])
        sy.wait_until_ok(ready, PATIENCE_S)
        assert requests.get(http + sidecar["livenessProbe"]["httpGet"]["path"], timeout=5).status_code == 200
        metrics = f"http://127.0.0.1:{named['sy-metrics']}/metrics"
        assert "switchyard_config_reloads_total" in requests.get(metrics, timeout=5).text

        # Traffic through the sidecar: all on `stable` (model version 1).
        for i in range(10):
            r = infer(http, "mlp", seed=i)
            assert r.status_code == 200, r.text
            assert (r.headers["x-switchyard-variant"], r.json()["model_version"]) == ("stable", "1")

        # The ConfigMap is edited: the kubelet swaps `..data` to a new timestamped directory.
        etc.publish({"config.yaml": remap(config_text(0, 100, hold), ports)})
        deadline = time.monotonic() + PATIENCE_S
        while infer(http, "mlp").headers.get("x-switchyard-variant") != "canary":
            sy.p.poll() is None or pytest.fail(f"switchyard exited:\n{sy.log()}")
            assert time.monotonic() < deadline, f"the ..data swap was not applied within {PATIENCE_S}s:\n{sy.log()}"
            time.sleep(POLL_S)
        for i in range(10):
            r = infer(http, "mlp", seed=i)
            assert (r.headers["x-switchyard-variant"], r.json()["model_version"]) == ("canary", "2")
        assert sy.p.poll() is None, "reloaded in place, not restarted"
        entries = sorted(os.listdir(etc.root))
        assert entries[0] == "..2026_11_30_06_02_00.1002" and entries[1:] == ["..data", "config.yaml"], entries

        drain(sy, http, metrics, "slow", grace_s, etc)
    finally:
        for p in reversed(procs):
            p.stop()


def drain(sy, http, metrics, model, grace_s, etc):
    """SIGTERM with a request to `model` in flight (held in its batch queue): the
    request completes, and the process exits within the pod's grace period."""
    result = {}

    def send():
        try:
            result["r"] = infer(http, model)
        except requests.RequestException as e:
            result["error"] = e

    t = threading.Thread(target=send)
    t.start()
    deadline = time.monotonic() + PATIENCE_S
    while metric(metrics, "switchyard_model_requests_in_flight", {"model": model}) < 1:
        assert time.monotonic() < deadline and t.is_alive(), f"the slow request never was in flight:\n{sy.log()}"
        time.sleep(POLL_S)
    terminated = time.monotonic()
    os.kill(sy.p.pid, signal.SIGTERM)
    t.join(timeout=grace_s)
    assert "r" in result, f"the in-flight request did not complete: {result.get('error')}"
    assert result["r"].status_code == 200, result["r"].text
    assert result["r"].json()["model_name"] == "slow"
    try:
        rc = sy.p.wait(timeout=max(0.0, grace_s - (time.monotonic() - terminated)))
    except subprocess.TimeoutExpired:
        pytest.fail(f"switchyard still running {grace_s}s after SIGTERM (the kubelet would SIGKILL it):\n{sy.log()}")
    assert rc == 0, f"exit code {rc}:\n{sy.log()}"
    # Nothing was written into the read-only ConfigMap mount.
    assert not [f for f in os.listdir(etc.root / "..data") if f != "config.yaml"]
