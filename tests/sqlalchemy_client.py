"""SQLAlchemy 2 + pandas against `earshot serve --pg`, as notebooks, Superset, Alembic and Jupyter's
%sql connect: an engine on the psycopg 3 or psycopg2 driver, `pd.read_sql` with it, every call of
the inspector on every table (what `Table(autoload_with=...)`, pandas' `read_sql_table` and BI
tools do), and Postgres's SQLSTATE codes. The figures are compared with `earshot sql` on the same
data directory. Prints one line per check, PASS or FAIL, and exits non-zero if any failed.

    python3 sqlalchemy_client.py --port P --earshot BIN --data DIR --stream ID [--driver psycopg2]
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


def earshot_count(args, table):
    out = subprocess.run([args.earshot, "sql", "--format", "json", "--data", args.data,
                          f"SELECT count(*) AS n FROM {table}"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)[0]["n"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--earshot", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--stream", required=True)
    ap.add_argument("--driver", default="psycopg", choices=["psycopg", "psycopg2"])
    args = ap.parse_args()
    print(f"SQLAlchemy {sa.__version__} with {args.driver}")
    engine = sa.create_engine(f"postgresql+{args.driver}://earshot@127.0.0.1:{args.port}/earshot")

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
    check("inspect(engine).get_schema_names() (LIKE ... ESCAPE '/')",
          inspector.get_schema_names() == ["public"], inspector.get_schema_names())
    check("inspect(engine).has_table()", inspector.has_table("streams")
          and not inspector.has_table("nope"))
    for empty in ["get_view_names", "get_materialized_view_names", "get_sequence_names",
                  "get_temp_table_names", "get_foreign_table_names"]:
        try:
            got = getattr(inspector, empty)()
            check(f"inspect(engine).{empty}() is empty", list(got) == [], got)
        except NotImplementedError:
            pass  # not every version has every call
    # Every call, on every table: read-only tables have no keys, indexes or constraints, and say
    # so the way Postgres would (empty), never with an error.
    for table in tables:
        want = json.loads(subprocess.run(
            [args.earshot, "sql", "--format", "json", "--data", args.data,
             f"SELECT column_name, is_nullable FROM information_schema.columns "
             f"WHERE table_name = '{table}' ORDER BY ordinal_position"],
            check=True, capture_output=True, text=True).stdout)
        columns = inspector.get_columns(table)
        check(f"get_columns({table}) names and nullability",
              [(c["name"], c["nullable"]) for c in columns]
              == [(w["column_name"], w["is_nullable"] == "YES") for w in want],
              ([(c["name"], c["nullable"]) for c in columns], want))
        check(f"get_columns({table}) has no default or identity",
              all(c["default"] is None and not c.get("identity") for c in columns), columns)
        pk = inspector.get_pk_constraint(table)
        check(f"get_pk_constraint({table}) is none", pk["constrained_columns"] == [], pk)
        for empty in ["get_foreign_keys", "get_indexes", "get_unique_constraints",
                      "get_check_constraints"]:
            got = getattr(inspector, empty)(table)
            check(f"{empty}({table}) is empty", got == [], got)
        check(f"get_table_comment({table})", inspector.get_table_comment(table) == {"text": None})
        if sa.__version__ >= "2.1":  # Postgres's dialect has table options from 2.1 on
            check(f"get_table_options({table})", inspector.get_table_options(table) == {},
                  inspector.get_table_options(table))
        reflected = sa.Table(table, sa.MetaData(), autoload_with=engine)
        check(f"Table({table}, autoload_with=engine) has every column",
              [c.name for c in reflected.columns] == [c["name"] for c in columns])
        with engine.connect() as conn:
            n = conn.execute(sa.select(sa.func.count()).select_from(reflected)).scalar()
        check(f"count(*) through the reflected {table} equals earshot sql's",
              n == earshot_count(args, table), (n, table))
    multi = inspector.get_multi_columns()
    check("get_multi_columns() covers every table",
          sorted(name for _, name in multi) == tables, sorted(multi))
    streams = sa.Table("streams", sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        row = conn.execute(sa.select(streams.c.peak_connected, streams.c.listeners_connected)
                           .where(streams.c.stream_id == args.stream)).one()
    want = json.loads(subprocess.run(
        [args.earshot, "sql", "--format", "json", "--data", args.data,
         f"SELECT peak_connected, listeners_connected FROM streams WHERE stream_id = '{args.stream}'"],
        check=True, capture_output=True, text=True).stdout)[0]
    check("a figure through the reflected table equals earshot sql's",
          tuple(row) == (want["peak_connected"], want["listeners_connected"]), (row, want))

    # Postgres's SQLSTATE codes, which drivers map to the exception classes tools catch.
    for sql, code, name in [
        ("SELECT no_such_function(1)", "42883", "undefined function"),
        ("SELECT * FROM no_such_table", "42P01", "undefined table"),
        ("SELECT no_such_column FROM streams", "42703", "undefined column"),
        ("SELEC 1", "42601", "syntax error"),
        ("SELECT 1 / 0", "22012", "division by zero"),
        ("SELECT current_setting('no_such_setting')", "42704", "unrecognized setting"),
        ("DELETE FROM streams", "25006", "a write to the read-only tables"),
    ]:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(sql))
            check(f"{name} is an error", False, sql)
        except sa.exc.DBAPIError as e:
            got = getattr(e.orig, "sqlstate", None) or getattr(e.orig, "pgcode", None)
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
