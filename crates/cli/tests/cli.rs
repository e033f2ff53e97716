//! The `earshot` binary end to end: demo, ingest, SQL, bad input, atomic generations, and other
//! tools (DuckDB, pyarrow) reading what it wrote.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn earshot() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_earshot"));
    c.env("EARSHOT_PSEUDONYM_KEY", "cli-test-secret");
    c
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/tests/fixtures")
        .join(name)
}

fn ingest(input: &Path, data: &Path) -> String {
    ok(earshot()
        .args(["ingest", "--input"])
        .arg(input)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap())
}

fn sql_json(data: &Path, query: &str) -> Vec<Value> {
    let out = ok(earshot()
        .args(["sql", "--format", "json", "--data"])
        .arg(data)
        .arg(query)
        .output()
        .unwrap());
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

const STREAM_FIGURES: &str = "SELECT stream_id, sessions, peak_roster, peak_connected, peak_displayed, \
    listeners_joined, listeners_connected, listeners_connected_60s, failed_joins, abandoned_before_audio, \
    ghost_sessions, ttfa_ms_p50, ttfa_ms_p90, start_delay_ms, first_event, last_event, \
    hll_count(joined_hll) AS joined_estimate FROM streams ORDER BY stream_id";

#[test]
fn contract_example_figures_through_sql() {
    let dir = tempfile::tempdir().unwrap();
    ingest(&fixture("contract_example.ndjson"), dir.path());
    let rows = sql_json(dir.path(), STREAM_FIGURES);
    assert_eq!(
        Value::Array(rows),
        serde_json::json!([{
            "stream_id": "s", "sessions": 3, "peak_roster": 3, "peak_connected": 2, "peak_displayed": 3,
            "listeners_joined": 3, "listeners_connected": 2, "listeners_connected_60s": 0,
            "failed_joins": 1, "abandoned_before_audio": 0, "ghost_sessions": 1,
            "ttfa_ms_p50": 1000, "ttfa_ms_p90": 2000, "start_delay_ms": null,
            "first_event": "2024-08-12T12:00:00.000Z", "last_event": "2024-08-12T12:00:50.000Z",
            "joined_estimate": 3
        }])
    );
    let buckets = sql_json(
        dir.path(),
        "SELECT roster_start, roster_peak, connected_start, connected_peak, displayed_start, joins, \
         hll_count(present_hll) AS present, hll_count(connected_hll) AS connected, final \
         FROM buckets ORDER BY bucket_start",
    );
    let got: Vec<Vec<Value>> = buckets
        .iter()
        .map(|r| {
            [
                "roster_start",
                "roster_peak",
                "connected_start",
                "connected_peak",
                "displayed_start",
                "joins",
                "present",
                "connected",
                "final",
            ]
            .iter()
            .map(|k| r[*k].clone())
            .collect()
        })
        .collect();
    let want = serde_json::json!([
        [1, 3, 0, 2, 0, 3, 3, 2, true],
        [3, 3, 2, 2, 3, 0, 3, 2, true],
        [3, 3, 2, 2, 3, 0, 3, 2, true],
        [2, 2, 1, 1, 3, 0, 2, 1, true],
        [2, 2, 1, 1, 3, 0, 2, 1, true],
        [2, 2, 0, 0, 2, 0, 2, 0, true]
    ]);
    assert_eq!(serde_json::to_value(got).unwrap(), want);
    // The raw listener ids never reach a table.
    for table in ["events", "sessions"] {
        let rows = sql_json(dir.path(), &format!("SELECT listener_key FROM {table}"));
        for r in rows {
            let k = r["listener_key"].as_str().unwrap_or("");
            assert!(k.is_empty() || k.len() == 32, "{k}");
            assert!(!["a", "b", "c"].contains(&k));
        }
    }
    let files = walk(dir.path());
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(15).any(|w| w == br#""listener_id":"#),
            "{} holds a raw listener_id",
            f.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_symlink() {
            continue;
        }
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn bad_lines_are_rejected_with_reasons_and_change_no_figure() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(fixture("contract_example.ndjson")).unwrap();
    let bad_lines = [
        "".to_owned(),
        "not json".to_owned(),
        r#"{"v":1,"event_id":"zz","type":"join""#.to_owned(),
        "[1,2]".to_owned(),
        r#"{"v":1,"event_id":7,"type":"join","ts":"2024-08-12T12:00:03Z","stream_id":"s","listener_id":"q","session_id":"Q"}"#.to_owned(),
        r#"{"v":1,"event_id":"u1","type":"jump","ts":"2024-08-12T12:00:03Z","stream_id":"s"}"#.to_owned(),
        r#"{"v":2,"event_id":"u2","type":"join","ts":"2024-08-12T12:00:03Z","stream_id":"s","listener_id":"q","session_id":"Q"}"#.to_owned(),
        r#"{"v":1,"event_id":"u3","type":"join","ts":"noon","stream_id":"s","listener_id":"q","session_id":"Q"}"#.to_owned(),
        r#"{"v":1,"event_id":"u4","type":"join","stream_id":"s","listener_id":"q","session_id":"Q"}"#.to_owned(),
        r#"{"v":1,"event_id":"u5","type":"join","ts":"2024-08-12T12:00:03Z","stream_id":"s","listener_id":"q"}"#.to_owned(),
        r#"{"v":1,"event_id":"u6","type":"display","ts":"2024-08-12T12:00:03Z","stream_id":"s","displayed":-5}"#.to_owned(),
        format!(r#"{{"v":1,"event_id":"u7","type":"join","ts":"2024-08-12T12:00:03Z","stream_id":"s","listener_id":"q","session_id":"Q","pad":"{}"}}"#, "x".repeat(70_000)),
        // An invalid copy of a good event's id must not claim that id.
        r#"{"v":1,"event_id":"ex1","type":"join","ts":"bad","stream_id":"s","listener_id":"a","session_id":"A"}"#.to_owned(),
    ];
    let mut mixed = String::new();
    for (i, line) in good.lines().enumerate() {
        if let Some(b) = bad_lines.get(i) {
            mixed.push_str(b);
            mixed.push('\n');
        }
        mixed.push_str(line);
        mixed.push('\n');
    }
    for b in bad_lines.iter().skip(good.lines().count()) {
        mixed.push_str(b);
        mixed.push('\n');
    }
    mixed.push_str("\u{0}\u{1}binary\n");
    let bad_file = dir.path().join("mixed.ndjson");
    std::fs::write(&bad_file, &mixed).unwrap();
    let summary = ingest(&bad_file, &dir.path().join("mixed"));
    assert!(summary.contains("rejected:   14"), "{summary}");
    ingest(
        &fixture("contract_example.ndjson"),
        &dir.path().join("clean"),
    );
    let mixed_rows = sql_json(&dir.path().join("mixed"), STREAM_FIGURES);
    let clean_rows = sql_json(&dir.path().join("clean"), STREAM_FIGURES);
    assert_eq!(mixed_rows, clean_rows);
    let rejects = sql_json(
        &dir.path().join("mixed"),
        "SELECT reason_code, count(*) AS n FROM rejects GROUP BY reason_code ORDER BY reason_code",
    );
    let codes: Vec<(String, i64)> = rejects
        .iter()
        .map(|r| {
            (
                r["reason_code"].as_str().unwrap().to_owned(),
                r["n"].as_i64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, i64)> = [
        ("bad_timestamp", 2),
        ("empty", 1),
        ("missing_field", 2),
        ("not_json", 2),
        ("not_object", 1),
        ("out_of_range", 1),
        ("too_large", 1),
        ("truncated_json", 1),
        ("unknown_type", 1),
        ("unknown_version", 1),
        ("wrong_type", 1),
    ]
    .iter()
    .map(|(c, n)| (c.to_string(), *n))
    .collect();
    assert_eq!(codes, want);
    let sources = sql_json(
        &dir.path().join("mixed"),
        "SELECT source, length(payload) AS bytes FROM rejects WHERE reason_code = 'too_large'",
    );
    assert!(
        sources[0]["source"]
            .as_str()
            .unwrap()
            .ends_with("mixed.ndjson:23"),
        "{sources:?}"
    );
    assert_eq!(sources[0]["bytes"], 4096);
}

#[test]
fn sql_is_read_only_and_explains_bad_queries() {
    let dir = tempfile::tempdir().unwrap();
    ingest(&fixture("contract_example.ndjson"), dir.path());
    for q in [
        "CREATE TABLE x AS SELECT 1",
        "INSERT INTO streams SELECT * FROM streams",
        "COPY (SELECT 1) TO '/tmp/earshot-should-not-exist.csv'",
        "CREATE EXTERNAL TABLE y STORED AS CSV LOCATION '/etc/passwd'",
        "SET datafusion.execution.batch_size = 1",
        "DROP TABLE streams",
        "SELECT nope FROM streams",
        "SELECT hll_count(X'0102')",
        "SELECT hll_count(stream_id) FROM streams",
    ] {
        let out = earshot()
            .args(["sql", "--data"])
            .arg(dir.path())
            .arg(q)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{q} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error: "), "{q}: {err}");
        assert!(!err.contains("panicked"), "{q}: {err}");
    }
    assert!(!Path::new("/tmp/earshot-should-not-exist.csv").exists());
    let rows = sql_json(dir.path(), "SELECT count(*) AS n FROM events");
    assert_eq!(rows[0]["n"], 13);
    let out = earshot()
        .args(["sql", "--data"])
        .arg(dir.path().join("nowhere"))
        .arg("SELECT 1")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no earshot data"));
}

#[test]
fn output_formats() {
    let dir = tempfile::tempdir().unwrap();
    ingest(&fixture("contract_example.ndjson"), dir.path());
    let q = "SELECT stream_id, bucket_start, roster_peak, final FROM buckets ORDER BY bucket_start LIMIT 2";
    let run = |f: &str| {
        ok(earshot()
            .args(["sql", "--format", f, "--data"])
            .arg(dir.path())
            .arg(q)
            .output()
            .unwrap())
    };
    assert_eq!(
        run("csv"),
        "stream_id,bucket_start,roster_peak,final\ns,2024-08-12T12:00:00.000Z,3,true\ns,2024-08-12T12:00:10.000Z,3,true\n"
    );
    assert_eq!(
        run("ndjson"),
        "{\"stream_id\":\"s\",\"bucket_start\":\"2024-08-12T12:00:00.000Z\",\"roster_peak\":3,\"final\":true}\n\
         {\"stream_id\":\"s\",\"bucket_start\":\"2024-08-12T12:00:10.000Z\",\"roster_peak\":3,\"final\":true}\n"
    );
    let table = run("table");
    assert!(table.contains("roster_peak"), "{table}");
    assert!(table.ends_with("(2 rows)\n"), "{table}");
}

#[test]
fn killed_ingest_leaves_the_previous_generation_whole() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ingest(&fixture("contract_example.ndjson"), &data);
    let before = sql_json(&data, STREAM_FIGURES);
    // A second ingest reading an endless stdin, killed mid-way.
    let mut child = earshot()
        .args(["ingest", "--input", "-", "--data"])
        .arg(&data)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let line = std::fs::read_to_string(fixture("contract_example.ndjson")).unwrap();
    use std::io::Write;
    for _ in 0..2_000 {
        if stdin.write_all(line.as_bytes()).is_err() {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    assert_eq!(sql_json(&data, STREAM_FIGURES), before);
    // The next ingest clears the debris and commits normally.
    ingest(&fixture("contract_example.ndjson"), &data);
    assert_eq!(sql_json(&data, STREAM_FIGURES), before);
    let leftovers: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".gen-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn demo_tells_the_story_and_other_tools_read_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let out = ok(earshot()
        .env_remove("EARSHOT_PSEUDONYM_KEY")
        .args(["demo", "--listeners", "1500", "--data"])
        .arg(&data)
        .output()
        .unwrap());
    for needle in [
        "The platform displayed up to",
        "were receiving audio at the same time",
        "Distinct listeners:",
        "join attempts never got audio",
        "42.0 min after its announced start",
        "earshot sql --data",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
    let counts = sql_json(
        &data,
        "SELECT (SELECT count(*) FROM streams) AS streams, (SELECT count(*) FROM buckets) AS buckets, \
         (SELECT count(*) FROM sessions) AS sessions, (SELECT count(*) FROM events) AS events, \
         (SELECT count(*) FROM rejects) AS rejects",
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/read_with_other_tools.py");
    let other = ok(Command::new("python3")
        .arg(script)
        .arg(data.join("current"))
        .output()
        .expect("python3 (scripts/setup installs pyarrow and duckdb)"));
    let other: Value = serde_json::from_str(&other).unwrap();
    for table in ["streams", "buckets", "sessions", "events", "rejects"] {
        assert_eq!(other["pyarrow"][table], counts[0][table], "pyarrow {table}");
        assert_eq!(other["duckdb"][table], counts[0][table], "duckdb {table}");
    }
    let exact = sql_json(
        &data,
        "SELECT listeners_connected AS exact, hll_count(connected_hll) AS stream_sketch, \
         (SELECT hll_count(hll_merge(connected_hll)) FROM buckets) AS merged_buckets FROM streams",
    );
    assert_eq!(exact[0]["stream_sketch"], exact[0]["merged_buckets"]);
    assert_eq!(other["duckdb_listeners_connected"], exact[0]["exact"]);
}

/// Every table of a data directory, as the CLI prints it (CSV, ordered), for comparing two ingests.
fn all_tables(data: &Path) -> String {
    let mut out = String::new();
    for q in [
        "SELECT * FROM streams ORDER BY stream_id",
        "SELECT * FROM buckets ORDER BY stream_id, bucket_start",
        "SELECT * FROM rollups ORDER BY stream_id, width_ms, bucket_start",
        "SELECT * FROM sessions ORDER BY stream_id, session_id",
        // Everything but `source`, which names the input file.
        "SELECT event_id, type, ts, stream_id, listener_key, session_id, reason, displayed, state, \
         scheduled_start, client, region, audio_ms, late FROM events ORDER BY event_id",
        "SELECT reason_code, payload FROM rejects ORDER BY reason_code, payload",
    ] {
        out += &ok(earshot()
            .args(["sql", "--format", "csv", "--data"])
            .arg(data)
            .arg(q)
            .output()
            .unwrap());
    }
    out
}

/// Inputs are recognised by their bytes, not their names: gzip and zstd are read as the plain file
/// they hold, and a UTF-8 byte-order mark does not make the first line a reject.
#[test]
fn compressed_inputs_and_a_byte_order_mark_give_the_plain_files_tables() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("events.ndjson");
    ok(earshot()
        .args(["simulate", "--listeners", "300", "--output"])
        .arg(&plain)
        .output()
        .unwrap());
    ingest(&plain, &dir.path().join("plain"));
    let expected = all_tables(&dir.path().join("plain"));
    assert!(expected.lines().count() > 1000, "{}", expected.len());
    // Names that say nothing of the content: earshot must look at the bytes.
    let gz = dir.path().join("events-gz.data");
    let zst = dir.path().join("events-zst.data");
    let sh = |script: String| {
        let status = Command::new("sh").arg("-c").arg(&script).status().unwrap();
        assert!(status.success(), "{script}");
    };
    sh(format!("gzip -c {} > {}", plain.display(), gz.display()));
    sh(format!(
        "zstd -q -c {} > {}",
        plain.display(),
        zst.display()
    ));
    let bom = dir.path().join("events-bom.ndjson");
    let mut with_bom = vec![0xef, 0xbb, 0xbf];
    with_bom.extend(std::fs::read(&plain).unwrap());
    std::fs::write(&bom, with_bom).unwrap();
    for (input, name) in [(&gz, "gzip"), (&zst, "zstd"), (&bom, "bom")] {
        let data = dir.path().join(name);
        ingest(input, &data);
        assert_eq!(all_tables(&data), expected, "{name}");
        // The manifest's digest is of the bytes as they came, so an auditor can re-check them.
        let manifest: Value = serde_json::from_str(
            &std::fs::read_to_string(data.join("current").join("manifest.json")).unwrap(),
        )
        .unwrap();
        let bytes = std::fs::read(input).unwrap();
        let digest = Command::new("sha256sum").arg(input).output().unwrap();
        let digest = String::from_utf8_lossy(&digest.stdout);
        assert_eq!(
            manifest["inputs"][0]["sha256"].as_str().unwrap(),
            digest.split_whitespace().next().unwrap(),
            "{name}: {} bytes",
            bytes.len()
        );
    }
}

/// Contract §4 v1.2, the case that moved time for everyone before: six events of one session, a day
/// ahead, in the middle of a 2,000-listener event. They are refused as `ts_uncorroborated`, and
/// every table but `rejects` is as without them.
#[test]
fn a_device_a_day_ahead_changes_no_other_figure() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("events.ndjson");
    ok(earshot()
        .args(["simulate", "--listeners", "2000", "--output"])
        .arg(&plain)
        .output()
        .unwrap());
    let text = std::fs::read_to_string(&plain).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let middle = lines.len() / 2;
    let ts_of = |line: &str| {
        let v: Value = serde_json::from_str(line).ok()?;
        earshot_contract::parse_rfc3339_ms(v["ts"].as_str()?)
    };
    let at = lines[middle..]
        .iter()
        .find_map(|l| ts_of(l))
        .expect("a valid line after the middle");
    let day = 86_400_000;
    let device: Vec<String> = ["join", "connect", "heartbeat", "heartbeat", "heartbeat", "leave"]
        .iter()
        .enumerate()
        .map(|(k, kind)| {
            format!(
                r#"{{"v":1,"event_id":"device-{k}","type":"{kind}","ts":"{}","stream_id":"town-hall-main","listener_id":"the-device","session_id":"device-session"}}"#,
                earshot_contract::format_rfc3339_ms(at + day + k as i64 * 10_000)
            )
        })
        .collect();
    for (k, line) in device.iter().enumerate() {
        lines.insert(middle + k * 50, line);
    }
    let with_device = dir.path().join("with-device.ndjson");
    std::fs::write(&with_device, lines.join("\n") + "\n").unwrap();
    ingest(&plain, &dir.path().join("plain"));
    ingest(&with_device, &dir.path().join("device"));
    for table in ["streams", "buckets", "rollups", "sessions"] {
        let q = format!("SELECT * FROM {table} ORDER BY 1, 2, 3");
        let csv = |data: &Path| {
            ok(earshot()
                .args(["sql", "--format", "csv", "--data"])
                .arg(data)
                .arg(&q)
                .output()
                .unwrap())
        };
        assert!(
            csv(&dir.path().join("plain")) == csv(&dir.path().join("device")),
            "{table} changed"
        );
    }
    let refused = sql_json(
        &dir.path().join("device"),
        "SELECT count(*) AS n FROM rejects WHERE reason_code = 'ts_uncorroborated'",
    );
    let before = sql_json(
        &dir.path().join("plain"),
        "SELECT count(*) AS n FROM rejects WHERE reason_code = 'ts_uncorroborated'",
    );
    assert_eq!(
        refused[0]["n"].as_i64().unwrap() - before[0]["n"].as_i64().unwrap(),
        6
    );
}

/// An input that is not NDJSON at all (a compressed format earshot does not read, a binary file,
/// an empty file) publishes nothing: the current generation stays, and the error says why, with
/// a hint from the reasons. `--allow-empty` publishes it when that is what is meant.
#[test]
fn an_input_of_rejects_leaves_the_current_tables_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("events.ndjson");
    ok(earshot()
        .args(["simulate", "--listeners", "100", "--output"])
        .arg(&plain)
        .output()
        .unwrap());
    let data = dir.path().join("data");
    ingest(&plain, &data);
    let before = all_tables(&data);
    let current = std::fs::read_link(data.join("current")).unwrap();
    // bzip2 (not read), random bytes, JSON that is no event, and nothing at all.
    let bz = dir.path().join("events.bz2");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("bzip2 -c {} > {}", plain.display(), bz.display()))
        .status()
        .unwrap();
    assert!(status.success());
    let noise = dir.path().join("noise.bin");
    std::fs::write(
        &noise,
        (0..20_000u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let json = dir.path().join("other.ndjson");
    std::fs::write(&json, "[1,2]\n{\"hello\":1}\n\"text\"\n".repeat(50)).unwrap();
    let empty = dir.path().join("empty.ndjson");
    std::fs::write(&empty, "\n\n").unwrap();
    for (input, hint) in [
        (&bz, "not UTF-8"),
        (&noise, "not UTF-8"),
        (&json, "JSON"),
        (&empty, "no lines"),
    ] {
        let out = earshot()
            .args(["ingest", "--input"])
            .arg(input)
            .arg("--data")
            .arg(&data)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: {err}", input.display());
        assert!(
            err.contains("nothing published")
                && err.contains(hint)
                && err.contains("--allow-empty"),
            "{}: {err}",
            input.display()
        );
        assert_eq!(std::fs::read_link(data.join("current")).unwrap(), current);
        assert_eq!(all_tables(&data), before, "{}", input.display());
    }
    // Asked for, it is published: every line a reject, no events.
    ok(earshot()
        .args(["ingest", "--allow-empty", "--input"])
        .arg(&json)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap());
    let rows = sql_json(
        &data,
        "SELECT (SELECT count(*) FROM events) AS e, (SELECT count(*) FROM rejects) AS r",
    );
    assert_eq!(rows[0]["e"], 0);
    assert_eq!(rows[0]["r"], 150);
}
