//! No query can take the server down: users' SQL runs in worker processes that the server starts,
//! supervises and replaces. These tests go looking, the way an attacker would: query texts built
//! deep and wide over every recursive construct of the grammar, sent over HTTP, Postgres and the
//! CLI; workers killed mid-query from outside; cancel requests; the connection cap.

use std::process::Command;
use std::time::{Duration, Instant};

mod serving;
use serving::*;

/// The time limit the corpus runs with.
const LIMIT: Duration = Duration::from_secs(1);
/// Every query is answered or stopped within the limit, the front's one-second grace, and this
/// for starting processes (psql, `earshot sql`, a worker) on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(4);
/// The guard's size limit (256 KiB): texts are built up to just under it.
const MAX_TEXT: usize = 250_000;

/// One recursive construct: a text with `n` levels or terms.
struct Construct {
    name: &'static str,
    build: fn(usize) -> String,
    /// Bytes per level, to stay under [`MAX_TEXT`].
    unit: usize,
}

fn nested(open: &str, middle: &str, close: &str, n: usize) -> String {
    format!("{}{middle}{}", open.repeat(n), close.repeat(n))
}

/// Every construct of the grammar that nests or chains.
fn constructs() -> Vec<Construct> {
    vec![
        Construct {
            name: "union",
            build: |n| format!("SELECT 1 AS x{}", " UNION ALL SELECT 1".repeat(n)),
            unit: 19,
        },
        Construct {
            name: "except",
            build: |n| format!("SELECT 1 AS x{}", " EXCEPT SELECT 2".repeat(n)),
            unit: 16,
        },
        Construct {
            name: "joins",
            build: |n| {
                let mut s = "SELECT count(*) FROM streams s0".to_string();
                for i in 1..=n {
                    s += &format!(
                        " JOIN streams s{i} ON s{i}.stream_id = s{}.stream_id",
                        i - 1
                    );
                }
                s
            },
            unit: 50,
        },
        Construct {
            name: "cte chain",
            build: |n| {
                let mut s = "WITH t0 AS (SELECT 1 AS x)".to_string();
                for i in 1..=n {
                    s += &format!(", t{i} AS (SELECT x FROM t{})", i - 1);
                }
                s + &format!(" SELECT * FROM t{n}")
            },
            unit: 32,
        },
        Construct {
            name: "postfix cast",
            build: |n| format!("SELECT 1{}", "::BIGINT".repeat(n)),
            unit: 8,
        },
        Construct {
            name: "postfix is",
            build: |n| format!("SELECT 1{}", " IS NOT NULL".repeat(n)),
            unit: 12,
        },
        Construct {
            name: "infix",
            build: |n| format!("SELECT 1{}", " + 1".repeat(n)),
            unit: 4,
        },
        Construct {
            name: "concat",
            build: |n| format!("SELECT 'a'{}", " || 'a'".repeat(n)),
            unit: 7,
        },
        Construct {
            name: "parentheses",
            build: |n| format!("SELECT {}", nested("(", "1", ")", n)),
            unit: 2,
        },
        Construct {
            name: "not",
            build: |n| format!("SELECT {}true", "NOT ".repeat(n)),
            unit: 4,
        },
        Construct {
            name: "minus",
            build: |n| format!("SELECT {}1", "- ".repeat(n)),
            unit: 2,
        },
        Construct {
            name: "case",
            build: |n| format!("SELECT {}", nested("CASE WHEN true THEN ", "1", " END", n)),
            unit: 24,
        },
        Construct {
            name: "derived tables",
            build: |n| {
                format!(
                    "SELECT * FROM {}",
                    nested("(SELECT * FROM ", "streams", ") t", n)
                )
            },
            unit: 18,
        },
        Construct {
            name: "scalar subqueries",
            build: |n| format!("SELECT {}", nested("(SELECT ", "1", ")", n)),
            unit: 9,
        },
        Construct {
            name: "in subqueries",
            build: |n| {
                format!(
                    "SELECT 1 AS x WHERE {}",
                    nested("1 IN (SELECT 1 WHERE ", "true", ")", n)
                )
            },
            unit: 22,
        },
        Construct {
            name: "function calls",
            build: |n| format!("SELECT {}", nested("abs(", "1", ")", n)),
            unit: 5,
        },
        Construct {
            name: "function arguments",
            build: |n| format!("SELECT coalesce({}1)", "1, ".repeat(n)),
            unit: 3,
        },
        Construct {
            name: "in list",
            build: |n| format!("SELECT 1 IN ({}1) AS x", "1,".repeat(n)),
            unit: 2,
        },
        Construct {
            name: "array literals",
            build: |n| format!("SELECT {}", nested("[", "1", "]", n)),
            unit: 2,
        },
        Construct {
            name: "subscripts",
            build: |n| format!("SELECT [1, 2]{}", "[1]".repeat(n)),
            unit: 3,
        },
        Construct {
            name: "field access",
            build: |n| format!("SELECT named_struct('a', 1){}", "['a']".repeat(n)),
            unit: 5,
        },
        Construct {
            name: "window",
            build: |n| {
                format!(
                    "SELECT count(*) OVER (PARTITION BY {}stream_id) FROM streams",
                    "stream_id, ".repeat(n)
                )
            },
            unit: 11,
        },
        Construct {
            name: "cube",
            build: |n| {
                format!(
                    "SELECT count(*) FROM events GROUP BY type, CUBE({}client)",
                    "client, ".repeat(n.min(30))
                )
            },
            unit: 8,
        },
    ]
}

