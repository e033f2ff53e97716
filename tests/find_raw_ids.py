"""Looks for raw listener ids anywhere under the given paths (contract §5: the raw id is never
written anywhere). Parquet files are read decoded with pyarrow — every value of every column, and
every column chunk's min/max statistics — and every other file as raw bytes; a path that is a file
is read as text (a log, a report). Prints one JSON object: how many files were searched and every
place an id was found. Exit status 0 either way; the caller asserts.

    python3 find_raw_ids.py --ids alice.secret@example.com,bob-7 PATH [PATH ...]
"""
import argparse
import json
import pathlib

import pyarrow.parquet as pq


def parquet_texts(path):
    f = pq.ParquetFile(path)
    table = f.read()
    for name in table.column_names:
        for v in table.column(name).to_pylist():
            if isinstance(v, bytes):
                yield name, v.decode("utf-8", "replace")
            elif v is not None:
                yield name, str(v)
    md = f.metadata
    for rg in range(md.num_row_groups):
        for c in range(md.num_columns):
            st = md.row_group(rg).column(c).statistics
            if st is not None and st.has_min_max:
                for v in (st.min, st.max):
                    yield f"stats:{md.schema.column(c).name}", (
                        v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ids", required=True)
    ap.add_argument("paths", nargs="+")
    args = ap.parse_args()
    ids = [i for i in args.ids.split(",") if i]
    found, searched = [], 0
    files = []
    for p in map(pathlib.Path, args.paths):
        files.extend(sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p])
    for f in files:
        searched += 1
        if f.suffix == ".parquet":
            for col, text in parquet_texts(f):
                for i in ids:
                    if i in text:
                        found.append({"file": str(f), "column": col, "id": i})
        else:
            data = f.read_bytes()
            for i in ids:
                if i.encode() in data:
                    found.append({"file": str(f), "id": i})
    print(json.dumps({"searched": searched, "found": found}))


main()
