"""Runs DuckDB on an NDJSON file: `load` (just reading it into a table) or `analyse` (the stream-level
figures of bench/duckdb_stream_figures.sql). Prints the figures as JSON for `analyse`."""
import json
import pathlib
import sys

import duckdb

mode, path = sys.argv[1], sys.argv[2]
con = duckdb.connect()
if mode == "load":
    con.execute(f"CREATE TABLE events AS SELECT * FROM read_json('{path}', format = 'newline_delimited', ignore_errors = true)")
    print(json.dumps({"rows": con.execute("SELECT count(*) FROM events").fetchall()[0][0]}))
else:
    sql = (pathlib.Path(__file__).parent / "duckdb_stream_figures.sql").read_text()
    for key, value in {"path": path, "liveness_ms": 30000, "lateness_ms": 60000, "min_listen_ms": 60000}.items():
        sql = sql.replace("{" + key + "}", str(value))
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    print(json.dumps([dict(zip(cols, row)) for row in cur.fetchall()], default=int))
