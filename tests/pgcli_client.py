"""pgcli against `earshot serve --pg`, the way an analyst starts it: its completion loader (every
refresher pgcli runs at start-up, on a thread that dies at the first error), completion of tables
and columns, and the backslash commands through pgcli's own executor; then the pgcli program
itself, running the same commands. Figures read through pgcli equal `earshot sql`'s.
Prints one line per check, PASS or FAIL, and exits non-zero if any failed.

    python3 pgcli_client.py --port P --earshot BIN --data DIR --stream ID
"""
import argparse
import json
import subprocess
import sys
import threading

from pgcli.main import PGCli
from prompt_toolkit.document import Document

failed = False


def check(name, ok, detail=""):
    global failed
    failed |= not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}" + ("" if ok else f": {detail}"))


COMMANDS = [r"\dt", r"\d streams", r"\d buckets", r"\df", r"\dT", r"\du", r"\dn", r"\l", r"\dv",
            r"\di", r"\ds"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--earshot", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--stream", required=True)
    args = ap.parse_args()

    cli = PGCli()
    cli.connect(database="earshot", host="127.0.0.1", user="earshot", port=args.port, passwd="")

    # The completion loader, as pgcli starts it: an exception in any refresher ends its thread
    # (pgcli prints the traceback, and no completion is ever offered).
    errors = []
    threading.excepthook = lambda hook: errors.append(repr(hook.exc_value))
    done = threading.Event()
    loaded = {}

    def refreshed(completer):
        loaded["completer"] = completer
        done.set()

    cli.completion_refresher.refresh(cli.pgexecute, cli.pgspecial, refreshed,
                                     settings=cli.settings)
    done.wait(120)
    check("the completion loader finishes with no error", "completer" in loaded and not errors,
          errors)
    completer = loaded.get("completer")
    if completer is not None:
        def offered(text, position=None):
            doc = Document(text, cursor_position=len(text) if position is None else position)
            return {c.text for c in completer.get_completions(doc, None)}

        tables = offered("SELECT * FROM ")
        check("completion offers the tables",
              {"streams", "buckets", "sessions", "events", "rejects", "rollups"} <= tables,
              sorted(tables)[:40])
        columns = offered("SELECT  FROM streams", position=len("SELECT "))
        check("completion offers a table's columns",
              {"peak_connected", "listeners_connected", "stream_id"} <= columns,
              sorted(columns)[:40])

    for command in COMMANDS:
        try:
            results = list(cli.pgexecute.run(command, pgspecial=cli.pgspecial))
            ok = all(r[5] for r in results)
            check(f"{command} through pgcli's executor", ok, results)
        except Exception as e:  # noqa: BLE001 - every failure is a FAIL line
            check(f"{command} through pgcli's executor", False, repr(e))

    # The program itself: the same commands and a figure, with nothing on stderr.
    query = (f"SELECT peak_connected FROM streams WHERE stream_id = '{args.stream}'")
    argv = ["pgcli", "-h", "127.0.0.1", "-p", str(args.port), "-U", "earshot", "-w",
            "--less-chatty", "-t", "earshot"]
    for command in COMMANDS + [query]:
        argv += ["-c", command]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    bad = [line for line in (run.stdout + run.stderr).splitlines()
           if any(w in line.lower() for w in ("error", "traceback", "query failed"))]
    check("the pgcli program runs every command with no error", run.returncode == 0 and not bad,
          (run.returncode, bad, run.stderr[-2000:]))
    want = json.loads(subprocess.run(
        [args.earshot, "sql", "--format", "json", "--data", args.data, query],
        check=True, capture_output=True, text=True).stdout)[0]["peak_connected"]
    check("a figure printed by pgcli equals earshot sql's",
          any(line.strip() == str(want) for line in run.stdout.splitlines()),
          (want, run.stdout[-500:]))
    sys.exit(1 if failed else 0)


main()
