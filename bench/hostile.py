"""The measuring half of bench/hostile: see that script. Prints a Markdown table."""
import argparse
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request

WORST = ("SELECT a.event_id, b.event_id FROM events a, events b "
         "ORDER BY a.session_id || b.session_id DESC LIMIT 5")
QUERIES = [
    ("2,000-term sum", "SELECT " + "+".join(["1"] * 2000) + " AS x", "json"),
    ("cross join + sort (CPU-bound)", WORST, "json"),
    ("generate_series(1, 1e10) as JSON", "SELECT * FROM generate_series(1, 10000000000)", "json"),
    ("generate_series(1, 1e10) as CSV", "SELECT * FROM generate_series(1, 10000000000)", "csv"),
    ("repeat('x', 3e8)", "SELECT repeat('x', 300000000) AS x", "json"),
    ("repeat('x', 2e9)", "SELECT repeat('x', 2000000000) AS x", "json"),
    ("concat of two repeat(…, 2e8)", "SELECT concat(repeat('a', 200000000), repeat('b', 200000000)) AS x", "json"),
    ("range(1, 1e10)", "SELECT range(1, 10000000000) AS r", "json"),
    ("array_agg of 1e9 rows", "SELECT array_agg(value) FROM generate_series(1, 1000000000)", "json"),
    # Issue 30's: shapes the guard does not count, and functions that allocate outside the pool.
    ("5,000 × UNION ALL (planning)", "SELECT 1 AS x" + " UNION ALL SELECT 1" * 5000, "json"),
    ("1,500-way comma join (planning)",
     "SELECT count(*) FROM " + ", ".join(f"streams s{i}" for i in range(1500)), "json"),
    ("GROUP BY CUBE of 26 terms",
     "SELECT count(*) FROM events GROUP BY type, CUBE(" + ", ".join(["client"] * 26) + ")", "json"),
    ("regexp over a self-join (no yield)",
     "SELECT count(*) FROM events a, events b "
     "WHERE regexp_like(a.event_id || b.event_id, '^(a|aa)+$')", "json"),
    ("lpad with a multi-byte fill", "SELECT length(lpad('x', 1000000000, 'é')) AS n", "json"),
    ("array_concat of two 5e7 ranges",
     "SELECT cardinality(array_concat(range(1, 50000000), range(1, 50000000))) AS n", "json"),
    ("upper of a 4e8-byte string", "SELECT length(upper(repeat('é', 200000000))) AS n", "json"),
]


def kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def children(pid):
    """The server's query workers (its child processes), from /proc."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def tree(pid, field):
    """`field` (KiB) of the server and each worker: (sum, largest single worker)."""
    total, largest = kib(pid, field), 0
    for c in children(pid):
        try:
            v = kib(c, field)
        except (OSError, AttributeError):
            continue
        total += v
        largest = max(largest, v)
    return total, largest


def tree_cpu(pid):
    total = cpu(pid)
    for c in children(pid):
        try:
            total += cpu(c)
        except OSError:
            pass
    return total


class Sampler:
    """Samples the server's and its workers' RSS every 20 ms while a request runs: the peak of
    the sum, and the largest single worker's peak (VmHWM, which a worker killed at its limit
    takes with it, so sampled too)."""

    def __init__(self, pid):
        self.pid, self.peak_sum, self.peak_worker, self.running = pid, 0, 0, True
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while self.running:
            try:
                total, _ = tree(self.pid, "VmRSS")
                _, worker = tree(self.pid, "VmHWM")
                self.peak_sum = max(self.peak_sum, total)
                self.peak_worker = max(self.peak_worker, worker)
            except OSError:
                pass
            time.sleep(0.02)

    def stop(self):
        self.running = False
        self.t.join()


class Server:
    def __init__(self, args, extra=()):
        self.p = subprocess.Popen(
            [args.earshot, "serve", "--data", args.data, "--http", "127.0.0.1:0",
             "--memory-limit", args.memory_limit, "--query-timeout", args.timeout, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in self.p.stdout:
            m = re.match(r"http: listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                self.base = f"http://127.0.0.1:{m.group(1)}"
                break
        threading.Thread(target=self.p.stdout.read, daemon=True).start()
        time.sleep(1.0)
        self.idle = tree(self.p.pid, "VmRSS")[0]

    def post(self, sql, kind="json"):
        accept = {"json": "application/json", "csv": "text/csv"}[kind]
        req = urllib.request.Request(self.base + "/v1/query", data=sql.encode(), method="POST",
                                     headers={"Accept": accept})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                r.read()
                return r.status, ""
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()[:80]

    def get(self, path):
        t = time.perf_counter()
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            r.read()
        return (time.perf_counter() - t) * 1000

    def stop(self):
        self.p.kill()
        self.p.wait()


def main():
    ap = argparse.ArgumentParser()
    for a in ("--earshot", "--data", "--memory-limit", "--timeout"):
        ap.add_argument(a, required=True)
    args = ap.parse_args()
    print(f"memory limit {args.memory_limit}, time limit {args.timeout}\n")
    print("| query | status | answered in | peak RSS − idle, server + workers | largest worker peak "
          "| front peak | CPU in the next second |")
    print("|---|---|---|---|---|---|---|")
    for name, sql, kind in QUERIES:
        s = Server(args)
        front0 = kib(s.p.pid, "VmHWM")
        sampler = Sampler(s.p.pid)
        t = time.perf_counter()
        status, _ = s.post(sql, kind)
        took = time.perf_counter() - t
        sampler.stop()
        time.sleep(0.2)
        c0 = tree_cpu(s.p.pid)
        time.sleep(1)
        busy = tree_cpu(s.p.pid) - c0
        front = kib(s.p.pid, "VmHWM")
        alive = s.get("/healthz") >= 0
        print(f"| {name} | {status}{'' if alive else ' (server gone)'} | {took:.2f} s | "
              f"{(sampler.peak_sum - s.idle) / 1024:.0f} MiB (idle {s.idle / 1024:.0f} MiB) | "
              f"{sampler.peak_worker / 1024:.0f} MiB | {front / 1024:.0f} MiB "
              f"(+{(front - front0) / 1024:.0f}) | {busy:.2f} s |")
        s.stop()

    s = Server(args)
    stream = urllib.request.urlopen(s.base + "/v1/streams").read()
    sid = re.search(rb'"stream_id":"([^"]+)"', stream).group(1).decode()
    timeline = f"/v1/streams/{sid}/timeline?step=60s"
    s.get(timeline)  # cached from here on
    results = []
    heavy = [threading.Thread(target=lambda: results.append(s.post(WORST))) for _ in range(2)]
    for h in heavy:
        h.start()
    time.sleep(0.3)
    lat = {"/healthz": [], "cached timeline": []}
    while any(h.is_alive() for h in heavy):
        lat["/healthz"].append(s.get("/healthz"))
        lat["cached timeline"].append(s.get(timeline))
        time.sleep(0.01)
    print("\nWhile two worst-case queries ran (answered: "
          f"{', '.join(str(r[0]) for r in results)}):\n")
    print("| request | n | p50 | p99 | max |")
    print("|---|---|---|---|---|")
    for name, l in lat.items():
        l.sort()
        print(f"| {name} | {len(l)} | {l[len(l) // 2]:.1f} ms | {l[int(len(l) * 0.99)]:.1f} ms | "
              f"{l[-1]:.1f} ms |")
    s.stop()


main()
