//! Tables in a bucket (`--data s3://…`), on a real S3 API (moto's server, started by each test on
//! a port of 127.0.0.1) and a real Kafka-protocol broker (tansu): what is read back from the
//! bucket equals what one process writes to a directory, several workers on one topic publish
//! one process's figures, and a worker fenced out in the bucket never overwrites its successor.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

mod kafka_util;
use kafka_util::*;
#[path = "../../remote/tests/s3_server/mod.rs"]
mod s3_server;
use s3_server::S3Server;

const BUCKET: &str = "earshot-tables";

fn url(prefix: &str) -> PathBuf {
    PathBuf::from(format!("s3://{BUCKET}/{prefix}"))
}

/// A worker of group `g` writing the bucket, checkpointing often, logging its partitions.
fn worker(b: &Broker, s: &S3Server, prefix: &str, extra: &[&str], log: &Path) -> Child {
    worker_with(b, &url(prefix), "300ms", extra, &s.env(), log)
}

fn server() -> S3Server {
    let s = S3Server::start();
    s.bucket(BUCKET);
    s
}

/// The manifest of the bucket's current tables under `prefix`, read with the bucket layer.
fn bucket_manifest(s: &S3Server, prefix: &str, scratch: &Path) -> serde_json::Value {
    let remote = earshot_remote::Remote::open_with(url(prefix).to_str().unwrap(), s.env()).unwrap();
    let current = remote.current("").unwrap().expect("tables in the bucket");
    let local = scratch.join(format!("manifest-of-{}", prefix.replace('/', "-")));
    let dir = remote.pull(&current, &local).unwrap().unwrap();
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn a_file_ingest_into_a_bucket_reads_back_as_from_a_directory() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let input = simulate(dir.path(), 300, 3);
    let local = dir.path().join("local");
    ok(earshot()
        .args(["ingest", "--input"])
        .arg(&input)
        .arg("--data")
        .arg(&local)
        .output()
        .unwrap());
    // Twice into the bucket: the second replaces the first (the pointer's compare-and-swap).
    for _ in 0..2 {
        ok(earshot()
            .envs(s.env())
            .args(["ingest", "--input"])
            .arg(&input)
            .arg("--data")
            .arg(url("file"))
            .output()
            .unwrap());
    }
    assert_same_tables_with(&local, &url("file"), true, &s.env());
    // The audit reads the bucket too.
    let audit = ok(earshot()
        .envs(s.env())
        .args([
            "audit",
            "--stream",
            "town-hall-main",
            "--format",
            "json",
            "--data",
        ])
        .arg(url("file"))
        .output()
        .unwrap());
    let local_audit = ok(earshot()
        .args([
            "audit",
            "--stream",
            "town-hall-main",
            "--format",
            "json",
            "--data",
        ])
        .arg(&local)
        .output()
        .unwrap());
    let figures = |j: &str| {
        let v: serde_json::Value = serde_json::from_str(j).unwrap();
        v["figures"].clone()
    };
    assert_eq!(figures(&audit), figures(&local_audit));
    // A prefix with nothing in it says so.
    let out = earshot()
        .envs(s.env())
        .args(["sql", "--data"])
        .arg(url("nothing-here"))
        .arg("SELECT 1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no earshot data"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn three_workers_sharing_a_bucket_give_one_process_figures() {
    // tansu 0.6 sometimes leaves a partition assigned to a member that is gone (see workers.rs):
    // then the union misses that partition's tail. Once more on a new broker in that case only;
    // wrong figures fail at once.
    if let Err(short) = three_workers_in_a_bucket() {
        eprintln!("the union fell short ({short}); once more, on a new broker");
        three_workers_in_a_bucket().unwrap_or_else(|again| panic!("short twice: {again}"));
    }
}

fn three_workers_in_a_bucket() -> Result<(), String> {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path(), false);
    b.create_topic(TOPIC, 6);
    let input = simulate(dir.path(), 800, 17);
    let lines = std::fs::read_to_string(&input).unwrap().lines().count();
    let logs: Vec<_> = (0..4)
        .map(|i| dir.path().join(format!("worker{i}.log")))
        .collect();
    let idle = [
        "--exit-when-idle",
        "20s",
        "-X",
        "session.timeout.ms=6000",
        "-X",
        "heartbeat.interval.ms=1000",
    ];
    let producer = produce_at(&b, &input, 5000);
    let mut w: Vec<Option<Child>> = (0..3)
        .map(|i| Some(worker(&b, &s, "workers", &idle, &logs[i])))
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    // One stops mid-stream (SIGTERM: a last checkpoint, then it leaves) and starts again.
    let stopped = w[1].take().unwrap();
    signal(&stopped, "TERM");
    wait_ok(stopped, &logs[1]);
    w[1] = Some(worker(&b, &s, "workers", &idle, &logs[3]));
    assert!(producer.wait_with_output().unwrap().status.success());
    for (child, log) in w.into_iter().zip([&logs[0], &logs[3], &logs[2]]) {
        wait_ok(child.unwrap(), log);
    }
    let all: String = logs.iter().map(|l| log_of(l)).collect();
    assert!(all.contains("partition taken over"), "{all}");
    let m = bucket_manifest(&s, "workers", dir.path());
    if m["messages"].as_u64() != Some(lines as u64)
        || m["kafka"]["finished"].as_bool() != Some(true)
    {
        return Err(format!(
            "{} of {lines} messages, finished: {}; logs:\n{all}",
            m["messages"], m["kafka"]["finished"]
        ));
    }
    // One consumer of every partition into another prefix of the bucket.
    ok(
        kafka_ingest(&b, &url("single"), &["--exit-when-idle", "2s"])
            .envs(s.env())
            .output()
            .unwrap(),
    );
    // A prefix keeps the layout it was started with, as a directory does.
    for (prefix, args, wrote) in [
        (
            "single",
            &["--assign", "group"][..],
            "one consumer of every partition",
        ),
        ("workers", &[][..], "a group of workers"),
    ] {
        let out = kafka_ingest(
            &b,
            &url(prefix),
            &[&["--exit-when-idle", "1s"], args].concat(),
        )
        .envs(s.env())
        .output()
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(wrote),
            "{prefix}: {err}"
        );
    }
    let reference = file_reference_of(&b, dir.path(), 6, Some(lines));
    assert_same_tables_with(&reference, &url("workers"), false, &s.env());
    assert_same_tables_with(&reference, &url("single"), false, &s.env());
    Ok(())
}

