"""Cancel requests and the connection cap of earshot's Postgres endpoint, through psycopg 3.

Run by crates/cli/tests/isolation.rs against `earshot serve --pg ... --pg-max-connections N`.
Prints one line per check and FAIL on a failed one; exits non-zero on failure.
"""

import argparse
import sys
import threading
import time

import psycopg

# CPU-bound and never waiting on input: three copies of `events` feeding a sort, which never
# finishes (the time limit the test sets is far above the cancel).
HEAVY = (
    "SELECT a.event_id, b.event_id FROM events a, events b, events c "
    "ORDER BY a.session_id || b.session_id || c.session_id DESC LIMIT 5"
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--max-connections", type=int, required=True)
    a = ap.parse_args()
    dsn = f"host=127.0.0.1 port={a.port} user=earshot dbname=earshot connect_timeout=10"
    failed = False

    conn = psycopg.connect(dsn, autocommit=True)
    cancel = getattr(conn, "cancel_safe", conn.cancel)

    def cancel_soon():
        time.sleep(0.7)
        cancel()

    t = threading.Thread(target=cancel_soon)
    start = time.monotonic()
    t.start()
    try:
        conn.execute(HEAVY)
        print("FAIL: the heavy query finished instead of being cancelled")
        failed = True
    except psycopg.errors.QueryCanceled as e:
        took = time.monotonic() - start
        print(f"cancelled after {took:.2f} s: {e}".strip())
        if took > 0.7 + 1.5:
            print(f"FAIL: the cancel took {took - 0.7:.2f} s to stop the query")
            failed = True
    t.join()
    # The cancelled query's work stopped too: the next query does not wait behind it.
    start = time.monotonic()
    if conn.execute("SELECT 41 + 1").fetchone()[0] != 42:
        print("FAIL: the connection does not answer after a cancel")
        failed = True
    elif time.monotonic() - start > 2:
        print(f"FAIL: the next query took {time.monotonic() - start:.1f} s after the cancel")
        failed = True
    else:
        print(f"the connection answers after the cancel, in {time.monotonic() - start:.2f} s")

    # `conn` is one of the allowed connections; fill the rest, then one more is refused.
    others = [psycopg.connect(dsn) for _ in range(a.max_connections - 1)]
    try:
        psycopg.connect(dsn).close()
        print("FAIL: a connection over the cap was served")
        failed = True
    except psycopg.OperationalError as e:
        if "too many clients" in str(e):
            print(f"over the cap: {str(e).strip()}")
        else:
            print(f"FAIL: over the cap, an unclear refusal: {e!r}")
            failed = True
    for o in others:
        o.close()
    conn.close()
    # The closed connections' places are free again.
    deadline = time.monotonic() + 5
    while True:
        try:
            psycopg.connect(dsn).close()
            print("a connection is served again once others closed")
            break
        except psycopg.OperationalError as e:
            if time.monotonic() > deadline:
                print(f"FAIL: no connection is served after others closed: {e}")
                failed = True
                break
            time.sleep(0.1)
    print("FAILED" if failed else "OK")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
