//! Tables are whole or refused: each file of a generation deleted, cut short, changed in place or
//! joined by a file nobody wrote, and every reader (`sql`, `audit`, `serve`, `check`, a resumed
//! ingest) fails with a message naming it, never with an empty or a bigger answer.

mod serving;
use std::path::{Path, PathBuf};

use serving::*;

/// Copies a data directory (its current generation only), as a fresh place to damage.
fn copy(data: &Path, to: &Path) -> PathBuf {
    let status = std::process::Command::new("cp")
        .args(["-a"])
        .arg(data)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
    to.to_owned()
}

/// Every file the generation's list names, and the list itself.
fn listed(generation: &Path) -> Vec<String> {
    let list: serde_json::Value =
        serde_json::from_slice(&std::fs::read(generation.join("files.json")).unwrap()).unwrap();
    let mut files: Vec<String> = list["files"].as_object().unwrap().keys().cloned().collect();
    files.push("files.json".into());
    files
}

/// Runs a reader; it must fail and name `file`.
fn fails_naming(what: &str, cmd: &mut std::process::Command, file: &str) {
    // A reader that took the damaged tables (a server would then run on) is stopped, and fails.
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .is_err()
        {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = done.send(());
    watchdog.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "{what} succeeded with {file} damaged: {stdout}"
    );
    let leaf = file.rsplit('/').next().unwrap();
    assert!(
        err.contains(leaf) || stdout.contains(leaf),
        "{what} did not name {file}: {err}{stdout}"
    );
}

fn readers_fail(data: &Path, file: &str) {
    fails_naming(
        "sql",
        earshot()
            .args(["sql", "--data"])
            .arg(data)
            .arg("SELECT count(*) FROM streams"),
        file,
    );
    fails_naming(
        "audit",
        earshot()
            .args(["audit", "--stream", "hall", "--data"])
            .arg(data),
        file,
    );
    fails_naming("check", earshot().args(["check", "--data"]).arg(data), file);
    fails_naming(
        "serve",
        earshot()
            .args(["serve", "--http", "127.0.0.1:0", "--data"])
            .arg(data),
        file,
    );
}

#[test]
fn every_file_deleted_truncated_or_changed_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data(tmp.path(), 200);
    let generation = std::fs::canonicalize(data.join("current")).unwrap();
    let files = listed(&generation);
    assert!(
        files.len() >= 8,
        "streams, buckets, rollups, sessions, events, rejects, manifest, list: {files:?}"
    );
    assert!(
        earshot()
            .args(["check", "--data"])
            .arg(&data)
            .output()
            .unwrap()
            .status
            .success()
    );
    for (n, file) in files.iter().enumerate() {
        for damage in ["delete", "truncate", "change"] {
            let place = copy(&data, &tmp.path().join(format!("d{n}-{damage}")));
            let path = std::fs::canonicalize(place.join("current"))
                .unwrap()
                .join(file);
            match damage {
                "delete" => std::fs::remove_file(&path).unwrap(),
                "truncate" => {
                    let len = std::fs::metadata(&path).unwrap().len();
                    let f = std::fs::File::options().write(true).open(&path).unwrap();
                    f.set_len(len / 2).unwrap();
                }
                _ => {
                    // Same size, one byte other, as an editor or `dd conv=notrunc` leaves it.
                    let mut bytes = std::fs::read(&path).unwrap();
                    let mid = bytes.len() / 2;
                    bytes[mid] ^= 0x5a;
                    std::fs::write(&path, bytes).unwrap();
                }
            }
            readers_fail(&place, file);
        }
    }
}

#[test]
fn a_file_nobody_wrote_and_a_changed_file_with_its_old_time_are_found() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data(tmp.path(), 200);
    // A part copied in (a second copy of the events would double every count).
    let place = copy(&data, &tmp.path().join("added"));
    let events = place.join("current/events");
    std::fs::copy(
        events.join("part-00000001.parquet"),
        events.join("part-00000009.parquet"),
    )
    .unwrap();
    readers_fail(&place, "events/part-00000009.parquet");

    // Copied without its times (`cp -r`, files written in any order after the list): still
    // whole, since only a file whose bytes differ is refused.
    let plain = tmp.path().join("plain-copy");
    let status = std::process::Command::new("cp")
        .args(["-rL"])
        .arg(&data)
        .arg(&plain)
        .status()
        .unwrap();
    assert!(status.success());
    let out = earshot()
        .args(["sql", "--data"])
        .arg(&plain)
        .arg("SELECT count(*) AS n FROM streams")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Changed in place with its time set back: only every byte against the list finds it, and
    // `earshot check` reads every byte.
    let place = copy(&data, &tmp.path().join("stealth"));
    let path = std::fs::canonicalize(place.join("current"))
        .unwrap()
        .join("streams.parquet");
    let before = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(before)
        .unwrap();
    fails_naming(
        "check",
        earshot().args(["check", "--data"]).arg(&place),
        "streams.parquet",
    );
}

#[test]
fn a_server_reports_a_file_lost_under_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data(tmp.path(), 200);
    let server = serve(&data, &["--pg", "127.0.0.1:0"], &[]);
    let ok = get(server.port, "/healthz");
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(
        get(server.port, "/metrics")
            .text()
            .contains("earshot_tables_whole 1")
    );
    let generation = std::fs::canonicalize(data.join("current")).unwrap();
    let part = listed(&generation)
        .into_iter()
        .find(|f| f.starts_with("sessions/"))
        .unwrap();
    // A worker that has the tables open already (it answered a query): the file then goes.
    let sql = "SELECT count(*) FROM sessions";
    let warm = http(server.port, "POST", "/v1/query", &[], sql.as_bytes());
    assert_eq!(warm.status, 200, "{}", warm.text());
    std::fs::remove_file(generation.join(&part)).unwrap();
    let sick = get(server.port, "/healthz");
    assert_eq!(sick.status, 503, "{}", sick.text());
    assert!(sick.text().contains(&part), "{}", sick.text());
    assert!(
        get(server.port, "/metrics")
            .text()
            .contains("earshot_tables_whole 0")
    );
    // A query that needs the file fails naming it, never reads it as fewer rows: over HTTP (the
    // worker that had the tables open), and over Postgres (a new connection's worker opens them).
    // (Another text than the warm-up's: a generation's answers are cached, and that one was
    // computed while the tables were whole.)
    let sql = "SELECT count(*) AS n FROM sessions";
    let r = http(server.port, "POST", "/v1/query", &[], sql.as_bytes());
    assert!(r.status >= 400, "{}", r.text());
    assert!(r.text().contains(&part), "{}", r.text());
    let err = psql_fails(server.pg_port.unwrap(), sql);
    assert!(err.contains(&part), "{err}");
}
