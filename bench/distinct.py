#!/usr/bin/env python3
"""Distinct listeners three ways, on one ingested data set, through earshot's Postgres endpoint:
exact `count(DISTINCT …)`, DataFusion's own `approx_distinct` (HyperLogLog over the rows, at query
time), and earshot's stored sketches read with `hll_count` / `hll_merge`.

Usage: distinct.py --port P [--runs N]
Prints, per figure and method, the value, its error against the exact count, and p50/p99 latency.
"""
import argparse
import statistics

import psycopg

from query_latency import pct, timed

CASES = [
    ("listeners joined", [
        ("exact count(DISTINCT)", "SELECT count(DISTINCT listener_key) FROM sessions WHERE stream_id = %(s)s"),
        ("approx_distinct (DataFusion)", "SELECT approx_distinct(listener_key) FROM sessions WHERE stream_id = %(s)s"),
        ("hll_count(joined_hll)", "SELECT hll_count(joined_hll) FROM streams WHERE stream_id = %(s)s"),
        ("hll_count(hll_merge(present_hll)) over buckets",
         "SELECT hll_count(hll_merge(present_hll)) FROM buckets WHERE stream_id = %(s)s"),
    ]),
    ("listeners connected", [
        ("exact count(DISTINCT)",
         "SELECT count(DISTINCT listener_key) FROM sessions WHERE stream_id = %(s)s AND connect_ts IS NOT NULL"),
        ("approx_distinct (DataFusion)",
         "SELECT approx_distinct(listener_key) FROM sessions WHERE stream_id = %(s)s AND connect_ts IS NOT NULL"),
        ("hll_count(connected_hll)", "SELECT hll_count(connected_hll) FROM streams WHERE stream_id = %(s)s"),
        ("hll_count(hll_merge(connected_hll)) over buckets",
         "SELECT hll_count(hll_merge(connected_hll)) FROM buckets WHERE stream_id = %(s)s"),
    ]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    pg = psycopg.connect(host="127.0.0.1", port=a.port, user="earshot", dbname="earshot", autocommit=True)
    (stream,) = pg.execute("SELECT stream_id FROM streams ORDER BY sessions DESC LIMIT 1").fetchone()
    print(f"stream {stream}; {a.runs} timed runs after 3 warm-up runs; milliseconds")
    print(f"{'figure / method':58}{'value':>12}{'error':>9}{'p50':>10}{'p99':>10}")
    for figure, methods in CASES:
        exact = None
        for name, sql in methods:
            value = int(pg.execute(sql, {"s": stream}).fetchone()[0])
            exact = value if exact is None else exact
            t = timed(lambda: pg.execute(sql, {"s": stream}).fetchall(), a.runs, warmup=3)
            err = (value - exact) / exact * 100 if exact else 0.0
            print(f"{figure + ': ' + name:58}{value:12,}{err:+8.2f}%{statistics.median(t):10.2f}{pct(t, 99):10.2f}")


if __name__ == "__main__":
    main()
