//! Input that cannot be trusted, end to end through `earshot ingest`: wrong clocks (contract §4,
//! v1.1: no single event moves time), raw listener ids in malformed lines (contract §5: never
//! written anywhere), and command-line durations that need a unit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::{Value, json};

fn earshot() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_earshot"));
    c.env("EARSHOT_PSEUDONYM_KEY", "untrusted-input-secret");
    c
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({}): {}\nstdout: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sql_json(data: &Path, query: &str) -> Value {
    let out = ok(earshot()
        .args(["sql", "--format", "json", "--data"])
        .arg(data)
        .arg(query)
        .output()
        .unwrap());
    serde_json::from_str(&out).unwrap()
}

/// A 2,000-listener simulated event, written once for all tests of this file.
fn simulated() -> &'static Vec<String> {
    static LINES: OnceLock<Vec<String>> = OnceLock::new();
    LINES.get_or_init(|| {
        let out = ok(earshot()
            .args(["simulate", "--listeners", "2000", "--seed", "13"])
            .output()
            .unwrap());
        out.lines().map(str::to_owned).collect()
    })
}

/// Every figure a user can see, except where rows came from.
fn figures(data: &Path) -> Value {
    json!({
        "streams": sql_json(data, "SELECT stream_id, scheduled_start, live_at, start_delay_ms, first_event, \
            last_event, sessions, peak_displayed, peak_roster, peak_connected, listeners_joined, \
            listeners_connected, listeners_connected_60s, failed_joins, abandoned_before_audio, \
            ghost_sessions, ttfa_ms_p50, ttfa_ms_p90, hll_count(joined_hll) AS joined_estimate, \
            hll_count(connected_hll) AS connected_estimate FROM streams ORDER BY stream_id"),
        "buckets": sql_json(data, "SELECT stream_id, bucket_start, displayed_start, roster_start, roster_peak, \
            connected_start, connected_peak, joins, connects, leaves, drops, \
            hll_count(present_hll) AS present, hll_count(connected_hll) AS connected, final \
            FROM buckets ORDER BY stream_id, bucket_start"),
        "sessions": sql_json(data, "SELECT stream_id, session_id, listener_key, join_ts, connect_ts, end_ts, \
            end_type, end_reason, listened_ms, heartbeats, client, region \
            FROM sessions ORDER BY stream_id, session_id"),
        "events": sql_json(data, "SELECT count(*) AS n, sum(CASE WHEN late THEN 1 ELSE 0 END) AS late, \
            count(DISTINCT event_id) AS ids FROM events"),
    })
}

/// Ingests `lines` into a fresh directory under `dir`; returns the directory.
fn ingest_lines(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let input = dir.join(format!("{name}.ndjson"));
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let data = dir.join(name);
    ok(earshot()
        .args(["ingest", "--input"])
        .arg(&input)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap());
    data
}

fn rejects_by_code(data: &Path) -> Vec<(String, i64)> {
    sql_json(
        data,
        "SELECT reason_code, count(*) AS n FROM rejects GROUP BY reason_code ORDER BY reason_code",
    )
    .as_array()
    .unwrap()
    .iter()
    .map(|r| {
        (
            r["reason_code"].as_str().unwrap().to_owned(),
            r["n"].as_i64().unwrap(),
        )
    })
    .collect()
}

/// The simulated event with `stray` inserted at line `at`: every figure equals the simulation's
/// own, and the stray is one more reject, with the given code.
fn stray_changes_nothing_else(stray: &str, at: usize, code: &str) {
    let dir = tempfile::tempdir().unwrap();
    let base = simulated();
    let mut with = base.clone();
    with.insert(at.min(base.len()), stray.to_owned());
    let clean = ingest_lines(dir.path(), "clean", base);
    let strayed = ingest_lines(dir.path(), "strayed", &with);
    assert_eq!(figures(&strayed), figures(&clean));
    let mut want = rejects_by_code(&clean);
    match want.iter_mut().find(|(c, _)| c == code) {
        Some((_, n)) => *n += 1,
        None => want.push((code.to_owned(), 1)),
    }
    want.sort();
    assert_eq!(rejects_by_code(&strayed), want);
    let row = &sql_json(
        &strayed,
        &format!("SELECT source, reason, payload_text FROM rejects WHERE reason_code = '{code}'"),
    )[0];
    assert!(
        row["source"]
            .as_str()
            .unwrap()
            .ends_with(&format!("strayed.ndjson:{}", at.min(base.len()) + 1)),
        "{row}"
    );
    assert!(
        row["reason"].as_str().unwrap().contains("wrong clock"),
        "{row}"
    );
}

const STREAM: &str = "town-hall-main";

fn session_event(id: &str, kind: &str, ts: &str, stream: &str) -> String {
    format!(
        r#"{{"v":1,"event_id":"{id}","type":"{kind}","ts":"{ts}","stream_id":"{stream}","listener_id":"stray-listener","session_id":"stray-session"}}"#
    )
}

#[test]
fn a_1970_event_as_the_first_line_changes_no_other_figure() {
    let stray = session_event("stray-1970", "join", "1970-01-01T00:00:00Z", STREAM);
    stray_changes_nothing_else(&stray, 0, "ts_uncorroborated");
}

