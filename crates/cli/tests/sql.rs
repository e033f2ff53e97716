//! `earshot sql`: canned queries with parameters, scripts on stdin, refusals, limits, and the
//! interactive prompt on a real pseudo-terminal (util-linux `script`).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn earshot() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_earshot"));
    c.env("EARSHOT_PSEUDONYM_KEY", "sql-test-secret");
    c
}

fn data_dir(dir: &Path) -> std::path::PathBuf {
    let input = dir.join("events.ndjson");
    let data = dir.join("data");
    let out = earshot()
        .args([
            "simulate",
            "--listeners",
            "400",
            "--stream-id",
            "hall",
            "--output",
        ])
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = earshot()
        .args(["ingest", "--input"])
        .arg(&input)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    data
}

fn sql(data: &Path, args: &[&str]) -> Output {
    earshot()
        .args(["sql", "--data"])
        .arg(data)
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn canned_queries_run_by_name_or_path_with_named_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir(dir.path());
    let by_name = sql(
        &data,
        &["-f", "reach", "--param", "stream=hall", "--format", "csv"],
    );
    assert!(by_name.status.success(), "{}", text(&by_name.stderr));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../queries/reach.sql");
    let by_path = sql(
        &data,
        &[
            "-f",
            path.to_str().unwrap(),
            "-p",
            "stream=hall",
            "--format",
            "csv",
        ],
    );
    assert_eq!(text(&by_name.stdout), text(&by_path.stdout));
    let csv = text(&by_name.stdout);
    assert!(
        csv.starts_with("stream_id,listeners_joined,listeners_joined_est,"),
        "{csv}"
    );
    assert!(
        csv.lines().nth(1).unwrap().starts_with("hall,400,"),
        "{csv}"
    );

    // A value cannot change what the query does: it is bound, not pasted.
    let injected = sql(
        &data,
        &[
            "-f",
            "reach",
            "-p",
            "stream=hall' OR '1'='1",
            "--format",
            "csv",
        ],
    );
    assert!(injected.status.success());
    assert_eq!(text(&injected.stdout).lines().count(), 1, "only the header");

    let missing = sql(&data, &["-f", "timeline"]);
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("the query needs --param stream=…"));
    let unknown = sql(&data, &["-f", "nope"]);
    assert!(
        text(&unknown.stderr)
            .contains("no canned query of that name (canned: streams, timeline, reach")
    );
    let bad_type = sql(
        &data,
        &[
            "SELECT count(*) FROM buckets WHERE bucket_start >= $from",
            "-p",
            "from=yesterday",
        ],
    );
    assert!(
        text(&bad_type.stderr).contains("parameter from: \"yesterday\" is not a valid Timestamp"),
        "{}",
        text(&bad_type.stderr)
    );
    let listed = sql(&data, &["--list"]);
    assert!(text(&listed.stdout).contains("time_to_first_audio"));
}

#[test]
fn scripts_on_stdin_run_statement_by_statement_and_stop_at_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir(dir.path());
    let mut child = earshot()
        .args(["sql", "--format", "csv", "--data"])
        .arg(&data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SELECT 'a;b' AS x; -- note; here\nSELECT count(*) AS n FROM streams;\nDROP TABLE streams;\nSELECT 3 AS never;\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert_eq!(text(&out.stdout), "x\na;b\nn\n1\n");
    let err = text(&out.stderr);
    assert!(
        err.contains("statement 3 of 4") && err.contains("DROP TABLE is refused"),
        "{err}"
    );
}

#[test]
fn limits_name_the_flag_that_raises_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir(dir.path());
    let slow = sql(
        &data,
        &[
            "--query-timeout",
            "300ms",
            "SELECT count(*) FROM generate_series(1, 100000000000)",
        ],
    );
    assert!(!slow.status.success());
    assert!(text(&slow.stderr).contains("time limit of 300 ms (raise it with --query-timeout)"));
    let big = sql(
        &data,
        &[
            "--memory-limit",
            "256KiB",
            "SELECT event_id, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC, 1",
        ],
    );
    assert!(!big.status.success());
    assert!(
        text(&big.stderr)
            .contains("memory than the limit of 256 KiB (raise it with --memory-limit)"),
        "{}",
        text(&big.stderr)
    );
}

#[test]
fn the_prompt_runs_multi_line_statements_commands_and_keeps_history() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir(dir.path());
    let history = dir.path().join("history");
    let cmd = format!(
        "{} sql --data {} --param stream=hall",
        env!("CARGO_BIN_EXE_earshot"),
        data.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("EARSHOT_PSEUDONYM_KEY", "sql-test-secret")
        .env("EARSHOT_HISTORY", &history)
        .env("TERM", "dumb")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("`script` (util-linux) must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"SELECT count(*)\n  AS n_streams FROM streams;\n\\dt\nSELECT nope;\n\\i reach\n\\q\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let screen = text(&out.stdout).replace('\r', "");
    assert!(screen.contains("n_streams"), "{screen}");
    assert!(
        screen.contains(" sessions"),
        "\\dt lists the tables: {screen}"
    );
    assert!(
        screen.contains("error: query failed") && screen.contains("nope"),
        "{screen}"
    );
    assert!(
        screen
            .lines()
            .any(|l| l.starts_with(" hall ") && l.contains("|              400 |")),
        "\\i reach with the start's --param: {screen}"
    );
    let saved = std::fs::read_to_string(&history).unwrap();
    assert!(saved.contains("AS n_streams FROM streams;"), "{saved}");
}
