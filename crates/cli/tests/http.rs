//! `earshot serve --http` against a real running server on 127.0.0.1: status codes, shapes,
//! ETag/304, 404/400 cases, the three `POST /v1/query` formats, tokens and CORS, `/metrics`, and the
//! live page loaded in headless Chromium with its plotted figures checked against the API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

mod serving;
use serving::*;

/// An RFC 3339 instant aligned down to a multiple of `ms` since the epoch.
fn aligned(t: &str, ms: i64) -> String {
    let at = earshot_contract::parse_rfc3339_ms(t).unwrap();
    earshot_contract::format_rfc3339_ms(at.div_euclid(ms) * ms)
}

fn cli_json(data: &Path, sql: &str) -> Value {
    let out = earshot()
        .args(["sql", "--format", "json", "--data"])
        .arg(data)
        .arg(sql)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_api_answers_with_the_tables_figures_and_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 800);
    let s = serve(&data, &[], &[]);

    let r = get(s.port, "/healthz");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");

    let r = get(s.port, "/v1/streams");
    assert_eq!(r.status, 200);
    let all = r.json();
    assert_eq!(all["streams"][0]["stream_id"], "hall");
    assert!(all["ingest"]["rejected"].as_u64().unwrap() > 0);

    let one = get(s.port, "/v1/streams/hall").json();
    let row = &cli_json(&data, "SELECT * FROM streams")[0];
    for col in [
        "peak_connected",
        "peak_roster",
        "peak_displayed",
        "listeners_joined",
        "failed_joins",
        "start_delay_ms",
    ] {
        assert_eq!(one[col], row[col], "{col}");
    }
    assert!(
        one["joined_hll"].is_number(),
        "sketches are estimates, not bytes: {one}"
    );

    // The timeline at the bucket width equals the buckets table.
    let tl = get(s.port, "/v1/streams/hall/timeline").json();
    assert_eq!(tl["step_ms"], 10_000);
    let buckets = cli_json(
        &data,
        "SELECT roster_start, roster_peak, connected_start, connected_peak, displayed_start FROM buckets ORDER BY bucket_start",
    );
    let points = tl["points"].as_array().unwrap();
    assert_eq!(points.len(), buckets.as_array().unwrap().len());
    for (p, b) in points.iter().zip(buckets.as_array().unwrap()) {
        assert_eq!(p["roster"], b["roster_start"]);
        assert_eq!(p["connected_peak"], b["connected_peak"]);
        assert_eq!(p["displayed"], b["displayed_start"]);
    }
    let keys: Vec<&str> = points[0]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    for k in [
        "start",
        "displayed",
        "roster",
        "roster_peak",
        "connected",
        "connected_peak",
        "ghosts",
        "joins",
        "drops",
        "present_listeners",
        "connected_listeners",
        "final",
    ] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    // At 5 minutes: peaks are the maxima of the buckets within, values at the start the first bucket's.
    let tl5 = get(s.port, "/v1/streams/hall/timeline?step=5m").json();
    assert_eq!(tl5["step_ms"], 300_000);
    let max_peak = points
        .iter()
        .map(|p| p["connected_peak"].as_i64().unwrap())
        .max()
        .unwrap();
    let max_peak5 = tl5["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["connected_peak"].as_i64().unwrap())
        .max()
        .unwrap();
    assert_eq!(max_peak, max_peak5);
    assert_eq!(max_peak, row["peak_connected"].as_i64().unwrap());
    let first = &tl5["points"][1];
    let t = first["start"].as_str().unwrap();
    let inner: Vec<&Value> = points
        .iter()
        .filter(|p| {
            let s = p["start"].as_str().unwrap();
            s >= t && s < tl5["points"][2]["start"].as_str().unwrap()
        })
        .collect();
    assert_eq!(inner.len(), 30);
    assert_eq!(first["roster"], inner[0]["roster"]);
    assert_eq!(
        first["joins"].as_i64().unwrap(),
        inner
            .iter()
            .map(|p| p["joins"].as_i64().unwrap())
            .sum::<i64>()
    );
    // from/to select a window.
    let w = get(
        s.port,
        &format!(
            "/v1/streams/hall/timeline?step=60s&from={t}&to={}",
            tl5["points"][2]["start"].as_str().unwrap()
        ),
    )
    .json();
    assert_eq!(w["points"].as_array().unwrap().len(), 5);

    // Whatever rows a step reads (the stored buckets, the minute or hour rollups, merged or not),
    // every point equals the query-time merge of the buckets' own sketches and figures.
    let (from, to) = (
        points[0]["start"].as_str().unwrap(),
        "2100-01-01T00:00:00.000Z",
    );
    for (step, ms) in [
        ("10s", 10_000),
        ("30s", 30_000),
        ("60s", 60_000),
        ("5m", 300_000),
        ("1h", 3_600_000),
    ] {
        let served = get(
            s.port,
            &format!("/v1/streams/hall/timeline?step={step}&to={to}"),
        )
        .json();
        let out = earshot()
            .args(["sql", "--format", "json", "--data"])
            .arg(&data)
            .args([
                "-f",
                "timeline_step",
                "--param",
                "stream=hall",
                "--param",
                "width=10000",
            ])
            .args(["--param", &format!("step_ms={ms}")])
            .args(["--param", &format!("from={}", aligned(from, ms))])
            .args(["--param", &format!("to={to}")])
            .output()
            .unwrap();
        let merged: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(served["points"], merged, "step {step}");
    }

    // Errors: 404 and 400 with messages, never 500.
    let r = get(s.port, "/v1/streams/nope");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("no stream"));
    assert_eq!(get(s.port, "/v1/streams/nope/timeline").status, 404);
    for (q, msg) in [
        ("step=7s", "not a multiple of the bucket width"),
        ("step=fast", "not a duration"),
        ("from=yesterday", "not an RFC 3339 time"),
        (
            "from=2024-08-13T01:00:00Z&to=2024-08-13T00:00:00Z",
            "from must be before to",
        ),
        ("colour=red", "unknown parameter"),
        ("step=1ms", "not a multiple"),
    ] {
        let r = get(s.port, &format!("/v1/streams/hall/timeline?{q}"));
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert!(
            r.json()["error"].as_str().unwrap().contains(msg),
            "{q}: {}",
            r.text()
        );
    }
    assert_eq!(get(s.port, "/v2/anything").status, 404);
}