/// The corpus: each construct at a few sizes, up to the size limit.
fn corpus() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for c in constructs() {
        let most = MAX_TEXT / c.unit;
        let mut sizes = vec![150, 2_000, most];
        sizes.retain(|&n| n <= most);
        sizes.dedup();
        for n in sizes {
            out.push((format!("{} × {n}", c.name), (c.build)(n)));
        }
    }
    out
}

/// The server still runs, answers `/healthz` and the dashboard API, and runs a user query.
fn still_serving(server: &mut Server, what: &str) {
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server died after {what}"
    );
    let t = Instant::now();
    assert_eq!(get(server.port, "/healthz").status, 200, "after {what}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "{what}: /healthz took {:?}",
        t.elapsed()
    );
    assert_eq!(get(server.port, "/v1/streams").status, 200, "after {what}");
    let one = http(server.port, "POST", "/v1/query", &[], b"SELECT 1 AS one");
    assert_eq!(one.status, 200, "after {what}: {}", one.text());
}

/// psql reading the query from its standard input (too long for an argument).
fn psql_stdin(pg_port: u16) -> Command {
    let mut c = psql(pg_port);
    c.args(["-f", "-"]);
    c
}

#[test]
fn generated_deep_and_wide_queries_never_take_the_server_down() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 150);
    let mut server = serve(
        &data,
        &[
            "--pg",
            "127.0.0.1:0",
            "--query-timeout",
            "1s",
            "--memory-limit",
            "256MiB",
        ],
        &[],
    );
    let pg_port = server.pg_port.unwrap();
    let pid = server.child.id();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for (what, sql) in corpus() {
        // HTTP: an answer or an error with a message, never a dropped connection.
        let t = Instant::now();
        let r = http(server.port, "POST", "/v1/query", &[], sql.as_bytes());
        assert!(
            t.elapsed() < LIMIT + SLACK,
            "{what} over HTTP took {:?}",
            t.elapsed()
        );
        if r.status != 200 {
            assert!(
                r.json()["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{what}: {} {}",
                r.status,
                r.text()
            );
        }
        *outcomes.entry(format!("http {}", r.status)).or_default() += 1;
        still_serving(&mut server, &what);

        // Postgres: a result, or an ERROR/FATAL with a message.
        let t = Instant::now();
        let out =
            with_stdin(&mut psql_stdin(pg_port), &sql).expect("psql (scripts/setup installs it)");
        assert!(
            t.elapsed() < LIMIT + SLACK,
            "{what} over Postgres took {:?}",
            t.elapsed()
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("ERROR:") || err.contains("FATAL:"),
            "{what} over Postgres: {:?} {err}",
            out.status
        );
        *outcomes
            .entry(format!(
                "postgres {}",
                if out.status.success() { "ok" } else { "error" }
            ))
            .or_default() += 1;
        still_serving(&mut server, &what);

        // The CLI: exits 0, or 1 with a message; never killed by a signal.
        let t = Instant::now();
        let mut cli = earshot();
        cli.args([
            "sql",
            "--query-timeout",
            "1s",
            "--memory-limit",
            "256MiB",
            "--data",
        ])
        .arg(&data);
        let out = with_stdin(&mut cli, &sql).unwrap();
        assert!(
            t.elapsed() < LIMIT + SLACK,
            "{what} in the CLI took {:?}",
            t.elapsed()
        );
        let err = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => {}
            Some(1) => assert!(err.contains("error:"), "{what} in the CLI: {err}"),
            other => panic!("{what}: the CLI ended with {other:?}: {err}"),
        }
        *outcomes
            .entry(format!("cli exit {}", out.status.code().unwrap_or(-1)))
            .or_default() += 1;
    }
    assert_eq!(server.child.id(), pid);
    eprintln!("outcomes: {outcomes:?}");
}

/// The worker processes `server` has now.
fn workers(server: &Server) -> Vec<u32> {
    children(server.child.id())
}

