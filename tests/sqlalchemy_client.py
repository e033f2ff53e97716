"""SQLAlchemy 2 + pandas against `earshot serve --pg`, as notebooks, Superset and Jupyter's %sql
connect: an engine on the psycopg 3 driver, `pd.read_sql` with it, and the inspector's table list. The figures are compared with `earshot sql` on the same data directory. Prints one line
per check, PASS or FAIL, and exits non-zero if any failed.

    python3 sqlalchemy_client.py --port P --earshot BIN --data DIR --stream ID
"""
import argparse
import json
import subprocess
import sys

import pandas as pd
import sqlalchemy as sa

failed = False


def check(name, ok, detail=""):
    global failed
    failed |= not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}" + ("" if ok else f": {detail}"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--earshot", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--stream", required=True)
    args = ap.parse_args()
    engine = sa.create_engine(f"postgresql+psycopg://earshot@127.0.0.1:{args.port}/earshot")

    with engine.connect() as conn:
        version = conn.execute(sa.text("SELECT version()")).scalar()
    check("version() starts like PostgreSQL's", version.startswith("PostgreSQL "), version)
    check("SQLAlchemy read the server version", engine.dialect.server_version_info is not None
          and engine.dialect.server_version_info[0] >= 9, engine.dialect.server_version_info)

    query = ("SELECT stream_id, sessions, peak_connected, listeners_connected FROM streams "
             "WHERE stream_id = %(stream)s")
    df = pd.read_sql(query, engine, params={"stream": args.stream})
    want = json.loads(subprocess.run(
        [args.earshot, "sql", "--format", "json", "--data", args.data,
         query.replace("%(stream)s", "'" + args.stream + "'")],
        check=True, capture_output=True, text=True).stdout)
    check("pd.read_sql with an engine gives earshot's figures",
          df.to_dict("records") == want, (df.to_dict("records"), want))

    buckets = pd.read_sql(sa.text("SELECT bucket_start, connected_peak FROM buckets "
                                  "WHERE stream_id = :s ORDER BY bucket_start"),
                          engine, params={"s": args.stream})
    check("timestamps arrive as datetimes", str(buckets["bucket_start"].dtype).startswith("datetime64"),
          str(buckets.dtypes.to_dict()))
    check("every bucket arrives", len(buckets) > 10, len(buckets))

    inspector = sa.inspect(engine)
    tables = sorted(inspector.get_table_names())
    check("inspect(engine).get_table_names()",
          tables == ["buckets", "events", "rejects", "rollups", "sessions", "streams"], tables)
    # The inspector calls that work so far (issue 32: get_columns, get_pk_constraint, get_indexes
    # and get_unique_constraints do not yet: correlated subqueries in the catalog queries, and
    # parameters cast to regclass).
    check("inspect(engine).get_schema_names() (LIKE ... ESCAPE '/')",
          inspector.get_schema_names() == ["public"], inspector.get_schema_names())
    check("inspect(engine).has_table()", inspector.has_table("streams")
          and not inspector.has_table("nope"))
    check("inspect(engine).get_foreign_keys() is empty", inspector.get_foreign_keys("streams") == [])
    check("inspect(engine).get_check_constraints() is empty",
          inspector.get_check_constraints("streams") == [])
    check("inspect(engine).get_table_comment()",
          inspector.get_table_comment("streams") == {"text": None})

    # Postgres's SQLSTATE codes, which drivers map to the exception classes tools catch.
    for sql, code, name in [
        ("SELECT no_such_function(1)", "42883", "undefined function"),
        ("SELECT * FROM no_such_table", "42P01", "undefined table"),
        ("SELECT no_such_column FROM streams", "42703", "undefined column"),
        ("SELEC 1", "42601", "syntax error"),
    ]:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(sql))
            check(f"{name} is an error", False, sql)
        except sa.exc.DBAPIError as e:
            got = getattr(e.orig, "sqlstate", None)
            check(f"{name} is SQLSTATE {code}", got == code, (got, str(e.orig)))

    # The catalog's array columns are arrays (pgcli and SQLAlchemy unnest them).
    with engine.connect() as conn:
        keys = conn.execute(sa.text(
            "SELECT unnest(indkey) AS k FROM pg_catalog.pg_index LIMIT 1")).scalar()
        visible = conn.execute(sa.text(
            "SELECT pg_type_is_visible(23), pg_function_is_visible(1), "
            "pg_get_serial_sequence('streams', 'stream_id') IS NULL")).one()
    check("pg_index.indkey is an array of integers", isinstance(keys, int), keys)
    check("*_is_visible and pg_get_serial_sequence answer", tuple(visible) == (True, True, True),
          visible)

    # Read-only still holds through the ORM's connection.
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE streams"))
        check("writes are refused", False, "DROP TABLE succeeded")
    except sa.exc.DBAPIError as e:
        check("writes are refused", "read-only" in str(e), e)
    sys.exit(1 if failed else 0)


main()
