"""Freshness of what dashboards read: produce → visible in GET /v1/streams/{id}, measured by an
independent client, with `earshot run` consuming a topic on tansu.

    python3 bench/freshness.py [LISTENERS ...]      (default: 20000 300000; 60 s heartbeats)

For each audience size: a simulated backlog is produced to partitions 0-3 of a 5-partition topic
(by session, with confluent-kafka). Half of it is consumed first; then, while the other half is
produced and consumed ("catch-up"), and again once everything is consumed ("idle"), a `display`
sample with a new value goes to partition 4 every second, and this client times how long until
`peak_displayed` shows it. The cost of each publish comes from earshot's own debug log. Prints
p50/p99 of both, and the process's peak RSS. Needs tansu on PATH and confluent-kafka (scripts/setup).
"""
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from confluent_kafka import Consumer, Producer, TopicPartition

# EARSHOT_BIN: a copy of the binary, so that a rebuild during a long run does not change it.
BIN = os.path.abspath(os.environ.get("EARSHOT_BIN", "target/debug/earshot"))
STREAM = "town-hall-main"
SAMPLES = 40


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, -(-p * len(xs) // 100) - 1))] if xs else float("nan")


def produce(broker, lines):
    p = Producer({"bootstrap.servers": broker, "linger.ms": 20, "queue.buffering.max.messages": 1000000})
    for line in lines:
        m = re.search(rb'"session_id":"([^"]*)"', line)
        part = (hash(m.group(1)) % 4) if m else 0
        while True:
            try:
                p.produce("events", line, partition=part)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    p.flush(120)


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def sample(broker, base, ts0, n0, latencies, stop=None):
    p = Producer({"bootstrap.servers": broker, "linger.ms": 0})
    for i in range(SAMPLES):
        if stop is not None and stop.is_set() and i > 5:
            break
        value = n0 + i
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts0 / 1000 + i)) + ".000Z"
        msg = json.dumps({"v": 1, "event_id": f"fresh-{value}", "type": "display", "ts": ts,
                          "stream_id": STREAM, "displayed": value})
        p.produce("events", msg.encode(), partition=4)
        p.flush(10)
        sent = time.perf_counter()
        while True:
            try:
                shown = get(f"{base}/v1/streams/{STREAM}").get("peak_displayed") or 0
            except OSError:
                shown = 0
            if shown >= value:
                break
            if time.perf_counter() - sent > 30:
                shown = None
                break
            time.sleep(0.005)
        if shown is not None and i >= 2:  # the partition's first samples wait for the time gate
            latencies.append(time.perf_counter() - sent)
        time.sleep(max(0.0, 1.0 - (time.perf_counter() - sent)))


def publish_costs(log, since):
    """(figures ms, total ms) of each publish logged after byte offset `since`."""
    out = []
    with open(log, "rb") as f:
        f.seek(since)
        for line in f:
            m = re.search(rb"figures_ms=([0-9.]+) total_ms=([0-9.]+)", line)
            if m:
                out.append((float(m.group(1)), float(m.group(2))))
    return out


def on_topic(broker):
    """Messages on the topic: the sum of its partitions' high watermarks."""
    c = Consumer({"bootstrap.servers": broker, "group.id": "freshness-watermarks"})
    try:
        meta = c.list_topics("events", timeout=10).topics["events"]
        return sum(c.get_watermark_offsets(TopicPartition("events", p), timeout=10)[1]
                   for p in meta.partitions)
    finally:
        c.close()


def consumed(data):
    """Messages the last checkpoint in `data` counts (0 before the first)."""
    try:
        with open(os.path.join(data, "current", "manifest.json")) as f:
            return json.load(f).get("messages", 0)
    except (OSError, ValueError):
        return 0