#[test]
fn a_2099_event_as_the_last_line_changes_no_other_figure() {
    let stray = session_event(
        "stray-2099",
        "heartbeat",
        "2099-12-31T23:59:59.999Z",
        STREAM,
    );
    stray_changes_nothing_else(&stray, usize::MAX, "ts_uncorroborated");
}

#[test]
fn a_day_ahead_event_in_another_stream_changes_no_other_figure() {
    // A day after the simulated event (2024-08-13), in the middle of the file, in a stream of its own.
    let stray = session_event(
        "stray-day",
        "join",
        "2024-08-14T00:30:00Z",
        "another-stream",
    );
    let at = simulated().len() / 2;
    stray_changes_nothing_else(&stray, at, "ts_uncorroborated");
}

#[test]
fn a_stream_that_would_span_decades_refuses_only_the_event_that_stretches_it() {
    // A jump of decades confirmed by a second witness (two devices whose clocks are wrong the
    // same way) would stretch stream s over the span limit: the first is refused for the span, the
    // second then confirms nothing and is refused as a stray; the rest is counted and the ingest
    // succeeds.
    let display = |id: &str, ts: &str| {
        if id == "c" || id == "d" || id == "x" {
            return format!(
                r#"{{"v":1,"event_id":"{id}","type":"join","ts":"{ts}","stream_id":"s","listener_id":"device-{id}","session_id":"session-{id}"}}"#
            );
        }
        format!(
            r#"{{"v":1,"event_id":"{id}","type":"display","ts":"{ts}","stream_id":"s","displayed":1}}"#
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let data = ingest_lines(
        dir.path(),
        "clock",
        &[
            display("a", "2024-08-13T00:00:00Z"),
            display("b", "2024-08-13T00:00:10Z"),
            // A listener's event: the host side's two samples alone are one witness, and a second
            // gives the partition its time.
            display("x", "2024-08-13T00:00:15Z"),
            display("c", "2061-01-01T00:00:00Z"),
            display("d", "2061-01-01T00:00:10Z"),
            display("e", "2024-08-13T00:00:20Z"),
        ],
    );
    assert_eq!(
        rejects_by_code(&data),
        vec![
            ("span_too_long".to_owned(), 1),
            ("ts_uncorroborated".to_owned(), 1)
        ]
    );
    let s = &sql_json(&data, "SELECT first_event, last_event FROM streams")[0];
    assert_eq!(s["first_event"], "2024-08-13T00:00:00.000Z");
    assert_eq!(s["last_event"], "2024-08-13T00:00:20.000Z");
}

#[test]
fn no_raw_listener_id_is_stored_logged_or_reported() {
    let ids = [
        "alice.secret@example.com",
        "bob-7731-private",
        "carol+555-0100",
        // Searched for by the part that fits in the 4 KiB kept (the line carries more).
        "dave.trunc",
        "erin-in-a-string",
        "frank.escaped@example.net",
    ];
    let good = simulated();
    let bad = [
        // A join with a wrong-typed field: everything parses but the event is invalid.
        format!(
            r#"{{"v":1,"event_id":"r1","type":"join","ts":"2024-08-13T00:00:01Z","stream_id":"{STREAM}","listener_id":"{}","session_id":7}}"#,
            ids[0]
        ),
        // Not an object at the end: truncated JSON.
        format!(
            r#"{{"v":1,"event_id":"r2","type":"heartbeat","listener_id":"{}","ts":"#,
            ids[1]
        ),
        // Unquoted, not JSON at all.
        format!("listener_id={}&stream=x", ids[2]),
        // A rejects row keeps the first 4 KiB: this one is cut inside the id.
        format!(
            r#"{{"pad":"{}","listener_id":"{}.ated.id@example.org"}}"#,
            "x".repeat(4096 - 10 - 25),
            ids[3]
        ),
        // JSON text inside a string, and an escaped key.
        format!(
            r#"{{"v":1,"note":"{{\"listener_id\":\"{}\"}}","type":"join"}}"#,
            ids[4]
        ),
        format!(
            r#"{{"v":1,"type":"join","listener\u005fid":"{}","ts":"yesterday"}}"#,
            ids[5]
        ),
    ];
    let mut lines = good.clone();
    for (k, b) in bad.iter().enumerate() {
        lines.insert(100 + k * 1000, b.clone());
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let data = dir.path().join("data");
    let ingest = earshot()
        .args(["ingest", "--input"])
        .arg(&input)
        .arg("--data")
        .arg(&data)
        .env("EARSHOT_LOG", "debug")
        .output()
        .unwrap();
    let logs = dir.path().join("logs.txt");
    std::fs::write(
        &logs,
        [ingest.stdout.clone(), ingest.stderr.clone()].concat(),
    )
    .unwrap();
    ok(ingest);
    // Each bad line is a reject, and its pseudonymised payload still says what was wrong.
    let rejects = sql_json(
        &data,
        "SELECT reason_code, payload_text FROM rejects ORDER BY source",
    );
    let texts: Vec<&str> = rejects
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["payload_text"].as_str().unwrap())
        .collect();
    let first = texts
        .iter()
        .find(|t| t.contains("\"event_id\":\"r1\""))
        .expect("the wrong-typed join is a reject");
    assert!(first.contains("\"session_id\":7"), "{first}");
    assert!(first.contains("\"listener_id\":\""), "{first}");
    // What SQL, the audit report and the logs show.
    let report = dir.path().join("report.html");
    ok(earshot()
        .args(["audit", "--format", "html", "--data"])
        .arg(&data)
        .args(["--stream", STREAM, "--output"])
        .arg(&report)
        .output()
        .unwrap());
    let everything = ok(earshot()
        .args(["sql", "--format", "csv", "--data"])
        .arg(&data)
        .arg("SELECT * FROM rejects")
        .output()
        .unwrap());
    let sql_out = dir.path().join("sql.csv");
    std::fs::write(&sql_out, everything).unwrap();
    let found = ok(Command::new("python3")
        .arg(repo().join("tests/find_raw_ids.py"))
        .arg("--ids")
        .arg(ids.join(","))
        .arg(&data)
        .arg(&report)
        .arg(&logs)
        .arg(&sql_out)
        .output()
        .expect("python3 with pyarrow (scripts/setup installs it)"));
    let found: Value = serde_json::from_str(&found).unwrap();
    assert!(found["searched"].as_u64().unwrap() > 8, "{found}");
    assert_eq!(found["found"], json!([]), "raw ids were written: {found}");
    // The ids were really in the input (the search can find them).
    let control: Value = serde_json::from_str(&ok(Command::new("python3")
        .arg(repo().join("tests/find_raw_ids.py"))
        .arg("--ids")
        .arg(ids.join(","))
        .arg(&input)
        .output()
        .unwrap()))
    .unwrap();
    assert_eq!(
        control["found"].as_array().unwrap().len(),
        ids.len(),
        "{control}"
    );
}

#[test]
fn durations_need_a_unit() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["ingest", "--input", "x.ndjson", "--liveness", "30"],
        vec![
            "ingest",
            "--kafka",
            "127.0.0.1:1",
            "--topic",
            "t",
            "--exit-when-idle",
            "10",
        ],
        vec!["sql", "--query-timeout", "5", "SELECT 1"],
    ] {
        let out = earshot()
            .args(&args)
            .arg("--data")
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("has no unit") && err.contains("hint"), "{err}");
    }
}

