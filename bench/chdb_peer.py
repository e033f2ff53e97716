"""Runs ClickHouse's engine in-process (chDB, PyPI `chdb`) on the events, as an analyst would
without earshot: the stream-level figures of bench/chdb_stream_figures.sql from the NDJSON.

  chdb_peer.py analyse FILE.ndjson

Prints the figures as JSON, in the shape of bench/duckdb_peer.py's."""
import json
import os
import pathlib
import sys

from chdb import session

mode, path = sys.argv[1], sys.argv[2]
if mode != "analyse":
    sys.exit(f"unknown mode {mode!r}: analyse")
sql = (pathlib.Path(__file__).parent / "chdb_stream_figures.sql").read_text()
params = {"path": os.path.abspath(path), "liveness_ms": int(os.environ.get("LIVENESS_MS", "30000")),
          "lateness_ms": 60000, "min_listen_ms": 60000}
for key, value in params.items():
    sql = sql.replace("{" + key + "}", str(value))
# ClickHouse does not materialise a CTE used twice (it computes it again), so the events, the
# sessions and the connected intervals go to in-memory tables first, as an analyst would do.
code = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
statements = [s.strip() for s in code.split(";") if s.strip()]
con = session.Session()
for statement in statements[:-1]:
    con.query(statement)
out = con.query(statements[-1], "JSONEachRow").bytes().decode()
rows = [json.loads(line) for line in out.splitlines() if line]
# ClickHouse writes 64-bit integers as strings in JSON by default; the figures are numbers.
for row in rows:
    for key, value in row.items():
        if key != "stream_id" and isinstance(value, str):
            row[key] = int(value)
print(json.dumps(rows))
