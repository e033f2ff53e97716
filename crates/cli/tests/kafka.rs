//! `earshot ingest --kafka` against a real Kafka-protocol broker (tansu, started here on a port of
//! 127.0.0.1 the test picks), with an independent client (`tests/kafka_tool.py`, confluent-kafka)
//! reading partitions back, producing poison, joining the group and resetting its offsets.
//!
//! The reference for "the same tables" is a file ingest of each partition's messages in offset
//! order (partition N as the N-th input): the contract says results depend only on the events and
//! their order within each partition.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod kafka_util;
use kafka_util::*;

#[test]
fn same_tables_from_kafka_as_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path(), false);
    b.create_topic(TOPIC, 4);
    let input = simulate(dir.path(), 1500, 7);
    produce(&b, &input);
    let reference = file_reference(&b, dir.path(), 4);
    let data = dir.path().join("kafka-data");
    let out = ok(kafka_ingest(&b, &data, &["--exit-when-idle", "2s"])
        .output()
        .unwrap());
    assert!(out.contains("duplicates ignored"), "{out}");
    assert_same_tables(&reference, &data, false);
    // The source of each row names its partition and offset.
    let one = ok(earshot()
        .args(["sql", "--format", "csv", "--data"])
        .arg(&data)
        .arg("SELECT source FROM events LIMIT 1")
        .output()
        .unwrap());
    assert!(one.contains("kafka:events/"), "{one}");
    // Every message was read, and the figures add up to what was produced.
    let m = manifest(&data);
    let lines = std::fs::read_to_string(&input).unwrap().lines().count() as u64;
    assert_eq!(m["messages"].as_u64(), Some(lines));
    let f = manifest(&reference);
    for k in ["events", "counted", "late", "duplicates", "rejected"] {
        assert_eq!(m[k], f[k], "{k}");
    }
}