/// A full disk while ingesting: an error that says so and what to do, nothing left behind (no
/// staging parts, no temporary generation), and the tables that were current stay readable. Each
/// size of a small file system (a tmpfs, in a mount namespace of the test's own: `unshare -m`, as
/// root) runs out at another step: while writing event parts, or while writing the new generation.
#[test]
fn a_full_disk_is_said_as_such_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.ndjson");
    let big = dir.path().join("big.ndjson");
    for (file, listeners) in [(&small, "100"), (&big, "2000")] {
        ok(earshot()
            .args(["simulate", "--listeners", listeners, "--seed", "3", "-o"])
            .arg(file)
            .output()
            .unwrap());
    }
    let bin = env!("CARGO_BIN_EXE_earshot");
    let mut failed_at = Vec::new();
    for kib in (800..=2600).step_by(100) {
        let mnt = dir.path().join(format!("fs-{kib}"));
        std::fs::create_dir(&mnt).unwrap();
        let script = format!(
            "set -e; mount -t tmpfs -o size={kib}k tmpfs {m}; \
             {bin} ingest --input {small} --data {m}/d >/dev/null 2>&1; \
             if {bin} ingest --input {big} --data {m}/d >/dev/null 2>{m}/err; then echo INGESTED; fi; \
             cat {m}/err; echo LISTING; ls -A {m}/d; echo SESSIONS; \
             {bin} sql --format csv --data {m}/d 'SELECT count(*) AS n FROM sessions'",
            m = mnt.display(),
            small = small.display(),
            big = big.display(),
        );
        let out = Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .env("EARSHOT_PSEUDONYM_KEY", "full-disk-test")
            .output()
            .expect("unshare (util-linux)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs and must run as root: {}{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        if text.starts_with("INGESTED") {
            continue;
        }
        assert!(
            text.contains("No space left on device")
                && text.contains("the disk holding the data directory is full"),
            "{kib} KiB: {text}"
        );
        let listing = text.split("LISTING\n").nth(1).unwrap();
        let listing: Vec<&str> = listing.split("SESSIONS").next().unwrap().lines().collect();
        assert_eq!(
            listing,
            [".writer.lock", "current", "gen-000001"],
            "{kib} KiB: something was left behind: {text}"
        );
        assert!(text.ends_with("n\n149\n"), "{kib} KiB: {text}");
        failed_at.push(if text.contains(".gen-tmp-") {
            "generation"
        } else {
            "parts"
        });
    }
    // Both steps ran out at some size (if not, the sizes above need adjusting to the files).
    assert!(
        failed_at.contains(&"parts") && failed_at.contains(&"generation"),
        "{failed_at:?}"
    );
}
