//! `earshot audit` end to end: reviewed snapshots of all three formats (and the chart), byte-identical
//! re-runs, figures equal to the `streams` table, errors a journalist can act on, and the HTML report
//! rendered by headless Chromium with its chart drawn.
//!
//! Snapshots live in `tests/snapshots/audit/`. After a deliberate change, regenerate with
//! `EARSHOT_UPDATE_SNAPSHOTS=1 cargo test -p earshot-cli --test audit` and review the diff.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn earshot() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_earshot"));
    c.env("EARSHOT_PSEUDONYM_KEY", "audit-snapshot-key");
    c
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A fixed simulated event, ingested from stdin so no temporary path reaches the report.
fn data(dir: &Path) -> PathBuf {
    let events = ok(earshot()
        .args([
            "simulate",
            "--listeners",
            "300",
            "--seed",
            "5",
            "--stream-id",
            "town-hall",
        ])
        .output()
        .unwrap());
    let data = dir.join("data");
    let mut child = earshot()
        .args(["ingest", "--input", "-", "--data"])
        .arg(&data)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(events.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    data
}

fn audit(data: &Path, args: &[&str]) -> Output {
    earshot()
        .args(["audit", "--stream", "town-hall", "--data"])
        .arg(data)
        .args(args)
        .output()
        .unwrap()
}

fn snapshot(name: &str, got: &str) {
    let path = repo().join("tests/snapshots/audit").join(name);
    if std::env::var_os("EARSHOT_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "no snapshot {}: run with EARSHOT_UPDATE_SNAPSHOTS=1 and review",
            path.display()
        )
    });
    if want != got {
        let new = path.with_extension(format!(
            "{}.new",
            path.extension().unwrap().to_string_lossy()
        ));
        std::fs::write(&new, got).unwrap();
        panic!(
            "{} changed; the new output is in {} (diff them, review, then update)",
            path.display(),
            new.display()
        );
    }
}

#[test]
fn reports_match_reviewed_snapshots_and_rerun_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let md = dir.path().join("report.md");
    ok(audit(&data, &["--claim", "1M", "-o", md.to_str().unwrap()]));
    let md_text = std::fs::read_to_string(&md).unwrap();
    let svg = std::fs::read_to_string(dir.path().join("report.svg")).unwrap();
    assert!(md_text.contains("![Displayed, roster and connected over time](report.svg)"));
    let load_svg = std::fs::read_to_string(dir.path().join("report-load.svg")).unwrap();
    assert!(md_text.contains("(report-load.svg)"));
    snapshot("report.md", &md_text);
    snapshot("report.svg", &svg);
    snapshot("report-load.svg", &load_svg);
    let html = ok(audit(&data, &["--claim", "1M", "--format", "html"]));
    snapshot("report.html", &html);
    let json = ok(audit(
        &data,
        &[
            "--claim",
            "250",
            "--claim-kind",
            "unique",
            "--format",
            "json",
        ],
    ));
    snapshot("report.json", &json);

    // The same data and arguments give the same bytes; --stamp is the only way to add a time.
    ok(audit(&data, &["--claim", "1M", "-o", md.to_str().unwrap()]));
    assert_eq!(std::fs::read_to_string(&md).unwrap(), md_text);
    assert_eq!(
        ok(audit(&data, &["--claim", "1M", "--format", "html"])),
        html
    );
    let stamped = ok(audit(&data, &["--stamp"]));
    assert!(stamped.contains("Report generated at 20"), "{stamped}");
}

