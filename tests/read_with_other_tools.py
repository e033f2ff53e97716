"""Reads an earshot generation directory with pyarrow and with DuckDB (every table but streams is a
directory of parts; a session's row is the one with the largest `version` among the parts of
sessions/); prints row counts as JSON, plus one figure recomputed by DuckDB from the sessions table
(distinct listeners ever connected)."""
import json
import pathlib
import sys

import duckdb
import pyarrow.parquet as pq

gen = pathlib.Path(sys.argv[1])
tables = ["streams", "buckets", "sessions", "events", "rejects"]
out = {"pyarrow": {}, "duckdb": {}}
for t in tables:
    # Directories of Parquet parts (all but streams); a generation written before had single files.
    part_dir = gen / t
    if part_dir.is_dir():
        path, pattern = part_dir, f"{part_dir}/*.parquet"
    else:
        path = pattern = gen / f"{t}.parquet"
    table = pq.read_table(path)
    if t == "sessions":
        # Rows of one session in several parts are versions of one row.
        out["pyarrow"][t] = table.group_by(["stream_id", "session_id"]).aggregate([]).num_rows
        latest = (f"(SELECT * FROM read_parquet('{pattern}') QUALIFY row_number() OVER "
                  "(PARTITION BY stream_id, session_id ORDER BY version DESC) = 1)")
        out["duckdb"][t] = duckdb.sql(f"SELECT count(*) FROM {latest}").fetchall()[0][0]
    else:
        out["pyarrow"][t] = table.num_rows
        out["duckdb"][t] = duckdb.sql(f"SELECT count(*) FROM read_parquet('{pattern}')").fetchall()[0][0]
out["duckdb_listeners_connected"] = duckdb.sql(
    f"SELECT count(DISTINCT listener_key) FROM {latest} WHERE connect_ts IS NOT NULL"
).fetchall()[0][0]
print(json.dumps(out))