#[test]
fn pollers_get_304_and_identical_requests_do_not_rerun_the_query() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 300);
    let s = serve(&data, &[], &[]);
    let path = "/v1/streams/hall/timeline?step=60s";
    let first = get(s.port, path);
    assert_eq!(first.status, 200);
    let etag = first.header("etag").unwrap().to_string();
    assert_eq!(first.header("cache-control"), Some("no-cache"));
    let again = http(s.port, "GET", path, &[("If-None-Match", &etag)], b"");
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    let same = get(s.port, path);
    assert_eq!(same.body, first.body);
    let metrics = get(s.port, "/metrics").text();
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(value("earshot_http_cache_hits_total") >= 2, "{metrics}");
    assert!(value("earshot_http_not_modified_total") >= 1, "{metrics}");
    // A stale tag gets the full response.
    assert_eq!(
        http(s.port, "GET", path, &[("If-None-Match", "\"old\"")], b"").status,
        200
    );
}

#[test]
fn post_query_returns_json_csv_or_arrow_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 300);
    let s = serve(&data, &[], &[]);
    let sql = b"SELECT stream_id, peak_connected FROM streams";
    let j = http(
        s.port,
        "POST",
        "/v1/query",
        &[("Accept", "application/json")],
        sql,
    );
    assert_eq!(j.status, 200);
    assert_eq!(j.json()[0]["stream_id"], "hall");
    let c = http(s.port, "POST", "/v1/query", &[("Accept", "text/csv")], sql);
    assert!(
        c.text().starts_with("stream_id,peak_connected\nhall,"),
        "{}",
        c.text()
    );
    let a = http(
        s.port,
        "POST",
        "/v1/query",
        &[("Accept", "application/vnd.apache.arrow.stream")],
        sql,
    );
    assert_eq!(
        a.header("content-type"),
        Some("application/vnd.apache.arrow.stream")
    );
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(a.body.clone()), None)
            .unwrap();
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    assert_eq!(
        j.json()[0]["peak_connected"],
        cli_json(&data, "SELECT peak_connected FROM streams")[0]["peak_connected"]
    );

    let r = http(s.port, "POST", "/v1/query", &[], b"DROP TABLE sessions");
    assert_eq!(r.status, 403);
    assert!(r.json()["error"].as_str().unwrap().contains("read-only"));
    let r = http(
        s.port,
        "POST",
        "/v1/query",
        &[],
        b"SELECT nope FROM streams",
    );
    assert_eq!(r.status, 400);
    assert_eq!(http(s.port, "POST", "/v1/query", &[], b"").status, 400);
    assert_eq!(
        http(s.port, "POST", "/v1/query", &[("Accept", "image/png")], sql).status,
        406
    );
    assert_eq!(
        http(s.port, "POST", "/v1/query", &[], &[0xff, 0xfe]).status,
        400
    );
    let r = http(s.port, "GET", "/metrics", &[], b"");
    let m = r.text();
    for name in [
        "earshot_events_total",
        "earshot_rejects_total{reason=",
        "earshot_late_events_total",
        "earshot_buckets_finalized",
        "earshot_generation_age_seconds",
        "earshot_query_duration_seconds_bucket{le=\"+Inf\"}",
        "earshot_http_requests_total{route=\"/v1/query\",status=\"403\"} 1",
    ] {
        assert!(m.contains(name), "{name} missing:\n{m}");
    }
}

