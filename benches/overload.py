"""Overload figures for docs/reliability.md (issue 17, "Overload at 3x").

Open-loop load with asyncio + aiohttp (one request per connection slot, no
client-side queueing beyond the socket), a readiness probe every 50 ms on the
same port, and the server's RSS sampled from /proc:

  capacity URL BODY SECONDS          -> closed-loop saturation throughput (req/s)
  run URL BODY RATE SECONDS PID OUT  -> one open-loop run; writes OUT (JSON)

BODY is a V2 JSON body, or a binary-extension body `X.bin` whose JSON
header length is in `X.binlen`.
  report OUT...                      -> a markdown table of the runs
  body ROWS FEATURES OUT.bin         -> a binary-extension body of ROWS x FEATURES FP32
  probe URL SECONDS OUT              -> GET URL every 50 ms from its own process; latencies to OUT
  merge RUN PROBE                    -> the prober's figures into a run's

A request that gets no answer within 10 s counts as hung.
"""

import asyncio
import json
import statistics
import sys
import time

import aiohttp

HUNG_AFTER = 10.0


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))]


def load_body(path):
    body = open(path, "rb").read()
    headers = {"content-type": "application/json"}
    if path.endswith(".bin"):
        headers = {
            "content-type": "application/octet-stream",
            "inference-header-content-length": open(path[:-4] + ".binlen").read().strip(),
        }
    return body, headers


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


async def capacity(url, body, headers, seconds, workers=8, warmup=2.0):
    done = 0
    start = time.monotonic() + warmup
    stop = start + seconds
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def worker():
            nonlocal done
            while time.monotonic() < stop:
                async with s.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status == 200 and time.monotonic() >= start:
                        done += 1

        await asyncio.gather(*(worker() for _ in range(workers)))
    return done / seconds


async def run(url, body, headers, rate, seconds, pid):
    base = url.split("/v2/")[0]
    results = []  # (status, latency, retry_after)
    probes = []
    rss = [rss_mb(pid)]
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=HUNG_AFTER)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:

        async def one():
            t0 = time.monotonic()
            try:
                async with s.post(url, data=body, headers=headers) as r:
                    await r.read()
                    results.append((r.status, time.monotonic() - t0, r.headers.get("retry-after")))
            except asyncio.TimeoutError:
                results.append(("hung", time.monotonic() - t0, None))
            except aiohttp.ClientError as e:
                results.append((f"error:{type(e).__name__}", time.monotonic() - t0, None))

        async def probe(stop):
            async with aiohttp.ClientSession(timeout=timeout) as p:
                while time.monotonic() < stop:
                    t0 = time.monotonic()
                    try:
                        async with p.get(base + "/v2/health/ready") as r:
                            await r.read()
                            probes.append((r.status, time.monotonic() - t0))
                    except (asyncio.TimeoutError, aiohttp.ClientError):
                        probes.append(("fail", time.monotonic() - t0))
                    rss.append(rss_mb(pid))
                    await asyncio.sleep(0.05)

        start = time.monotonic()
        stop = start + seconds
        prober = asyncio.create_task(probe(stop))
        tasks = []
        n = 0
        while True:
            now = time.monotonic()
            if now >= stop:
                break
            due = int((now - start) * rate)
            while n < due:
                tasks.append(asyncio.create_task(one()))
                n += 1
            await asyncio.sleep(0.001)
        await asyncio.gather(*tasks)
        await prober
    peak = max(x for x in rss if x == x)
    # Memory after the burst: sampled once the load is gone.
    await asyncio.sleep(3)
    after = rss_mb(pid)
    served = [l for st, l, _ in results if st == 200]
    refused = [l for st, l, _ in results if st == 503]
    with_retry_after = sum(1 for st, _, ra in results if st == 503 and ra)
    other = {}
    for st, _, _ in results:
        if st not in (200, 503):
            other[str(st)] = other.get(str(st), 0) + 1
    ok_probes = [l for st, l in probes if st == 200]
    return {
        "rate": rate,
        "seconds": seconds,
        "sent": len(results),
        "served": len(served),
        "refused_503": len(refused),
        "refused_with_retry_after": with_retry_after,
        "other": other,
        "hung": other.get("hung", 0),
        "goodput_rps": len(served) / seconds,
        "served_p50_ms": pct(served, 50) * 1000,
        "served_p99_ms": pct(served, 99) * 1000,
        "refused_p50_ms": pct(refused, 50) * 1000,
        "refused_p99_ms": pct(refused, 99) * 1000,
        "probe_max_ms": max((l for _, l in probes), default=float("nan")) * 1000,
        "probe_p99_ms": pct(ok_probes, 99) * 1000,
        "probes_failed": sum(1 for st, _ in probes if st != 200),
        "probes": len(probes),
        "rss_start_mb": rss[0],
        "rss_peak_mb": peak,
        "rss_after_mb": after,
    }


