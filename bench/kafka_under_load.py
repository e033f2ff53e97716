"""Does the consumer keep up while the server runs worst-case queries? `earshot run` consumes a
backlog from tansu with its HTTP API on; once with nothing else, once while two clients send a
CPU-bound cross join over and over to the same process. Prints the consumption time of each.

    python3 bench/kafka_under_load.py [LISTENERS]      (default 10000; needs tansu on PATH)
"""
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

BIN = os.path.abspath("target/debug/earshot")
# CPU-bound whatever the tables hold (they grow during the run): 10^10 pairs, stopped by the limit.
WORST = ("SELECT max(a.value * b.value) FROM generate_series(1, 100000) a, "
         "generate_series(1, 100000) b")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def hammer(base, stop, answers):
    while not stop.is_set():
        req = urllib.request.Request(base + "/v1/query", data=WORST.encode(), method="POST")
        try:
            urllib.request.urlopen(req, timeout=60).read()
            answers.append(200)
        except urllib.error.HTTPError as e:
            answers.append(e.code)
        except OSError:
            time.sleep(0.1)


def consume(broker, group, data, load):
    http = free_port()
    cmd = [BIN, "run", "--kafka", broker, "--topic", "events", "--group", group, "--data", data,
           "--http", f"127.0.0.1:{http}", "--exit-when-idle", "3s", "--query-timeout", "10s"]
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stop, answers, threads = threading.Event(), [], []
    if load:
        threads = [threading.Thread(target=hammer, args=(f"http://127.0.0.1:{http}", stop, answers))
                   for _ in range(2)]
        for t in threads:
            t.start()
    out = p.communicate()[0]
    wall = time.perf_counter() - start
    stop.set()
    for t in threads:
        t.join()
    m = re.search(r"ingested ([\d,]+) (?:lines|messages).* in ([\d.]+) s", out)
    return wall, (m.group(0) if m else out.strip().splitlines()[:2]), answers


def main():
    listeners = sys.argv[1] if len(sys.argv) > 1 else "10000"
    os.environ["EARSHOT_PSEUDONYM_KEY"] = "bench-secret"
    tmp = tempfile.mkdtemp()
    port = free_port()
    broker = f"127.0.0.1:{port}"
    tansu = subprocess.Popen(["tansu", "broker", "--listener-url", f"tcp://{broker}",
                              "--advertised-listener-url", f"tcp://{broker}",
                              "--storage-engine", "memory://tansu/"], cwd=tmp,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        subprocess.run(["tansu", "topic", "create", "--broker", f"tcp://{broker}", "--partitions",
                        "4", "events"], check=True, stdout=subprocess.DEVNULL)
        events = os.path.join(tmp, "events.ndjson")
        subprocess.run([BIN, "simulate", "--listeners", listeners, "--output", events], check=True,
                       stderr=subprocess.DEVNULL)
        subprocess.run([BIN, "produce", "--kafka", broker, "--topic", "events", "--input", events],
                       check=True, stdout=subprocess.DEVNULL)
        lines = sum(1 for _ in open(events))
        print(f"{lines:,} messages, 4 partitions, {listeners} listeners")
        for label, load in [("alone", False), ("with 2 worst-case query loops", True),
                            ("alone, again", False)]:
            wall, said, answers = consume(broker, f"g-{label}", os.path.join(tmp, f"d-{label}"), load)
            extra = f"; queries answered: {len(answers)} ({sorted(set(answers))})" if load else ""
            print(f"{label:32} wall {wall:6.2f} s (incl. 3 s idle wait) | {said}{extra}")
    finally:
        tansu.kill()


main()
