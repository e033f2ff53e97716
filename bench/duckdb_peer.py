"""Runs DuckDB on the events, as an analyst would without earshot.

  duckdb_peer.py load FILE.ndjson             read the NDJSON into a table (the floor of any analysis)
  duckdb_peer.py analyse FILE.ndjson          the stream-level figures of bench/duckdb_stream_figures.sql
  duckdb_peer.py analyse-parquet EVENTS_DIR   the same figures from Parquet of the same events (earshot's
                                              events/ parts: validated, pseudonymised, de-duplicated)

Prints the figures as JSON for the analyses."""
import json
import os
import pathlib
import sys

import duckdb

NDJSON = """SELECT * FROM read_json('{path}', format = 'newline_delimited', ignore_errors = true,
                 columns = {{v: 'BIGINT', event_id: 'VARCHAR', type: 'VARCHAR', ts: 'VARCHAR',
                            stream_id: 'VARCHAR', listener_id: 'VARCHAR', session_id: 'VARCHAR',
                            reason: 'VARCHAR', displayed: 'BIGINT', state: 'VARCHAR',
                            scheduled_start: 'VARCHAR'}})"""
# Parts are read in file order, which is arrival order; the listener is the pseudonym.
PARQUET = """SELECT 1 AS v, event_id, type, ts, stream_id, listener_key AS listener_id, session_id,
                 reason, displayed, state, scheduled_start
          FROM read_parquet('{path}/*.parquet')"""

mode, path = sys.argv[1], sys.argv[2]
con = duckdb.connect()
if mode == "load":
    con.execute(f"CREATE TABLE events AS SELECT * FROM read_json('{path}', format = 'newline_delimited', ignore_errors = true)")
    print(json.dumps({"rows": con.execute("SELECT count(*) FROM events").fetchall()[0][0]}))
elif mode in ("analyse", "analyse-parquet"):
    source = (NDJSON if mode == "analyse" else PARQUET).format(path=path)
    sql = (pathlib.Path(__file__).parent / "duckdb_stream_figures.sql").read_text()
    liveness = int(os.environ.get("LIVENESS_MS", "30000"))
    params = {"source": source, "liveness_ms": liveness, "lateness_ms": 60000, "min_listen_ms": 60000}
    for key, value in params.items():
        sql = sql.replace("{" + key + "}", str(value))
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    print(json.dumps([dict(zip(cols, row)) for row in cur.fetchall()], default=int))
else:
    sys.exit(f"unknown mode {mode!r}: load, analyse or analyse-parquet")