#[test]
fn kill_9_at_random_points_then_restart_gives_identical_tables() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path(), false);
    b.create_topic(TOPIC, 3);
    let input = simulate(dir.path(), 6000, 11);
    produce(&b, &input);
    // An uninterrupted Kafka ingest: the expected tables, sources and all.
    let clean = dir.path().join("clean");
    ok(
        kafka_ingest(&b, &clean, &["--exit-when-idle", "2s", "--group", "clean"])
            .output()
            .unwrap(),
    );
    // The same, killed with SIGKILL at 10 pseudo-random instants: some before the first checkpoint,
    // most once it is consuming, checkpointing often so that kills land before, during and after
    // checkpoints. Default settings otherwise: each restart must consume again within 15 s, without
    // waiting for the group to notice the dead process.
    // The engine's state is saved every 3,000 events, so most restarts load a state and replay
    // only the events after it, and some kills land while a state is being written.
    let data = dir.path().join("killed");
    let args = [
        "--checkpoint-interval",
        "60ms",
        "--state-every",
        "3000",
        "--group",
        "killed",
        "--exit-when-idle",
        "3s",
    ];
    let messages = |d: &Path| -> u64 {
        std::fs::read(d.join("current/manifest.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|m| m["messages"].as_u64())
            .unwrap_or(0)
    };
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut kills = 0;
    let mut progressed = Vec::new();
    for run in 0..10 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let before = messages(&data);
        let started = Instant::now();
        let log = std::fs::File::create(dir.path().join(format!("run-{run}.log"))).unwrap();
        let mut child = kafka_ingest(&b, &data, &args)
            .env("EARSHOT_LOG", "earshot_ingest=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        if run % 4 == 1 {
            // Before it has read anything, or right at its first checkpoint.
            std::thread::sleep(Duration::from_millis(rng % 700));
        } else {
            let deadline = started + Duration::from_secs(30);
            while messages(&data) == before
                && child.try_wait().unwrap().is_none()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            let waited = started.elapsed();
            if child.try_wait().unwrap().is_none() {
                assert!(
                    waited < Duration::from_secs(15),
                    "restart {run} took {waited:?} to consume again"
                );
            }
            std::thread::sleep(Duration::from_millis(rng % 400));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        progressed.push(messages(&data));
    }
    assert!(kills >= 6, "only {kills} runs were killed mid-ingest");
    let resumes: Vec<(u64, u64)> = (0..10)
        .flat_map(|run| {
            let log = std::fs::read_to_string(dir.path().join(format!("run-{run}.log"))).unwrap();
            log.lines()
                .filter(|l| l.contains("resumed from checkpoint"))
                .map(|l| (field(l, "from_state"), field(l, "replayed")))
                .collect::<Vec<_>>()
        })
        .collect();
    println!("restarts (events from the saved state, replayed): {resumes:?}");
    assert!(
        resumes.iter().filter(|(state, _)| *state > 0).count() >= 3,
        "restarts that loaded a saved state: {resumes:?}"
    );
    // Then let it finish.
    ok(kafka_ingest(&b, &data, &args).output().unwrap());
    assert_same_tables(&clean, &data, true);
    let (m, c) = (manifest(&data), manifest(&clean));
    for k in [
        "messages",
        "events",
        "counted",
        "late",
        "duplicates",
        "rejected",
    ] {
        assert_eq!(m[k], c[k], "{k} after kills at {progressed:?}");
    }
    assert_eq!(m["kafka"]["next_offsets"], c["kafka"]["next_offsets"]);
}

#[test]
fn broker_restart_mid_stream_gives_identical_tables() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Broker::start(dir.path(), true);
    b.create_topic(TOPIC, 2);
    let input = simulate(dir.path(), 3000, 23);
    let text = std::fs::read_to_string(&input).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    let half1 = dir.path().join("half1.ndjson");
    let half2 = dir.path().join("half2.ndjson");
    std::fs::write(&half1, first.join("\n") + "\n").unwrap();
    std::fs::write(&half2, second.join("\n") + "\n").unwrap();
    produce(&b, &half1);
    let data = dir.path().join("data");
    let child = kafka_ingest(
        &b,
        &data,
        &["--checkpoint-interval", "200ms", "--exit-when-idle", "15s"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Wait until the first half is in, then take the broker down under the running consumer.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if data.join("current/manifest.json").exists()
            && manifest(&data)["messages"].as_u64() == Some(first.len() as u64)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the first half was not consumed");
        std::thread::sleep(Duration::from_millis(100));
    }
    b.stop();
    std::thread::sleep(Duration::from_secs(2));
    b.restart();
    produce(&b, &half2);
    let out = child.wait_with_output().unwrap();
    let stdout = ok(out);
    assert!(stdout.contains("ingested"), "{stdout}");
    let reference = file_reference_of(&b, dir.path(), 2, Some(lines.len()));
    assert_same_tables(&reference, &data, false);
    assert_eq!(
        manifest(&data)["messages"].as_u64(),
        Some(lines.len() as u64)
    );
}

#[test]
fn a_second_consumer_joining_the_group_changes_no_figure() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path(), false);
    b.create_topic(TOPIC, 4);
    let data = dir.path().join("data");
    // earshot consumes while the simulator is still sending, slowly enough to be mid-stream when
    // the intruder joins the same group, takes partitions, commits offsets of its own, and leaves.
    let consumer = kafka_ingest(
        &b,
        &data,
        &[
            "--assign",
            "group",
            "--group",
            "shared",
            "--checkpoint-interval",
            "200ms",
            "--exit-when-idle",
            "8s",
        ],
    )
    .env("EARSHOT_LOG", "earshot_ingest=info")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut producer = earshot()
        .args([
            "simulate",
            "--listeners",
            "3000",
            "--seed",
            "31",
            "--duplicates",
            "0.03",
        ])
        .args([
            "--malformed",
            "0.005",
            "--kafka",
            &b.addr(),
            "--topic",
            TOPIC,
            "--rate",
            "8000",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let intruder: serde_json::Value =
        serde_json::from_str(b.tool(&["intrude", TOPIC, "shared", "4"]).trim()).unwrap();
    assert!(producer.wait().unwrap().success());
    let out = consumer.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    ok(out);
    // The intruder really took partitions from earshot for a while.
    let took: usize = intruder["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_array().unwrap().len())
        .sum();
    assert!(took > 0, "the intruder got no partition: {intruder}");
    assert!(log.contains("partitions revoked"), "{log}");
    let reference = file_reference(&b, dir.path(), 4);
    assert_same_tables(&reference, &data, false);
}

#[test]
fn poison_messages_advance_the_offset_are_counted_and_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path(), false);
    b.create_topic(TOPIC, 2);
    b.create_topic("dead", 1);
    let input = simulate(dir.path(), 300, 5);
    produce(&b, &input);
    let sent: serde_json::Value = serde_json::from_str(b.tool(&["poison", TOPIC]).trim()).unwrap();
    let sent = sent.as_array().unwrap();
    produce(&b, &input); // good messages after the poison: nothing stalls behind it
    let data = dir.path().join("data");
    ok(kafka_ingest(
        &b,
        &data,
        &["--exit-when-idle", "2s", "--dead-letter-topic", "dead"],
    )
    .output()
    .unwrap());
    // Each poison message is a rejects row naming its partition and offset, with a reason.
    for s in sent {
        let source = format!("kafka:{TOPIC}/{}@{}", s["partition"], s["offset"]);
        let row = ok(earshot()
            .args(["sql", "--format", "csv", "--data"])
            .arg(&data)
            .arg(format!(
                "SELECT reason_code FROM rejects WHERE source = '{source}'"
            ))
            .output()
            .unwrap());
        let code = row
            .lines()
            .nth(1)
            .unwrap_or_else(|| panic!("{source} ({}) not in rejects", s["kind"]));
        let expect = match s["kind"].as_str().unwrap() {
            "empty" | "null" => "empty",
            "not_utf8" => "not_utf8",
            "not_json" => "not_json",
            "too_large" => "too_large",
            "raw_id_wrong_type" => "wrong_type",
            "raw_id_truncated" => "truncated_json",
            "raw_id_stray" => "ts_uncorroborated",
            _ => "",
        };
        if !expect.is_empty() {
            assert_eq!(code, expect, "{}", s["kind"]);
        }
    }
    // Offsets advanced past everything; the second copy of the input was all duplicates.
    let m = manifest(&data);
    let lines = std::fs::read_to_string(&input).unwrap().lines().count() as u64;
    assert_eq!(m["messages"].as_u64(), Some(2 * lines + sent.len() as u64));
    let high: serde_json::Value =
        serde_json::from_str(&b.tool(&["dump", TOPIC, dir.path().to_str().unwrap()])).unwrap();
    for (p, n) in high.as_object().unwrap() {
        assert_eq!(
            m["kafka"]["next_offsets"][p].as_u64(),
            n.as_u64(),
            "partition {p}"
        );
    }
    // The dead-letter topic holds every reject, with headers saying where from and why.
    let dead = b.tool(&["headers", "dead"]);
    let dead: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len() as u64, m["rejected"].as_u64().unwrap());
    for s in sent {
        let source = format!("kafka:{TOPIC}/{}@{}", s["partition"], s["offset"]);
        let d = dead
            .iter()
            .find(|d| d["headers"]["earshot.source"] == source.as_str())
            .unwrap_or_else(|| panic!("{source} not dead-lettered"));
        assert!(d["headers"]["earshot.reason_code"].is_string());
    }
    // No raw listener id in the dead letters, nor anywhere under the data directory.
    let ids = [
        "alice.secret@example.com",
        "bob-7731-private",
        "carol+555-0100",
    ];
    for d in &dead {
        let value = d["value"].as_str().unwrap_or("");
        for id in ids {
            assert!(!value.contains(id), "dead letter holds {id}: {value}");
        }
    }
    let wrong_type = dead
        .iter()
        .find(|d| {
            d["value"]
                .as_str()
                .unwrap_or("")
                .contains(r#""event_id":"p2""#)
        })
        .expect("the wrong-typed join is dead-lettered");
    assert!(
        wrong_type["value"]
            .as_str()
            .unwrap()
            .contains(r#""session_id":7"#),
        "the rest of the payload stays: {wrong_type}"
    );
    let found: serde_json::Value = serde_json::from_str(&ok(Command::new("python3")
        .arg(repo().join("tests/find_raw_ids.py"))
        .arg("--ids")
        .arg(ids.join(","))
        .arg(&data)
        .output()
        .unwrap()))
    .unwrap();
    assert_eq!(found["found"], serde_json::json!([]), "{found}");
}

#[test]
fn redelivery_of_committed_messages_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path(), false);
    b.create_topic(TOPIC, 3);
    let input = simulate(dir.path(), 1000, 41);
    produce(&b, &input);
    let data = dir.path().join("data");
    let args = ["--group", "g", "--exit-when-idle", "2s"];
    ok(kafka_ingest(&b, &data, &args).output().unwrap());
    let before = tables(&data, true);
    let m1 = manifest(&data);
    // The group's offsets were committed after the checkpoint...
    let committed: serde_json::Value =
        serde_json::from_str(b.tool(&["committed", TOPIC, "g"]).trim()).unwrap();
    assert_eq!(
        committed
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_i64().unwrap())
            .sum::<i64>() as u64,
        m1["messages"].as_u64().unwrap()
    );
    // ...and are now reset to the beginning: the broker will redeliver everything.
    b.tool(&["reset", TOPIC, "g"]);
    ok(kafka_ingest(&b, &data, &args).output().unwrap());
    assert_eq!(tables(&data, true), before);
    let m2 = manifest(&data);
    for k in ["messages", "events", "duplicates", "rejected"] {
        assert_eq!(m1[k], m2[k], "{k}");
    }
    // A producer that sends everything again (a retry storm) only adds duplicates.
    produce(&b, &input);
    ok(kafka_ingest(&b, &data, &args).output().unwrap());
    let m3 = manifest(&data);
    assert_eq!(m3["events"], m1["events"]);
    let valid = m1["events"].as_u64().unwrap() + m1["duplicates"].as_u64().unwrap();
    assert_eq!(
        m3["duplicates"].as_u64().unwrap(),
        m1["duplicates"].as_u64().unwrap() + valid
    );
    let after = tables(&data, true);
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        if name != "rejects" {
            assert_eq!(a, b, "{name}");
        }
    }
    // A file ingest does not overwrite a consumer's checkpoint.
    let out = earshot()
        .arg("ingest")
        .arg("--input")
        .arg(&input)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("consumer's checkpoint"),
        "{err}"
    );
    assert_eq!(manifest(&data)["messages"], m3["messages"]);
}

