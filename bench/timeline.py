#!/usr/bin/env python3
"""Uncached dashboard timelines: what a dashboard waits for when its user picks a new window.

Usage: bench/timeline.py --data DIR [--requests 300] [--pollers 200] [--secs 10] [--bin PATH]

Starts `earshot serve --http` on DIR and asks GET /v1/streams/{id}/timeline for windows no request
has asked before (each 20 s later than the previous), one client, nothing else running:
  10s  one-hour windows at 10 s steps (one bucket per point: the stored estimates, no sketch)
  30s  one-hour windows at 30 s steps (three buckets' sketches merged per point)
  60s  one-hour windows at 60 s steps (the minute rollups: no sketch)
  5m   three-hour windows at 5 min steps (five minute rollups merged per point)
  1h   the whole stream at 1 h steps (the hour rollups), a new `from` each time
Beside each, DuckDB in-process (no HTTP) answering the same timeline without the sketch columns
from the same buckets parts, and the check that both agree on every column they share. Then the
HTTP answer is checked against the query-time merge of the buckets (timeline_step over the
buckets through POST /v1/query), so rollups and stored estimates give exactly what merging gives.
Last, wrk with --pollers connections, each request a new window (step 60 s), for --secs seconds.
Prints milliseconds. Needs scripts/setup (duckdb) and wrk.
"""
import argparse
import datetime as dt
import json
import pathlib
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request

import duckdb

ROOT = pathlib.Path(__file__).resolve().parent.parent

STEPS = [("10s", 10_000, 3600), ("30s", 30_000, 3600), ("60s", 60_000, 3600),
         ("5m", 300_000, 3 * 3600), ("1h", 3_600_000, None)]

DUCK = """SELECT (epoch_ms(bucket_start) // {step}) * {step} AS start_ms,
       first(displayed_start ORDER BY bucket_start), first(roster_start ORDER BY bucket_start),
       max(roster_peak), first(connected_start ORDER BY bucket_start), max(connected_peak),
       first(roster_start - connected_start ORDER BY bucket_start), sum(joins), sum(drops),
       bool_and("final")
FROM read_parquet('{path}')
WHERE stream_id = ? AND bucket_start >= ? AND bucket_start < ?
GROUP BY 1 ORDER BY 1"""
SHARED = ["displayed", "roster", "roster_peak", "connected", "connected_peak", "ghosts", "joins",
          "drops", "final"]


def pct(values, p):
    s = sorted(values)
    return s[max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))]


def iso(ms):
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def get(url):
    t = time.perf_counter()
    with urllib.request.urlopen(url) as r:
        body = r.read()
    return (time.perf_counter() - t) * 1e3, json.loads(body)


