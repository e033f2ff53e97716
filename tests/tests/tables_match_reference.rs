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
        ingest(vec![input], dir.path(), settings, &p, &mut |_| {}).unwrap();
        let (want, _) = reference(&parse_all(&one_partition, &p), &settings);
        let ctx = rt.block_on(earshot_sql::context(dir.path())).unwrap();

        let got = sql_rows(
            &rt,
            &ctx,
            &format!(
                "SELECT {} FROM sessions ORDER BY stream_id, session_id",
                joined(&[
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
                    "region"
                ])
            ),
        );
        let expected: Vec<String> = want
            .sessions
            .iter()
            .map(|s| {
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
            })
            .collect();
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
