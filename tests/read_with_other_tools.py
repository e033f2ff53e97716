"""Reads an earshot generation directory with pyarrow and with DuckDB (events/ and rejects/ are
directories of parts); prints row counts as JSON,
plus one figure recomputed by DuckDB from the sessions table (distinct listeners ever connected)."""
import json
import pathlib
import sys

import duckdb
import pyarrow.parquet as pq

gen = pathlib.Path(sys.argv[1])
tables = ["streams", "buckets", "sessions", "events", "rejects"]
out = {"pyarrow": {}, "duckdb": {}}
for t in tables:
    # events and rejects are directories of Parquet parts; the others single files.
    part_dir = gen / t
    if part_dir.is_dir():
        path, pattern = part_dir, f"{part_dir}/*.parquet"
    else:
        path = pattern = gen / f"{t}.parquet"
    out["pyarrow"][t] = pq.read_table(path).num_rows
    out["duckdb"][t] = duckdb.sql(f"SELECT count(*) FROM read_parquet('{pattern}')").fetchall()[0][0]
out["duckdb_listeners_connected"] = duckdb.sql(
    f"SELECT count(DISTINCT listener_key) FROM read_parquet('{gen / 'sessions.parquet'}') "
    "WHERE connect_ts IS NOT NULL"
).fetchall()[0][0]
print(json.dumps(out))
