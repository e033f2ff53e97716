"""The SQL Grafana's PostgreSQL data source sends for a time-series panel, against `earshot serve
--pg`: its macros expanded as Grafana expands them (pkg/tsdb/grafana-postgresql-datasource/
macros.go: `$__timeFilter`, `$__timeGroupAlias`, `$__timeGroup`, `$__unixEpochFilter`,
`$__timeFrom`/`$__timeTo`, `$__time`, `$__timeEpoch`), over a dashboard's time range, plus a
gap-filled series with `generate_series` over timestamps. The rows are compared with the same
grouping computed here from the buckets read through `earshot sql`. Prints one line per check,
PASS or FAIL, and exits non-zero if any failed.

    python3 grafana_sql.py --port P --earshot BIN --data DIR --stream ID
"""
import argparse
import datetime as dt
import json
import re
import subprocess
import sys

import psycopg

failed = False


def check(name, ok, detail=""):
    global failed
    failed |= not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}" + ("" if ok else f": {str(detail)[:2000]}"))


def expand(sql, start, end):
    """Grafana's macros in `sql`, for the range [start, end] (UTC datetimes)."""
    rfc = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731 - RFC 3339, as Grafana writes
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}

    def group(m):
        column, interval = m.group(1).strip(), m.group(2).strip().strip("'")
        seconds = int(interval[:-1]) * units[interval[-1]]
        return f"floor(extract(epoch from {column})/{seconds})*{seconds}"

    sql = re.sub(r"\$__timeGroupAlias\(([^,]+),([^)]+)\)", lambda m: group(m) + ' AS "time"', sql)
    sql = re.sub(r"\$__timeGroup\(([^,]+),([^)]+)\)", group, sql)
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)",
                 lambda m: f"{m.group(1)} BETWEEN '{rfc(start)}' AND '{rfc(end)}'", sql)
    sql = re.sub(r"\$__unixEpochFilter\(([^)]+)\)",
                 lambda m: f"{m.group(1)} >= {int(start.timestamp())} AND "
                           f"{m.group(1)} <= {int(end.timestamp())}", sql)
    sql = sql.replace("$__timeFrom()", f"'{rfc(start)}'").replace("$__timeTo()", f"'{rfc(end)}'")
    sql = re.sub(r"\$__timeEpoch\(([^)]+)\)", r'extract(epoch from \1) AS "time"', sql)
    sql = re.sub(r"\$__time\(([^)]+)\)", r'\1 AS "time"', sql)
    return sql


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--earshot", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--stream", required=True)
    args = ap.parse_args()
    rows = json.loads(subprocess.run(
        [args.earshot, "sql", "--format", "json", "--data", args.data,
         "SELECT bucket_start, connected_peak FROM buckets ORDER BY bucket_start"],
        check=True, capture_output=True, text=True).stdout)
    buckets = [(dt.datetime.fromisoformat(r["bucket_start"].replace("Z", "+00:00")),
                r["connected_peak"]) for r in rows]
    # A dashboard's range: from ten minutes in to ten minutes before the end, whole seconds.
    start = buckets[0][0] + dt.timedelta(minutes=10)
    end = buckets[-1][0] - dt.timedelta(minutes=10)
    inside = [(t, c) for t, c in buckets if start <= t <= end]

    def per(seconds):
        out = {}
        for t, c in inside:
            key = int(t.timestamp()) // seconds * seconds
            out[key] = max(out.get(key, 0), c)
        return sorted(out.items())

    conn = psycopg.connect(f"host=127.0.0.1 port={args.port} user=earshot dbname=earshot",
                           autocommit=True)
    panels = [
        ("$__timeGroupAlias and $__timeFilter at 1m",
         "SELECT $__timeGroupAlias(bucket_start, '1m'), max(connected_peak) AS connected "
         "FROM buckets WHERE $__timeFilter(bucket_start) GROUP BY 1 ORDER BY 1", per(60)),
        ("$__timeGroup at 5m with $__unixEpochFilter",
         "SELECT $__timeGroup(bucket_start, '5m') AS t, max(connected_peak) FROM "
         "(SELECT bucket_start, connected_peak, extract(epoch from bucket_start) AS epoch "
         "FROM buckets) b WHERE $__unixEpochFilter(epoch) GROUP BY 1 ORDER BY 1",
         per(300)),
        ("$__timeFrom() and $__timeTo() bound a range",
         "SELECT $__timeGroupAlias(bucket_start, '1h'), max(connected_peak) FROM buckets "
         "WHERE bucket_start >= $__timeFrom() AND bucket_start <= $__timeTo() GROUP BY 1 ORDER BY 1",
         per(3600)),
    ]
    for name, sql, want in panels:
        try:
            got = [(int(float(t)), c) for t, c in conn.execute(expand(sql, start, end)).fetchall()]
            check(name, got == want and len(want) > 0, (got[:5], want[:5], expand(sql, start, end)))
        except psycopg.Error as e:
            check(name, False, (e.sqlstate, str(e), expand(sql, start, end)))

    raw = conn.execute(expand("SELECT $__time(bucket_start), connected_peak FROM buckets "
                              "WHERE $__timeFilter(bucket_start) ORDER BY 1", start, end)).fetchall()
    check("$__time keeps each row in the range", [(t, c) for t, c in raw] == inside,
          (len(raw), len(inside)))
    epochs = conn.execute(expand("SELECT $__timeEpoch(bucket_start) FROM buckets "
                                 "WHERE $__timeFilter(bucket_start) ORDER BY 1", start, end)).fetchall()
    check("$__timeEpoch gives epoch seconds",
          [int(e) for (e,) in epochs] == [int(t.timestamp()) for t, _ in inside])

    # Gap-filling: every minute of the range, the minutes with no bucket as 0.
    first = start.replace(second=0)
    filled = conn.execute(
        "SELECT m, coalesce(max(b.connected_peak), 0) FROM generate_series("
        f"TIMESTAMP '{first:%Y-%m-%d %H:%M:%S}', TIMESTAMP '{end:%Y-%m-%d %H:%M:%S}', "
        "INTERVAL '1 minute') AS s(m) LEFT JOIN buckets b ON date_trunc('minute', b.bucket_start) = m "
        "GROUP BY m ORDER BY m").fetchall()
    minutes = int((end - first).total_seconds()) // 60 + 1
    by_minute = {}
    for t, c in buckets:  # every bucket of each minute, as the join takes them
        key = int(t.timestamp()) // 60 * 60
        by_minute[key] = max(by_minute.get(key, 0), c)
    want = [by_minute.get(int(first.timestamp()) + 60 * i, 0) for i in range(minutes)]
    check("generate_series over timestamps fills every minute",
          [c for _, c in filled] == want,
          (len(filled), len(want), [c for _, c in filled][-10:], want[-10:]))
    sys.exit(1 if failed else 0)


main()
