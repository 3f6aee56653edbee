#!/usr/bin/env python3
"""Helper of benches/control.sh (stdlib only): the control-plane benchmark.

Subcommands:
  freeports N                     print N free 127.0.0.1 TCP ports, one per line
  body OUT                        write a V2 infer request for `mlp` (FP32 [1,16], JSON)
  config HEAD OUT W1 W2 [FAILURL] write HEAD + the `models` section (v1 = mlp version 1,
                                  v2 = version 2, weights W1/W2); with FAILURL v2 is a
                                  v2-http backend there and a rollout v1 → v2 is declared
  failserver PORT LOG             a KServe V2 HTTP server that answers every infer with 500
                                  (probes and metadata 200); appends "epoch_s" per infer to LOG
  storm HEAD CONFIG MIN_MS MAX_MS OUT
                                  rewrite CONFIG by tmp+rename every MIN..MAX ms, weights
                                  alternating 70/30 and 30/70, until SIGTERM; then writes
                                  "writes N" to OUT
  flip HEAD CONFIG URL N OUT      N times: rewrite CONFIG by tmp+rename flipping mlp between
                                  v1:100/v2:0 and 0/100; poll URL (data plane) back to back
                                  until a 200 carries the new x-switchyard-variant; TSV of
                                  the times to OUT
  rollout HEAD CONFIG CTL URL FAILLOG OUT
                                  with a steady load already running: rewrite CONFIG to
                                  declare the rollout (canary v2 on the failing server),
                                  poll GET CTL/ml/models/mlp/status back to back until the
                                  rollout ends; append one TSV row of timings to OUT
  metric URL NAME [LABELS]        print the sum of a Prometheus series (0 if absent)
  cputicks PID                    print utime+stime (clock ticks) of PID, all its threads
  report RESULTS.tsv              print the markdown report built from the run's records
"""

import http.client
import http.server
import json
import os
import random
import signal
import sys
import threading
import time
import urllib.parse
import urllib.request



def freeports(n):
    """Prints n free 127.0.0.1 ports, all held until chosen so they differ."""
    import socket

    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print("\n".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


def body(out):
    rng = random.Random(20240611)  # fixed: every run sends the same bytes
    data = [float(f"{rng.gauss(0.0, 1.0):.9g}") for _ in range(16)]
    req = {"id": "bench", "inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": data}]}
    with open(out, "w") as f:
        f.write(json.dumps(req))


# ---------------------------------------------------------------- configs

ROLLOUT = "    rollout: {baseline: v1, canary: v2, steps: [10, 50, 100], interval: 1s, min_requests: 20}\n"


def models_yaml(w1, w2, fail_url=None):
    if fail_url is None:
        return (
            "models:\n  mlp:\n    variants:\n"
            f"      - {{name: v1, backend: local, version: 1, weight: {w1}}}\n"
            f"      - {{name: v2, backend: local, version: 2, weight: {w2}}}\n"
        )
    return (
        f"  failing: {{kind: v2-http, endpoints: [\"{fail_url}\"]}}\n"
        "models:\n  mlp:\n    variants:\n"
        f"      - {{name: v1, backend: local, version: 1, weight: {w1}}}\n"
        f"      - {{name: v2, backend: failing, weight: {w2}}}\n"
    )


def write_by_rename(path, text):
    """An editor's save: a temp file beside it, renamed over it."""
    tmp = path + ".swp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def config(head, out, w1, w2, fail_url=None):
    with open(head) as f:
        text = f.read()
    write_by_rename(out, text + models_yaml(w1, w2, fail_url))


# ---------------------------------------------------------------- failing V2 server


def failserver(port, log):
    logf = open(log, "a", buffering=1)
    meta = {
        "name": "mlp",
        "versions": ["1"],
        "platform": "failing",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 4]}],
    }

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def reply(self, code, obj=None):
            b = b"" if obj is None else json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(b)))
            self.end_headers()
            self.wfile.write(b)

        def do_GET(self):
            p = self.path.rstrip("/")
            if p == "/v2":
                self.reply(200, {"name": "failing", "version": "1", "extensions": []})
            elif p.endswith("/ready") or p.endswith("/live"):
                self.reply(200)
            elif p.startswith("/v2/models/"):
                self.reply(200, meta)
            else:
                self.reply(404, {"error": "not found"})

        def do_POST(self):
            n = int(self.headers.get("content-length") or 0)
            self.rfile.read(n)
            if self.path.endswith("/infer"):
                logf.write(f"{time.time():.6f}\n")
                self.reply(500, {"error": "injected failure: this canary fails every request"})
            else:
                self.reply(404, {"error": "not found"})

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), H)
    srv.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    srv.serve_forever()