#[test]
fn tokens_and_cors() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 200);
    let out = earshot()
        .args(["serve", "--http", "0.0.0.0:0", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without a token"));

    let s = serve(
        &data,
        &["--cors-origin", "https://newsroom.example"],
        &[("EARSHOT_HTTP_TOKEN", "t0ken")],
    );
    let r = get(s.port, "/v1/streams");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(
        http(
            s.port,
            "GET",
            "/v1/streams",
            &[("Authorization", "Bearer wrong")],
            b""
        )
        .status,
        401
    );
    let ok = http(
        s.port,
        "GET",
        "/v1/streams",
        &[("Authorization", "Bearer t0ken")],
        b"",
    );
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://newsroom.example")
    );
    assert_eq!(get(s.port, "/metrics").status, 401);
    assert_eq!(get(s.port, "/healthz").status, 200);
    assert_eq!(get(s.port, "/").status, 200);
    let pre = http(
        s.port,
        "OPTIONS",
        "/v1/streams",
        &[("Origin", "https://newsroom.example")],
        b"",
    );
    assert_eq!(pre.status, 204);

    let plain = serve(&data, &[], &[]);
    let r = get(plain.port, "/v1/streams");
    assert_eq!(r.status, 200);
    assert!(
        r.header("access-control-allow-origin").is_none(),
        "CORS is off unless configured"
    );
}

#[test]
fn chromium_plots_the_api_figures_on_the_live_page() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 600);
    let s = serve(&data, &[], &[]);
    let url = format!("http://127.0.0.1:{}/", s.port);
    let chromium = |extra: &[String]| {
        let profile = tempfile::tempdir().unwrap();
        Command::new("chromium")
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
                "--window-size=1100,900",
                "--virtual-time-budget=8000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(&url)
            .output()
            .expect("chromium must be installed (scripts/setup installs it)")
    };
    let dom = chromium(&["--dump-dom".to_string()]);
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page never finished loading:\n{dom}"
    );
    let api = get(s.port, "/v1/streams/hall").json();
    let attr = |name: &str| -> String {
        let key = format!("{name}=\"");
        let at = dom
            .find(&key)
            .unwrap_or_else(|| panic!("{name} not in the page"));
        dom[at + key.len()..].split('"').next().unwrap().to_string()
    };
    assert_eq!(
        attr("data-peak-connected"),
        api["peak_connected"].to_string()
    );
    assert_eq!(
        attr("data-max-connected-peak"),
        api["peak_connected"].to_string(),
        "the plotted line reaches the peak"
    );
    assert!(attr("data-points").parse::<u32>().unwrap() > 50);
    let figure = |key: &str| -> String {
        let tag = format!("data-figure=\"{key}\">");
        let at = dom.find(&tag).unwrap_or_else(|| panic!("{key} not shown"));
        dom[at + tag.len()..]
            .split('<')
            .next()
            .unwrap()
            .replace(',', "")
    };
    assert_eq!(figure("peak_connected"), api["peak_connected"].to_string());
    assert_eq!(
        figure("listeners_joined"),
        api["listeners_joined"].to_string()
    );
    assert_eq!(figure("failed_joins"), api["failed_joins"].to_string());

    let shot = repo().join("target/live-page.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let out = chromium(&[format!("--screenshot={}", shot.display())]);
    assert!(out.status.success() && shot.exists());
}