#[test]
fn kafka_problems_are_said_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Nothing listens on this port.
    let nobody = format!("127.0.0.1:{}", free_port());
    let out = earshot()
        .args([
            "ingest",
            "--kafka",
            &nobody,
            "--topic",
            TOPIC,
            "--connect-timeout",
            "2s",
            "--data",
        ])
        .arg(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot reach the Kafka cluster") && err.contains("hint:"),
        "{err}"
    );

    let b = Broker::start(dir.path(), false);
    let out = kafka_ingest(&b, &data, &["--connect-timeout", "5s"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("does not exist"), "{err}");

    b.create_topic(TOPIC, 1);
    let out = kafka_ingest(&b, &data, &["-X", "no.such.setting=1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid Kafka setting") && err.contains("no.such.setting"),
        "{err}"
    );
    let out = kafka_ingest(&b, &data, &["-X", "enable.auto.commit=true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("set by earshot itself"), "{err}");

    let blocked = dir.path().join("file");
    std::fs::write(&blocked, "not a directory").unwrap();
    let out = kafka_ingest(&b, &blocked.join("data"), &["--exit-when-idle", "1s"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot create") && err.contains("hint:"),
        "{err}"
    );

    // A data directory of a file ingest is not continued from Kafka.
    let input = simulate(dir.path(), 50, 1);
    let file_data = dir.path().join("file-data");
    ok(earshot()
        .arg("ingest")
        .arg("--input")
        .arg(&input)
        .arg("--data")
        .arg(&file_data)
        .output()
        .unwrap());
    let out = kafka_ingest(&b, &file_data, &["--exit-when-idle", "1s"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds tables from a file ingest"), "{err}");
}

#[test]
fn run_serves_the_tables_while_it_consumes_and_stops_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path(), false);
    b.create_topic(TOPIC, 2);
    let input = simulate(dir.path(), 800, 3);
    let text = std::fs::read_to_string(&input).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    let half = |name: &str, part: &[&str]| {
        let p = dir.path().join(name);
        std::fs::write(&p, part.join("\n") + "\n").unwrap();
        p
    };
    let (half1, half2) = (half("h1.ndjson", first), half("h2.ndjson", second));
    let data = dir.path().join("data");
    let (mut child, mut out, port) = spawn_run(&b, &data, &["--checkpoint-interval", "200ms"], &[]);
    // Served before any message: empty tables, not an error.
    assert_eq!(psql(port, "SELECT count(*) FROM events"), "0");
    let wait_for = |want: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got: usize = psql(port, "SELECT count(*) FROM events").parse().unwrap();
            let rejected: usize = psql(port, "SELECT count(*) FROM rejects").parse().unwrap();
            let m = manifest(&data);
            // The server follows new generations within half a second.
            if m["messages"].as_u64() == Some(want as u64)
                && got as u64 == m["events"].as_u64().unwrap()
                && rejected as u64 == m["rejected"].as_u64().unwrap()
            {
                return got;
            }
            assert!(Instant::now() < deadline, "stuck at {got} events");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    produce(&b, &half1);
    let some = wait_for(first.len());
    produce(&b, &half2);
    let all = wait_for(lines.len());
    assert!(all > some && some > 0);
    // SIGTERM: a last checkpoint, the summary, and a clean exit.
    ok(Command::new("kill")
        .arg(child.id().to_string())
        .output()
        .unwrap());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(status.success(), "{status}: {rest}");
    assert!(rest.contains("ingested"), "{rest}");
    // The tables equal a file ingest of the same partitions.
    let reference = file_reference(&b, dir.path(), 2);
    let figures = |d: &Path| {
        tables(d, false)
            .into_iter()
            .filter(|(n, _)| n == "sessions" || n == "events")
            .collect::<Vec<_>>()
    };
    assert_eq!(figures(&reference), figures(&data));
}

#[test]
fn figures_move_on_between_checkpoints_and_a_restart_resumes_from_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path(), false);
    b.create_topic(TOPIC, 2);
    let input = simulate(dir.path(), 600, 5);
    let lines = std::fs::read_to_string(&input).unwrap().lines().count();
    produce(&b, &input);
    let reference = file_reference_of(&b, dir.path(), 2, Some(lines));
    let want: Vec<String> = tables(&reference, false)
        .into_iter()
        .find(|(n, _)| n == "streams")
        .unwrap()
        .1;
    // Only the first (empty) checkpoint in the hour: everything after it is figures publishes.
    let data = dir.path().join("data");
    let args = ["--checkpoint-interval", "1h", "--freshness", "300ms"];
    let (mut child, _out, port) = spawn_run(&b, &data, &args, &[]);
    let sessions = |t: &[String]| -> String { t.join("\n") };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // The figures reach what a file ingest of the same messages gives (the buckets are not
        // all final yet, so compare the stream's sessions and distinct listeners).
        let got = psql(
            port,
            "SELECT sessions || '/' || listeners_joined || '/' || listeners_connected FROM streams",
        );
        let want_row = psql_file(&reference);
        if got == want_row {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "figures stuck at {got}, want {want_row}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Still the first checkpoint: no message is in its manifest, `events` or `sessions` yet.
    let m = manifest(&data);
    assert_eq!(m["messages"].as_u64(), Some(0), "{m}");
    assert_eq!(psql(port, "SELECT count(*) FROM events"), "0");
    assert_eq!(psql(port, "SELECT count(*) FROM sessions"), "0");
    // Killed between checkpoints, then restarted: it resumes from the checkpoint's offsets and
    // ends with exactly the file ingest's tables.
    child.kill().unwrap();
    child.wait().unwrap();
    ok(kafka_ingest(&b, &data, &["--exit-when-idle", "3s"])
        .output()
        .unwrap());
    assert_same_tables(&reference, &data, false);
    let streams = tables(&data, false)
        .into_iter()
        .find(|(n, _)| n == "streams");
    assert_eq!(sessions(&streams.unwrap().1), sessions(&want));
}

#[test]
fn a_restart_loads_the_saved_state_and_replays_every_event_when_it_is_damaged_or_gone() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path(), false);
    b.create_topic(TOPIC, 2);
    let input = simulate(dir.path(), 900, 13);
    let text = std::fs::read_to_string(&input).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let data = dir.path().join("data");
    // Each run consumes a third of the topic and ends with a checkpoint that saves the state.
    // Before the second run the state is damaged, before the third it is gone, before the
    // fourth it is sound.
    let resume = |part: &[&str], n: usize| -> String {
        if !part.is_empty() {
            let p = dir.path().join(format!("part{n}.ndjson"));
            std::fs::write(&p, part.join("\n") + "\n").unwrap();
            produce(&b, &p);
        }
        let out = kafka_ingest(&b, &data, &["--exit-when-idle", "2s"])
            .env("EARSHOT_LOG", "earshot_ingest=info")
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{log}");
        log
    };
    let state = || {
        let m = manifest(&data);
        let file = m["engine_state"]["file"].as_str().unwrap().to_owned();
        (
            data.join("current").join(file),
            m["events"].as_u64().unwrap(),
        )
    };
    let resumed = |log: &str| -> (u64, u64) {
        let line = log
            .lines()
            .find(|l| l.contains("resumed from checkpoint"))
            .unwrap_or_else(|| panic!("no resume in\n{log}"));
        (field(line, "from_state"), field(line, "replayed"))
    };
    let third = lines.len() / 3;
    resume(&lines[..third], 1);
    let (path, events) = state();
    assert!(events > 0);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    // A new file, not a write through the link the older generation shares.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, bytes).unwrap();
    let log = resume(&lines[third..2 * third], 2);
    assert!(log.contains("checksum"), "{log}");
    assert_eq!(resumed(&log), (0, events), "{log}");
    let (path, events) = state();
    std::fs::remove_file(&path).unwrap();
    let log = resume(&lines[2 * third..], 3);
    assert!(log.contains("replaying every stored event"), "{log}");
    assert_eq!(resumed(&log), (0, events), "{log}");
    let (_, events) = state();
    let log = resume(&[], 4);
    assert!(!log.contains("replaying every stored event"), "{log}");
    assert_eq!(resumed(&log), (events, 0), "{log}");
    let reference = file_reference_of(&b, dir.path(), 2, Some(lines.len()));
    assert_same_tables(&reference, &data, false);
}

/// The stream's sessions and distinct listeners in a data directory, as the test above asks them.
fn psql_file(data: &Path) -> String {
    ok(earshot()
        .args(["sql", "--format", "csv", "--data"])
        .arg(data)
        .arg("SELECT sessions || '/' || listeners_joined || '/' || listeners_connected AS x FROM streams")
        .output()
        .unwrap())
    .lines()
    .nth(1)
    .unwrap_or_default()
    .to_owned()
}
