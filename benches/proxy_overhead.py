#!/usr/bin/env python3
"""Helper of benches/proxy_overhead.sh (stdlib only).

Subcommands:
  payloads DIR          write request.json (~1 KB V2 infer request, FP32 [1,64])
                        and response.json (small V2 infer response) into DIR
  freeports N           print N free 127.0.0.1 TCP ports, one per line
  cputicks PID...       print utime+stime (clock ticks) summed over the PIDs
                        (each PID's own threads are included by the kernel)
  hwm PID...            print VmHWM (kB) summed over the PIDs
  report RESULTS.tsv    print the markdown report built from the run's records
"""

import json
import random
import socket
import sys


def payloads(out_dir):
    rng = random.Random(20240611)  # fixed: every run sends the same bytes
    # Realistic float text: what numpy/json.dumps write for normalised features.
    data = [rng.gauss(0.0, 1.0) for _ in range(64)]
    req = {
        "id": "bench-1",
        "inputs": [
            {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [float(f"{x:.9g}") for x in data]}
        ],
        "outputs": [{"name": "output"}],
    }
    logits = [rng.gauss(0.0, 3.0) for _ in range(10)]
    resp = {
        "model_name": "mlp",
        "model_version": "1",
        "id": "bench-1",
        "outputs": [
            {"name": "output", "shape": [1, 10], "datatype": "FP32", "data": [float(f"{x:.7g}") for x in logits]}
        ],
    }
    meta = {
        "name": "mlp",
        "versions": ["1"],
        "platform": "static",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}],
    }
    for name, obj in (("request.json", req), ("response.json", resp), ("metadata.json", meta)):
        with open(f"{out_dir}/{name}", "w") as f:
            # nginx `return` embeds these in single quotes: no ' or $ may appear.
            # The request as Python clients send it (json.dumps defaults), the
            # static bodies compact.
            text = json.dumps(obj) if name == "request.json" else json.dumps(obj, separators=(",", ":"))
            assert "'" not in text and "$" not in text
            f.write(text)