/// Query texts that used to end the process (a thread's stack overflowed while parsing or planning
/// them): each gets a clear error naming the limit, through HTTP, Postgres and the CLI alike, and the
/// server keeps answering.
#[test]
fn queries_too_deep_to_plan_are_refused_and_the_server_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 300);
    let server = serve(&data, &["--pg", "127.0.0.1:0"], &[]);
    let pg_port = server.pg_port.expect("serve printed its Postgres port");
    let terms = |n: usize, sep: &str, term: &str| vec![term; n].join(sep);
    let hostile = [
        (
            format!("SELECT {} AS x", terms(2_000, "+", "1")),
            "operators",
        ),
        (
            format!(
                "SELECT count(*) FROM events WHERE {}",
                terms(20_000, " OR ", "late")
            ),
            "operators",
        ),
        (
            format!(
                "SELECT count(*) FROM events WHERE {}",
                terms(100_000, " AND ", "late")
            ),
            "bytes long",
        ),
        (
            format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000)),
            "parentheses",
        ),
        (format!("SELECT 1 -- {}", "x".repeat(1 << 20)), "bytes long"),
        // Found by fuzzing: the parser backtracks at every level of these, so each level doubled
        // its time (hours for a few hundred bytes) before the parse depth was bounded.
        (
            format!("SELECT {}1{}", "abs(".repeat(40), ")".repeat(40)),
            "nests",
        ),
        (
            format!("SELECT {}x", "(CAST(b * SELECT ".repeat(12)),
            "nests",
        ),
    ];
    for (sql, says) in &hostile {
        let short: String = sql.chars().take(60).collect();
        let r = http(server.port, "POST", "/v1/query", &[], sql.as_bytes());
        assert_eq!(r.status, 400, "{short}: {}", r.text());
        assert!(
            r.text().contains(says) && r.text().contains("limit"),
            "{short}: {}",
            r.text()
        );
        let mut psql = psql(pg_port);
        psql.args(["-f", "-"]);
        let out =
            with_stdin(&mut psql, sql).expect("psql (scripts/setup installs postgresql-client)");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{short}: {err}"
        );
        // Too long for an argument: the CLI reads it as a script on standard input.
        let mut sql_cli = earshot();
        sql_cli.args(["sql", "--data"]).arg(&data);
        let cli = with_stdin(&mut sql_cli, sql).unwrap();
        let err = String::from_utf8_lossy(&cli.stderr);
        assert_eq!(cli.status.code(), Some(1), "{short}: {err}");
        assert!(err.contains(says), "{short}: {err}");
        // Still serving, on both endpoints.
        assert_eq!(get(server.port, "/healthz").status, 200);
        let one = http(server.port, "POST", "/v1/query", &[], b"SELECT 1 AS one");
        assert_eq!(one.status, 200, "{}", one.text());
    }
    // What stays allowed: a long but flat expression, through the server's threads.
    let flat = format!("SELECT {} AS x", terms(500, "+", "1"));
    let r = http(server.port, "POST", "/v1/query", &[], flat.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()[0]["x"], 500);
}

/// Reads until the server closes the connection or `wait` passes; returns what arrived and whether
/// the connection was closed.
fn read_until_closed(s: &mut TcpStream, wait: Duration) -> (String, bool) {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&got).into_owned(), true);
            }
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