# ---------------------------------------------------------------- reload storm


def storm(head, cfg, min_ms, max_ms, out):
    with open(head) as f:
        head_text = f.read()
    rng = random.Random(7)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    n = 0
    gaps = []
    last = time.monotonic()
    while not stop:
        time.sleep(rng.uniform(float(min_ms), float(max_ms)) / 1000.0)
        if stop:
            break
        w1, w2 = (70, 30) if n % 2 == 0 else (30, 70)
        write_by_rename(cfg, head_text + models_yaml(w1, w2))
        now = time.monotonic()
        gaps.append(now - last)
        last = now
        n += 1
    gaps = sorted(gaps[1:]) or [0.0]
    with open(out, "w") as f:
        f.write(f"writes\t{n}\ngap_min_ms\t{gaps[0] * 1e3:.1f}\ngap_max_ms\t{gaps[-1] * 1e3:.1f}\n")


# ---------------------------------------------------------------- write → new generation serving


class Poster:
    """Back-to-back infer requests on one keep-alive connection."""

    def __init__(self, url, body_bytes):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port
        self.body = body_bytes
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)

    def variant(self):
        self.conn.request("POST", "/v2/models/mlp/infer", body=self.body, headers={"content-type": "application/json"})
        r = self.conn.getresponse()
        r.read()
        return r.status, r.getheader("x-switchyard-variant")


def flip(head, cfg, url, n, out, body_path):
    with open(head) as f:
        head_text = f.read()
    with open(body_path, "rb") as f:
        p = Poster(url, f.read())
    status, cur = p.variant()
    assert status == 200, status
    rows = []
    for k in range(int(n)):
        want = "v2" if cur == "v1" else "v1"
        text = head_text + models_yaml(100 if want == "v1" else 0, 100 if want == "v2" else 0)
        polls = 0
        t0 = time.monotonic()
        write_by_rename(cfg, text)
        t_written = time.monotonic()
        failed = 0
        while True:
            status, v = p.variant()
            polls += 1
            if status != 200:
                failed += 1
            elif v == want:
                break
            if time.monotonic() - t0 > 10:
                raise SystemExit(f"flip {k}: {want} not serving 10 s after the write")
        t1 = time.monotonic()
        rows.append((k, want, (t1 - t0) * 1e3, (t_written - t0) * 1e3, polls, failed))
        cur = want
        # A quiet gap well beyond the debounce, jittered so writes do not align with any timer.
        time.sleep(random.uniform(0.25, 0.45))
    with open(out, "w") as f:
        f.write("k\tnew_variant\twrite_to_served_ms\twrite_ms\tpolls\tnon_200\n")
        for r in rows:
            f.write("%d\t%s\t%.2f\t%.3f\t%d\t%d\n" % r)


# ---------------------------------------------------------------- canary breach → weight 0


def get_json(conn, path):
    conn.request("GET", path)
    r = conn.getresponse()
    b = r.read()
    return r.status, json.loads(b) if b else None