#[test]
fn a_worker_fenced_out_in_the_bucket_never_overwrites_its_successor() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path(), false);
    b.create_topic(TOPIC, 4);
    let input = simulate(dir.path(), 600, 5);
    let lines = std::fs::read_to_string(&input).unwrap().lines().count();
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let producer = produce_at(&b, &input, 4000);
    // A takes every partition and checkpoints them once (when it opens them), then not again
    // for an hour: whatever it reads after that is its own until a checkpoint it never gets to
    // publish.
    let a = worker_with(
        &b,
        &url("fence"),
        "1h",
        &["--exit-when-idle", "6s", "-X", "session.timeout.ms=6000"],
        &s.env(),
        &log_a,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while log_of(&log_a).matches("partition taken over").count() < 4 {
        assert!(
            Instant::now() < deadline,
            "A did not open its partitions:\n{}",
            log_of(&log_a)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    // A stops answering; the group gives its partitions to B, which claims them in the bucket at
    // once (object storage has no lock to wait on) and reads them from A's last checkpoint.
    signal(&a, "STOP");
    let b_worker = worker(
        &b,
        &s,
        "fence",
        &["--exit-when-idle", "15s", "-X", "session.timeout.ms=6000"],
        &log_b,
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    while log_of(&log_b).matches("partition taken over").count() < 4 {
        assert!(
            Instant::now() < deadline,
            "B did not take the partitions over while A was stopped:\n{}",
            log_of(&log_b)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A comes back with messages it read but never published: its checkpoint is refused, and it
    // drops them.
    signal(&a, "CONT");
    assert!(producer.wait_with_output().unwrap().status.success());
    wait_ok(a, &log_a);
    wait_ok(b_worker, &log_b);
    let la = log_of(&log_a);
    assert!(
        la.contains("another worker took this partition over in the bucket"),
        "A was not fenced out:\n{la}"
    );
    let m = bucket_manifest(&s, "fence", dir.path());
    assert_eq!(m["messages"].as_u64(), Some(lines as u64));
    let reference = file_reference_of(&b, dir.path(), 4, Some(lines));
    assert_same_tables_with(&reference, &url("fence"), false, &s.env());
}

#[test]
fn run_serves_a_bucket_it_writes_as_a_worker() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path(), false);
    b.create_topic(TOPIC, 2);
    let input = simulate(dir.path(), 300, 9);
    produce(&b, &input);
    let reference = file_reference(&b, dir.path(), 2);
    let figures =
        "SELECT sessions || '/' || listeners_joined || '/' || peak_connected FROM streams";
    let want = ok(earshot()
        .args(["sql", "--format", "csv", "--data"])
        .arg(&reference)
        .arg(figures)
        .output()
        .unwrap())
    .lines()
    .nth(1)
    .unwrap()
    .to_owned();
    let extra = [
        "--assign",
        "group",
        "--group",
        "r",
        "--checkpoint-interval",
        "300ms",
        "--exit-when-idle",
        "8s",
    ];
    // (Its output is kept open to the end: the run prints its summary there.)
    let (mut child, out, port) = spawn_run(&b, url("run"), &extra, &s.env());
    // The served copy follows the union in the bucket until it holds every message.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut got = String::new();
    while got != want {
        assert!(
            Instant::now() < deadline,
            "served {got:?}, the file ingest says {want:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
        got = psql(port, figures);
    }
    // Idle to its end, it ends with a last checkpoint that calls every bucket final, as the file
    // ingest does.
    assert!(child.wait().unwrap().success());
    drop(out);
    assert_same_tables_with(&reference, &url("run"), false, &s.env());
}

#[test]
fn a_bucket_that_cannot_be_used_is_a_clear_error() {
    let fails = |data: &str, env: &[(&str, String)]| {
        let out = earshot()
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .args(["sql", "--data", data, "SELECT 1"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = fails("s3://", &[]);
    assert!(
        err.contains("the bucket name is missing") && err.contains("hint"),
        "{err}"
    );
    // Nothing listens on the endpoint: refused at once, with the settings to check.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let err = fails(
        "s3://earshot-tables/x",
        &[
            ("AWS_ENDPOINT", endpoint),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "k".into()),
            ("AWS_SECRET_ACCESS_KEY", "s".into()),
        ],
    );
    assert!(
        err.contains("object storage refused") && err.contains("AWS_ENDPOINT"),
        "{err}"
    );
}
