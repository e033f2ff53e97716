//! Contract §3b, failures against load: `queries/failures_by_minute.sql` over ingested tables gives,
//! minute by minute, the attempts, served and failed, the failure rate, the concurrency and the
//! waits for audio that are computed here from the reference's sessions, stream row and one-minute
//! rollups, on random adversarial scenarios and at several bounds.

use earshot_contract::Pseudonymizer;
use earshot_core::{Settings, Snapshot};
use earshot_ingest::{Input, ingest};
use earshot_tests::{parse_all, reference::reference, scenario::scenario};

/// One minute's row as the query prints it (`|`-joined, `-` for NULL, the rate apart).
#[derive(Debug, PartialEq)]
struct Minute {
    row: String,
    rate: Option<f64>,
}

/// The nearest-rank percentile `p` of sorted `v`: the smallest value with at least p % at or below.
fn nearest_rank(v: &[i64], p: usize) -> Option<i64> {
    if v.is_empty() {
        return None;
    }
    let k = (p * v.len()).div_ceil(100).max(1);
    Some(v[k - 1])
}

/// §3b from the reference's rows, by definition, one minute at a time.
fn expected(snap: &Snapshot, stream: &str, bound: i64, min_attempts: i64) -> Vec<Minute> {
    use std::collections::BTreeMap;
    let st = snap.streams.iter().find(|s| s.stream_id == stream).unwrap();
    #[derive(Default)]
    struct Acc {
        attempts: i64,
        failed: i64,
        before_live: i64,
        waits: Vec<i64>,
    }
    let mut minutes: BTreeMap<i64, Acc> = BTreeMap::new();
    for s in snap.sessions.iter().filter(|s| s.stream_id == stream) {
        let attempt = match st.live_at {
            Some(live) if live > s.join_ts => live,
            _ => s.join_ts,
        };
        let minute = attempt.div_euclid(60_000) * 60_000;
        if let Some(c) = s.connect_ts {
            minutes.entry(minute).or_default().waits.push(c - attempt);
        }
        if attempt + bound > st.last_event {
            continue; // undecided
        }
        let acc = minutes.entry(minute).or_default();
        acc.attempts += 1;
        let served = s.connect_ts.is_some_and(|c| c - attempt <= bound);
        acc.failed += i64::from(!served);
        acc.before_live += i64::from(st.live_at.is_some_and(|live| s.join_ts < live));
    }
    let rollup = |m: i64| {
        snap.rollups
            .iter()
            .find(|r| r.stream_id == stream && r.width_ms == 60_000 && r.bucket_start == m)
    };
    let opt = |v: Option<i64>| v.map_or("-".to_string(), |x| x.to_string());
    minutes
        .into_iter()
        .filter(|(_, a)| a.attempts > 0)
        .map(|(m, mut a)| {
            a.waits.sort_unstable();
            let r = rollup(m);
            let row = [
                m.to_string(),
                a.attempts.to_string(),
                (a.attempts - a.failed).to_string(),
                a.failed.to_string(),
                opt(r.map(|r| r.roster_start)),
                opt(r.map(|r| r.roster_peak)),
                opt(r.map(|r| r.connected_start)),
                opt(r.map(|r| r.connected_peak)),
                opt(nearest_rank(&a.waits, 50)),
                opt(nearest_rank(&a.waits, 90)),
                a.before_live.to_string(),
            ]
            .join("|");
            let rate = (a.attempts >= min_attempts).then(|| a.failed as f64 / a.attempts as f64);
            Minute { row, rate }
        })
        .collect()
}

/// The query's rows for `stream`, in the same form.
fn queried(
    rt: &tokio::runtime::Runtime,
    ctx: &earshot_sql::SessionContext,
    stream: &str,
    bound: i64,
    min_attempts: i64,
) -> Vec<Minute> {
    use arrow::array::{Array, AsArray};
    let sql = earshot_sql::queries::EMBEDDED
        .iter()
        .find(|(n, _)| *n == "failures_by_minute")
        .unwrap()
        .1;
    let params = earshot_sql::Params::from_pairs([
        format!("stream={stream}"),
        format!("bound_ms={bound}"),
        format!("min_attempts={min_attempts}"),
    ])
    .unwrap();
    let (_, batches) = rt
        .block_on(earshot_sql::run_with(
            ctx,
            sql,
            &params,
            &earshot_sql::Limits::default(),
        ))
        .unwrap_or_else(|e| panic!("failures_by_minute: {e}"));
    let mut out = Vec::new();
    for b in batches {
        let text = |name: &str| {
            let c = b.column_by_name(name).unwrap();
            let c = if name == "minute" {
                arrow::compute::cast(c, &arrow::datatypes::DataType::Int64).unwrap()
            } else {
                c.clone()
            };
            arrow::compute::cast(&c, &arrow::datatypes::DataType::Utf8).unwrap()
        };
        let names = [
            "minute",
            "attempts",
            "served",
            "failed",
            "roster_start",
            "roster_peak",
            "connected_start",
            "connected_peak",
            "ttfa_ms_p50",
            "ttfa_ms_p90",
            "pre_start_waits",
        ];
        let cols: Vec<_> = names.iter().map(|n| text(n)).collect();
        let rate = b.column_by_name("failure_rate").unwrap();
        let rate = rate.as_primitive::<arrow::datatypes::Float64Type>();
        for i in 0..b.num_rows() {
            let row = cols
                .iter()
                .map(|c| {
                    let c = c.as_string::<i32>();
                    if c.is_null(i) {
                        "-".to_string()
                    } else {
                        c.value(i).to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("|");
            let rate = (!rate.is_null(i)).then(|| rate.value(i));
            out.push(Minute { row, rate });
        }
    }
    out
}

#[test]
fn failures_by_minute_follow_contract_3b() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let p = Pseudonymizer::new(b"failures-test");
    let settings = Settings::default();
    let mut minutes_compared = 0;
    let mut rates = 0;
    for seed in 0..12u64 {
        let lines = scenario(seed, settings.lateness_ms);
        let mut text = String::new();
        let mut one_partition = Vec::new();
        for (_, l) in &lines {
            text.push_str(l);
            text.push('\n');
            one_partition.push((0u32, l.clone()));
        }
        let dir = tempfile::tempdir().unwrap();
        let input = Input::from_reader("file:s.ndjson", std::io::Cursor::new(text.into_bytes()));
        ingest(vec![input], dir.path(), settings, &p, 1, true, &mut |_| {}).unwrap();
        let (want, _) = reference(&parse_all(&one_partition, &p), &settings);
        let ctx = rt.block_on(earshot_sql::context(dir.path())).unwrap();
        for stream in want.streams.iter().map(|s| s.stream_id.clone()) {
            // The contract's default bound and attempts, a strict bound, and a loose one.
            for (bound, min_attempts) in [(10_000, 20), (0, 1), (120_000, 3)] {
                let got = queried(&rt, &ctx, &stream, bound, min_attempts);
                let wanted = expected(&want, &stream, bound, min_attempts);
                assert_eq!(
                    got, wanted,
                    "seed {seed}, stream {stream}, bound {bound} ms, at least {min_attempts}"
                );
                minutes_compared += got.len();
                rates += got.iter().filter(|m| m.rate.is_some()).count();
            }
        }
    }
    // The scenarios must give minutes to compare, rates among them.
    assert!(
        minutes_compared > 100 && rates > 20,
        "{minutes_compared} minutes compared, {rates} with a rate"
    );
}
