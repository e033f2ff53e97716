//! Several earshot workers on one topic (`--assign group`, one shared `--data`), against a real
//! Kafka-protocol broker (tansu): the union they publish must equal one file ingest of the same
//! messages, whatever the group does meanwhile (a worker killed and restarted, another joining),
//! and a worker that lost its partitions must never write over their new owner.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

mod kafka_util;
use kafka_util::*;

/// A worker of group `g` on `data`, checkpointing often, logging its partitions.
fn worker(b: &Broker, data: &Path, extra: &[&str], log: &Path) -> Child {
    worker_with(b, data, "300ms", extra, &[], log)
}

/// The number of each partition directory's current generation.
fn partition_generations(data: &Path, partitions: u32) -> Vec<Option<String>> {
    (0..partitions)
        .map(|p| {
            std::fs::read_link(data.join(format!("partitions/{p}/current")))
                .ok()
                .map(|l| l.display().to_string())
        })
        .collect()
}

#[test]
fn three_workers_one_killed_and_restarted_and_a_fourth_joining_give_one_process_figures() {
    // Should tansu 0.6 still leave a partition unowned (assigned to a member that is gone, so no
    // live worker is ever given it), that case alone, told apart from the workers' logs, runs
    // the scenario once more on a new broker; anything else fails at once, and so does a second
    // unowned partition.
    if let Err(unowned) = three_workers_once() {
        eprintln!("the group left a partition unowned ({unowned}); once more, on a new broker");
        if let Err(again) = three_workers_once() {
            panic!("the group left a partition unowned twice: {again}");
        }
    }
}

/// The scenario; `Err` when messages are missing only because the group never gave a partition
/// to a live worker after its last owner handed it over (or at all).
fn three_workers_once() -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path(), false);
    b.create_topic(TOPIC, 6);
    let input = simulate(dir.path(), 1000, 11);
    let lines = std::fs::read_to_string(&input).unwrap().lines().count();
    let data = dir.path().join("data");
    let logs: Vec<_> = (0..5)
        .map(|i| dir.path().join(format!("worker{i}.log")))
        .collect();
    // tansu 0.6 kept a killed member, and the partitions it held, in the group for a while past
    // its session (a short session with frequent heartbeats shortens that; a short session with
    // the default 3 s heartbeat made the group rebalance every 6 s without end). The survivors
    // wait long enough for the group to give those partitions out.
    let idle = [
        "--exit-when-idle",
        "25s",
        "-X",
        "session.timeout.ms=6000",
        "-X",
        "heartbeat.interval.ms=1000",
    ];
    // The messages arrive over about ten seconds while the group changes under them.
    let producer = produce_at(&b, &input, 5000);
    let mut w: Vec<Option<Child>> = (0..3)
        .map(|i| Some(worker(&b, &data, &idle, &logs[i])))
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    // Worker 1 is killed mid-stream (SIGTERM: it checkpoints and leaves the group), and started
    // again (a new member) a second later. (With SIGKILL, tansu 0.6 kept the dead member's
    // partitions assigned to it for good in about a third of the runs here, so nobody read them:
    // a broker defect this test cannot work around. A SIGKILLed writer's directory is what the
    // `kill_9_…` tests in kafka.rs resume from.)
    let killed = w[1].take().unwrap();
    signal(&killed, "TERM");
    wait_ok(killed, &logs[1]);
    std::thread::sleep(Duration::from_secs(1));
    w[1] = Some(worker(&b, &data, &idle, &logs[3]));
    std::thread::sleep(Duration::from_secs(2));
    w.push(Some(worker(&b, &data, &idle, &logs[4])));
    assert!(producer.wait_with_output().unwrap().status.success());
    // Each running worker's log: worker 1's is its second life's.
    for (child, log) in w.into_iter().zip([&logs[0], &logs[3], &logs[2], &logs[4]]) {
        wait_ok(child.unwrap(), log);
    }
    // Partitions changed hands: the killed worker's partitions were taken over by others.
    let all: String = logs.iter().map(|l| log_of(l)).collect();
    assert!(all.contains("partition taken over"), "{all}");
    // Every message is in the union (else: which partition fell short, and what the workers did).
    let m = manifest(&data);
    // Every message in, and every partition's last checkpoint written at the end of a run (a
    // partition handed over and then given to nobody cannot say its input ended, so the union
    // keeps its last buckets open, and they would differ from the file ingest's).
    let finished = m["kafka"]["finished"].as_bool() == Some(true);
    if m["messages"].as_u64() != Some(lines as u64) || !finished {
        // The workers that ran to the end (not the killed one's first life).
        let survivors: String = [0, 2, 3, 4].iter().map(|&i| log_of(&logs[i])).collect();
        let mut lines_of_all: Vec<&str> =
            survivors.lines().filter(|l| !l.contains("DEBUG")).collect();
        lines_of_all.sort();
        // A partition no surviving worker holds at the end: never taken over by one, or handed
        // over last.
        let unowned: Vec<u32> = (0..6)
            .filter(|&p| {
                let last = lines_of_all.iter().rev().find(|l| {
                    l.ends_with(&format!("partition={p}"))
                        && (l.contains("taken over") || l.contains("handed over"))
                        || l.contains(&format!("partition={p} offset="))
                });
                last.is_none_or(|l| l.contains("handed over"))
            })
            .collect();
        let per: Vec<String> = (0..6)
            .map(|p| {
                let pm = std::fs::read(data.join(format!("partitions/{p}/current/manifest.json")))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
                format!("p{p}: {:?} messages", pm.map(|m| m["messages"].clone()))
            })
            .collect();
        let why = format!(
            "the union has {} of {lines} messages (finished: {finished}); partitions: {per:?}; unowned at the end: {unowned:?}",
            m["messages"]
        );
        assert!(!unowned.is_empty(), "{why}\n{}", lines_of_all.join("\n"));
        return Err(why);
    }
    let reference = file_reference_of(&b, dir.path(), 6, Some(lines));
    assert_same_tables(&reference, &data, false);
    let f = manifest(&reference);
    for k in ["events", "counted", "late", "duplicates", "rejected"] {
        assert_eq!(m[k], f[k], "{k}");
    }
    // Every partition is a data directory of its own, and the union names all six.
    for p in 0..6 {
        assert!(data.join(format!("partitions/{p}/current")).exists());
    }
    assert_eq!(m["kafka"]["next_offsets"].as_object().unwrap().len(), 6);
    Ok(())
}

