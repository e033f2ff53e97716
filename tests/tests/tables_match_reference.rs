//! The whole file path — ingest, Parquet, DataFusion — gives the reference's figures: for random
//! adversarial scenarios written to NDJSON (with malformed lines mixed in), every row of `streams`,
//! `buckets` and `sessions` read back through SQL equals the reference implementation's.

use earshot_contract::{Millis, Pseudonymizer};
use earshot_core::Settings;
use earshot_ingest::{Input, ingest};
use earshot_sketch::Sketch;
use earshot_tests::{parse_all, reference::reference, scenario::scenario};

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or("-".into(), |x| x.to_string())
}

/// Runs a query whose single column is a `|`-joined VARCHAR; returns the rows.
fn sql_rows(
    rt: &tokio::runtime::Runtime,
    ctx: &earshot_sql::SessionContext,
    query: &str,
) -> Vec<String> {
    use arrow::array::{Array, AsArray};
    let batches = rt
        .block_on(earshot_sql::run(ctx, query))
        .unwrap_or_else(|e| panic!("{query}: {e}"));
    let mut out = Vec::new();
    for b in batches {
        let col = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        let col = col.as_string::<i32>();
        for i in 0..col.len() {
            out.push(col.value(i).to_owned());
        }
    }
    out
}

/// `a || '|' || b ...` with NULL shown as `-` and timestamps as epoch milliseconds.
fn joined(cols: &[&str]) -> String {
    cols.iter()
        .map(|c| {
            let (name, ts) = match c.strip_prefix('@') {
                Some(n) => (n, true),
                None => (*c, false),
            };
            let v = if ts {
                format!("CAST(CAST({name} AS BIGINT) AS VARCHAR)")
            } else {
                format!("CAST({name} AS VARCHAR)")
            };
            format!("coalesce({v}, '-')")
        })
        .collect::<Vec<_>>()
        .join(" || '|' || ")
}

/// The columns of `sessions` compared, for [`joined`] (`@`: a timestamp).
const SESSION_COLUMNS: [&str; 12] = [
    "stream_id",
    "session_id",
    "listener_key",
    "@join_ts",
    "@connect_ts",
    "@end_ts",
    "end_type",
    "end_reason",
    "listened_ms",
    "heartbeats",
    "client",
    "region",
];

/// A `sessions` row as [`joined`] of [`SESSION_COLUMNS`] gives it back.
fn session_line(s: &earshot_core::SessionRow) -> String {
    [
        s.stream_id.clone(),
        s.session_id.clone(),
        s.listener_key.to_hex(),
        s.join_ts.to_string(),
        opt(s.connect_ts),
        opt(s.end_ts),
        opt(s.end_type.map(|e| e.as_str())),
        opt(s.end_reason.clone()),
        s.listened_ms.to_string(),
        s.heartbeats.to_string(),
        opt(s.client.clone()),
        opt(s.region.clone()),
    ]
    .join("|")
}

fn count(bytes: &[u8]) -> u64 {
    Sketch::from_bytes(bytes).unwrap().count()
}

