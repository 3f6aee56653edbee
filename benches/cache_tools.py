#!/usr/bin/env python3
"""Helpers of benches/cache.sh (standard library only).

    cache_tools.py metrics URL                   # JSON: cache counters and L1 size from /metrics
    cache_tools.py status URL BODY HEADERS_JSON  # x-switchyard-cache of one POST
    cache_tools.py ctxsw PID                     # context switches (voluntary + not) over the PID's threads
    cache_tools.py redis-csv FILE                # "rps p50_us p99_us" of the GET row of redis-benchmark --csv
    cache_tools.py zipf URL KEYS REQUESTS S SEED OUT.json   # Zipf load, one request at a time; tallies
    cache_tools.py simulate KEYS REQUESTS S SEED CAPACITY   # JSON: LRU, Belady (OPT), static top-k hit ratios
    cache_tools.py report RESULTS.tsv            # markdown tables from the run's records

Zipf bodies: V2 JSON FP32 [1,16] for `mlp`, the values of
benches/embedded_tools.py with element 0 replaced by key/16384 (exact in FP32,
so every key is a distinct tensor). Rank 1 is the most frequent key.
"""

import bisect
import heapq
import http.client
import json
import random
import statistics
import sys
import time
import urllib.request
from collections import OrderedDict
from urllib.parse import urlparse

FEATURES = 16


def data(n):
    return [((i * 7919) % 1000) / 1000.0 - 0.5 for i in range(n)]


def metrics(url):
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {"hit_l1": 0, "hit_l2": 0, "miss_l1": 0, "miss_l2": 0, "bypass": 0, "coalesced": 0, "evict_l1": 0,
           "l1_bytes": 0, "l1_entries": 0, "redis_errors": 0, "redis_skipped": 0}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_labels, value = line.rsplit(" ", 1)
        name = name_labels.split("{", 1)[0]
        labels = name_labels[len(name):]
        v = float(value)
        tier = "l2" if 'tier="l2"' in labels else "l1"
        if name == "switchyard_cache_hits_total":
            out[f"hit_{tier}"] += v
        elif name == "switchyard_cache_misses_total":
            out[f"miss_{tier}"] += v
        elif name == "switchyard_cache_bypass_total":
            out["bypass"] += v
        elif name == "switchyard_cache_coalesced_total":
            out["coalesced"] += v
        elif name == "switchyard_cache_evictions_total":
            out["evict_l1"] += v
        elif name == "switchyard_cache_l1_bytes":
            out["l1_bytes"] = v
        elif name == "switchyard_cache_l1_entries":
            out["l1_entries"] = v
        elif name == "switchyard_cache_redis_errors_total":
            out["redis_errors"] += v
        elif name == "switchyard_cache_redis_skipped_total":
            out["redis_skipped"] += v
    print(json.dumps({k: int(v) for k, v in out.items()}))


def status(url, body_path, headers_json):
    u = urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    c.request("POST", u.path, body=open(body_path, "rb").read(), headers=json.loads(headers_json))
    r = c.getresponse()
    r.read()
    print(f"{r.status} {r.getheader('x-switchyard-cache', '-')}")


def ctxsw(pid):
    import os
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            for line in open(f"/proc/{pid}/task/{t}/status"):
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    print(total)


def redis_csv(path):
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    for line in open(path):
        f = [x.strip('"') for x in line.strip().split(",")]
        if f and f[0] == "GET":
            print(f"{float(f[1]):.0f}\t{float(f[4]) * 1e3:.0f}\t{float(f[6]) * 1e3:.0f}")
            return
    raise SystemExit(f"no GET row in {path}")


def zipf_sequence(keys, requests, s, seed):
    rng = random.Random(int(seed))
    cum, acc = [], 0.0
    for k in range(1, keys + 1):
        acc += 1.0 / k ** s
        cum.append(acc)
    return [bisect.bisect_left(cum, rng.random() * acc) for _ in range(requests)]  # 0-based ranks