def run(listeners, work):
    port = free_port()
    broker = f"127.0.0.1:{port}"
    tansu = subprocess.Popen(["tansu", "broker", "--listener-url", f"tcp://{broker}",
                              "--advertised-listener-url", f"tcp://{broker}",
                              "--storage-engine", "memory://tansu/"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        subprocess.run(["tansu", "topic", "create", "--broker", f"tcp://{broker}", "--partitions", "5",
                        "events"], check=True, stdout=subprocess.DEVNULL)
        events = os.path.join(work, f"events-{listeners}.ndjson")
        if not os.path.exists(events):
            subprocess.run([BIN, "simulate", "--listeners", str(listeners), "--heartbeat", "60s",
                            "--output", events], check=True, stderr=subprocess.DEVNULL)
        lines = open(events, "rb").read().splitlines()
        last_ts = max(int(time.mktime(time.strptime(m.group(1).decode(), "%Y-%m-%dT%H:%M:%S")) - time.timezone)
                      for m in (re.search(rb'"ts":"([^.]*)', l) for l in lines[-2000:]) if m) * 1000
        half = len(lines) // 2
        produce(broker, lines[:half])
        http = free_port()
        data = os.path.join(work, f"data-{listeners}")
        shutil.rmtree(data, ignore_errors=True)
        log = os.path.join(work, f"run-{listeners}.log")
        env = dict(os.environ, EARSHOT_LOG="earshot_ingest=debug,warn", EARSHOT_PSEUDONYM_KEY="bench")
        proc = subprocess.Popen([BIN, "run", "--kafka", broker, "--topic", "events", "--data", data,
                                 "--http", f"127.0.0.1:{http}"],
                                stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env=env)
        base = f"http://127.0.0.1:{http}"

        def settled():
            # Caught up: the last checkpoint counts every message on the topic, and `sessions`
            # has not changed for 3 s. (At 1M listeners catch-up publishes take seconds and can
            # come 10 s apart, so "unchanged for a while" alone started the idle phase in the
            # middle of catch-up.)
            last, same = None, 0
            while True:
                time.sleep(1)
                try:
                    now = get(f"{base}/v1/streams/{STREAM}").get("sessions")
                except OSError:
                    now = None
                same = same + 1 if (now is not None and now == last) else 0
                last = now
                if same >= 3 and consumed(data) >= on_topic(broker):
                    return

        settled()
        results = {}
        # Catch-up: the second half arrives while samples are timed.
        mark = os.path.getsize(log)
        lat = []
        stop = threading.Event()
        t = threading.Thread(target=sample, args=(broker, base, last_ts + 1000, 10_000_000, lat, stop))
        t.start()
        produce(broker, lines[half:])
        stop.set()
        t.join()
        results["catch-up"] = (lat, publish_costs(log, mark))
        settled()
        mark = os.path.getsize(log)
        lat = []
        sample(broker, base, last_ts + 120_000, 20_000_000, lat)
        results["idle"] = (lat, publish_costs(log, mark))
        status = open(f"/proc/{proc.pid}/status").read()
        rss = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
        proc.terminate()
        proc.wait(60)
        return len(lines), results, rss
    finally:
        tansu.terminate()
        tansu.wait()


def main():
    sizes = [int(a) for a in sys.argv[1:]] or [20000, 300000]
    subprocess.run(["cargo", "build", "-q", "--workspace", "--bins"], check=True)
    work = os.path.abspath("bench/out/freshness")
    os.makedirs(work, exist_ok=True)
    print(f"{'listeners':>10} {'messages':>10} {'phase':>9} {'samples':>8} {'fresh p50':>10} "
          f"{'fresh p99':>10} {'publishes':>10} {'publish p50':>12} {'publish p99':>12} "
          f"{'figures p50':>12} {'peak RSS':>9}")
    for n in sizes:
        messages, results, rss = run(n, work)
        for phase, (lat, costs) in results.items():
            total = [c[1] for c in costs]
            figures = [c[0] for c in costs]
            print(f"{n:>10} {messages:>10} {phase:>9} {len(lat):>8} {pct(lat, 50)*1e3:>8.0f}ms "
                  f"{pct(lat, 99)*1e3:>8.0f}ms {len(costs):>10} {pct(total, 50):>10.1f}ms "
                  f"{pct(total, 99):>10.1f}ms {pct(figures, 50):>10.1f}ms {rss:>7.0f}MB", flush=True)


if __name__ == "__main__":
    main()
