"""Superset 6 against `earshot serve --pg`, driven through its REST API as its web UI drives it:
log in, add the database (testing the connection first), list schemas and tables, read a table's
columns for SQL Lab's panel and its "select star", add every table as a dataset, run a query in
SQL Lab, chart connected listeners at a 1-minute grain *with a time range* (the chart every
dashboard has), save it on a dashboard, and read the dashboard's charts back. Superset runs from
its own virtual environment (scripts/setup), with a SQLite metadata database in a scratch
directory. Figures are compared with `earshot sql`. Prints one line per check, PASS or FAIL, and
exits non-zero if any failed.

    superset-venv/bin/python superset_client.py --port P --earshot BIN --data DIR --stream ID
"""
import argparse
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

failed = False


def check(name, ok, detail=""):
    global failed
    failed |= not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}" + ("" if ok else f": {str(detail)[:3000]}"),
          flush=True)
    return ok


def earshot_sql(args, sql):
    out = subprocess.run([args.earshot, "sql", "--format", "json", "--data", args.data, sql],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_superset(home):
    """Initialises Superset's metadata in `home` and starts its web server; returns (process, url)."""
    (home / "superset_config.py").write_text(
        'SECRET_KEY = "earshot-test-only-' + os.urandom(16).hex() + '"\n'
        f'SQLALCHEMY_DATABASE_URI = "sqlite:///{home}/superset.db"\n'
        "WTF_CSRF_TIME_LIMIT = None\n")
    env = dict(os.environ, SUPERSET_CONFIG_PATH=str(home / "superset_config.py"),
               SUPERSET_HOME=str(home), FLASK_APP="superset")
    superset = str(Path(sys.executable).parent / "superset")
    log = open(home / "superset.log", "w")
    for step in (["db", "upgrade"],
                 ["fab", "create-admin", "--username", "admin", "--password", "admin-pw-123",
                  "--firstname", "A", "--lastname", "B", "--email", "admin@example.com"],
                 ["init"]):
        subprocess.run([superset, *step], env=env, check=True, stdout=log, stderr=log)
    port = free_port()
    proc = subprocess.Popen([superset, "run", "-h", "127.0.0.1", "-p", str(port),
                             "--with-threads"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise SystemExit("Superset did not start; see " + str(home / "superset.log"))


class Api:
    """A logged-in session, with the CSRF token the UI sends on every change."""

    def __init__(self, url):
        self.url = url
        self.s = requests.Session()
        r = self.s.post(url + "/api/v1/security/login", json={
            "username": "admin", "password": "admin-pw-123", "provider": "db", "refresh": True})
        r.raise_for_status()
        self.s.headers["Authorization"] = "Bearer " + r.json()["access_token"]
        csrf = self.s.get(url + "/api/v1/security/csrf_token/").json()["result"]
        self.s.headers["X-CSRFToken"] = csrf
        self.s.headers["Referer"] = url

    def get(self, path, **kw):
        return self.s.get(self.url + path, timeout=120, **kw)

    def post(self, path, body):
        return self.s.post(self.url + path, json=body, timeout=120)

    def put(self, path, body):
        return self.s.put(self.url + path, json=body, timeout=120)


def minute_chart(dataset_id, start, end, grain="PT1M"):
    """The query context of a line chart of peak connected listeners per `grain` (a minute) over a
    time range, as Superset's Explore view builds it."""
    time_range = f"{start} : {end}"
    form_data = {
        "datasource": f"{dataset_id}__table", "viz_type": "echarts_timeseries_line",
        "x_axis": "bucket_start", "time_grain_sqla": grain,
        "metrics": [{"expressionType": "SIMPLE", "column": {"column_name": "connected_peak"},
                     "aggregate": "MAX", "label": "connected"}],
        "adhoc_filters": [{"clause": "WHERE", "subject": "bucket_start",
                           "operator": "TEMPORAL_RANGE", "comparator": time_range,
                           "expressionType": "SIMPLE"}],
        "row_limit": 10000,
    }
    return {
        "datasource": {"id": dataset_id, "type": "table"},
        "force": True,
        "queries": [{
            "columns": [{"timeGrain": grain, "columnType": "BASE_AXIS",
                         "sqlExpression": "bucket_start", "label": "bucket_start",
                         "expressionType": "SQL"}],
            "metrics": form_data["metrics"],
            "filters": [{"col": "bucket_start", "op": "TEMPORAL_RANGE", "val": time_range}],
            "orderby": [[form_data["metrics"][0], False]],
            "row_limit": 10000,
            "time_range": time_range,
        }],
        "form_data": form_data,
        "result_format": "json",
        "result_type": "full",
    }


def truncate(t, grain):
    """`t` (a UTC datetime) at the start of its `grain`, computed here, apart from any SQL."""
    seconds = {"PT1S": 1, "PT5S": 5, "PT30S": 30, "PT1M": 60, "PT5M": 300, "PT10M": 600,
               "PT15M": 900, "PT30M": 1800, "PT1H": 3600, "P1D": 86400}
    if grain in seconds:
        step = seconds[grain]
        return t.replace(microsecond=0) - dt.timedelta(seconds=int(t.timestamp()) % step)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if grain == "P1W":
        return day - dt.timedelta(days=day.weekday())
    if grain == "P1M":
        return day.replace(day=1)
    if grain == "P3M":
        return day.replace(day=1, month=(day.month - 1) // 3 * 3 + 1)
    if grain == "P1Y":
        return day.replace(day=1, month=1)
    raise ValueError(grain)


def time_grains(api, args, dataset, start, end):
    """Every time grain Superset offers for Postgres, charted over the range: the same maxima as
    grouping the buckets by that grain here."""
    buckets = earshot_sql(args, "SELECT bucket_start, connected_peak FROM buckets "
                                f"WHERE bucket_start >= TIMESTAMP '{start}' "
                                f"AND bucket_start < TIMESTAMP '{end}'")
    for grain in ["PT1S", "PT5S", "PT30S", "PT1M", "PT5M", "PT10M", "PT15M", "PT30M", "PT1H",
                  "P1D", "P1W", "P1M", "P3M", "P1Y"]:
        want = {}
        for b in buckets:
            t = dt.datetime.fromisoformat(b["bucket_start"].replace("Z", "+00:00"))
            key = int(truncate(t, grain).timestamp() * 1000)
            want[key] = max(want.get(key, 0), b["connected_peak"])
        r = api.post("/api/v1/chart/data", minute_chart(dataset, start, end, grain))
        rows = r.json()["result"][0]["data"] if r.ok else []
        got = {row["bucket_start"]: row["connected"] for row in rows}
        check(f"the {grain} time grain groups as it should", r.ok and got == want,
              (r.status_code, r.text[:1500], sorted(got.items())[:5], sorted(want.items())[:5]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--earshot", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--stream", required=True)
    ap.add_argument("--keep", help="a directory for Superset's files, kept (to read its log)")
    args = ap.parse_args()
    uri = f"postgresql+psycopg2://earshot@127.0.0.1:{args.port}/earshot"

    scratch = tempfile.TemporaryDirectory()
    with scratch as home:
        home = args.keep or home
        proc, url = start_superset(Path(home))
        try:
            walk(Api(url), args, uri)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log = (Path(home) / "superset.log").read_text(errors="replace")
            # Superset logs the database's errors it met; an analyst's walk must meet none.
            bad = [line for line in log.splitlines()
                   if "earshot" not in line.lower() and any(
                       w in line for w in ("psycopg2.", "DatabaseError", "Invalid function"))]
            check("Superset's log has no database error", not bad, "\n".join(bad[:20]))
    sys.exit(1 if failed else 0)


def walk(api, args, uri):
    r = api.post("/api/v1/database/test_connection/",
                 {"database_name": "earshot", "sqlalchemy_uri": uri})
    check("test the connection", r.status_code == 200, r.text)
    r = api.post("/api/v1/database/", {"database_name": "earshot", "sqlalchemy_uri": uri,
                                        "expose_in_sqllab": True})
    if not check("add the database", r.status_code == 201, r.text):
        return
    db = r.json()["id"]

    r = api.get(f"/api/v1/database/{db}/schemas/")
    check("list schemas", r.ok and "public" in r.json().get("result", []), r.text)
    r = api.get(f"/api/v1/database/{db}/tables/", params={"q": "(schema_name:public)"})
    tables = sorted(t["value"] for t in r.json().get("result", [])) if r.ok else []
    check("list tables", tables == ["buckets", "events", "rejects", "rollups", "sessions",
                                    "streams"], r.text)

    datasets = {}
    for table in tables:
        r = api.get(f"/api/v1/database/{db}/table_metadata/",
                    params={"name": table, "schema": "public"})
        columns = [c["name"] for c in r.json().get("columns", [])] if r.ok else []
        want = [c["column_name"] for c in earshot_sql(
            args, "SELECT column_name FROM information_schema.columns WHERE table_name = "
                  f"'{table}' ORDER BY ordinal_position")]
        check(f"SQL Lab's table panel lists {table}'s columns", columns == want, r.text)
        r = api.get(f"/api/v1/database/{db}/select_star/{table}/public/")
        check(f"select star of {table}", r.ok and table in r.json().get("result", ""), r.text)
        r = api.post("/api/v1/dataset/", {"database": db, "schema": "public",
                                          "table_name": table})
        if check(f"add {table} as a dataset", r.status_code == 201, r.text):
            datasets[table] = r.json()["id"]

    query = (f"SELECT peak_connected, listeners_connected FROM streams "
             f"WHERE stream_id = '{args.stream}'")
    r = api.post("/api/v1/sqllab/execute/", {"database_id": db, "sql": query, "schema": "public",
                                             "runAsync": False})
    got = r.json().get("data", []) if r.ok else []
    check("a SQL Lab query gives earshot sql's figures", got == earshot_sql(args, query), r.text)

    if "buckets" not in datasets:
        return
    bounds = earshot_sql(args, "SELECT min(bucket_start) AS a, max(bucket_start) AS b FROM buckets")[0]
    # A range that starts after the event began and ends before it ended: the filter must bite.
    start, end = bounds["a"][:10] + "T00:00:00", bounds["b"][:19]
    context = minute_chart(datasets["buckets"], start, end)
    r = api.post("/api/v1/chart/data", context)
    rows = r.json()["result"][0]["data"] if r.ok else []
    want = earshot_sql(
        args, "SELECT date_trunc('minute', bucket_start) AS minute, max(connected_peak) AS c "
              f"FROM buckets WHERE bucket_start >= TIMESTAMP '{start}' "
              f"AND bucket_start < TIMESTAMP '{end}' GROUP BY 1")
    got_by_minute = sorted(row["connected"] for row in rows)
    check("a 1-minute chart with a time range gives earshot sql's figures",
          r.ok and len(rows) > 10 and got_by_minute == sorted(w["c"] for w in want),
          (r.status_code, r.text[:2000], len(rows), len(want)))

    time_grains(api, args, datasets["buckets"], start, end)

    r = api.post("/api/v1/dashboard/", {"dashboard_title": "Town hall", "published": True})
    if not check("save a dashboard", r.status_code == 201, r.text):
        return
    dashboard = r.json()["id"]
    r = api.post("/api/v1/chart/", {
        "slice_name": "Connected listeners per minute", "viz_type": "echarts_timeseries_line",
        "datasource_id": datasets["buckets"], "datasource_type": "table",
        "params": json.dumps(context["form_data"]), "query_context": json.dumps(context),
        "dashboards": [dashboard]})
    if not check("save the chart on the dashboard", r.status_code == 201, r.text):
        return
    r = api.get(f"/api/v1/dashboard/{dashboard}/charts")
    charts = [c["id"] for c in r.json().get("result", [])] if r.ok else []
    check("the dashboard lists its chart", len(charts) == 1, r.text)
    for chart in charts:
        r = api.get(f"/api/v1/chart/{chart}/data/", params={"force": "true"})
        data = r.json()["result"][0]["data"] if r.ok else []
        check("the dashboard's chart returns data", len(data) == len(rows) and len(data) > 10,
              (r.status_code, r.text[:2000]))


main()