/// Waits until `f` holds, up to `within`.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A worker that dies mid-query (here: ended from outside, with SIGABRT as a crash ends a process
/// and with SIGKILL as the kernel's out-of-memory killer does) costs its client an error saying
/// so, and only that: the server and its other connections carry on, and a new worker takes its
/// place.
#[test]
fn a_worker_that_dies_mid_query_is_reported_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 150);
    let mut server = serve(
        &data,
        &["--pg", "127.0.0.1:0", "--query-timeout", "30s"],
        &[],
    );
    let pg_port = server.pg_port.unwrap();
    assert!(eventually(Duration::from_secs(10), || !workers(&server).is_empty()));

    // HTTP: the pool's worker dies under a running query.
    let port = server.port;
    let asked = std::thread::spawn(move || http(port, "POST", "/v1/query", &[], WORST.as_bytes()));
    std::thread::sleep(Duration::from_millis(500));
    // Every worker it has now (the one running the query among them).
    for w in &workers(&server) {
        Command::new("kill")
            .args(["-ABRT", &w.to_string()])
            .status()
            .unwrap();
    }
    let r = asked.join().unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.text().contains("signal 6") && r.text().contains("carries on"),
        "{}",
        r.text()
    );
    still_serving(&mut server, "a killed HTTP worker");

    // Postgres: a connection's worker dies; its client is told why; others carry on.
    let mut other = psql_stdin(pg_port);
    let before = workers(&server);
    let running = std::thread::spawn(move || with_stdin(&mut psql_stdin(pg_port), WORST).unwrap());
    let mut fresh = Vec::new();
    assert!(eventually(Duration::from_secs(10), || {
        fresh = workers(&server)
            .into_iter()
            .filter(|w| !before.contains(w))
            .collect();
        !fresh.is_empty()
    }));
    std::thread::sleep(Duration::from_millis(700));
    for w in &fresh {
        Command::new("kill")
            .args(["-KILL", &w.to_string()])
            .status()
            .unwrap();
    }
    let out = running.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("FATAL") && err.contains("killed by the operating system"),
        "{err}"
    );
    let fine = with_stdin(&mut other, "SELECT count(*) FROM streams").unwrap();
    assert!(
        fine.status.success(),
        "{}",
        String::from_utf8_lossy(&fine.stderr)
    );
    still_serving(&mut server, "a killed Postgres worker");
}

/// A Postgres client's cancel request stops its query (SQLSTATE 57014) and leaves the
/// connection usable; connections over `--pg-max-connections` are refused with 53300.
#[test]
fn cancel_requests_stop_queries_and_connections_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 150);
    let server = serve(
        &data,
        &[
            "--pg",
            "127.0.0.1:0",
            "--query-timeout",
            "60s",
            "--pg-max-connections",
            "3",
        ],
        &[],
    );
    let out = Command::new("python3")
        .arg(repo().join("tests/pg_limits.py"))
        .args(["--port", &server.pg_port.unwrap().to_string()])
        .args(["--max-connections", "3"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("FAIL"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The cancelled query's worker stopped working: no CPU to speak of afterwards.
    std::thread::sleep(Duration::from_millis(500));
    let before = tree_cpu_seconds(server.child.id());
    std::thread::sleep(Duration::from_millis(1500));
    let used = tree_cpu_seconds(server.child.id()) - before;
    assert!(used < 0.5, "{used} s of CPU after the cancel");
}

/// A query that ignores its deadline (here, one whose work never yields: a regular expression
/// over a join) is stopped within the deadline and a second, and after that no CPU is spent on it.
#[test]
fn a_query_that_does_not_stop_is_killed_a_second_after_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 150);
    let server = serve(
        &data,
        &["--pg", "127.0.0.1:0", "--query-timeout", "2s"],
        &[],
    );
    let sql = "SELECT count(*) FROM events a, events b \
               WHERE regexp_like(a.event_id || b.event_id, '^(a|aa)+$')";
    let t = Instant::now();
    let r = http(server.port, "POST", "/v1/query", &[], sql.as_bytes());
    let two = Duration::from_secs(2);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(t.elapsed() < two + SLACK, "{:?}", t.elapsed());
    let t = Instant::now();
    let out = with_stdin(&mut psql_stdin(server.pg_port.unwrap()), sql).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("57014") || err.contains("time limit"), "{err}");
    assert!(t.elapsed() < two + SLACK, "{:?}", t.elapsed());
    std::thread::sleep(Duration::from_millis(2000));
    let before = tree_cpu_seconds(server.child.id());
    std::thread::sleep(Duration::from_millis(1500));
    let used = tree_cpu_seconds(server.child.id()) - before;
    assert!(used < 0.5, "{used} s of CPU after the deadline");
}
