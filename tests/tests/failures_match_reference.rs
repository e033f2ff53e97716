//! Contract §3b, failures against load: `queries/failures_by_minute.sql` over ingested tables gives,
//! minute by minute, the attempts, served and failed, the failure rate, the concurrency and the
//! waits for audio, and `queries/overload.sql` the overload point and the capacity served, that
//! are computed here from the reference's sessions, stream row and one-minute rollups, on random
//! adversarial scenarios, at several bounds, thresholds and persistences.

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

/// One minute's attempts, by definition.
#[derive(Default)]
struct Acc {
    attempts: i64,
    failed: i64,
    before_live: i64,
    waits: Vec<i64>,
}

/// §3b's attempts from the reference's sessions and stream row, by minute (minutes with only
/// undecided attempts hold only waits).
fn minutes(snap: &Snapshot, stream: &str, bound: i64) -> std::collections::BTreeMap<i64, Acc> {
    let st = snap.streams.iter().find(|s| s.stream_id == stream).unwrap();
    let mut minutes: std::collections::BTreeMap<i64, Acc> = Default::default();
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
    minutes
}

/// The reference's one-minute rollup starting at `m`.
fn rollup<'a>(snap: &'a Snapshot, stream: &str, m: i64) -> Option<&'a earshot_core::BucketRow> {
    snap.rollups
        .iter()
        .find(|r| r.stream_id == stream && r.width_ms == 60_000 && r.bucket_start == m)
}

fn opt(v: Option<i64>) -> String {
    v.map_or("-".to_string(), |x| x.to_string())
}

/// §3b per minute from the reference's rows, by definition.
fn expected(snap: &Snapshot, stream: &str, bound: i64, min_attempts: i64) -> Vec<Minute> {
    minutes(snap, stream, bound)
        .into_iter()
        .filter(|(_, a)| a.attempts > 0)
        .map(|(m, mut a)| {
            a.waits.sort_unstable();
            let r = rollup(snap, stream, m);
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

/// Ranks of `v` from 1, ties at their mean rank.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            out[order[k]] = mean;
        }
        i = j + 1;
    }
    out
}

/// Pearson's correlation of `x` and `y`; `None` when either does not vary.
fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    (vx > 0.0 && vy > 0.0).then(|| cov / (vx * vy).sqrt())
}

/// failure_by_load by its words: the rated minutes in ten bands of the roster at their start
/// (band = floor(10 · roster / largest), the largest in the last), each band's minutes, attempts
/// and failures; and Spearman's correlation of roster and failure rate.
fn by_load_expected(
    snap: &Snapshot,
    stream: &str,
    bound: i64,
    min_attempts: i64,
) -> (Vec<[i64; 4]>, Option<f64>) {
    let rated: Vec<(i64, i64, i64)> = minutes(snap, stream, bound)
        .into_iter()
        .filter(|(_, a)| a.attempts > 0 && a.attempts >= min_attempts)
        .filter_map(|(m, a)| {
            rollup(snap, stream, m).map(|r| (r.roster_start, a.attempts, a.failed))
        })
        .collect();
    if rated.is_empty() {
        return (Vec::new(), None);
    }
    let top = rated.iter().map(|r| r.0).max().unwrap().max(1);
    let mut bands = std::collections::BTreeMap::<i64, [i64; 4]>::new();
    for (roster, attempts, failed) in &rated {
        let band = ((10 * roster) / top).min(9);
        let b = bands.entry(band).or_insert([band * top / 10, 0, 0, 0]);
        b[1] += 1;
        b[2] += attempts;
        b[3] += failed;
    }
    let load: Vec<f64> = rated.iter().map(|r| r.0 as f64).collect();
    let rate: Vec<f64> = rated.iter().map(|r| r.2 as f64 / r.1 as f64).collect();
    (
        bands.into_values().collect(),
        pearson(&ranks(&load), &ranks(&rate)),
    )
}

