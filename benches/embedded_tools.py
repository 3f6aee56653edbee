#!/usr/bin/env python3
"""Helpers for benches/embedded.sh (standard library only).

    embedded_tools.py free-port
    embedded_tools.py bodies DIR                 # V2 JSON and binary bodies per model and batch
    embedded_tools.py batch-metrics URL          # "<sum> <count>" of switchyard_batch_size per model
    embedded_tools.py overhead URL BODY HEADERS N  # p50 of x-switchyard-overhead-us and of the client RTT
    embedded_tools.py oha-summary FILE           # one TSV line from oha's JSON output
"""

import json
import socket
import statistics
import struct
import sys
import time
import http.client
import urllib.request
from urllib.parse import urlparse

MODELS = {"mlp": 16, "mlp_heavy": 256}
BATCHES = [1, 32]


def data(n):
    # The same values as benches/onnx_raw.rs feeds the raw sessions.
    return [((i * 7919) % 1000) / 1000.0 - 0.5 for i in range(n)]


def bodies(out):
    for model, features in MODELS.items():
        for b in BATCHES:
            vals = data(b * features)
            shape = [b, features]
            js = {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": vals}]}
            with open(f"{out}/{model}_b{b}.json", "w") as f:
                json.dump(js, f, separators=(",", ":"))
            raw = struct.pack(f"<{len(vals)}f", *vals)
            head = {
                "inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                            "parameters": {"binary_data_size": len(raw)}}],
                "parameters": {"binary_data_output": True},
            }
            hb = json.dumps(head, separators=(",", ":")).encode()
            with open(f"{out}/{model}_b{b}.bin", "wb") as f:
                f.write(hb + raw)
            with open(f"{out}/{model}_b{b}.binlen", "w") as f:
                f.write(str(len(hb)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def batch_metrics(url):
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("switchyard_batch_size_sum") or line.startswith("switchyard_batch_size_count"):
            name, rest = line.split("{", 1)
            labels, value = rest.rsplit("}", 1)
            model = next((kv.split("=", 1)[1].strip('"') for kv in labels.split(",") if kv.startswith("model=")), "?")
            kind = "sum" if name.endswith("_sum") else "count"
            out.setdefault(model, {"sum": 0.0, "count": 0.0})[kind] += float(value)
    print(json.dumps(out))


def overhead(url, body_path, headers_json, n):
    u = urlparse(url)
    body = open(body_path, "rb").read()
    headers = json.loads(headers_json)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    ov, rtt, batch = [], [], set()
    for i in range(int(n)):
        t = time.perf_counter()
        conn.request("POST", u.path, body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        dt = time.perf_counter() - t
        if r.status != 200:
            raise SystemExit(f"HTTP {r.status} from {url}")
        if i >= 20:  # skip connection warm-up
            ov.append(int(r.getheader("x-switchyard-overhead-us")))
            rtt.append(dt * 1e6)
    print(f"{statistics.median(ov):.0f}\t{statistics.median(rtt):.0f}")


def oha_summary(path):
    """requests/s, p50 ms, p99 ms, success rate, non-200 count"""
    j = json.load(open(path))
    s = j["summary"]
    p = j.get("latencyPercentiles", {})
    codes = j.get("statusCodeDistribution", {})
    total = sum(codes.values())
    ok = codes.get("200", 0)
    rps = ok / s["total"] if s.get("total") else s.get("requestsPerSec", 0)
    ms = lambda v: (v or 0) * 1e3
    errs = j.get("errorDistribution", {})
    print(f"{rps:.0f}\t{ms(p.get('p50')):.3f}\t{ms(p.get('p99')):.3f}\t{ok}\t{total - ok + sum(errs.values())}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"bodies": bodies, "free-port": free_port, "batch-metrics": batch_metrics, "overhead": overhead,
     "oha-summary": oha_summary}[cmd](*args)
