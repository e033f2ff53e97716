#!/usr/bin/env python3
"""What the process boundary costs a user's query: `POST /v1/query` latency for small queries
(p50/p99) and the throughput of a 1M-row result, for one or more earshot binaries on the same data.

    python3 bench/query_hop.py --data DIR --earshot target/debug/earshot [--earshot /tmp/earshot-old]

Each binary is started as `earshot serve --http 127.0.0.1:0`; queries are sent one at a time from
this process over fresh HTTP/1.1 connections. Small queries differ in a literal, so none is served
from the server's cache.
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import struct
import subprocess
import time


def serve(binary, data):
    p = subprocess.Popen(
        [binary, "serve", "--http", "127.0.0.1:0", "--data", data, "--query-timeout", "120s"],
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in p.stdout:
        if line.startswith("http: listening on 127.0.0.1:"):
            port = int(line.split("127.0.0.1:")[1].split()[0])
            return p, port
    raise SystemExit(f"{binary} did not start")


def post(port, sql, accept="application/json"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    c.request("POST", "/v1/query", body=sql.encode(), headers={"Accept": accept})
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200:
        raise SystemExit(f"{r.status}: {body[:300]!r}")
    return body


def measure(binary, data, small, big_rows):
    p, port = serve(binary, data)
    try:
        # Let the pool start its worker, then warm up.
        time.sleep(1.0)
        for i in range(20):
            post(port, f"SELECT {i} AS warm")
        lat = []
        for i in range(small):
            t = time.perf_counter()
            post(port, f"SELECT count(*) + {i} AS n FROM streams")
            lat.append((time.perf_counter() - t) * 1e3)
        lat.sort()
        out = {
            "p50_ms": statistics.median(lat),
            "p99_ms": lat[int(len(lat) * 0.99) - 1],
        }
        for name, accept in [
            ("json", "application/json"),
            ("csv", "text/csv"),
            ("arrow", "application/vnd.apache.arrow.stream"),
        ]:
            best = None
            for k in range(3):
                t = time.perf_counter()
                body = post(
                    port,
                    f"SELECT value, value * 2 + {k} AS twice, 'row' AS label "
                    f"FROM generate_series(1, {big_rows})",
                    accept,
                )
                took = time.perf_counter() - t
                best = took if best is None else min(best, took)
            out[f"{name}_s"] = best
            out[f"{name}_mb"] = len(body) / 1e6
        return out
    finally:
        p.terminate()
        p.wait()


def worker_hop(binary, data, n):
    """The hop alone: `earshot worker` driven over its socket as the server drives it; each
    request's round trip minus the time the worker reports for it (parse, plan, run, render)."""
    env = dict(os.environ)
    env["EARSHOT_WORKER"] = json.dumps(
        {"data": os.path.abspath(data), "time_ms": 30000, "memory": 1 << 30, "pg": None})
    env["MIMALLOC_ARENA_RESERVE"] = "64MiB"
    ours, theirs = socket.socketpair()
    p = subprocess.Popen([binary, "worker"], stdin=theirs, stderr=subprocess.DEVNULL, env=env)
    theirs.close()
    f = ours.makefile("rb")

    def ask(sql):
        req = {"sql": sql, "params": [], "allow_unused": False, "output": "json"}
        t = time.perf_counter()
        ours.sendall(json.dumps(req).encode() + b"\n")
        while True:
            tag, n = struct.unpack("<BI", f.read(5))
            payload = f.read(n)
            if tag == ord("Z"):
                return (time.perf_counter() - t) * 1e3, json.loads(payload)["ms"]
            if tag == ord("E"):
                raise SystemExit(payload)

    for i in range(50):
        ask(f"SELECT {i} AS warm")
    hops, totals = [], []
    for i in range(n):
        total, inside = ask(f"SELECT count(*) + {i} AS n FROM streams")
        totals.append(total)
        hops.append(total - inside)
    # A 1M-row result: what the worker spends making it, against what the front receives.
    big = []
    for output in ("json", "csv", "arrow"):
        best = None
        for k in range(3):
            req = {"sql": f"SELECT value, value * 2 + {k} AS twice, 'row' AS label "
                          f"FROM generate_series(1, 1000000)",
                   "params": [], "allow_unused": False, "output": output}
            t = time.perf_counter()
            ours.sendall(json.dumps(req).encode() + b"\n")
            size = 0
            while True:
                tag, m = struct.unpack("<BI", f.read(5))
                payload = f.read(m)
                if tag == ord("D"):
                    size += m
                else:
                    break
            total = time.perf_counter() - t
            inside = json.loads(payload)["ms"] / 1e3
            if best is None or total < best[1]:
                best = (output, total, inside, size)
        big.append(best)
    f.close()  # the file object holds the socket open too
    ours.close()
    p.wait()
    hops.sort()
    totals.sort()
    return statistics.median(hops), hops[int(n * 0.99) - 1], statistics.median(totals), big


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--earshot", action="append", required=True)
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--rows", type=int, default=1_000_000)
    a = ap.parse_args()
    print("| binary | small p50 | small p99 | 1M rows JSON | CSV | Arrow |")
    print("|---|---|---|---|---|---|")
    for b in a.earshot:
        p50, p99, total, big = worker_hop(b, a.data, a.small)
        print(f"| {b}: the worker hop alone (socket round trip − worker's own time) | {p50:.3f} ms "
              f"| {p99:.3f} ms | (whole request in the worker: p50 {total:.2f} ms) | | |")
        for output, total, inside, size in big:
            print(f"|   1M rows as {output}: received through the hop in {total:.3f} s; the worker "
                  f"made it in {inside:.3f} s ({size / 1e6:.1f} MB): {inside / total:.0%} of the "
                  f"in-process rate | | | | | |")
        m = measure(b, a.data, a.small, a.rows)
        print(
            f"| {b} | {m['p50_ms']:.2f} ms | {m['p99_ms']:.2f} ms "
            f"| {m['json_s']:.2f} s ({m['json_mb'] / m['json_s']:.0f} MB/s) "
            f"| {m['csv_s']:.2f} s ({m['csv_mb'] / m['csv_s']:.0f} MB/s) "
            f"| {m['arrow_s']:.2f} s ({m['arrow_mb'] / m['arrow_s']:.0f} MB/s) |"
        )


if __name__ == "__main__":
    main()