def rollout(head, cfg, ctl, fail_log, out, fail_url):
    u = urllib.parse.urlsplit(ctl)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    with open(head) as f:
        head_text = f.read()
    t_write = time.time()
    write_by_rename(cfg, head_text + models_yaml(100, 0, fail_url) + ROLLOUT)
    t_seen = t_on = t_zero = t_status = None
    status_weight = None
    w_max = 0.0
    steps_seen = set()
    final = None
    polls = 0
    while time.time() - t_write < 30:
        code, s = get_json(conn, "/ml/models/mlp/status")
        polls += 1
        now = time.time()
        ro = (s or {}).get("rollout")
        if ro is None:
            continue
        if t_seen is None:
            t_seen = now
        live = {v["name"]: v["weight"] for v in s["variants"]}
        w = live.get("v2", 0.0)
        steps_seen.add(ro.get("step"))
        if w > 0 and t_on is None:
            t_on = now
        w_max = max(w_max, w)
        if ro["status"] != "progressing":
            final = ro
            if t_status is None:
                t_status = now
                status_weight = (w, ro.get("canary_weight"))
            if w == 0 and ro.get("canary_weight") == 0:
                t_zero = now
                break
            if ro["status"] != "rolled_back":
                break
    time.sleep(0.5)  # let any request routed before the swap reach the failing server
    with open(fail_log) as f:
        stamps = [float(x) for x in f.read().split() if float(x) >= t_write]
    first = min(stamps) if stamps else None
    last = max(stamps) if stamps else None
    rel = lambda t: "" if t is None or first is None else f"{(t - first) * 1e3:.1f}"  # noqa: E731
    with open(out, "a") as f:
        f.write(
            "\t".join(
                [
                    f"{(t_seen - t_write) * 1e3:.1f}" if t_seen else "",
                    f"{(t_on - t_write) * 1e3:.1f}" if t_on else "",
                    f"{(t_zero - t_on) * 1e3:.1f}" if t_zero and t_on else "",
                    rel(t_zero),
                    rel(last),
                    str(len(stamps)),
                    str(w_max),
                    (final or {}).get("status", "timeout"),
                    ((final or {}).get("reason") or "").replace("\t", " "),
                    str(polls),
                    f"{(t_zero - t_status) * 1e3:.2f}" if t_zero and t_status else "",
                    "" if status_weight is None else f"{status_weight[0]:g}/{status_weight[1]}",
                ]
            )
            + "\n"
        )
    if not final or final["status"] != "rolled_back" or t_zero is None:
        raise SystemExit(f"rollout did not roll back to 0: {final}")


# ---------------------------------------------------------------- metrics


def metric(url, name, labels=""):
    want = dict(kv.split("=", 1) for kv in labels.split(",") if kv)
    total = 0.0
    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, value = line.rsplit(" ", 1)
            sname, _, lab = series.partition("{")
            if sname != name:
                continue
            got = dict(
                (k.strip(), v.strip().strip('"')) for k, v in (p.split("=", 1) for p in lab.rstrip("}").split(",") if p)
            )
            if all(got.get(k) == v for k, v in want.items()):
                total += float(value)
    print(f"{total:g}")


# ---------------------------------------------------------------- report


def oha_summary(path):
    with open(path) as f:
        j = json.load(f)
    codes = j.get("statusCodeDistribution", {})
    ok = int(codes.get("200", 0))
    other = sum(int(v) for k, v in codes.items() if k != "200")
    errors = sum(int(v) for k, v in j.get("errorDistribution", {}).items() if k != "aborted due to deadline")
    aborted = int(j.get("errorDistribution", {}).get("aborted due to deadline", 0))
    pct = j["latencyPercentiles"]
    return ok, other, errors, aborted, pct["p50"], pct["p99"], pct.get("p99.9"), j["summary"].get("requestsPerSec", 0.0)