#[test]
fn a_worker_that_lost_its_partitions_cannot_write_over_their_new_owner() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path(), false);
    b.create_topic(TOPIC, 4);
    let input = simulate(dir.path(), 600, 5);
    let lines = std::fs::read_to_string(&input).unwrap().lines().count();
    let data = dir.path().join("data");
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let producer = produce_at(&b, &input, 4000);
    // A takes every partition and reads for a while.
    // A short session, so that the group gives up on a stopped A quickly. (tansu 0.6 did not
    // expire a stopped member within a minute at earshot's default of 10 s; with 6 s for every
    // member of the larger group above, it rebalanced every 6 s without end.)
    let quick = ["--exit-when-idle", "6s", "-X", "session.timeout.ms=6000"];
    let a = worker(&b, &data, &quick, &log_a);
    let deadline = Instant::now() + Duration::from_secs(60);
    while partition_generations(&data, 4).iter().any(Option::is_none) {
        assert!(Instant::now() < deadline, "A did not open its partitions");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    // A stops answering (a long pause, a partition of the network): the group expires it and
    // gives its partitions to B. B must wait: A still holds them, with messages it has read.
    signal(&a, "STOP");
    let frozen = partition_generations(&data, 4);
    // (B waits longer for its first messages: the group gives it nothing until A's session ends.)
    let b_worker = worker(
        &b,
        &data,
        &["--exit-when-idle", "15s", "-X", "session.timeout.ms=6000"],
        &log_b,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    // (B's first assignment is empty: the group waits for A's session to expire.)
    while !log_of(&log_b).contains("partitions assigned partitions={0") {
        assert!(
            Instant::now() < deadline,
            "B got no partition: {}",
            log_of(&log_b)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        partition_generations(&data, 4),
        frozen,
        "a partition was written while its previous owner still held it"
    );
    assert!(
        log_of(&log_b).contains("waiting for its previous owner to let go"),
        "{}",
        log_of(&log_b)
    );
    assert!(!log_of(&log_b).contains("partition taken over"));
    // A comes back, finds it lost the partitions, checkpoints what it read and lets go; B reads
    // on from there.
    signal(&a, "CONT");
    assert!(producer.wait_with_output().unwrap().status.success());
    wait_ok(a, &log_a);
    wait_ok(b_worker, &log_b);
    // Back in the group, A may be given some partitions again; each one B took over, B opened
    // only after A let go of it: A handed it over, or A's run ended (its last checkpoint, then
    // the lock goes with the process).
    let (la, lb) = (log_of(&log_a), log_of(&log_b));
    let taken = events_of(&lb, "partition taken over");
    assert!(!taken.is_empty(), "B took no partition over:\n{lb}");
    let handed = events_of(&la, "partition handed over");
    let a_ended = la
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .next_back()
        .unwrap_or_default()
        .to_owned();
    for (p, at) in &taken {
        let let_go = handed.iter().find(|(q, _)| q == p).map(|(_, t)| t);
        assert!(
            let_go.is_some_and(|t| t < at) || a_ended.as_str() < at.as_str(),
            "B took partition {p} over at {at}; A let go at {let_go:?}, ended at {a_ended}\nA:\n{la}\nB:\n{lb}"
        );
    }
    let reference = file_reference_of(&b, dir.path(), 4, Some(lines));
    assert_same_tables(&reference, &data, false);
    assert_eq!(manifest(&data)["messages"].as_u64(), Some(lines as u64));
}

#[test]
fn one_consumer_and_a_group_of_workers_never_share_a_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path(), false);
    b.create_topic(TOPIC, 2);
    let data = dir.path().join("data");
    let first = kafka_ingest(&b, &data, &["--exit-when-idle", "1s"])
        .output()
        .unwrap();
    ok(first);
    let out = kafka_ingest(&b, &data, &["--assign", "group", "--exit-when-idle", "1s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("one consumer of every partition"), "{err}");
}

/// (partition, timestamp) of each log line saying `what`, in order.
fn events_of(log: &str, what: &str) -> Vec<(u32, String)> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            let at = l.split_whitespace().next()?.to_owned();
            let p = l.split("partition=").nth(1)?.split_whitespace().next()?;
            Some((p.parse().ok()?, at))
        })
        .collect()
}