#[test]
fn ingested_tables_equal_the_reference() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let secret = b"tables-test";
    let p = Pseudonymizer::new(secret);
    let settings = Settings::default();
    let mut compared = [0usize; 3];
    for seed in 0..25u64 {
        let lines = scenario(seed, settings.lateness_ms);
        // One file is one partition: deliver everything in arrival order on partition 0.
        let mut text = String::new();
        let mut one_partition = Vec::new();
        for (i, (_, l)) in lines.iter().enumerate() {
            if i % 7 == 3 {
                text.push_str("{\"v\":1,\"broken\n");
            }
            text.push_str(l);
            text.push('\n');
            one_partition.push((0u32, l.clone()));
        }
        let dir = tempfile::tempdir().unwrap();
        let input = Input::from_reader(
            "file:scenario.ndjson",
            std::io::Cursor::new(text.into_bytes()),
        );
        // One to three counting threads: the sharded count must give the reference's tables too.
        let threads = 1 + (seed % 3) as usize;
        ingest(
            vec![input],
            dir.path(),
            settings,
            &p,
            threads,
            true,
            &mut |_| {},
        )
        .unwrap();
        let (want, _) = reference(&parse_all(&one_partition, &p), &settings);
        let ctx = rt.block_on(earshot_sql::context(dir.path())).unwrap();

        let got = sql_rows(
            &rt,
            &ctx,
            &format!(
                "SELECT {} FROM sessions ORDER BY stream_id, session_id",
                joined(&SESSION_COLUMNS)
            ),
        );
        let expected: Vec<String> = want.sessions.iter().map(session_line).collect();
        assert_eq!(got, expected, "sessions, seed {seed}");
        compared[0] += got.len();

        let got = sql_rows(
            &rt,
            &ctx,
            &format!(
                "SELECT {} FROM buckets ORDER BY stream_id, bucket_start",
                joined(&[
                    "stream_id",
                    "@bucket_start",
                    "width_ms",
                    "displayed_start",
                    "roster_start",
                    "roster_peak",
                    "connected_start",
                    "connected_peak",
                    "joins",
                    "connects",
                    "leaves",
                    "drops",
                    "hll_count(present_hll)",
                    "hll_count(connected_hll)",
                    "final"
                ])
            ),
        );
        let expected: Vec<String> = want
            .buckets
            .iter()
            .map(|b| {
                [
                    b.stream_id.clone(),
                    b.bucket_start.to_string(),
                    b.width_ms.to_string(),
                    opt(b.displayed_start),
                    b.roster_start.to_string(),
                    b.roster_peak.to_string(),
                    b.connected_start.to_string(),
                    b.connected_peak.to_string(),
                    b.joins.to_string(),
                    b.connects.to_string(),
                    b.leaves.to_string(),
                    b.drops.to_string(),
                    count(&b.present_hll).to_string(),
                    count(&b.connected_hll).to_string(),
                    "true".into(),
                ]
                .join("|")
            })
            .collect();
        assert_eq!(got, expected, "buckets, seed {seed}");
        compared[1] += got.len();

        let got = sql_rows(
            &rt,
            &ctx,
            &format!(
                "SELECT {} FROM streams ORDER BY stream_id",
                joined(&[
                    "stream_id",
                    "@scheduled_start",
                    "@live_at",
                    "start_delay_ms",
                    "@first_event",
                    "@last_event",
                    "sessions",
                    "peak_displayed",
                    "peak_roster",
                    "peak_connected",
                    "listeners_joined",
                    "listeners_connected",
                    "listeners_connected_60s",
                    "failed_joins",
                    "abandoned_before_audio",
                    "ghost_sessions",
                    "ttfa_ms_p50",
                    "ttfa_ms_p90",
                    "hll_count(joined_hll)",
                    "hll_count(connected_hll)"
                ])
            ),
        );
        let ts = |v: Option<Millis>| opt(v);
        let expected: Vec<String> = want
            .streams
            .iter()
            .map(|s| {
                [
                    s.stream_id.clone(),
                    ts(s.scheduled_start),
                    ts(s.live_at),
                    opt(s.start_delay_ms),
                    s.first_event.to_string(),
                    s.last_event.to_string(),
                    s.sessions.to_string(),
                    opt(s.peak_displayed),
                    s.peak_roster.to_string(),
                    s.peak_connected.to_string(),
                    s.listeners_joined.to_string(),
                    s.listeners_connected.to_string(),
                    s.listeners_connected_60s.to_string(),
                    s.failed_joins.to_string(),
                    s.abandoned_before_audio.to_string(),
                    s.ghost_sessions.to_string(),
                    opt(s.ttfa_ms_p50),
                    opt(s.ttfa_ms_p90),
                    count(&s.joined_hll).to_string(),
                    count(&s.connected_hll).to_string(),
                ]
                .join("|")
            })
            .collect();
        assert_eq!(got, expected, "streams, seed {seed}");
        compared[2] += got.len();
    }
    assert!(
        compared[0] > 150 && compared[1] > 700 && compared[2] > 40,
        "{compared:?}"
    );
}

/// Every row of `buckets` and `rollups` as the parts give it back through SQL, and as the
/// publish's rows say it should be, in the same form.
fn bucket_rows(
    rt: &tokio::runtime::Runtime,
    data: &std::path::Path,
    table: &str,
    rows: &[earshot_core::BucketRow],
) -> (Vec<String>, Vec<String>) {
    let ctx = rt.block_on(earshot_sql::context(data)).unwrap();
    let got = sql_rows(
        rt,
        &ctx,
        &format!(
            "SELECT {} || '|' || encode(present_hll, 'hex') || '|' || encode(connected_hll, 'hex') \
             FROM {table} ORDER BY stream_id, width_ms, bucket_start",
            joined(&[
                "stream_id",
                "width_ms",
                "@bucket_start",
                "roster_peak",
                "connected_start",
                "joins",
                "\"final\"",
                "present_listeners",
            ])
        ),
    );
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut want: Vec<(String, i64, i64, String)> = rows
        .iter()
        .map(|r| {
            let line = [
                r.stream_id.clone(),
                r.width_ms.to_string(),
                r.bucket_start.to_string(),
                r.roster_peak.to_string(),
                r.connected_start.to_string(),
                r.joins.to_string(),
                r.is_final.to_string(),
                r.present_listeners.to_string(),
                hex(&r.present_hll),
                hex(&r.connected_hll),
            ]
            .join("|");
            (r.stream_id.clone(), r.width_ms, r.bucket_start, line)
        })
        .collect();
    want.sort();
    (got, want.into_iter().map(|w| w.3).collect())
}

