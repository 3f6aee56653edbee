#!/usr/bin/env python3
"""Helpers of benches/grpc.sh. Run with the project's .venv python (it needs
tritonclient.grpc's generated protobufs for the bodies and the checks).

    grpc_tools.py bodies DIR                  # framed gRPC bodies: mlp_b{1,32}.grpc, live.grpc
    grpc_tools.py check HOST:PORT BATCH       # one tritonclient.grpc infer; prints a digest of the outputs
    grpc_tools.py h2 STDOUT LOGFILE           # one TSV line from an h2load run: rps p50_us p99_us ok failed
    grpc_tools.py report RESULTS.tsv          # markdown tables from the run's records

The request tensors are those of benches/embedded_tools.py (same values, same
shapes), so HTTP JSON, HTTP binary and gRPC carry the same bytes.
"""

import hashlib
import json
import re
import statistics
import struct
import sys

FEATURES = 16  # mlp: input [-1, 16] FP32 -> probabilities [-1, 4]
BATCHES = [1, 32]


def data(n):
    # The same values as benches/embedded_tools.py and benches/onnx_raw.rs.
    return [((i * 7919) % 1000) / 1000.0 - 0.5 for i in range(n)]


def frame(msg: bytes) -> bytes:
    # gRPC length-prefixed message: compressed flag (0), 4-byte big-endian length, bytes.
    return b"\x00" + struct.pack(">I", len(msg)) + msg


def bodies(out):
    from tritonclient.grpc import service_pb2 as pb

    for b in BATCHES:
        req = pb.ModelInferRequest(model_name="mlp")
        t = req.inputs.add()
        t.name, t.datatype = "input", "FP32"
        t.shape.extend([b, FEATURES])
        vals = data(b * FEATURES)
        # What tritonclient.grpc sends: the tensor in raw_input_contents.
        req.raw_input_contents.append(struct.pack(f"<{len(vals)}f", *vals))
        with open(f"{out}/mlp_b{b}.grpc", "wb") as f:
            f.write(frame(req.SerializeToString()))
    with open(f"{out}/live.grpc", "wb") as f:
        f.write(frame(pb.ServerLiveRequest().SerializeToString()))


def check(target, batch):
    import numpy as np
    import tritonclient.grpc as g

    b = int(batch)
    c = g.InferenceServerClient(target)
    x = np.array(data(b * FEATURES), dtype=np.float32).reshape(b, FEATURES)
    inp = g.InferInput("input", [b, FEATURES], "FP32")
    inp.set_data_from_numpy(x)
    r = c.infer("mlp", [inp])
    outs = r.get_response().outputs
    digest = hashlib.sha256()
    for o in sorted(outs, key=lambda o: o.name):
        arr = r.as_numpy(o.name)
        digest.update(o.name.encode() + str(arr.shape).encode() + np.round(arr, 5).tobytes())
    print(digest.hexdigest()[:16])


def h2(stdout_path, log_path):
    """h2load: requests/s from its summary, p50/p99 from --log-file (µs), succeeded, failed+errored."""
    text = open(stdout_path).read()
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    rps = float(m.group(3)) if m else 0.0
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
    ok = int(m.group(4)) if m else 0
    bad = int(m.group(5)) + int(m.group(6)) + int(m.group(7)) if m else -1
    lat = []
    non2xx = 0
    for line in open(log_path):
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        if not parts[1].startswith("2"):
            non2xx += 1
        lat.append(int(parts[2]))
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else 0
    print(f"{rps:.0f}\t{q(0.5)}\t{q(0.99)}\t{ok}\t{bad + non2xx}\t{len(lat)}")


def tsv(path):
    return [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]


