#!/usr/bin/env python3
"""Helpers for benches/embedded.sh (standard library only).

    embedded_tools.py free-port
    embedded_tools.py bodies DIR                 # V2 JSON and binary bodies per model and batch
    embedded_tools.py batch-metrics URL          # "<sum> <count>" of switchyard_batch_size per model
    embedded_tools.py overhead URL BODY HEADERS N  # p50 of x-switchyard-overhead-us and of the client RTT
    embedded_tools.py oha-summary FILE           # one TSV line from oha's JSON output
    embedded_tools.py report OUTDIR              # markdown tables and goal ratios from the TSVs
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
    print(p)


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


def overhead(url, body_path, headers_json, n, rate="0"):
    """p50 of x-switchyard-overhead-us and of the client round trip; rate > 0 paces the requests."""
    u = urlparse(url)
    body = open(body_path, "rb").read()
    headers = json.loads(headers_json)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    ov, rtt, batch = [], [], set()
    gap = 1.0 / float(rate) if float(rate) > 0 else 0.0
    start = time.perf_counter()
    for i in range(int(n)):
        if gap:
            pause = start + i * gap - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        t = time.perf_counter()
        conn.request("POST", u.path, body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        dt = time.perf_counter() - t
        if r.status != 200:
            raise SystemExit(f"HTTP {r.status} from {url}")
        if i >= 10:  # skip connection warm-up
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
    errs = {k: v for k, v in errs.items() if "deadline" not in k}
    print(f"{rps:.0f}\t{ms(p.get('p50')):.3f}\t{ms(p.get('p99')):.3f}\t{ok}\t{total - ok + sum(errs.values())}")


def tsv(path):
    try:
        lines = open(path).read().strip().splitlines()
    except FileNotFoundError:
        return []
    head = lines[0].split("\t")
    return [dict(zip(head, l.split("\t"))) for l in lines[1:]]


def raw_index(rows):
    return {(r["model"], int(r["batch"]), int(r["threads"])): r for r in rows}


def raw_rows_per_s(raw, model, batch, threads):
    """Raw rows/s at a (possibly fractional) batch size, interpolated on log2(batch)."""
    import math
    sizes = sorted({b for (m, b, t) in raw if m == model and t == threads})
    if not sizes:
        return None
    batch = min(max(batch, sizes[0]), sizes[-1])
    lo = max(b for b in sizes if b <= batch)
    hi = min(b for b in sizes if b >= batch)
    f = lambda b: float(raw[(model, b, threads)]["rows_per_s"])
    if lo == hi:
        return f(lo)
    w = (math.log2(batch) - math.log2(lo)) / (math.log2(hi) - math.log2(lo))
    return f(lo) * (1 - w) + f(hi) * w


def report(out):
    raw_rows = tsv(f"{out}/raw.tsv")
    after_rows = tsv(f"{out}/raw_after.tsv")
    raw, after = raw_index(raw_rows), raw_index(after_rows)
    served, batching = tsv(f"{out}/served.tsv"), tsv(f"{out}/batching.tsv")
    paced = {(r["model"], int(r["batch"]), r["threads"]): r for r in tsv(f"{out}/raw_paced.tsv")}

    def raw_mean(model, batch, threads, key):
        vals = [float(x[(model, batch, threads)][key]) for x in (raw, after) if (model, batch, threads) in x]
        return sum(vals) / len(vals) if vals else None

    if raw_rows:
        print("## Raw Session::run (intra_op_threads 1)\n")
        print("| model | batch | p50 µs (1 thread) | p99 µs | rows/s 1 thread | rows/s 2 threads (own session each) | 2T/1T |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in raw_rows:
            if r["threads"] != "1":
                continue
            r2 = raw.get((r["model"], int(r["batch"]), 2))
            two = float(r2["rows_per_s"]) if r2 else None
            print(f"| {r['model']} | {r['batch']} | {r['p50_us']} | {r['p99_us']} | {float(r['rows_per_s']):,.0f} | "
                  + (f"{two:,.0f} | {two / float(r['rows_per_s']):.2f} |" if two else "- | - |"))
        print()
    if served:
        print("## Served vs raw (no batching)\n")
        health = {(r["instances"], r["mode"]): r for r in served if r["model"] == "health"}
        nan = float("nan")
        print("Low rate, open loop (oha -q, --latency-correction); raw = the same call paced at the same rate in one thread (inline) and handed to a worker thread (handoff).\n")
        print("| model | body | batch | served p50 µs | raw inline p50 µs | raw handoff p50 µs | served − raw inline µs | health GET p50 µs | (served − health) − raw inline µs | x-switchyard-overhead-us p50 |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in served:
            if r["model"] == "health" or not r["mode"].startswith("open") or r["instances"] != "1":
                continue
            b = int(r["batch"])
            pi, ph = paced.get((r["model"], b, "inline")), paced.get((r["model"], b, "handoff"))
            rp = float(pi["p50_us"]) if pi else nan
            rh = float(ph["p50_us"]) if ph else nan
            sp = float(r["p50_ms"]) * 1e3
            h = health.get(("1", r["mode"]))
            hp = float(h["p50_ms"]) * 1e3 if h else nan
            print(f"| {r['model']} | {r['kind']} | {b} | {sp:.0f} | {rp:.1f} | {rh:.1f} | {sp - rp:.0f} | {hp:.0f} | {sp - hp - rp:.0f} | {r['overhead_hdr_us']} |")
        print()
        print("Back to back, one connection (oha -c 1); raw = the tight loop (mean of the runs before and after).\n")
        print("| model | body | served p50 µs | raw p50 µs | served − raw µs | health GET p50 µs | (served − health) − raw µs | x-switchyard-overhead-us p50 |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in served:
            if r["model"] == "health" or r["mode"] != "closed_c1":
                continue
            rp = raw_mean(r["model"], 1, 1, "p50_us") or nan
            sp = float(r["p50_ms"]) * 1e3
            h = health.get(("1", "closed_c1"))
            hp = float(h["p50_ms"]) * 1e3 if h else nan
            print(f"| {r['model']} | {r['kind']} | {sp:.0f} | {rp:.1f} | {sp - rp:.0f} | {hp:.0f} | {sp - hp - rp:.0f} | {r['overhead_hdr_us']} |")
        print()
        print("Closed loop, 4 connections; raw = threads (each with its own session) = instances, run just before and after the served point (mean).\n")
        print("| model | body | batch | instances | served rows/s | raw rows/s | served / raw |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for r in served:
            if r["model"] == "health" or r["mode"] != "closed_c4":
                continue
            b, i = int(r["batch"]), int(r["instances"])
            rr = float(r["raw_rows_per_s"]) if r.get("raw_rows_per_s", "-") not in ("-", "") else raw_mean(r["model"], b, i, "rows_per_s")
            sr = float(r["rps"]) * b
            print(f"| {r['model']} | {r['kind']} | {b} | {i} | {sr:,.0f} | " + (f"{rr:,.0f} | {sr / rr:.2f} |" if rr else "- | - |"))
        for (inst, mode), h in sorted(health.items()):
            print(f"\nhealth GET, instances {inst}, {mode}: {float(h['rps']):,.0f} req/s, p50 {float(h['p50_ms']) * 1e3:.0f} µs")
        print()
    if batching:
        print("## Dynamic batching, batch-1 binary requests, open loop\n")
        print("| model | mode | offered req/s | achieved req/s | p50 ms | p99 ms | mean batch | errors |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in batching:
            print(f"| {r['model']} | {r['mode']} | {r['offered']} | {float(r['rps']):,.0f} | {r['p50_ms']} | {r['p99_ms']} | {r['mean_batch']} | {r['errors']} |")
        print()
        print("| model | mode | closed-loop req/s (64 conns) | × unbatched saturation | mean batch | raw rows/s at that batch (1 thread) | served / raw | p50 / p99 vs off at LOW_RATE | p50 / p99 vs off at 25% |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        models = []
        for r in batching:
            if r["model"] not in models:
                models.append(r["model"])
        for m in models:
            rows = [r for r in batching if r["model"] == m]
            sat = next(float(r["rps"]) for r in rows if r["offered"] == "sat_c16")
            low, quarter = {}, {}
            for r in rows:
                if r["offered"] not in ("sat_c16", "closed"):
                    if r["mode"] not in low:
                        low[r["mode"]] = r  # the first (lowest, LOW_RATE) offered rate of each mode
                    elif r["mode"] not in quarter:
                        quarter[r["mode"]] = r  # the second: 25% of unbatched saturation
            for r in rows:
                if r["offered"] != "closed":
                    continue
                mb = float(r["mean_batch"]) if r["mean_batch"] not in ("-", "") else 1.0
                if r.get("raw32_rows_per_s", "-") not in ("-", "") and mb >= 16:
                    import math
                    r16, r32 = float(r["raw16_rows_per_s"]), float(r["raw32_rows_per_s"])
                    w = (math.log2(mb) - 4) if mb < 32 else 1.0
                    rr = r16 * (1 - w) + r32 * w
                else:
                    rr = raw_rows_per_s(raw, m, mb, 1) if raw else None
                rps = float(r["rps"])
                def ratio(d, key):
                    lo, base = d.get(r["mode"]), d.get("off")
                    return f"{float(lo[key]) / float(base[key]):.2f}" if lo and base else "-"
                print(f"| {m} | {r['mode']} | {rps:,.0f} | {rps / sat:.2f} | {mb:.2f} | "
                      + (f"{rr:,.0f} | {rps / rr:.2f}" if rr else "- | -")
                      + f" | {ratio(low, 'p50_ms')} / {ratio(low, 'p99_ms')} | {ratio(quarter, 'p50_ms')} / {ratio(quarter, 'p99_ms')} |")
        print()


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"bodies": bodies, "free-port": free_port, "batch-metrics": batch_metrics, "overhead": overhead,
     "oha-summary": oha_summary, "report": report}[cmd](*args)