/// Partial requests are timed out, idle connections closed, and open connections capped: slow or
/// idle clients cannot hold the server (19,980 idle connections were held open before).
#[test]
fn slow_and_idle_clients_are_cut_off_and_connections_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 200);
    let server = serve(
        &data,
        &[
            "--http-header-timeout",
            "6s",
            "--http-body-timeout",
            "700ms",
            "--http-max-connections",
            "16",
        ],
        &[],
    );
    let port = server.port;
    // Headers that never end.
    let mut partial = TcpStream::connect(("127.0.0.1", port)).unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut partial, Duration::from_secs(12));
    assert!(closed, "a request whose headers never end was kept open");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // A body that never arrives in full.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(
        b"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nSELECT",
    )
    .unwrap();
    let (reply, _) = read_until_closed(&mut slow, Duration::from_secs(5));
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("did not arrive within"), "{reply}");
    // Idle connections up to the cap are held (until the 6 s header timeout); one more is closed
    // at once.
    let mut idle: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // The server accepts them one by one: under load (other tests run queries beside this one)
    // it may not have taken all 16 yet, and an extra one is then rightly served. So ask again
    // until one is refused, well within the 6 s the idle ones are held.
    let held = Instant::now();
    let refused = loop {
        std::thread::sleep(Duration::from_millis(100));
        let mut extra = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        // A refused one is accepted and dropped; under load (8 tests at once on 2 cores) the
        // server can take more than 200 ms to get to it, which once failed this test.
        let (reply, closed) = read_until_closed(&mut extra, Duration::from_millis(800));
        if closed && reply.is_empty() {
            break true;
        }
        // Up to 5 s: on a loaded 2-core machine the server can take seconds to accept all 16
        // (seen at 1.4 s and past 1.8 s while the whole suite ran); the idle ones are held 6 s,
        // and with a shorter hold the first ones timed out before the last were accepted.
        if held.elapsed() > Duration::from_millis(5000) {
            break false;
        }
    };
    assert!(refused, "connections over the cap were served for 5 s");
    // The idle ones are closed by the header timeout, and the server answers again.
    for s in &mut idle {
        let (_, closed) = read_until_closed(s, Duration::from_secs(12));
        assert!(closed, "an idle connection was kept open");
    }
    assert_eq!(get(port, "/healthz").status, 200);
}

