"""An independent Kafka client for earshot's tests and benchmarks (confluent-kafka, librdkafka 2.x).

    kafka_tool.py dump BROKER TOPIC OUTDIR [N]    every partition's messages, in offset order, one
                                                  file per partition (p0.ndjson, ...); prints counts;
                                                  with N, keeps reading (up to 120 s) until N in all
    kafka_tool.py poison BROKER TOPIC             produces one message of each poison kind; prints
                                                  a JSON list of {kind, partition, offset}
    kafka_tool.py reset BROKER TOPIC GROUP        commits offset 0 for every partition of TOPIC in GROUP
    kafka_tool.py committed BROKER TOPIC GROUP    prints the group's committed offsets as JSON
    kafka_tool.py intrude BROKER TOPIC GROUP SECS joins GROUP, consumes and commits for SECS seconds,
                                                  leaves; prints what it was assigned
    kafka_tool.py headers BROKER TOPIC            every message of TOPIC as JSON lines with headers
    kafka_tool.py bare BROKER TOPIC GROUP N       consumes N messages as fast as possible (no
                                                  processing); prints {"messages", "seconds"}
"""

import json
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition


def partitions(broker, topic):
    c = Consumer({"bootstrap.servers": broker, "group.id": "kafka-tool-meta"})
    md = c.list_topics(topic, timeout=10)
    c.close()
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        raise SystemExit(f"topic {topic} not found")
    return sorted(t.partitions)


def read_all(broker, topic, quiet=2.0, first=30.0, expected=None):
    """Every partition's messages in offset order, {partition: [message]}: read until nothing more
    arrives for `quiet` seconds. (tansu 0.6 reports a high watermark below the real end of a
    partition, so the watermark cannot say when the end is reached.) The first message may take up
    to `first` seconds: a loaded machine or a broker just restarted can be slower than `quiet`.
    With `expected`, a quiet spell before that many messages have arrived is waited out (a broker
    that restarted on SQLite storage can pause longer than `quiet` mid-partition), up to 120 s."""
    c = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": "kafka-tool-reader",
            "enable.auto.commit": False,
        }
    )
    out = {p: [] for p in partitions(broker, topic)}
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in out])
    deadline = time.time() + 120
    while True:
        m = c.poll(quiet if any(out.values()) else first)
        if m is None:
            total = sum(len(v) for v in out.values())
            if expected is not None and total < expected and time.time() < deadline:
                continue
            break
        if m.error():
            raise SystemExit(str(m.error()))
        got = out[m.partition()]
        if got and m.offset() <= got[-1].offset():
            raise SystemExit(f"partition {m.partition()}: offset {m.offset()} after {got[-1].offset()}")
        got.append(m)
    c.close()
    return out


def dump(broker, topic, outdir, expected=None):
    counts = {}
    expected = int(expected) if expected is not None else None
    for p, msgs in read_all(broker, topic, expected=expected).items():
        with open(f"{outdir}/p{p}.ndjson", "wb") as f:
            for m in msgs:
                v = m.value() or b""
                if b"\n" in v:
                    raise SystemExit(f"partition {p} offset {m.offset()} holds a newline")
                f.write(v + b"\n")
        counts[p] = len(msgs)
    print(json.dumps(counts))


def poison(broker, topic):
    kinds = [
        ("empty", b""),
        ("null", None),
        ("not_utf8", b'{"event_id":"\xff\xfe"}'),
        ("not_json", b"this is not json"),
        ("too_large", b'{"pad":"' + b"x" * 70000 + b'"}'),
        ("wrong_type", b'{"event_id":"p1","type":"join","ts":12,"stream_id":"s"}'),
        # Raw listener ids that must not reach the rejects table or the dead-letter topic.
        ("raw_id_wrong_type", b'{"v":1,"event_id":"p2","type":"join","ts":"2024-08-13T00:00:00Z",'
         b'"stream_id":"s","listener_id":"alice.secret@example.com","session_id":7}'),
        ("raw_id_truncated", b'{"v":1,"type":"heartbeat","listener_id":"bob-7731-private","ts":'),
        # A valid event with a wrong clock: rejected once the next message shows the real time.
        ("raw_id_stray", b'{"v":1,"event_id":"p3","type":"join","ts":"2099-01-01T00:00:00Z",'
         b'"stream_id":"town-hall-main","listener_id":"carol+555-0100","session_id":"sx"}'),
    ]
    p = Producer({"bootstrap.servers": broker})
    sent = []

    def done(err, msg, kind):
        if err is not None:
            raise SystemExit(f"delivery failed: {err}")
        sent.append({"kind": kind, "partition": msg.partition(), "offset": msg.offset()})

    for kind, value in kinds:
        p.produce(topic, value=value, key=b"poison", on_delivery=lambda e, m, k=kind: done(e, m, k))
    p.flush(30)
    print(json.dumps(sent))


def reset(broker, topic, group):
    c = Consumer({"bootstrap.servers": broker, "group.id": group, "enable.auto.commit": False})
    tps = [TopicPartition(topic, p, 0) for p in partitions(broker, topic)]
    c.commit(offsets=tps, asynchronous=False)
    c.close()
    print(json.dumps({"reset": len(tps)}))


def committed(broker, topic, group):
    c = Consumer({"bootstrap.servers": broker, "group.id": group, "enable.auto.commit": False})
    tps = c.committed([TopicPartition(topic, p) for p in partitions(broker, topic)], timeout=10)
    c.close()
    print(json.dumps({str(tp.partition): tp.offset for tp in tps}))


def intrude(broker, topic, group, secs):
    assigned = []
    c = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": group,
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 200,
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([topic], on_assign=lambda _c, ps: assigned.append([p.partition for p in ps]))
    end = time.time() + secs
    n = 0
    while time.time() < end:
        m = c.poll(0.2)
        if m is not None and not m.error():
            n += 1
    c.close()
    print(json.dumps({"assignments": assigned, "consumed": n}))


def headers(broker, topic):
    for p, msgs in read_all(broker, topic).items():
        for m in msgs:
            h = {k: (v.decode() if v is not None else None) for k, v in (m.headers() or [])}
            v = m.value()
            print(json.dumps({"partition": p, "offset": m.offset(), "headers": h,
                              "value_len": None if v is None else len(v),
                              "value": None if v is None else v.decode("utf-8", "replace")}))


def bare(broker, topic, group, n):
    c = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([topic])
    got = 0
    start = None
    while got < n:
        ms = c.consume(num_messages=1000, timeout=5)
        if not ms:
            if start is not None:
                raise SystemExit(f"stalled at {got} of {n}")
            continue
        if start is None:
            start = time.time()
        got += sum(1 for m in ms if not m.error())
    secs = time.time() - start
    c.close()
    print(json.dumps({"messages": got, "seconds": secs}))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    try:
        if cmd == "dump":
            dump(*args)
        elif cmd == "poison":
            poison(*args)
        elif cmd == "reset":
            reset(*args)
        elif cmd == "committed":
            committed(*args)
        elif cmd == "intrude":
            intrude(args[0], args[1], args[2], float(args[3]))
        elif cmd == "headers":
            headers(*args)
        elif cmd == "bare":
            bare(args[0], args[1], args[2], int(args[3]))
        else:
            raise SystemExit(__doc__)
    except KafkaException as e:
        raise SystemExit(f"kafka: {e}")


if __name__ == "__main__":
    main()