/// The overload point and capacity served by §3b's words: the earliest minute that starts a run
/// of `persistence` rated minutes all above `threshold`, and the largest connected peak of a rated
/// minute at or under it; with the largest loads and the number of rated minutes.
fn overload_expected(
    snap: &Snapshot,
    stream: &str,
    bound: i64,
    min_attempts: i64,
    threshold: f64,
    persistence: usize,
) -> String {
    let rated: Vec<(i64, f64)> = minutes(snap, stream, bound)
        .into_iter()
        .filter(|(_, a)| a.attempts > 0 && a.attempts >= min_attempts)
        .map(|(m, a)| (m, a.failed as f64 / a.attempts as f64))
        .collect();
    let overload = (0..rated.len()).find(|&i| {
        i + persistence <= rated.len() && rated[i..i + persistence].iter().all(|r| r.1 > threshold)
    });
    let (o_minute, o_roster, o_connected, o_rate) = match overload {
        Some(i) => {
            let (m, rate) = rated[i];
            let r = rollup(snap, stream, m);
            (
                Some(m),
                r.map(|r| r.roster_start),
                r.map(|r| r.connected_start),
                Some(rate),
            )
        }
        None => (None, None, None, None),
    };
    let mut served: Option<(i64, i64)> = None; // (peak, minute): largest peak, earliest minute
    for (m, rate) in &rated {
        if *rate <= threshold
            && let Some(peak) = rollup(snap, stream, *m).map(|r| r.connected_peak)
            && served.is_none_or(|(p, _)| peak > p)
        {
            served = Some((peak, *m));
        }
    }
    let minute_rollups = snap
        .rollups
        .iter()
        .filter(|r| r.stream_id == stream && r.width_ms == 60_000);
    let largest_roster = minute_rollups.clone().map(|r| r.roster_peak).max();
    let largest_connected = minute_rollups.map(|r| r.connected_peak).max();
    [
        opt(o_minute),
        opt(o_roster),
        opt(o_connected),
        o_rate.map_or("-".into(), |r| format!("{r:e}")),
        opt(served.map(|s| s.0)),
        opt(served.map(|s| s.1)),
        opt(largest_roster),
        opt(largest_connected),
        rated.len().to_string(),
    ]
    .join("|")
}

/// The batches of the canned query `name` with `params` (`name=value`).
fn run_named(
    rt: &tokio::runtime::Runtime,
    ctx: &earshot_sql::SessionContext,
    name: &str,
    params: &[String],
) -> Vec<arrow::array::RecordBatch> {
    let sql = earshot_sql::queries::EMBEDDED
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap()
        .1;
    let params = earshot_sql::Params::from_pairs(params).unwrap();
    let limits = earshot_sql::Limits::default();
    rt.block_on(earshot_sql::run_with(ctx, sql, &params, &limits))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .1
}

/// A cell as [`expected`] writes it: `-` for NULL, timestamps as epoch milliseconds, a float in
/// exponent form (exact).
fn cell(b: &arrow::array::RecordBatch, name: &str, row: usize) -> String {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::DataType;
    let c = b
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    if c.is_null(row) {
        return "-".into();
    }
    match c.data_type() {
        DataType::Float64 => {
            format!(
                "{:e}",
                c.as_primitive::<arrow::datatypes::Float64Type>().value(row)
            )
        }
        DataType::Timestamp(..) => {
            let ms = arrow::compute::cast(c, &DataType::Int64).unwrap();
            ms.as_primitive::<arrow::datatypes::Int64Type>()
                .value(row)
                .to_string()
        }
        _ => {
            let text = arrow::compute::cast(c, &DataType::Utf8).unwrap();
            text.as_string::<i32>().value(row).to_string()
        }
    }
}