def zipf_body(k):
    vals = data(FEATURES)
    vals[0] = k / 16384.0
    return json.dumps({"inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP32", "data": vals}]},
                      separators=(",", ":")).encode()


def zipf(url, keys, requests, s, seed, out):
    keys, requests, s = int(keys), int(requests), float(s)
    seq = zipf_sequence(keys, requests, s, seed)
    bodies = {}
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    hdr = {"Content-Type": "application/json"}
    tally, lat = {}, {}
    window = []  # status per request, for the hit ratio over time
    t0 = time.perf_counter()
    for k in seq:
        b = bodies.get(k)
        if b is None:
            b = bodies[k] = zipf_body(k)
        t = time.perf_counter()
        conn.request("POST", u.path, body=b, headers=hdr)
        r = conn.getresponse()
        r.read()
        dt = (time.perf_counter() - t) * 1e6
        st = r.getheader("x-switchyard-cache", "-") if r.status == 200 else f"http-{r.status}"
        tally[st] = tally.get(st, 0) + 1
        lat.setdefault(st, []).append(dt)
        window.append(st)
    wall = time.perf_counter() - t0
    tenth = len(window) // 10
    def ratio(part):
        return sum(1 for x in part if x.startswith("hit")) / len(part)
    res = {
        "requests": requests, "distinct_keys_sent": len(bodies), "wall_s": round(wall, 2), "tally": tally,
        "hit_ratio": ratio(window),
        "hit_ratio_l1": tally.get("hit-l1", 0) / requests,
        "hit_ratio_first_10pct": ratio(window[:tenth]),
        "hit_ratio_last_10pct": ratio(window[-tenth:]),
        "p50_us": {k: round(statistics.median(v)) for k, v in lat.items()},
    }
    json.dump(res, open(out, "w"))
    print(json.dumps(res))


def simulate(keys, requests, s, seed, cap):
    keys, requests, s, cap = int(keys), int(requests), float(s), int(cap)
    seq = zipf_sequence(keys, requests, s, seed)
    # LRU
    lru, hits = OrderedDict(), 0
    for k in seq:
        if k in lru:
            hits += 1
            lru.move_to_end(k)
        else:
            lru[k] = True
            if len(lru) > cap:
                lru.popitem(last=False)
    lru_ratio = hits / requests
    # Belady's OPT: evict the entry whose next use is farthest away.
    nxt, last = [0] * requests, {}
    for i in range(requests - 1, -1, -1):
        nxt[i] = last.get(seq[i], 1 << 60)
        last[seq[i]] = i
    cache, heap, hits = {}, [], 0
    for i, k in enumerate(seq):
        if k in cache:
            hits += 1
        elif len(cache) >= cap:
            while True:
                neg, kk = heapq.heappop(heap)
                if cache.get(kk) == -neg:
                    del cache[kk]
                    break
        cache[k] = nxt[i]
        heapq.heappush(heap, (-nxt[i], k))
    opt_ratio = hits / requests
    # Static: the cap most frequent keys pinned, never a compulsory miss counted for them.
    top = set(range(cap))
    static_ratio = sum(1 for k in seq if k in top) / requests
    distinct = len(set(seq))
    print(json.dumps({"lru": round(lru_ratio, 4), "opt": round(opt_ratio, 4), "static_top": round(static_ratio, 4),
                      "unbounded": round(1 - distinct / requests, 4), "distinct": distinct}))


def tsv(path):
    return [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]