#[test]
fn figures_are_the_streams_table_and_the_verdict_follows_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let report: Value =
        serde_json::from_str(&ok(audit(&data, &["--claim", "1.3M", "--format", "json"]))).unwrap();
    let row: Value = serde_json::from_str(&ok(earshot()
        .args(["sql", "--format", "json", "--data"])
        .arg(&data)
        .arg("SELECT * FROM streams")
        .output()
        .unwrap()))
    .unwrap();
    let row = &row[0];
    for col in [
        "peak_displayed",
        "peak_roster",
        "peak_connected",
        "listeners_joined",
        "listeners_connected",
        "listeners_connected_60s",
        "sessions",
        "failed_joins",
        "abandoned_before_audio",
        "ghost_sessions",
        "ttfa_ms_p50",
        "ttfa_ms_p90",
        "start_delay_ms",
    ] {
        assert_eq!(report["figures"][col]["value"], row[col], "{col}");
        assert_eq!(report["figures"][col]["exact"], true, "{col}");
    }
    assert_eq!(report["figures"]["joined_hll"]["exact"], false);
    let est = report["figures"]["joined_hll"]["value"].as_i64().unwrap();
    let iv = &report["figures"]["joined_hll"]["interval_95"];
    assert!(iv[0].as_i64().unwrap() <= est && est <= iv[1].as_i64().unwrap());
    let star: Vec<&Value> = report["sensitivity"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["as_ingested"] == true)
        .collect();
    assert_eq!(star.len(), 1);
    assert_eq!(star[0]["peak_connected"], row["peak_connected"]);
    assert_eq!(
        star[0]["listeners_listened_min"],
        row["listeners_connected_60s"]
    );
    // 1.3M concurrent against a 300-account stream: no measure supports it.
    assert_eq!(report["claim"]["value"], 1_300_000);
    assert!(
        report["verdict"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("Not supported by any measure")
    );
    // The input's SHA-256 is recorded.
    let sha = report["provenance"]["manifest"]["inputs"][0]["sha256"]
        .as_str()
        .unwrap();
    assert_eq!(sha.len(), 64);
    // Every query the report ran is quoted with its hash.
    let names: Vec<&str> = report["provenance"]["queries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "streams",
            "audit_figures",
            "timeline",
            "event_counts",
            "failures_by_minute",
            "overload",
            "failure_by_load",
            "rejects_by_reason"
        ]
    );
}

#[test]
fn errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let out = earshot()
        .args(["audit", "--stream", "nope", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no stream \"nope\" in the data; the streams are: town-hall")
    );
    let out = audit(&data, &["--claim", "about a million"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a number of listeners"));
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = earshot()
        .args(["audit", "--stream", "x", "--data"])
        .arg(&empty)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no earshot data"));
}

#[test]
fn chromium_draws_the_html_chart() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path());
    let html = dir.path().join("report.html");
    ok(audit(
        &data,
        &[
            "--claim",
            "1M",
            "--format",
            "html",
            "-o",
            html.to_str().unwrap(),
        ],
    ));
    // Kept as a CI artifact; a fresh clone built with CARGO_TARGET_DIR elsewhere has no target/ yet.
    let shot = repo().join("target/audit-report.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let profile = dir.path().join("chromium-profile");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1000,1200",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("chromium must be installed (scripts/setup installs it)");
    assert!(
        out.status.success() && shot.exists(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts = ok(Command::new("python3")
        .arg(repo().join("tests/png_colors.py"))
        .arg(&shot)
        .args(["1d4ed8", "e76f51", "fce7d7"])
        .output()
        .unwrap());
    let n: Vec<u64> = counts
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    // The connected line, the roster line and the shaded gap are each drawn with hundreds of pixels.
    assert!(n.iter().all(|&c| c > 200), "chart not drawn: {counts}");
}

/// The audit of `data` with `args` as HTML, as headless Chromium reads it (its DOM).
fn html_dom(dir: &Path, data: &Path, name: &str, args: &[&str]) -> String {
    let html = dir.join(format!("{name}.html"));
    let mut all = args.to_vec();
    all.extend(["--format", "html", "-o", html.to_str().unwrap()]);
    ok(audit(data, &all));
    ok(Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--dump-dom",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join(format!("{name}-profile")).display()
        ))
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("chromium must be installed (scripts/setup installs it)"))
}

/// A simulated platform of capacity `capacity` (`earshot simulate --capacity`) tried by
/// `listeners`, ingested into `dir`.
fn capacity_data(dir: &Path, capacity: u32, listeners: u32) -> PathBuf {
    let input = dir.join(format!("capacity-{capacity}.ndjson"));
    ok(earshot()
        .args(["simulate", "--capacity", &capacity.to_string()])
        .args(["--listeners", &listeners.to_string()])
        .args([
            "--mean-listen",
            "120m",
            "--start-delay",
            "0s",
            "--seed",
            "9",
        ])
        .args(["--stream-id", "town-hall", "--output"])
        .arg(&input)
        .output()
        .unwrap());
    let data = dir.join(format!("capacity-{capacity}"));
    ok(earshot()
        .args(["ingest", "--input"])
        .arg(&input)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap());
    data
}

