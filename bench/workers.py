#!/usr/bin/env python3
"""A group of workers (`earshot ingest --kafka --assign group`) on one topic, one shared --data:
throughput per worker and in total, the figures against one worker's, and what a query on the
union costs.

    python3 bench/workers.py [--input NDJSON | --listeners N] [--workers 1,3,8] [--partitions 8] [--bucket]

A tansu broker is started here (127.0.0.1, a free port). The input is produced once to a topic of
--partitions partitions (keyed by session, `earshot produce`). Then for each worker count: a fresh
data directory, that many workers started together, each ending after 5 s without a message. The
wall time is from the start to the last worker's exit, minus those 5 s. Each worker's own summary
gives its lines and lines/s. Then `earshot sql` times each query over the union (whole process,
median of --runs), and the `streams` row must equal the one-worker run's.

With --bucket the workers share a bucket on a local S3 server (moto's, started here) instead of a
directory, and each `earshot sql` pulls the union into a local copy first (its time includes that).

Needs tansu on PATH (scripts/setup). EARSHOT_BIN picks the binary (default target/debug/earshot).
"""
import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

BIN = os.path.abspath(os.environ.get("EARSHOT_BIN", "target/debug/earshot"))
IDLE = 5
ENV = dict(os.environ, EARSHOT_PSEUDONYM_KEY=os.environ.get("EARSHOT_PSEUDONYM_KEY", "bench-secret"))

QUERIES = {
    "reach (streams)": "SELECT listeners_joined, listeners_connected, listeners_connected_60s, "
    "peak_displayed, peak_roster, peak_connected FROM streams",
    "timeline (buckets)": "SELECT bucket_start, displayed_start, roster_peak, connected_peak "
    "FROM buckets ORDER BY stream_id, bucket_start",
    "timeline 1 min (rollups)": "SELECT bucket_start, roster_peak, connected_peak FROM rollups "
    "WHERE width_ms = 60000 ORDER BY stream_id, bucket_start",
    "events by type": "SELECT type, count(*) FROM events GROUP BY type ORDER BY type",
}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(port, what, seconds=30):
    deadline = time.time() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline:
                raise SystemExit(f"{what} did not start")
            time.sleep(0.05)


def run(args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, env=ENV, **kw).stdout


def sql(data, query):
    return run([BIN, "sql", "--format", "csv", "--data", data, query])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input")
    ap.add_argument("--listeners", type=int, default=3000)
    ap.add_argument("--workers", default="1,3,8")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bucket", action="store_true")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="earshot-workers-")
    s3 = None
    if a.bucket:
        s3_port = free_port()
        s3 = subprocess.Popen(["python3", "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        endpoint = f"http://127.0.0.1:{s3_port}"
        ENV.update(AWS_ENDPOINT=endpoint, AWS_ALLOW_HTTP="true", AWS_ACCESS_KEY_ID="bench",
                   AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        wait_for(s3_port, "moto")
        import urllib.request
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/earshot-bench", method="PUT")).read()
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = subprocess.Popen(
        ["tansu", "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "broker.log"), "w"))
    try:
        wait_for(port, "tansu")
        run(["tansu", "topic", "create", "--broker", url, "--partitions", str(a.partitions), "events"])
        source = a.input
        if not source:
            source = os.path.join(tmp, "input.ndjson")
            run([BIN, "simulate", "--listeners", str(a.listeners), "--seed", "3", "--output", source])
        lines = sum(1 for _ in open(source, "rb"))
        run([BIN, "produce", "--kafka", f"127.0.0.1:{port}", "--topic", "events", "--input", source])
        print(f"input: {source}: {lines} lines, {a.partitions} partitions")
        first_streams = None
        for n in [int(w) for w in a.workers.split(",")]:
            data = f"s3://earshot-bench/data-{n}" if a.bucket else os.path.join(tmp, f"data-{n}")
            started = time.time()
            procs = [subprocess.Popen(
                [BIN, "ingest", "--kafka", f"127.0.0.1:{port}", "--topic", "events", "--data", data,
                 "--assign", "group", "--group", f"g{n}", "--exit-when-idle", f"{IDLE}s"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV)
                for _ in range(n)]
            outs = [p.communicate()[0] for p in procs]
            wall = time.time() - started - IDLE
            if any(p.returncode != 0 for p in procs):
                raise SystemExit(f"a worker failed: {outs}")
            per = []
            for o in outs:
                m = re.search(r"ingested (\d+) lines .* in ([\d.]+) s", o)
                per.append((int(m.group(1)), float(m.group(2))) if m else (0, 0.0))
            streams = sql(data, QUERIES["reach (streams)"])
            same = "first" if first_streams is None else ("equal" if streams == first_streams else "DIFFERENT")
            first_streams = first_streams or streams
            read = [f"{k} in {s:.1f} s" for k, s in per]
            print(f"\n{n} worker(s): all {lines} lines in {wall:.2f} s wall, {lines / wall:,.0f} lines/s in total;"
                  f" streams row: {same}")
            print(f"  each worker read (its own summary; a worker that took a partition over also replays): {read}")
            if not a.bucket:
                parts = len(os.listdir(os.path.join(data, "current", "events")))
                print(f"  union: {parts} events parts")
            for name, q in QUERIES.items():
                times = []
                for _ in range(a.runs):
                    t = time.time()
                    sql(data, q)
                    times.append(time.time() - t)
                print(f"  query {name}: median {statistics.median(times) * 1e3:.0f} ms (earshot sql, whole process)")
    finally:
        broker.kill()
        if s3:
            s3.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