def report(results):
    rows = tsv(results)
    meta = {r[1]: r[2] for r in rows if r[0] == "meta"}
    pts = [r for r in rows if r[0] == "point"]
    # point  part  case  load  rps  p50  p99  ok  bad  n  sy_ticks  be_ticks
    tck = float(meta.get("clk_tck", 100))

    def rec(r):
        part, case, load, rps, p50, p99, ok, bad, n, syt, bet = r[1:12]
        return dict(part=part, case=case, load=load, rps=float(rps), p50=int(p50), p99=int(p99), ok=int(ok),
                    bad=int(bad), n=int(n), syt=int(syt), bet=int(bet))

    pts = [rec(r) for r in pts]
    # Several rounds per (part, case, load): medians of rates and percentiles, sums of counts and CPU.
    groups, order = {}, []
    for p in pts:
        k = (p["part"], p["case"], p["load"])
        if k not in groups:
            groups[k] = []
            order.append(k)
        groups[k].append(p)
    med = statistics.median
    pts = []
    for k in order:
        g = groups[k]
        pts.append(dict(part=k[0], case=k[1], load=k[2], rps=med([x["rps"] for x in g]), p50=int(med([x["p50"] for x in g])),
                        p99=int(med([x["p99"] for x in g])), ok=sum(x["ok"] for x in g), bad=sum(x["bad"] for x in g),
                        n=sum(x["n"] for x in g), syt=sum(x["syt"] for x in g), bet=sum(x["bet"] for x in g),
                        rounds="/".join(str(x["p50"]) for x in g)))
    cpu = lambda ticks, ok: f"{ticks / tck * 1e6 / ok:.0f}" if ok and ticks >= 0 else "—"
    print(f"- machine: {meta.get('machine', '?')}")
    print(f"- load average at start {meta.get('load_start', '?')}, before part 2 {meta.get('load_mid', '?')}, at end {meta.get('load_end', '?')}")
    print(f"- binary: {meta.get('binary', '?')}")
    print(f"- Switchyard non-2xx answers counted in its own metrics (embedded part, whole run incl. start-up probes): {meta.get('sy_errors', '?')}")
    print()
    print("### 1. gRPC infer: direct to MLServer vs through Switchyard (v2-grpc backend)\n")
    print("Median over rounds of req/s, p50 and p99; CPU per request over all rounds.\n")
    print("| path | load | req/s | ok / failed | p50 (µs) | p50 per round | p99 (µs) | added p50 (µs) | added p99 (µs) | Switchyard CPU (µs/req) | MLServer CPU (µs/req) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    direct = {p["load"]: p for p in pts if p["part"] == "mlserver" and p["case"] == "direct"}
    for p in [p for p in pts if p["part"] == "mlserver"]:
        d = direct.get(p["load"])
        is_d = p["case"] == "direct"
        add50 = "—" if is_d or not d else f"{p['p50'] - d['p50']:+,}"
        add99 = "—" if is_d or not d else f"{p['p99'] - d['p99']:+,}"
        label = "direct (MLServer gRPC)" if is_d else "Switchyard → MLServer gRPC"
        print(f"| {label} | {p['load']} | {p['rps']:,.0f} | {p['ok']} / {p['bad']} | {p['p50']:,} | {p['rounds']} | {p['p99']:,} | {add50} | {add99} | "
              f"{'—' if is_d else cpu(p['syt'], p['ok'])} | {cpu(p['bet'], p['ok'])} |")
    print()
    print("### 2. Embedded runtime (mlp): gRPC vs HTTP binary vs HTTP JSON\n")
    print("Floors: the same listener answering a request that does no inference "
          "(gRPC `ServerLive`, HTTP `GET /v2/health/live`). \"over floor\" = the row's latency minus its protocol's floor at the same load.\n")
    print("| protocol | batch | load | req/s | rows/s | ok / failed | p50 (µs) | p50 per round | p99 (µs) | p50 over floor (µs) | p99 over floor (µs) | Switchyard CPU (µs/req) | CPU over floor (µs/req) |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    emb = [p for p in pts if p["part"] == "embedded"]
    floors = {(p["case"].split(":")[0], p["load"]): p for p in emb if p["case"].endswith(":floor")}
    for p in emb:
        proto, batch = p["case"].split(":")
        f = floors.get((proto.split("-")[0], p["load"])) if batch != "floor" else None
        c = p["syt"] / tck * 1e6 / p["ok"] if p["ok"] else 0
        fc = f["syt"] / tck * 1e6 / f["ok"] if f and f["ok"] else None
        b = int(batch) if batch != "floor" else 0
        print(f"| {proto} | {batch} | {p['load']} | {p['rps']:,.0f} | {p['rps'] * b:,.0f} | {p['ok']} / {p['bad']} | {p['p50']:,} | {p['rounds']} | {p['p99']:,} | "
              + (f"{p['p50'] - f['p50']:+,} | {p['p99'] - f['p99']:+,} | " if f else "— | — | ")
              + f"{c:.0f} | " + (f"{c - fc:+.0f} |" if fc is not None else "— |"))
    print()
    print("Ratios at the same load (gRPC = 1.00):\n")
    print("| batch | load | HTTP binary / gRPC p50 | HTTP JSON / gRPC p50 | HTTP binary / gRPC CPU | HTTP JSON / gRPC CPU | HTTP binary / gRPC req/s (closed) | HTTP JSON / gRPC req/s (closed) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    idx = {(p["case"], p["load"]): p for p in emb}
    loads = []
    for p in emb:
        if p["load"] not in loads:
            loads.append(p["load"])
    for b in ("1", "32"):
        for load in loads:
            g, hb, hj = (idx.get((f"{k}:{b}", load)) for k in ("grpc", "http-bin", "http-json"))
            if not (g and hb and hj):
                continue
            cp = lambda x: x["syt"] / x["ok"] if x["ok"] else float("nan")
            closed = load.startswith("closed")
            print(f"| {b} | {load} | {hb['p50'] / g['p50']:.2f} | {hj['p50'] / g['p50']:.2f} | {cp(hb) / cp(g):.2f} | {cp(hj) / cp(g):.2f} | "
                  + (f"{hb['rps'] / g['rps']:.2f} | {hj['rps'] / g['rps']:.2f} |" if closed else "— | — |"))
    print()


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"bodies": bodies, "check": check, "h2": h2, "report": report}[cmd](*args)