/// A live engine publishing after every few events: after each publish (and after a writer that
/// resumes the directory), `buckets` and `rollups` read back from their parts are exactly the
/// published rows, each once, and the parts of final rows stay few.
#[test]
fn bucket_and_rollup_parts_hold_every_published_row_once() {
    use earshot_store::{Generation, Manifest};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let settings = Settings {
        bucket_ms: 2_000,
        ..Settings::default()
    };
    let mut publishes = 0;
    let mut most_parts = 0;
    for seed in 0..10u64 {
        let events = parse_all(
            &scenario(seed, settings.lateness_ms),
            &Pseudonymizer::new(b"parts"),
        );
        let dir = tempfile::tempdir().unwrap();
        let mut engine = earshot_core::Engine::new(settings);
        engine.go_live();
        let mut generation = Generation::begin(dir.path()).unwrap();
        generation
            .checkpoint(&engine.publish(Some(i64::MIN)), &Manifest::default())
            .unwrap();
        let every = 1 + seed as usize % 3;
        for (i, (p, e)) in events.iter().enumerate() {
            engine.offer(*p, e);
            let last = i + 1 == events.len();
            if i % every != every - 1 && !last {
                continue;
            }
            if i == events.len() / 2 {
                // A new writer on the same directory: it knows the parts only by name.
                drop(generation);
                generation = Generation::resume(dir.path()).unwrap();
            }
            let final_through = if last { None } else { engine.watermark(*p) };
            let snap = engine.publish(final_through);
            generation.publish_figures(&snap).unwrap();
            publishes += 1;
            for (table, rows) in [("buckets", &snap.buckets), ("rollups", &snap.rollups)] {
                let (got, want) = bucket_rows(&rt, dir.path(), table, rows);
                assert_eq!(got, want, "{table}, seed {seed}, after {i} events");
                let parts = std::fs::read_dir(dir.path().join("current").join(table))
                    .unwrap()
                    .count();
                most_parts = most_parts.max(parts);
                // Final parts grow like a binary counter: about log2(rows) of them, plus open.
                let bound = 3 + (rows.len().max(1) as f64).log2().ceil() as usize * 2;
                assert!(
                    parts <= bound,
                    "{table}: {parts} files for {} rows",
                    rows.len()
                );
            }
        }
    }
    assert!(
        publishes > 100 && most_parts >= 3,
        "{publishes} {most_parts}"
    );
}

/// Checkpoints that add the sessions changed since the last one as a part of `sessions`, and now
/// and then rewrite them as one: after every checkpoint (and after a writer that resumes the
/// directory), `sessions` read through SQL is exactly the engine's rows, one per session.
#[test]
fn session_parts_read_as_the_latest_row_of_each_session() {
    use earshot_store::{CheckpointWith, Generation, Manifest, SessionRows};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let columns = joined(&SESSION_COLUMNS);
    let (mut checkpoints, mut most_parts, mut rewrites) = (0, 0, 0);
    for seed in 0..8u64 {
        let events = parse_all(&scenario(seed, 60_000), &Pseudonymizer::new(b"sessions"));
        let dir = tempfile::tempdir().unwrap();
        let mut engine = earshot_core::Engine::new(Settings::default());
        // Changed sessions are tracked while the engine is live, as a Kafka ingest's is.
        engine.go_live();
        let mut generation = Generation::begin(dir.path()).unwrap();
        generation
            .checkpoint(&engine.snapshot(None), &Manifest::default())
            .unwrap();
        let every = 2 + seed as usize % 4;
        for (i, (p, e)) in events.iter().enumerate() {
            engine.offer(*p, e);
            if i % every != every - 1 && i + 1 != events.len() {
                continue;
            }
            if i == events.len() / 2 {
                drop(generation);
                generation = Generation::resume(dir.path()).unwrap();
            }
            let changed = engine.take_changed_session_rows();
            let all = engine.session_rows();
            let sessions = if generation.sessions_rewrite_due(changed.len(), all.len()) {
                rewrites += 1;
                SessionRows::All(&all)
            } else {
                SessionRows::Changed(&changed)
            };
            let with = CheckpointWith {
                sessions,
                state: None,
            };
            generation
                .checkpoint_with(&engine.snapshot(None), &Manifest::default(), with)
                .unwrap();
            checkpoints += 1;
            let ctx = rt.block_on(earshot_sql::context(dir.path())).unwrap();
            let got = sql_rows(
                &rt,
                &ctx,
                &format!("SELECT {columns} FROM sessions ORDER BY stream_id, session_id"),
            );
            let want: Vec<String> = all.iter().map(session_line).collect();
            assert_eq!(got, want, "seed {seed}, after {i} events");
            let parts = std::fs::read_dir(dir.path().join("current/sessions"))
                .unwrap()
                .count();
            assert!(parts <= 16, "{parts} parts");
            most_parts = most_parts.max(parts);
        }
    }
    assert!(
        checkpoints > 100 && most_parts >= 4 && rewrites > 8,
        "{checkpoints} checkpoints, at most {most_parts} parts, {rewrites} rewrites"
    );
}