def freeports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    # Held until all are chosen so the N ports differ from each other.
    print("\n".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


def stat_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After "pid (comm)": field 3 is index 0, so utime (14) / stime (15) are 11 / 12.
    return int(fields[11]) + int(fields[12])


def cputicks(pids):
    print(sum(stat_ticks(p) for p in pids))


def hwm(pids):
    total = 0
    for p in pids:
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    print(total)


def oha_summary(path):
    """(successful requests, p50 s, p99 s, non-200 count, error count, achieved rps) from oha's JSON."""
    with open(path) as f:
        j = json.load(f)
    codes = j.get("statusCodeDistribution", {})
    ok = int(codes.get("200", 0))
    other = sum(int(v) for k, v in codes.items() if k != "200")
    # oha cancels the requests still in flight when -z runs out: not failures.
    errors = sum(int(v) for k, v in j.get("errorDistribution", {}).items() if k != "aborted due to deadline")
    pct = j["latencyPercentiles"]
    return ok, pct["p50"], pct["p99"], other, errors, j["summary"].get("requestsPerSec", 0.0)


def fmt_us(seconds):
    return f"{seconds * 1e6:,.0f}"


def report(tsv):
    """Records (tab-separated), written by the shell script:
    meta   KEY  VALUE
    sat    PATH  OHA_JSON
    point  PATH  RATE  OHA_JSON  PROXY_TICKS  BACKEND_TICKS
    rss    PATH  KB
    """
    meta, sat, points, rss = {}, {}, [], {}
    with open(tsv) as f:
        for line in f:
            r = line.rstrip("\n").split("\t")
            if r[0] == "meta":
                meta[r[1]] = r[2]
            elif r[0] == "sat":
                sat[r[1]] = r[2]
            elif r[0] == "point":
                points.append(r[1:])
            elif r[0] == "rss":
                rss[r[1]] = int(r[2])
    clk = int(meta["clk_tck"])
    labels = json.loads(meta["labels"])
    out = []
    out.append(f"Proxy overhead, KServe V2 infer ({meta['body_bytes']} B request, {meta['resp_bytes']} B response), "
               f"{meta['conns']} connections, {meta['duration']} per point, open loop (oha -q, latency correction)")
    out.append("")
    out.append(f"- machine: {meta['machine']}")
    out.append(f"- load average: start {meta['load_start']}; end {meta['load_end']}")
    out.append(f"- saturation (closed loop, {meta['conns']} connections, {meta['sat_duration']}):")
    for path, fn in sat.items():
        ok, p50, p99, other, errs, rps = oha_summary(fn)
        out.append(f"  - {labels[path]}: {rps:,.0f} req/s (p50 {fmt_us(p50)} µs, p99 {fmt_us(p99)} µs)")
    out.append(f"- rates measured: {meta['rates']} req/s (= {meta['fractions']} of Switchyard's saturation)")
    out.append("")
    out.append("| path | rate (req/s) | 200 / other / errors | p50 (µs) | p99 (µs) | added p50 (µs) | added p99 (µs) "
               "| proxy CPU (µs/req) | backend CPU (µs/req) | proxy peak RSS (MiB) |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    direct = {}
    rows = []
    for path, rate, fn, pticks, bticks in points:
        ok, p50, p99, other, errs, _ = oha_summary(fn)
        if path == "direct":
            direct[rate] = (p50, p99)
        rows.append((path, rate, ok, other, errs, p50, p99, int(pticks), int(bticks)))
    for path, rate, ok, other, errs, p50, p99, pticks, bticks in rows:
        per_req = lambda t: (t / clk * 1e6 / ok) if ok else float("nan")  # noqa: E731
        d50, d99 = direct.get(rate, (float("nan"), float("nan")))
        is_direct = path == "direct"
        out.append(
            "| {} | {} | {} / {} / {} | {} | {} | {} | {} | {} | {:.1f} | {} |".format(
                labels[path],
                rate,
                ok,
                other,
                errs,
                fmt_us(p50),
                fmt_us(p99),
                "—" if is_direct else f"{(p50 - d50) * 1e6:+,.0f}",
                "—" if is_direct else f"{(p99 - d99) * 1e6:+,.0f}",
                "—" if is_direct else f"{per_req(pticks):.1f}",
                per_req(bticks),
                "—" if is_direct else f"{rss.get(path, 0) / 1024:.1f}",
            )
        )
    # The two goals, per rate, for every Switchyard configuration measured.
    out.append("")
    out.append("Goals (issue 2): Switchyard's added p99 ≤ HAProxy's; Switchyard CPU/request ≤ 0.8 × nginx's.")
    out.append("")
    by = {(r[0], r[1]): r for r in rows}
    rates = sorted({r[1] for r in rows}, key=float)
    for sy in [p for p in labels if p.startswith("switchyard")]:
        for rate in rates:
            s, h, n = by.get((sy, rate)), by.get(("haproxy", rate)), by.get(("nginx", rate))
            if not (s and h and n):
                continue
            d99 = direct[rate][1]
            s_add, h_add = (s[6] - d99) * 1e6, (h[6] - d99) * 1e6
            s_cpu = s[7] / clk * 1e6 / s[2] if s[2] else float("nan")
            n_cpu = n[7] / clk * 1e6 / n[2] if n[2] else float("nan")
            ratio = s_cpu / n_cpu if n_cpu else float("nan")
            out.append(
                f"- {labels[sy]} @ {rate} req/s: added p99 {s_add:+,.0f} µs vs HAProxy {h_add:+,.0f} µs → "
                f"{'met' if s_add <= h_add else 'NOT met'}; CPU {s_cpu:.1f} vs nginx {n_cpu:.1f} µs/req = "
                f"{ratio:.2f}× → {'met' if ratio <= 0.8 else 'NOT met'}"
            )
    print("\n".join(out))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "payloads":
        payloads(args[0])
    elif cmd == "freeports":
        freeports(int(args[0]))
    elif cmd == "cputicks":
        cputicks(args)
    elif cmd == "hwm":
        hwm(args)
    elif cmd == "report":
        report(args[0])
    else:
        sys.exit(f"unknown subcommand {cmd}")


if __name__ == "__main__":
    main()