#[test]
fn heavy_queries_stop_at_their_limits_and_the_server_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 300);
    let server = serve(
        &data,
        &[
            "--pg",
            "127.0.0.1:0",
            "--query-timeout",
            "2s",
            "--memory-limit",
            "256MiB",
            "--max-queries",
            "2",
            "--queue-timeout",
            "300ms",
        ],
        &[],
    );
    let (port, pg_port) = (server.port, server.pg_port.unwrap());

    // Two worst-case queries take both turns.
    let started = Instant::now();
    let heavy: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let r = http(port, "POST", "/v1/query", &[], WORST.as_bytes());
                (r, started.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    // Meanwhile the server answers at once, and a third query is refused as busy.
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(get(port, "/healthz").status, 200);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    let busy = http(port, "POST", "/v1/query", &[], b"SELECT 1");
    assert_eq!(busy.status, 503, "{}", busy.text());
    assert_eq!(busy.header("retry-after"), Some("1"));
    assert!(busy.text().contains("--max-queries"), "{}", busy.text());
    let err = psql_fails(pg_port, "SELECT 1");
    assert!(err.contains("53300") && err.contains("busy"), "{err}");
    for h in heavy {
        let (r, took) = h.join().unwrap();
        assert_eq!(r.status, 422, "{}", r.text());
        assert!(r.text().contains("--query-timeout"), "{}", r.text());
        assert!(took < Duration::from_secs(5), "answered after {took:?}");
    }
    // The cancelled work has stopped: the server and its query workers use no CPU to speak of
    // afterwards.
    std::thread::sleep(Duration::from_millis(300));
    let before = tree_cpu_seconds(server.child.id());
    std::thread::sleep(Duration::from_millis(1500));
    let used = tree_cpu_seconds(server.child.id()) - before;
    assert!(
        used < 0.5,
        "the server used {used} s of CPU after its queries were cancelled"
    );

    // The same query through Postgres and the CLI stops at the time limit too.
    let t = Instant::now();
    let err = psql_fails(pg_port, WORST);
    assert!(err.contains("57014") && err.contains("time limit"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let t = Instant::now();
    let cli = earshot()
        .args(["sql", "--query-timeout", "2s", "--data"])
        .arg(&data)
        .arg(WORST)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&cli.stderr);
    assert_eq!(cli.status.code(), Some(1), "{err}");
    assert!(err.contains("time limit"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());

    // Values and results bigger than the memory limit are refused before they are built or sent.
    for sql in [
        "SELECT * FROM generate_series(1, 10000000000)",
        "SELECT repeat('x', 2000000000) AS x",
        "SELECT length(concat(repeat('a', 200000000), repeat('b', 200000000)))",
        "SELECT range(1, 10000000000)",
        "SELECT lpad('x', 2000000000)",
        "SELECT repeat('x', 200000000) AS x",
    ] {
        for accept in ["application/json", "text/csv"] {
            let r = http(
                port,
                "POST",
                "/v1/query",
                &[("Accept", accept)],
                sql.as_bytes(),
            );
            assert_eq!(r.status, 422, "{sql}: {}", r.text());
            assert!(r.text().contains("--memory-limit"), "{sql}: {}", r.text());
        }
    }
    let err = psql_fails(pg_port, "SELECT repeat('x', 2000000000)");
    assert!(err.contains("53200") && err.contains("memory"), "{err}");
    let cli = earshot()
        .args(["sql", "--memory-limit", "256MiB", "--data"])
        .arg(&data)
        .arg("SELECT repeat('x', 2000000000) AS x")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&cli.stderr);
    assert_eq!(cli.status.code(), Some(1), "{err}");
    assert!(err.contains("--memory-limit"), "{err}");
    // And afterwards everything still answers, small values of the same functions included.
    let ok = http(
        port,
        "POST",
        "/v1/query",
        &[],
        b"SELECT repeat('ab', 3) AS r, lpad('x', 3, '.') AS p, cardinality(range(1, 11)) AS n",
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()[0]["r"], "ababab");
    assert_eq!(ok.json()[0]["p"], "..x");
    assert_eq!(ok.json()[0]["n"], 10);
}

/// A Postgres client that sends a query and never reads its rows holds its connection, not a
/// turn: the turn is given back at the query's deadline.
#[test]
fn a_client_that_stops_reading_gives_back_its_turn_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 100);
    let server = serve(
        &data,
        &[
            "--pg",
            "127.0.0.1:0",
            "--query-timeout",
            "2s",
            "--max-queries",
            "1",
            "--queue-timeout",
            "300ms",
        ],
        &[],
    );
    let pg_port = server.pg_port.unwrap();
    // The wire protocol by hand: a startup message (protocol 3.0), then one simple query.
    let mut stalled = TcpStream::connect(("127.0.0.1", pg_port)).unwrap();
    let mut startup = 196_608u32.to_be_bytes().to_vec();
    for s in ["user", "earshot", "database", "earshot", ""] {
        startup.extend_from_slice(s.as_bytes());
        startup.push(0);
    }
    let mut msg = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&startup);
    let sql = b"SELECT * FROM generate_series(1, 1000000000)\0";
    msg.push(b'Q');
    msg.extend_from_slice(&((sql.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(sql);
    stalled.write_all(&msg).unwrap();
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(700));
    // Its rows fill the socket buffers; it still holds the one turn...
    let err = psql_fails(pg_port, "SELECT 1");
    assert!(err.contains("53300"), "{err}");
    // ...until its deadline, though it never reads.
    std::thread::sleep(
        Duration::from_secs(2).saturating_sub(started.elapsed()) + Duration::from_millis(700),
    );
    let r = http(server.port, "POST", "/v1/query", &[], b"SELECT 1 AS one");
    assert_eq!(r.status, 200, "{}", r.text());
    drop(stalled);
}