def report(results):
    rows = tsv(results)
    meta = {r[1]: r[2] for r in rows if r[0] == "meta"}
    tck = float(meta.get("clk_tck", 100))
    print(f"- machine: {meta.get('machine', '?')}")
    print(f"- load average at start {meta.get('load_start', '?')}, at end {meta.get('load_end', '?')}")
    print(f"- binary: {meta.get('binary', '?')}")
    print(f"- L1 entry weight of one `mlp` batch-1 answer: {meta.get('entry_weight', '?')} B; Redis value: {meta.get('redis_value_bytes', '?')} B")
    print()
    # point  section  case  load  rps  p50_ms  p99_ms  ok  errors  sy_ticks  d_hit_l1  d_hit_l2  d_miss  ctxsw  round
    groups, order = {}, []
    for r in rows:
        if r[0] != "point":
            continue
        sec, case, load, rps, p50, p99, ok, err, ticks, h1, h2, miss, cs = r[1:14]
        k = (sec, case, load)
        if k not in groups:
            groups[k] = []
            order.append(k)
        groups[k].append(dict(rps=float(rps), p50=float(p50) * 1e3, p99=float(p99) * 1e3, ok=int(ok), err=int(err),
                              ticks=int(ticks), h1=int(h1), h2=int(h2), miss=int(miss), cs=int(cs)))
    med = statistics.median

    def agg(k):
        g = groups[k]
        ok = sum(x["ok"] for x in g)
        return dict(n=len(g), rps=med([x["rps"] for x in g]), p50=med([x["p50"] for x in g]),
                    p50s="/".join(f"{x['p50']:.0f}" for x in g), p99=med([x["p99"] for x in g]), ok=ok,
                    err=sum(x["err"] for x in g), h1=sum(x["h1"] for x in g), h2=sum(x["h2"] for x in g),
                    miss=sum(x["miss"] for x in g), cpu=sum(x["ticks"] for x in g) / tck * 1e6 / ok if ok else float("nan"),
                    cs=sum(x["cs"] for x in g) / ok if ok else float("nan"))
    for sec, title, base_case in (("l1", "1. L1 hit vs a static answer from the same listener", "static GET /v2/health/live"),
                                  ("l2", "2. L2 hit (Redis) vs L1 hit", "static GET /v2/health/live (replica A)")):
        ks = [k for k in order if k[0] == sec]
        if not ks:
            continue
        print(f"### {title}\n")
        print("Median over rounds of p50, p99 and req/s; CPU and context switches per request over all rounds.\n")
        print("| case | load | req/s | 200 / errors | hits l1 / l2 / coalesced / backend (metrics Δ) | p50 (µs) | p50 per round | p99 (µs) | p50 / static | CPU (µs/req) | ctx switches / req |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for k in ks:
            a = agg(k)
            bk = (sec, base_case, k[2])
            b = agg(bk) if bk in groups else None
            print(f"| {k[1]} | {k[2]} | {a['rps']:,.0f} | {a['ok']} / {a['err']} | " + (f"{a['h1']} / {a['h2']} / {max(0, a['ok'] - a['h1'] - a['h2'] - a['miss'])} / {a['miss']}" if a['h1'] + a['h2'] + a['miss'] else "—") + " | "
                  f"{a['p50']:,.0f} | {a['p50s']} | {a['p99']:,.0f} | " + (f"{a['p50'] / b['p50']:.2f}" if b else "—")
                  + f" | {a['cpu']:.0f} | {a['cs']:.2f} |")
        print()
    rb = [r for r in rows if r[0] == "redis-benchmark"]
    if rb:
        print("redis-benchmark (same Redis, same box; median over rounds):\n")
        print("| command | GET req/s | GET p50 (µs) | GET p50 per round | GET p99 (µs) |")
        print("|---|---:|---:|---:|---:|")
        cmds = []
        for r in rb:
            if r[1] not in cmds:
                cmds.append(r[1])
        for c in cmds:
            g = [r for r in rb if r[1] == c]
            print(f"| `{c}` | {med([float(r[2]) for r in g]):,.0f} | {med([float(r[3]) for r in g]):.0f} | "
                  + "/".join(r[3] for r in g) + f" | {med([float(r[4]) for r in g]):.0f} |")
        print()
    z = [r for r in rows if r[0] == "zipf"]
    if z:
        print("### 3. Hit ratio under Zipf\n")
        for r in z:
            print(f"- {r[1]}: {r[2]}")
        print()


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"metrics": metrics, "status": status, "ctxsw": ctxsw, "redis-csv": redis_csv, "zipf": zipf, "simulate": simulate,
     "report": report}[cmd](*args)