def quantile(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    i = q * (len(xs) - 1)
    lo = int(i)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (i - lo)


def report(tsv):
    """Records (tab-separated), written by the shell script:
    meta   KEY  VALUE
    point  LABEL  KIND(steady|storm|storm-slow)  OHA_JSON  WRITES  GENERATIONS  REFUSED  GAPS  LAST_LIVE  CPU_TICKS
    cpu    KIND(idle|storm|storm-slow)  SECONDS  CPU_TICKS  WRITES  GENERATIONS
    flip   FLIP_TSV
    rollout ROLLOUT_TSV
    """
    meta, points, flip_file, rollout_file, cpu_points = {}, [], None, None, []
    with open(tsv) as f:
        for line in f:
            r = line.rstrip("\n").split("\t")
            if r[0] == "meta":
                meta[r[1]] = r[2]
            elif r[0] == "point":
                points.append(r[1:])
            elif r[0] == "flip":
                flip_file = r[1]
            elif r[0] == "cpu":
                cpu_points.append(r[1:])
            elif r[0] == "rollout":
                rollout_file = r[1]
    out = []
    out.append(f"- machine: {meta.get('machine', '?')}")
    out.append(f"- binary: target/release/switchyard at {meta.get('commit', '?')}")
    out.append(f"- load average: start {meta.get('load_start', '?')}; end {meta.get('load_end', '?')}")
    out.append("")
    if points:
        out.append(
            f"### 1. p99 during a reload storm vs steady state ({meta['rate']} req/s open loop, "
            f"{meta['conns']} connections, {meta['duration']} per point)"
        )
        out.append("")
        out.append(
            "| point | writes (gap ms) | reloads applied during the load | refused | last write live after 0.5 s quiet "
            "| 200 / other / errors | p50 (µs) | p99 (µs) | p99.9 (µs) | achieved req/s | Switchyard CPU (µs/req) |"
        )
        out.append("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
        clk = int(meta.get("clk_tck", 100))
        rows = []
        for label, kind, fn, writes, gens, refused, gaps, last_live, ticks in points:
            ok, other, errs, aborted, p50, p99, p999, rps = oha_summary(fn)
            cpu = int(ticks) / clk * 1e6 / ok if ok else float("nan")
            rows.append((label, kind, p50, p99, cpu))
            out.append(
                f"| {label} | {writes}{' (' + gaps + ')' if gaps else ''} | {gens} | {refused} | {last_live} "
                f"| {ok} / {other} / {errs} | {p50 * 1e6:,.0f} | {p99 * 1e6:,.0f} | {(p999 or 0) * 1e6:,.0f} | {rps:,.0f} "
                f"| {cpu:.1f} |"
            )
        out.append("")
        # Each storm point against the nearest steady point before and after it
        # (drifts of the shared machine's load hit neighbours alike).
        by_kind = {}
        for i, (label, kind, p50, p99, cpu) in enumerate(rows):
            if kind == "steady":
                continue
            before = [r for r in rows[:i] if r[1] == "steady"][-1:]
            after = [r for r in rows[i + 1:] if r[1] == "steady"][:1]
            nb = before + after
            if not nb:
                continue
            s50 = sum(r[2] for r in nb) / len(nb)
            s99 = sum(r[3] for r in nb) / len(nb)
            scpu = sum(r[4] for r in nb) / len(nb)
            by_kind.setdefault(kind, []).append((p50 / s50, p99 / s99, cpu / scpu))
            out.append(
                f"- {label} vs {' and '.join(r[0] for r in nb)}: p50 {p50 / s50:.2f}×, p99 {p99 / s99:.2f}×, "
                f"CPU/req {cpu / scpu:.2f}×"
            )
        steady = [r for r in rows if r[1] == "steady"]
        for kind, xs in by_kind.items():
            stormy = [r for r in rows if r[1] == kind]
            m99 = sum(r[3] for r in stormy) / len(stormy)
            s99 = sum(r[3] for r in steady) / len(steady) if steady else float("nan")
            med = quantile([x[1] for x in xs], 0.5)
            out.append(
                f"- **{kind}**: p99 ratio to neighbours, median of {len(xs)} = {med:.2f}× "
                f"(each: {', '.join(f'{x[1]:.2f}×' for x in xs)}); mean p99 {m99 * 1e6:,.0f} µs vs steady mean "
                f"{s99 * 1e6:,.0f} µs = {m99 / s99:.2f}×; CPU/req ratio to neighbours, median {quantile([x[2] for x in xs], 0.5):.2f}×"
            )
        # Per kind, the median of its points' p99 (one hiccup of the shared
        # machine moves a single point's p99 by 100x; the median shrugs it off).
        med = {k: quantile([r[3] for r in rows if r[1] == k], 0.5) for k in {r[1] for r in rows}}
        med50 = {k: quantile([r[2] for r in rows if r[1] == k], 0.5) for k in {r[1] for r in rows}}
        if "steady" in med:
            for k in sorted(x for x in med if x != "steady"):
                out.append(
                    f"- **{k}, median over points**: p50 {med50[k] * 1e6:,.0f} vs {med50['steady'] * 1e6:,.0f} µs "
                    f"= {med50[k] / med50['steady']:.2f}×; p99 {med[k] * 1e6:,.0f} vs {med['steady'] * 1e6:,.0f} µs "
                    f"= {med[k] / med['steady']:.2f}× → goal p99 ≤ 1.2×: {'met' if med[k] / med['steady'] <= 1.2 else 'NOT met'}"
                )
        out.append("")
    if cpu_points:
        clk = int(meta.get("clk_tck", 100))
        out.append("#### CPU per reload (no load)")
        out.append("")
        out.append(
            "| point | seconds | writes | reloads applied | Switchyard CPU (ms) | CPU above idle per write (ms) "
            "| CPU above idle per reload (ms) |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        idle = None
        for kind, secs, ticks, writes, gens in cpu_points:
            ms = int(ticks) / clk * 1e3
            if kind == "idle":
                idle = ms
            per = "—" if kind == "idle" or idle is None or int(gens) == 0 else f"{(ms - idle) / int(gens):.2f}"
            perw = "—" if kind == "idle" or idle is None or int(writes) == 0 else f"{(ms - idle) / int(writes):.3f}"
            out.append(f"| {kind} | {secs} | {writes} | {gens} | {ms:.0f} | {perw} | {per} |")
        out.append("")
    if flip_file:
        rows = []
        with open(flip_file) as f:
            next(f)
            for line in f:
                k, v, ms, wms, polls, non200 = line.rstrip("\n").split("\t")
                rows.append((float(ms), int(polls), int(non200)))
        ms = [r[0] for r in rows]
        out.append(f"### 2. Config write → new generation serving ({len(rows)} flips, tmp+rename)")
        out.append("")
        out.append("| n | min (ms) | p50 (ms) | p90 (ms) | max (ms) | polls per flip (median) | non-200 while polling |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|")
        out.append(
            f"| {len(ms)} | {min(ms):.1f} | {quantile(ms, 0.5):.1f} | {quantile(ms, 0.9):.1f} | {max(ms):.1f} "
            f"| {quantile([r[1] for r in rows], 0.5):.0f} | {sum(r[2] for r in rows)} |"
        )
        out.append("")
        out.append("All: " + ", ".join(f"{x:.1f}" for x in ms) + " ms")
        out.append(f"- goal < 100 ms: p50 {'met' if quantile(ms, 0.5) < 100 else 'NOT met'}, max {'met' if max(ms) < 100 else 'NOT met'}")
        out.append("")
    if rollout_file:
        rows = []
        with open(rollout_file) as f:
            for line in f:
                rows.append(line.rstrip("\n").split("\t"))
        out.append(
            f"### 3. Canary breach → weight 0 (steps [10, 50, 100], interval 1s, min_requests 20; "
            f"canary fails every request; {meta.get('rollout_rate', '?')} req/s steady load)"
        )
        out.append("")
        out.append(
            "| rep | write → rollout visible (ms) | write → canary weight > 0 (ms) | canary weight > 0 → weight 0 (ms) "
            "| first canary request → weight 0 (ms) | first → last canary request (ms) | canary requests | max canary weight | status "
            "| `rolled_back` shown → weight 0 shown (ms) | weights when `rolled_back` first shown (variants / rollout.canary_weight) |"
        )
        out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|")
        on_zero, first_zero = [], []
        for i, r in enumerate(rows, 1):
            seen, on, oz, fz, fl, n, wmax, status, reason, polls, lag, sw = r
            if oz:
                on_zero.append(float(oz))
            if fz:
                first_zero.append(float(fz))
            out.append(f"| {i} | {seen} | {on} | {oz} | {fz} | {fl} | {n} | {wmax} | {status} | {lag} | {sw} |")
        out.append("")
        if on_zero:
            out.append(
                f"- canary weight > 0 → 0: min {min(on_zero):.0f}, p50 {quantile(on_zero, 0.5):.0f}, max {max(on_zero):.0f} ms "
                f"= {min(on_zero) / 1000:.2f}–{max(on_zero) / 1000:.2f} × the 1 s interval"
            )
        if first_zero:
            out.append(
                f"- first failed canary request → 0: min {min(first_zero):.0f}, p50 {quantile(first_zero, 0.5):.0f}, "
                f"max {max(first_zero):.0f} ms"
            )
        if rows:
            out.append(f"- reason (rep 1): {rows[0][8]}")
    print("\n".join(out))


def main():
    cmd, a = sys.argv[1], sys.argv[2:]
    if cmd == "freeports":
        freeports(int(a[0]))
    elif cmd == "body":
        body(a[0])
    elif cmd == "config":
        config(a[0], a[1], a[2], a[3], a[4] if len(a) > 4 else None)
    elif cmd == "failserver":
        failserver(a[0], a[1])
    elif cmd == "storm":
        storm(*a)
    elif cmd == "flip":
        flip(a[0], a[1], a[2], a[3], a[4], a[5])
    elif cmd == "rollout":
        rollout(*a)
    elif cmd == "cputicks":
        with open(f"/proc/{a[0]}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        print(int(fields[11]) + int(fields[12]))
    elif cmd == "metric":
        metric(a[0], a[1], a[2] if len(a) > 2 else "")
    elif cmd == "report":
        report(a[0])
    else:
        sys.exit(f"unknown subcommand {cmd}")


if __name__ == "__main__":
    main()