/// Every file under `dir` (relative path → bytes), but `rejects` (its `received_at` is the wall
/// clock) and the manifest (it records the run's own details).
fn files(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(dir).unwrap().display().to_string();
            if name.starts_with("rejects") || name == "manifest.json" || name == "files.json" {
                continue;
            }
            if path.is_dir() {
                todo.push(path);
            } else {
                out.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[test]
fn tables_are_byte_identical_at_1_2_3_and_8_counting_threads() {
    let p = Pseudonymizer::new(b"threads-test");
    let settings = Settings::default();
    let mut compared = 0;
    for seed in 0..20u64 {
        // Several inputs (the scenario's partitions), with malformed lines mixed in.
        let lines = scenario(seed, settings.lateness_ms);
        let mut texts: Vec<String> = Vec::new();
        for (i, (partition, l)) in lines.iter().enumerate() {
            let slot = *partition as usize;
            if texts.len() <= slot {
                texts.resize(slot + 1, String::new());
            }
            if i % 11 == 5 {
                texts[slot].push_str("{\"v\":1,\"type\":\"join\"\n");
            }
            texts[slot].push_str(l);
            texts[slot].push('\n');
        }
        let mut tables = Vec::new();
        for threads in [1, 2, 3, 8] {
            let dir = tempfile::tempdir().unwrap();
            let inputs = texts
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    Input::from_reader(
                        format!("file:part-{i}.ndjson"),
                        std::io::Cursor::new(t.clone().into_bytes()),
                    )
                })
                .collect();
            ingest(inputs, dir.path(), settings, &p, threads, true, &mut |_| {}).unwrap();
            tables.push((threads, files(&dir.path().join("current"))));
        }
        let (_, one) = &tables[0];
        assert!(
            one.keys().any(|k| k.starts_with("sessions")),
            "{:?}",
            one.keys()
        );
        for (threads, other) in &tables[1..] {
            assert_eq!(
                one.keys().collect::<Vec<_>>(),
                other.keys().collect::<Vec<_>>(),
                "files, seed {seed}, {threads} threads"
            );
            for (name, bytes) in one {
                assert!(
                    other[name] == *bytes,
                    "{name} differs at {threads} threads from 1, seed {seed}"
                );
                compared += 1;
            }
        }
    }
    assert!(compared > 200, "{compared} files compared");
}

/// A reader that gives `good` and then fails, as a file on a failing disk would.
struct FailsAfter {
    good: std::io::Cursor<Vec<u8>>,
}

impl std::io::Read for FailsAfter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match std::io::Read::read(&mut self.good, buf)? {
            0 => Err(std::io::Error::other("the disk went away")),
            n => Ok(n),
        }
    }
}

#[test]
fn an_input_that_fails_midway_ends_a_threaded_ingest_with_its_error() {
    let p = Pseudonymizer::new(b"threads-test");
    let lines = scenario(3, Settings::default().lateness_ms);
    let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    for threads in [1, 2, 8] {
        let dir = tempfile::tempdir().unwrap();
        let input = Input::from_reader(
            "file:failing.ndjson",
            FailsAfter {
                good: std::io::Cursor::new(text.clone().into_bytes()),
            },
        );
        // Returns (the counting and parsing threads all end), with the reader's error.
        let err = ingest(
            vec![input],
            dir.path(),
            Settings::default(),
            &p,
            threads,
            true,
            &mut |_| {},
        )
        .expect_err("a failing input is an error");
        assert!(err.to_string().contains("the disk went away"), "{err}");
    }
}
