#!/usr/bin/env python3
"""A real Postgres driver (psycopg 3) against a running `earshot serve --pg`.

Checks, against the same data directory read through `earshot sql`:
  - results over the extended protocol with bound parameters (text, integer, timestamp), inside the
    transaction psycopg opens implicitly, and with autocommit;
  - a canned query file run the way a notebook would (its $stream turned into a bound parameter);
  - every refused statement is refused with SQLSTATE 25006 and leaves the data intact;
  - with --limits: a runaway query is cancelled at the time limit (57014) or the memory limit (53200)
    and the server keeps answering other connections.

Usage: pg_clients.py --port P --earshot BIN --data DIR --stream ID [--password PW] [--limits]
Prints one line per check; exits non-zero on the first failure.
"""
import argparse
import datetime as dt
import json
import pathlib
import subprocess
import sys

import psycopg
from psycopg import errors

ROOT = pathlib.Path(__file__).resolve().parent.parent


def check(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name} {detail}")
        sys.exit(1)
    print(f"ok   {name}")


def cli_json(args, sql, params=()):
    cmd = [args.earshot, "sql", "--data", args.data, "--format", "json"]
    for p in params:
        cmd += ["--param", p]
    out = subprocess.run(cmd + sql, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def connect(args, **kw):
    return psycopg.connect(
        host="127.0.0.1",
        port=args.port,
        user="earshot",
        dbname="earshot",
        password=args.password,
        connect_timeout=10,
        **kw,
    )


def as_json_value(v):
    if isinstance(v, dt.datetime):
        return v.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if isinstance(v, float) and v.is_integer():
        return v
    return v


def queries(args):
    stream = args.stream
    with connect(args) as conn:  # not autocommit: psycopg sends BEGIN first
        cur = conn.cursor()
        cur.execute(
            "SELECT stream_id, peak_connected, listeners_joined FROM streams WHERE stream_id = %s",
            (stream,),
        )
        got = cur.fetchall()
        want = cli_json(
            args,
            ["SELECT stream_id, peak_connected, listeners_joined FROM streams WHERE stream_id = $stream"],
            [f"stream={stream}"],
        )
        check(
            "bound text parameter matches earshot sql",
            [list(r) for r in got] == [[w["stream_id"], w["peak_connected"], w["listeners_joined"]] for w in want],
            f"{got} vs {want}",
        )

        cur.execute("SELECT count(*) FROM buckets WHERE stream_id = %s AND roster_peak > %s", (stream, 10))
        n = cur.fetchone()[0]
        want = cli_json(
            args,
            ["SELECT count(*) AS n FROM buckets WHERE stream_id = $stream AND roster_peak > 10"],
            [f"stream={stream}"],
        )[0]["n"]
        check("bound integer parameter", n == want, f"{n} vs {want}")

        cur.execute("SELECT min(bucket_start), max(bucket_start) FROM buckets WHERE stream_id = %s", (stream,))
        lo, hi = cur.fetchone()
        check("timestamps arrive as timestamptz", isinstance(lo, dt.datetime) and lo.tzinfo is not None, repr(lo))
        mid = lo + (hi - lo) / 2
        cur.execute("SELECT count(*) FROM buckets WHERE stream_id = %s AND bucket_start >= %s", (stream, mid))
        n = cur.fetchone()[0]
        want = cli_json(
            args,
            ["SELECT count(*) AS n FROM buckets WHERE stream_id = $stream AND bucket_start >= $from"],
            [f"stream={stream}", "from=" + mid.astimezone(dt.timezone.utc).isoformat()],
        )[0]["n"]
        check("bound timestamp parameter", n == want and n > 0, f"{n} vs {want}")

        cur.execute("SELECT joined_hll FROM streams WHERE stream_id = %s", (stream,))
        sketch = cur.fetchone()[0]
        check("sketches arrive as bytea", isinstance(sketch, (bytes, memoryview)) and len(bytes(sketch)) > 16)

    # A canned query file, as a notebook would run it: $stream becomes a bound parameter.
    sql = (ROOT / "queries" / "reach.sql").read_text().replace("%", "%%").replace("$stream", "%(stream)s")
    with connect(args, autocommit=True) as conn:
        cur = conn.execute(sql, {"stream": stream})
        cols = [d.name for d in cur.description]
        got = [dict(zip(cols, (as_json_value(v) for v in row))) for row in cur.fetchall()]
    want = cli_json(args, ["-f", "reach"], [f"stream={stream}"])
    for g, w in zip(got, want):
        for k in w:
            a, b = g[k], w[k]
            if isinstance(a, float) or isinstance(b, float):
                same = abs(float(a) - float(b)) < 1e-9
            else:
                same = str(a) == str(b)
            if not same:
                check(f"queries/reach.sql column {k}", False, f"{a!r} vs {b!r}")
    check("queries/reach.sql over psycopg equals earshot sql -f reach", len(got) == len(want) == 1)


REFUSED = [
    "CREATE TABLE t AS SELECT 1",
    "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/tmp/x.parquet'",
    "INSERT INTO streams SELECT * FROM streams",
    "DELETE FROM sessions",
    "DROP TABLE sessions",
    "COPY (SELECT 1) TO '/tmp/earshot-copy.csv'",
    "CREATE VIEW v AS SELECT 1",
    "SET datafusion.execution.target_partitions = 1",
    "SET timezone = 'Asia/Tokyo'",
]


def refusals(args):
    with connect(args, autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
        for stmt in REFUSED:
            try:
                conn.execute(stmt)
                check(f"refused: {stmt}", False, "it ran")
            except psycopg.Error as e:
                check(
                    f"refused: {stmt}",
                    e.sqlstate == "25006" and "refused" in str(e),
                    f"{e.sqlstate} {e}",
                )
        # Client-local settings are fine and change nothing for others.
        conn.execute("SET application_name = 'pg_clients'")
        conn.execute("SET statement_timeout = '5s'")
        after = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
        check("data intact after refusals", before == after, f"{before} vs {after}")
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")]
        check("no table was created", tables == ["buckets", "events", "rejects", "rollups", "sessions", "streams"], tables)
    check("/tmp/earshot-copy.csv not written", not pathlib.Path("/tmp/earshot-copy.csv").exists())


def limits(args):
    with connect(args, autocommit=True) as conn:
        try:
            conn.execute("SELECT count(*) FROM generate_series(1, 100000000000)").fetchall()
            check("runaway query cancelled at the time limit", False, "it finished")
        except psycopg.Error as e:
            check("runaway query cancelled at the time limit",
                  e.sqlstate == "57014" and "--query-timeout" in str(e), f"{e.sqlstate} {e}")
    with connect(args, autocommit=True) as conn:
        try:
            conn.execute(
                "SELECT event_id, session_id, count(*) FROM events GROUP BY 1, 2 ORDER BY 3 DESC, 1"
            ).fetchall()
            check("memory-hungry query stopped at the memory limit", False, "it finished")
        except psycopg.Error as e:
            check("memory-hungry query stopped at the memory limit",
                  e.sqlstate == "53200" and "--memory-limit" in str(e), f"{e.sqlstate} {e}")
    with connect(args, autocommit=True) as conn:
        n = conn.execute("SELECT count(*) FROM streams").fetchone()[0]
        check("server still answers after the runaway queries", n >= 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--earshot", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--stream", required=True)
    ap.add_argument("--password")
    ap.add_argument("--limits", action="store_true")
    args = ap.parse_args()
    if args.limits:
        limits(args)
    else:
        queries(args)
        refusals(args)


if __name__ == "__main__":
    main()