def report(paths):
    rows = [json.load(open(p)) | {"name": p.rsplit("/", 1)[-1].removesuffix(".json")} for p in paths]
    cols = [
        ("run", lambda r: r["name"]),
        ("offered req/s", lambda r: f"{r['rate']:.0f}"),
        ("served", lambda r: f"{r['served'] / r['sent']:.0%}"),
        ("503 (with Retry-After)", lambda r: f"{r['refused_503'] / r['sent']:.0%} ({r['refused_with_retry_after']})"),
        ("hung / other", lambda r: f"{r['hung']} / {sum(r['other'].values()) - r['hung']}"),
        ("goodput req/s", lambda r: f"{r['goodput_rps']:.0f}"),
        ("served p50 / p99 ms", lambda r: f"{r['served_p50_ms']:.1f} / {r['served_p99_ms']:.1f}"),
        ("503 p50 / p99 ms", lambda r: f"{r['refused_p50_ms']:.1f} / {r['refused_p99_ms']:.1f}"),
        ("/ready p99 / max ms", lambda r: f"{r['probe_p99_ms']:.1f} / {r['probe_max_ms']:.1f}"),
        ("RSS start / peak / after MB", lambda r: f"{r['rss_start_mb']:.0f} / {r['rss_peak_mb']:.0f} / {r['rss_after_mb']:.0f}"),
    ]
    print("| " + " | ".join(c for c, _ in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f(r) for _, f in cols) + " |")


def write_body(rows, features, path):
    import struct

    vals = [((i * 7919) % 1000) / 1000.0 - 0.5 for i in range(rows * features)]
    raw = struct.pack(f"<{len(vals)}f", *vals)
    head = {
        "inputs": [{"name": "input", "shape": [rows, features], "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True},
    }
    hb = json.dumps(head, separators=(",", ":")).encode()
    with open(path, "wb") as f:
        f.write(hb + raw)
    with open(path[:-4] + ".binlen", "w") as f:
        f.write(str(len(hb)))


def probe(url, seconds, out):
    """A blocking prober in a process of its own, so the load generator's
    event loop cannot delay it: what it measures is the server's latency."""
    import http.client
    from urllib.parse import urlparse

    u = urlparse(url)
    lat = []
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        t0 = time.monotonic()
        try:
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=HUNG_AFTER)
            c.request("GET", u.path)
            status = c.getresponse().status
            c.close()
        except OSError:
            status = "fail"
        lat.append((status, time.monotonic() - t0))
        time.sleep(0.05)
    json.dump(lat, open(out, "w"))


def main():
    cmd = sys.argv[1]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if cmd == "capacity":
        url, (body, headers), seconds = sys.argv[2], load_body(sys.argv[3]), float(sys.argv[4])
        print(f"{asyncio.run(capacity(url, body, headers, seconds)):.1f}")
    elif cmd == "run":
        url, (body, headers) = sys.argv[2], load_body(sys.argv[3])
        rate, seconds, pid, out = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
        r = asyncio.run(run(url, body, headers, rate, seconds, pid))
        json.dump(r, open(out, "w"), indent=1)
        print(json.dumps(r))
    elif cmd == "body":
        write_body(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif cmd == "merge":
        # The separate prober's figures replace the in-process ones.
        r, lat = json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
        ok = [l for st, l in lat if st == 200]
        r["probes"], r["probes_failed"] = len(lat), sum(1 for st, _ in lat if st != 200)
        r["probe_p99_ms"] = pct(ok, 99) * 1000
        r["probe_max_ms"] = max((l for _, l in lat), default=float("nan")) * 1000
        json.dump(r, open(sys.argv[2], "w"), indent=1)
    elif cmd == "probe":
        probe(sys.argv[2], float(sys.argv[3]), sys.argv[4])
    elif cmd == "report":
        report(sys.argv[2:])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
