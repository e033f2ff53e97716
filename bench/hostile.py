"""The measuring half of bench/hostile: see that script. Prints a Markdown table."""
import argparse
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
]


def kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


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
        time.sleep(0.5)
        self.idle = kib(self.p.pid, "VmRSS")

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
    print("| query | status | answered in | peak RSS − idle | CPU in the next second |")
    print("|---|---|---|---|---|")
    for name, sql, kind in QUERIES:
        s = Server(args)
        t = time.perf_counter()
        status, _ = s.post(sql, kind)
        took = time.perf_counter() - t
        c0 = cpu(s.p.pid)
        time.sleep(1)
        busy = cpu(s.p.pid) - c0
        peak = kib(s.p.pid, "VmHWM")
        alive = s.get("/healthz") >= 0
        print(f"| {name} | {status}{'' if alive else ' (server gone)'} | {took:.2f} s | "
              f"{(peak - s.idle) / 1024:.0f} MiB (idle {s.idle / 1024:.0f} MiB) | {busy:.2f} s |")
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