def post(url, sql):
    req = urllib.request.Request(url, data=sql.encode(), method="POST")
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--pollers", type=int, default=200)
    ap.add_argument("--secs", type=int, default=10)
    ap.add_argument("--bin", default=str(ROOT / "target/debug/earshot"))
    a = ap.parse_args()
    gen = pathlib.Path(a.data, "current").resolve()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log")
    server = subprocess.Popen([a.bin, "serve", "--data", a.data, "--http", "127.0.0.1:0"],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        port = None
        for _ in range(100):
            m = re.search(r"http: listening on 127\.0\.0\.1:(\d+)", open(log.name).read())
            if m:
                port = int(m.group(1))
                break
            time.sleep(0.1)
        assert port, open(log.name).read()
        base = f"http://127.0.0.1:{port}"
        streams = get(f"{base}/v1/streams")[1]["streams"]
        stream = max(streams, key=lambda s: s["listeners_joined"])["stream_id"]
        db = duckdb.connect()
        db.execute("SET TimeZone = 'UTC'")
        lo, hi, width = db.execute(
            f"SELECT epoch_ms(min(bucket_start)), epoch_ms(max(bucket_start)), min(width_ms) "
            f"FROM read_parquet('{gen / 'buckets'}/*.parquet') WHERE stream_id = ?", [stream]).fetchone()
        hi += width
        first_minute = (lo // 60_000 + 1) * 60_000
        # One request first: the server looks up the stream's span once per generation, and the
        # files' metadata is read on first use. Every timed request is new to the response cache.
        t0 = time.perf_counter()
        get(f"{base}/v1/streams/{stream}/timeline")
        print(f"first timeline after start (span lookup, cold metadata): {(time.perf_counter() - t0) * 1e3:.1f} ms")
        print(f"data: {gen}; stream {stream}; {(hi - lo) // width} buckets of {width // 1000} s; "
              f"{a.requests} new windows per step, one client; milliseconds")
        print(f"{'step':6}{'points':>8}{'earshot p50':>13}{'p90':>8}{'p99':>8}{'max':>8}"
              f"{'duckdb p50':>12}{'p99':>8}{'ratio p50':>11}")
        for label, step, span in STEPS:
            times, duck = [], []
            points = 0
            for i in range(a.requests):
                frm = first_minute + i * 20_000
                to = frm + span * 1000 if span else hi
                url = f"{base}/v1/streams/{stream}/timeline?step={label}&from={iso(frm)}&to={iso(to)}"
                ms, body = get(url)
                times.append(ms)
                points = len(body["points"])
                frm_aligned = frm // step * step
                to = -(-to // step) * step  # the server asks for whole points: `to` aligned up
                sql = DUCK.format(step=step, path=f"{gen / 'buckets'}/*.parquet")
                args = [stream, dt.datetime.fromtimestamp(frm_aligned / 1000, dt.timezone.utc),
                        dt.datetime.fromtimestamp(to / 1000, dt.timezone.utc)]
                t = time.perf_counter()
                rows = db.execute(sql, args).fetchall()
                duck.append((time.perf_counter() - t) * 1e3)
                got = [[p[k] for k in SHARED] for p in body["points"]]
                want = [list(r[1:]) for r in rows]
                assert got == want, f"{label} window {i}: earshot and DuckDB differ\n{got[:3]}\n{want[:3]}"
                if i < 3:
                    check_against_merge(base, stream, width, step, frm_aligned, to, body)
            print(f"{label:6}{points:8}{statistics.median(times):13.1f}{pct(times, 90):8.1f}"
                  f"{pct(times, 99):8.1f}{max(times):8.1f}{statistics.median(duck):12.1f}"
                  f"{pct(duck, 99):8.1f}{statistics.median(times) / statistics.median(duck):10.2f}x")
        alternatives(base, stream, width, first_minute, a.requests)
        pollers(base, stream, first_minute, a)
    finally:
        server.terminate()
        server.wait()


def check_against_merge(base, stream, width, step, frm, to, body):
    """The served points equal timeline_step merging the buckets' sketches at query time."""
    sql = (ROOT / "queries/timeline_step.sql").read_text()
    for name, value in [("stream", f"'{stream}'"), ("width", str(width)), ("step_ms", str(step)),
                        ("from", f"TIMESTAMP '{iso(frm)[:-1]}'"), ("to", f"TIMESTAMP '{iso(to)[:-1]}'")]:
        sql = re.sub(rf"\${name}\b", value, sql)
    merged = post(f"{base}/v1/query", sql)
    rows = merged["rows"] if isinstance(merged, dict) else merged
    served = body["points"]
    assert len(rows) == len(served), (len(rows), len(served))
    for r, p in zip(rows, served):
        for k in ["present_listeners", "connected_listeners"] + SHARED:
            assert r[k] == p[k], f"step {step}: {k} {r[k]} merged vs {p[k]} served at {p['start']}"


def canned(name, **params):
    """A canned query's SQL with its parameters written in as literals (POST /v1/query takes none)."""
    sql = (ROOT / f"queries/{name}.sql").read_text()
    for k, v in params.items():
        lit = f"TIMESTAMP '{iso(v)[:-1]}'" if k in ("from", "to") else (f"'{v}'" if isinstance(v, str) else str(v))
        sql = re.sub(rf"\${k}\b", lit, sql)
    return sql


def alternatives(base, stream, width, first_minute, requests):
    """The same one-hour windows answered three ways through POST /v1/query, to decide between them:
    merging the buckets' sketches at query time, reading the buckets' stored estimates, and reading
    the minute rollups' stored rows."""
    print("== the alternatives, one-hour windows through POST /v1/query (ms):")
    ways = [
        ("10s: merge buckets at query time", lambda f, t: canned("timeline_step", stream=stream, width=width, step_ms=10_000, **{"from": f, "to": t})),
        ("10s: buckets' stored estimates", lambda f, t: canned("timeline_points", stream=stream, width=width, **{"from": f, "to": t})),
        ("60s: merge buckets at query time", lambda f, t: canned("timeline_step", stream=stream, width=width, step_ms=60_000, **{"from": f, "to": t})),
        ("60s: minute rollups, stored", lambda f, t: canned("timeline_points", stream=stream, width=60_000, **{"from": f, "to": t})),
    ]
    for label, make in ways:
        times = []
        for i in range(requests):
            frm = first_minute + i * 20_000
            sql = make(frm, frm + 3_600_000)
            t = time.perf_counter()
            post(f"{base}/v1/query", sql)
            times.append((time.perf_counter() - t) * 1e3)
        print(f"  {label:36} p50 {statistics.median(times):7.1f}  p99 {pct(times, 99):7.1f}")


def pollers(base, stream, first_minute, a):
    if not shutil.which("wrk"):
        print("wrk not installed: the pollers' run is skipped")
        return
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(f"""
counter = 0
request = function()
  counter = counter + 1
  local from = {first_minute // 1000} + (counter % 3600) * 60 + math.floor(counter / 3600)
  return wrk.format("GET", string.format("/v1/streams/{stream}/timeline?step=60s&from=%s&to=%s",
    os.date("!%Y-%m-%dT%H:%M:%SZ", from), os.date("!%Y-%m-%dT%H:%M:%SZ", from + 3600)))
end
""")
    script.close()
    out = subprocess.run(["wrk", "-t2", f"-c{a.pollers}", f"-d{a.secs}s", "--latency", "-s", script.name, base],
                         capture_output=True, text=True).stdout
    print(f"== {a.pollers} pollers, each request a new one-hour window at 60 s steps, {a.secs} s (wrk):")
    for line in out.splitlines():
        if re.search(r"Requests/sec|^\s+(50|90|99)%|Non-2xx|Socket errors", line):
            print("  " + line.strip())


if __name__ == "__main__":
    main()
