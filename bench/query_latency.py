#!/usr/bin/env python3
"""Dashboard query latency: earshot's Postgres endpoint (psycopg 3, the way Grafana or a notebook
asks) next to DuckDB in-process over the same Parquet files, on the same machine, in the same run.

Usage: query_latency.py --port P --data DIR [--runs N]
Prints p50/p99/max in milliseconds per query and the earshot/DuckDB ratio of the p50s.
"""
import argparse
import datetime as dt
import pathlib
import statistics
import time

import duckdb
import psycopg

TIMELINE = """SELECT bucket_start, displayed_start, roster_start, roster_peak, connected_start,
       connected_peak, joins, drops
FROM buckets
WHERE stream_id = {p} AND bucket_start >= {p} AND bucket_start < {p}
ORDER BY bucket_start"""

REACH = """SELECT listeners_joined, listeners_connected, listeners_connected_60s,
       peak_displayed, peak_roster, peak_connected, failed_joins, start_delay_ms
FROM streams WHERE stream_id = {p}"""

ROOT = pathlib.Path(__file__).resolve().parent.parent


def pct(values, p):
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def timed(fn, runs, warmup=10):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--runs", type=int, default=300)
    a = ap.parse_args()
    gen = pathlib.Path(a.data, "current").resolve()

    pg = psycopg.connect(host="127.0.0.1", port=a.port, user="earshot", dbname="earshot", autocommit=True)
    stream, first = pg.execute("SELECT stream_id, first_event FROM streams LIMIT 1").fetchone()
    frm = first
    to = frm + dt.timedelta(hours=2)
    rows = pg.execute(TIMELINE.format(p="%s"), (stream, frm, to)).fetchall()

    db = duckdb.connect()
    db.execute("SET TimeZone = 'UTC'")
    for t in ["streams", "buckets"]:
        db.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{gen / (t + '.parquet')}')")
    drows = db.execute(TIMELINE.format(p="?"), [stream, frm, to]).fetchall()
    assert len(rows) == len(drows) == 720, (len(rows), len(drows))
    assert [r[1:] for r in rows] == [tuple(r[1:]) for r in drows], "timeline differs between earshot and DuckDB"
    reach_pg = pg.execute(REACH.format(p="%s"), (stream,)).fetchall()
    reach_db = db.execute(REACH.format(p="?"), [stream]).fetchall()
    assert [tuple(r) for r in reach_pg] == [tuple(r) for r in reach_db], (reach_pg, reach_db)

    canned = {
        name: (ROOT / "queries" / f"{name}.sql").read_text().replace("%", "%%").replace("$stream", "%(s)s")
        for name in ["reach", "rollup_minute"]
    }
    cases = [
        ("timeline, 2 h at 10 s (720 rows)",
         lambda: pg.execute(TIMELINE.format(p="%s"), (stream, frm, to)).fetchall(),
         lambda: db.execute(TIMELINE.format(p="?"), [stream, frm, to]).fetchall()),
        ("reach summary (exact)",
         lambda: pg.execute(REACH.format(p="%s"), (stream,)).fetchall(),
         lambda: db.execute(REACH.format(p="?"), [stream]).fetchall()),
        ("queries/reach.sql (+ hll_count)",
         lambda: pg.execute(canned["reach"], {"s": stream}).fetchall(), None),
        ("queries/rollup_minute.sql (rollups)",
         lambda: pg.execute(canned["rollup_minute"], {"s": stream}).fetchall(), None),
    ]
    print(f"data: {gen}; stream {stream}; {a.runs} runs after 10 warm-up runs; milliseconds")
    print(f"{'query':40}{'earshot p50':>12}{'p99':>8}{'max':>8}{'duckdb p50':>12}{'p99':>8}{'max':>8}{'ratio p50':>10}")
    for name, e, d in cases:
        te = timed(e, a.runs)
        line = f"{name:40}{statistics.median(te):12.2f}{pct(te, 99):8.2f}{max(te):8.2f}"
        if d:
            td = timed(d, a.runs)
            line += f"{statistics.median(td):12.2f}{pct(td, 99):8.2f}{max(td):8.2f}"
            line += f"{statistics.median(te) / statistics.median(td):9.2f}x"
        print(line)


if __name__ == "__main__":
    main()