#[test]
fn a_capacity_claim_is_contradicted_by_failures_below_it_and_unchecked_above_the_audience() {
    let dir = tempfile::tempdir().unwrap();
    // Overloaded: 3,000 served at once, 6,000 trying.
    let data = capacity_data(dir.path(), 3_000, 6_000);
    let json: Value = serde_json::from_str(&ok(audit(
        &data,
        &["--claim-capacity", "8M", "--format", "json"],
    )))
    .unwrap();
    let load = &json["failures_against_load"];
    let roster = load["overload_point"]["roster"].as_i64().unwrap();
    assert!(
        (roster - 3_000).abs() <= 150,
        "overload point at {roster}, not within 5 % of the capacity of 3,000"
    );
    let verdict = load["capacity_claim"]["verdict"].as_str().unwrap();
    assert!(
        verdict.starts_with("Contradicted") && verdict.contains("below the claimed 8,000,000"),
        "{verdict}"
    );
    let served = load["capacity_served"]["connected"].as_i64().unwrap();
    assert!(served <= load["largest_connected"].as_i64().unwrap());
    assert!(load["minutes"].as_array().unwrap().len() > 30);
    // The Markdown says it in words, with the time zone named.
    let md = ok(audit(&data, &["--claim-capacity", "8M"]));
    assert!(
        md.contains("## Failures against load") && md.contains("UTC"),
        "{md}"
    );

    // The HTML's chart of failure rate against load, as a browser reads it: a point per rated
    // minute and the overload point ringed.
    let dom = html_dom(dir.path(), &data, "capacity", &["--claim-capacity", "8M"]);
    let rated = load["minutes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| !m["failure_rate"].is_null() && !m["roster_start"].is_null())
        .count();
    assert_eq!(
        dom.matches("class=\"minute\"").count(),
        rated,
        "one point per rated minute"
    );
    assert_eq!(dom.matches("class=\"overload-point\"").count(), 1);

    // Under capacity: the data can neither confirm nor refute a claim above its audience.
    let overloaded = data.clone();
    let data = capacity_data(dir.path(), 50_000, 2_000);
    let json: Value = serde_json::from_str(&ok(audit(
        &data,
        &["--claim-capacity", "8M", "--format", "json"],
    )))
    .unwrap();
    let load = &json["failures_against_load"];
    assert!(load["overload_point"].is_null(), "{load}");
    let verdict = load["capacity_claim"]["verdict"].as_str().unwrap();
    assert!(
        verdict.starts_with("Cannot be checked") && verdict.contains("neither confirm nor refute"),
        "{verdict}"
    );

    // Side by side, across data directories: each event's own figures, one table, one chart.
    let both: Value = serde_json::from_str(&ok(audit(
        &overloaded,
        &[
            "--compare",
            "town-hall",
            "--compare-data",
            data.to_str().unwrap(),
            "--format",
            "json",
        ],
    )))
    .unwrap();
    assert!(!both["failures_against_load"]["overload_point"].is_null());
    assert!(both["compare"]["failures_against_load"]["overload_point"].is_null());
    assert_eq!(
        both["compare"]["figures"]["peak_connected"], json["figures"]["peak_connected"],
        "the other event's figures are its own report's"
    );
    let md = ok(audit(
        &overloaded,
        &[
            "--compare",
            "town-hall",
            "--compare-data",
            data.to_str().unwrap(),
        ],
    ));
    assert!(
        md.contains("## Side by side") && md.contains("| overload point | "),
        "{md}"
    );
    let other = data.to_str().unwrap();
    let dom = html_dom(
        dir.path(),
        &overloaded,
        "both",
        &["--compare", "town-hall", "--compare-data", other],
    );
    let chart = &dom[dom
        .find("id=\"compare-chart\"")
        .expect("the side-by-side chart")..];
    assert!(chart.contains("fill=\"#1d4ed8\"") && chart.contains("fill=\"#e76f51\""));
}