/// failures_by_minute's rows for `stream`, in [`expected`]'s form.
fn queried(
    rt: &tokio::runtime::Runtime,
    ctx: &earshot_sql::SessionContext,
    stream: &str,
    bound: i64,
    min_attempts: i64,
) -> Vec<Minute> {
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
    let params = [
        format!("stream={stream}"),
        format!("bound_ms={bound}"),
        format!("min_attempts={min_attempts}"),
    ];
    let mut out = Vec::new();
    for b in run_named(rt, ctx, "failures_by_minute", &params) {
        for i in 0..b.num_rows() {
            let row = names.map(|n| cell(&b, n, i)).join("|");
            let rate = cell(&b, "failure_rate", i);
            let rate = (rate != "-").then(|| rate.parse::<f64>().unwrap());
            out.push(Minute { row, rate });
        }
    }
    out
}

/// overload's one row for `stream`, in [`overload_expected`]'s form.
fn overload_queried(
    rt: &tokio::runtime::Runtime,
    ctx: &earshot_sql::SessionContext,
    params: &[String],
) -> String {
    let names = [
        "overload_minute",
        "overload_roster",
        "overload_connected",
        "overload_failure_rate",
        "capacity_served",
        "capacity_minute",
        "largest_roster",
        "largest_connected",
        "minutes_rated",
    ];
    let batches = run_named(rt, ctx, "overload", params);
    let rows: Vec<String> = batches
        .iter()
        .flat_map(|b| (0..b.num_rows()).map(move |i| names.map(|n| cell(b, n, i)).join("|")))
        .collect();
    assert_eq!(rows.len(), 1, "overload gives one row: {rows:?}");
    rows.into_iter().next().unwrap()
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
    let mut overloads = 0;
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
                let params = [
                    format!("stream={stream}"),
                    format!("bound_ms={bound}"),
                    format!("min_attempts={min_attempts}"),
                ];
                let (bands, rho) = by_load_expected(&want, &stream, bound, min_attempts);
                let mut got_bands = Vec::new();
                let mut got_rho = None;
                for b in run_named(&rt, &ctx, "failure_by_load", &params) {
                    for i in 0..b.num_rows() {
                        let n = |c: &str| cell(&b, c, i).parse::<i64>().unwrap();
                        got_bands.push([n("load_from"), n("minutes"), n("attempts"), n("failed")]);
                        let r = cell(&b, "rank_correlation", i);
                        got_rho = (r != "-").then(|| r.parse::<f64>().unwrap());
                    }
                }
                assert_eq!(
                    got_bands, bands,
                    "failure_by_load bands, seed {seed}, {params:?}"
                );
                match (got_rho, rho) {
                    (Some(g), Some(w)) => {
                        assert!((g - w).abs() < 1e-9, "rank correlation {g} vs {w}")
                    }
                    (g, w) => {
                        assert_eq!(g.is_some(), w.is_some(), "rank correlation {g:?} vs {w:?}")
                    }
                }
                for (threshold, persistence) in [(0.1, 2), (0.5, 1), (0.0, 3)] {
                    let params = [
                        format!("stream={stream}"),
                        format!("bound_ms={bound}"),
                        format!("min_attempts={min_attempts}"),
                        format!("threshold={threshold}"),
                        format!("persistence={persistence}"),
                    ];
                    let got = overload_queried(&rt, &ctx, &params);
                    let wanted = overload_expected(
                        &want,
                        &stream,
                        bound,
                        min_attempts,
                        threshold,
                        persistence,
                    );
                    assert_eq!(got, wanted, "overload, seed {seed}, {params:?}");
                    overloads += usize::from(!got.starts_with('-'));
                }
                rates += got.iter().filter(|m| m.rate.is_some()).count();
            }
        }
    }
    // The scenarios must give minutes to compare, rates among them.
    assert!(
        minutes_compared > 100 && rates > 20 && overloads > 10,
        "{minutes_compared} minutes compared, {rates} with a rate, {overloads} overload points"
    );
}
