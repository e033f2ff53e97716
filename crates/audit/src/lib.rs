//! `earshot audit`: what the data supports about a reach claim, how sure it is, and how every figure
//! was obtained.
//!
//! Every figure comes from the tables through the canned queries of `queries/` (whose exact SQL and
//! SHA-256 the report quotes); the sensitivity table re-runs `earshot-core` on the stream's counted
//! events with other definitions. Nothing here computes a count itself. The report is a pure function
//! of the data directory and the arguments: no clock, no randomness, so re-running it gives the same
//! bytes (`stamp` adds a time only when asked).

mod compare;
mod load;
mod render;
mod svg;

use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, TimestampMillisecondType};
use earshot_core::{Engine, Settings};
use earshot_sql::queries::NamedQuery;
use earshot_sql::{Limits, Params, SessionContext, SqlError};
use sha2::{Digest, Sha256};

pub use compare::minutes_and_seconds;
pub use load::{Load, LoadBand, LoadMinute, LoadSettings, OverloadPoint};
pub use render::{Format, compare_svg_name, load_svg_name, render};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{0}")]
    Sql(#[from] SqlError),
    #[error(
        "the data directory holds no streams: ingest events first (earshot ingest --input FILE --data DIR)"
    )]
    Empty,
    #[error("no stream {stream:?} in the data; the streams are: {known}")]
    UnknownStream { stream: String, known: String },
    #[error("cannot read the data: {0}")]
    Store(#[from] earshot_store::StoreError),
    #[error("cannot read {path}: {message}")]
    Manifest { path: String, message: String },
}

/// What a claim counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimKind {
    /// People listening at the same time ("a million listeners").
    Concurrent,
    /// Distinct people over the whole stream ("1.3 million people listened").
    Unique,
}

impl ClaimKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimKind::Concurrent => "concurrent",
            ClaimKind::Unique => "unique",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Claim {
    pub value: i64,
    pub kind: ClaimKind,
}

/// A claim within this fraction above a measure is still consistent with it: claims are rounded.
pub const ROUNDING: f64 = 0.05;

/// One figure of the report, named as the `streams` column it comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    pub name: &'static str,
    pub value: Value,
    /// For a sketch estimate: the 95 % interval from the sketch's standard error.
    pub interval_95: Option<(i64, i64)>,
    pub meaning: &'static str,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    /// RFC 3339, UTC.
    Time(String),
    Null,
}

impl Value {
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }
}

/// One point of the timeline chart (a bucket).
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub start_ms: i64,
    pub displayed: Option<i64>,
    pub roster_peak: i64,
    pub connected_peak: i64,
}

/// The headline figures under one pair of definitions.
#[derive(Clone, Debug, PartialEq)]
pub struct Sensitivity {
    pub liveness_s: i64,
    pub min_listen_s: i64,
    pub peak_connected: i64,
    pub listeners_connected: i64,
    pub listeners_listened_min: i64,
    /// Whether these are the definitions the tables were built with.
    pub as_ingested: bool,
}

/// How one measure compares with the claim.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub measure: &'static str,
    pub value: i64,
    pub consistent: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub summary: String,
    pub comparisons: Vec<Comparison>,
}

/// A query the report ran, quoted exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryUsed {
    pub name: String,
    pub sha256: String,
    pub sql: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Provenance {
    pub generation: String,
    /// `manifest.json` of the generation, as written by the ingest.
    pub manifest: serde_json::Value,
    pub events_by_type: Vec<(String, i64, i64)>,
    pub rejects_by_reason: Vec<(String, i64)>,
    pub auditor_version: String,
    pub queries: Vec<QueryUsed>,
    pub stamp: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub stream_id: String,
    pub claim: Option<Claim>,
    pub finding: Vec<String>,
    pub verdict: Option<Verdict>,
    pub figures: Vec<Figure>,
    pub timeline: Vec<Point>,
    pub scheduled_start_ms: Option<i64>,
    pub live_at_ms: Option<i64>,
    pub sensitivity: Vec<Sensitivity>,
    /// Failures against load (contract §3b).
    pub load: Load,
    pub provenance: Provenance,
    /// Another event's report, built the same way, to set beside this one (`--compare`).
    pub compare: Option<Box<Report>>,
}

impl Report {
    pub fn figure(&self, name: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.name == name)
    }

    fn int(&self, name: &str) -> Option<i64> {
        self.figure(name).and_then(|f| f.value.int())
    }
}

/// The figures, in report order, with what each means.
const FIGURES: &[(&str, &str)] = &[
    (
        "peak_displayed",
        "largest listener count the platform displayed",
    ),
    (
        "peak_roster",
        "most sessions on the roster at once (what a join/leave counter shows)",
    ),
    ("peak_connected", "most sessions receiving audio at once"),
    (
        "listeners_joined",
        "distinct accounts that joined (the claimed reach)",
    ),
    ("joined_hll", "sketch estimate of listeners_joined"),
    (
        "listeners_connected",
        "distinct accounts that received any audio",
    ),
    ("connected_hll", "sketch estimate of listeners_connected"),
    (
        "listeners_connected_60s",
        "distinct accounts that received audio for at least the minimum listen in total",
    ),
    ("sessions", "join attempts (sessions)"),
    ("failed_joins", "sessions that never received audio"),
    ("abandoned_before_audio", "failed sessions that ended"),
    (
        "ghost_sessions",
        "failed sessions that never ended (on the roster for good)",
    ),
    ("ttfa_ms_p50", "median time from joining to first audio, ms"),
    ("ttfa_ms_p90", "90th percentile time to first audio, ms"),
    ("scheduled_start", "announced start"),
    (
        "live_at",
        "actual start: first live state, or else first audio",
    ),
    ("start_delay_ms", "live_at minus scheduled_start, ms"),
    ("first_event", "first event of the stream"),
    ("last_event", "last event of the stream"),
];

/// Relative half-width of the 95 % interval of a precision-14 HyperLogLog estimate.
pub const SKETCH_95: f64 = 1.96 * 1.04 / 128.0;

/// The liveness and minimum-listen values of the sensitivity table, in seconds.
pub const LIVENESS_S: [i64; 3] = [15, 30, 60];
pub const MIN_LISTEN_S: [i64; 3] = [0, 60, 300];

struct Runner<'a> {
    ctx: &'a SessionContext,
    used: Vec<QueryUsed>,
}

impl Runner<'_> {
    async fn canned(&mut self, name: &str, params: &[&str]) -> Result<RecordBatch, AuditError> {
        let q = NamedQuery::embedded(name)
            .ok_or_else(|| SqlError::Query(format!("canned query {name} is missing")))?;
        let p = Params::from_pairs(params)?;
        let (schema, batches) =
            earshot_sql::run_with(self.ctx, &q.sql, &p, &Limits::default()).await?;
        if !self.used.iter().any(|u| u.name == q.name) {
            self.used.push(QueryUsed {
                name: q.name.clone(),
                sha256: hex(&Sha256::digest(q.sql.as_bytes())),
                sql: q.sql.clone(),
            });
        }
        arrow::compute::concat_batches(&schema, &batches)
            .map_err(|e| AuditError::Sql(SqlError::Query(e.to_string())))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn cell(batch: &RecordBatch, name: &str, row: usize) -> Value {
    let Some(col) = batch.column_by_name(name) else {
        return Value::Null;
    };
    if row >= col.len() || col.is_null(row) {
        return Value::Null;
    }
    match col.data_type() {
        DataType::Int64 => Value::Int(col.as_primitive::<Int64Type>().value(row)),
        DataType::Timestamp(_, _) => Value::Time(earshot_contract::format_rfc3339_ms(
            col.as_primitive::<TimestampMillisecondType>().value(row),
        )),
        _ => Value::Null,
    }
}

fn int_at(batch: &RecordBatch, name: &str, row: usize) -> Option<i64> {
    cell(batch, name, row).int()
}

fn ms_at(batch: &RecordBatch, name: &str, row: usize) -> Option<i64> {
    let col = batch.column_by_name(name)?;
    (row < col.len() && !col.is_null(row))
        .then(|| col.as_primitive::<TimestampMillisecondType>().value(row))
}

/// Builds the report for `stream` from the current generation of `data`.
pub async fn build(
    data: &Path,
    stream: &str,
    claim: Option<Claim>,
    capacity: (LoadSettings, Option<i64>),
    stamp: Option<String>,
    compare: Option<(&Path, &str)>,
) -> Result<Report, AuditError> {
    let mut report = build_one(data, stream, claim, capacity, stamp, true).await?;
    if let Some((other_data, other)) = compare {
        // The same definitions; no claim, and no sensitivity table (the other report is read for
        // its figures and its failures against load).
        let b = build_one(other_data, other, None, (capacity.0, None), None, false).await?;
        report.compare = Some(Box::new(b));
    }
    Ok(report)
}

async fn build_one(
    data: &Path,
    stream: &str,
    claim: Option<Claim>,
    capacity: (LoadSettings, Option<i64>),
    stamp: Option<String>,
    with_sensitivity: bool,
) -> Result<Report, AuditError> {
    let tables = earshot_sql::Tables::open(data, Limits::default()).await?;
    let generation = earshot_store::current_generation(data)?;
    let mut run = Runner {
        ctx: &tables.ctx,
        used: Vec::new(),
    };
    let streams = run.canned("streams", &[]).await?;
    let names = streams
        .column_by_name("stream_id")
        .map(|c| {
            let c = c.as_string::<i32>();
            (0..c.len())
                .map(|i| c.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if names.is_empty() {
        return Err(AuditError::Empty);
    }
    if !names.iter().any(|n| n == stream) {
        let mut sorted = names.clone();
        sorted.sort();
        return Err(AuditError::UnknownStream {
            stream: stream.to_string(),
            known: sorted.join(", "),
        });
    }
    let param = format!("stream={stream}");
    let f = run.canned("audit_figures", &[&param]).await?;
    let mut figures = Vec::new();
    for (name, meaning) in FIGURES {
        let value = cell(&f, name, 0);
        let interval_95 = match (*name, &value) {
            ("joined_hll" | "connected_hll", Value::Int(v)) => {
                let d = *v as f64 * SKETCH_95;
                Some((
                    (*v as f64 - d).floor() as i64,
                    (*v as f64 + d).ceil() as i64,
                ))
            }
            _ => None,
        };
        figures.push(Figure {
            name,
            value,
            interval_95,
            meaning,
        });
    }
    let t = run.canned("timeline", &[&param]).await?;
    let timeline = (0..t.num_rows())
        .map(|i| Point {
            start_ms: ms_at(&t, "bucket_start", i).unwrap_or(0),
            displayed: int_at(&t, "displayed_start", i),
            roster_peak: int_at(&t, "roster_peak", i).unwrap_or(0),
            connected_peak: int_at(&t, "connected_peak", i).unwrap_or(0),
        })
        .collect();
    let e = run.canned("event_counts", &[&param]).await?;
    let events_by_type = (0..e.num_rows())
        .map(|i| {
            (
                e.column_by_name("type")
                    .map(|c| c.as_string::<i32>().value(i).to_string())
                    .unwrap_or_default(),
                int_at(&e, "events", i).unwrap_or(0),
                int_at(&e, "late", i).unwrap_or(0),
            )
        })
        .collect();
    let load = load::load(&mut run, stream, capacity.0, capacity.1).await?;
    let r = run.canned("rejects_by_reason", &[]).await?;
    let rejects_by_reason = (0..r.num_rows())
        .map(|i| {
            (
                r.column_by_name("reason_code")
                    .map(|c| c.as_string::<i32>().value(i).to_string())
                    .unwrap_or_default(),
                int_at(&r, "rejected", i).unwrap_or(0),
            )
        })
        .collect();

    let manifest_path = generation.join("manifest.json");
    let manifest: serde_json::Value = std::fs::read_to_string(&manifest_path)
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
        .map_err(|message| AuditError::Manifest {
            path: manifest_path.display().to_string(),
            message,
        })?;
    let setting = |k: &str, default: i64| manifest["settings"][k].as_i64().unwrap_or(default);
    let ingested = Settings {
        liveness_ms: setting("liveness_ms", 30_000),
        bucket_ms: setting("bucket_ms", 10_000),
        lateness_ms: setting("lateness_ms", 60_000),
        min_listen_ms: setting("min_listen_ms", 60_000),
        max_jump_ms: setting("max_jump_ms", Settings::default().max_jump_ms),
    };
    let sensitivity = if with_sensitivity {
        sensitivity(&generation, stream, &ingested)?
    } else {
        Vec::new()
    };

    let mut report = Report {
        stream_id: stream.to_string(),
        claim,
        finding: Vec::new(),
        verdict: None,
        figures,
        timeline,
        scheduled_start_ms: ms_at(&f, "scheduled_start", 0),
        live_at_ms: ms_at(&f, "live_at", 0),
        sensitivity,
        load,
        provenance: Provenance {
            generation: generation
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            manifest,
            events_by_type,
            rejects_by_reason,
            auditor_version: env!("CARGO_PKG_VERSION").to_string(),
            queries: run.used,
            stamp,
        },
        compare: None,
    };
    report.finding = finding(&report);
    report.verdict = claim.map(|c| verdict(&report, c));
    Ok(report)
}

/// Re-runs the core on the stream's counted events under each pair of definitions: one pass over
/// the stored events per liveness (streamed from the parts, never all in memory), then one
/// `streams` row per minimum listen, which only the snapshot uses.
fn sensitivity(
    generation: &Path,
    stream: &str,
    ingested: &Settings,
) -> Result<Vec<Sensitivity>, AuditError> {
    let mut out = Vec::new();
    for l in LIVENESS_S {
        let settings = Settings {
            liveness_ms: l * 1000,
            bucket_ms: ingested.bucket_ms,
            // Lateness was decided at ingest: these are the events that counted, so none is late now.
            lateness_ms: i64::MAX / 4,
            min_listen_ms: ingested.min_listen_ms,
            max_jump_ms: ingested.max_jump_ms,
        };
        let mut engine = Engine::new(settings);
        earshot_store::stored_events(generation, |row| {
            if !row.late && row.event.stream_id == stream {
                engine.offer(0, &row.event);
            }
            Ok(())
        })?;
        for m in MIN_LISTEN_S {
            let Some(row) = engine.stream_row(stream, m * 1000) else {
                continue;
            };
            out.push(Sensitivity {
                liveness_s: l,
                min_listen_s: m,
                peak_connected: row.peak_connected,
                listeners_connected: row.listeners_connected,
                listeners_listened_min: row.listeners_connected_60s,
                as_ingested: l * 1000 == ingested.liveness_ms && m * 1000 == ingested.min_listen_ms,
            });
        }
    }
    Ok(out)
}

/// `12,951`; negative numbers keep their sign.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn duration_words(ms: i64) -> String {
    let abs = ms.unsigned_abs();
    if abs >= 120_000 {
        let min = abs as f64 / 60_000.0;
        if min.fract() == 0.0 {
            format!("{min:.0} minutes")
        } else {
            format!("{min:.1} minutes")
        }
    } else {
        format!("{:.0} seconds", abs as f64 / 1000.0)
    }
}

/// The finding in plain language: each sentence only as strong as its figure.
fn finding(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    let peak_connected = r.int("peak_connected").unwrap_or(0);
    match r.int("peak_displayed") {
        Some(d) => {
            out.push(format!(
                "The platform displayed up to {} listeners.",
                thousands(d)
            ));
            if peak_connected > 0 {
                out.push(format!(
                    "At most {} were receiving audio at the same time: the displayed figure was {:.1}× that.",
                    thousands(peak_connected),
                    d as f64 / peak_connected as f64
                ));
            } else {
                out.push("No one was receiving audio at any moment in the data.".to_string());
            }
        }
        None => {
            out.push("The data holds no displayed listener count.".to_string());
            out.push(format!(
                "At most {} were receiving audio at the same time.",
                thousands(peak_connected)
            ));
        }
    }
    if let Some(roster) = r.int("peak_roster") {
        out.push(format!(
            "A join/leave counter would have shown up to {} (the roster, which keeps sessions that never got audio).",
            thousands(roster)
        ));
    }
    let (joined, connected, min) = (
        r.int("listeners_joined").unwrap_or(0),
        r.int("listeners_connected").unwrap_or(0),
        r.int("listeners_connected_60s").unwrap_or(0),
    );
    let min_listen = r.provenance.manifest["settings"]["min_listen_ms"]
        .as_i64()
        .unwrap_or(60_000);
    out.push(format!(
        "{} distinct accounts joined; {} heard any audio; {} listened for at least {} in total.",
        thousands(joined),
        thousands(connected),
        thousands(min),
        if min_listen == 60_000 {
            "a minute".to_string()
        } else {
            duration_words(min_listen)
        }
    ));
    if let (Some(failed), Some(sessions)) = (r.int("failed_joins"), r.int("sessions"))
        && sessions > 0
    {
        out.push(format!(
            "{:.0} % of join attempts ({} of {}) never received audio.",
            100.0 * failed as f64 / sessions as f64,
            thousands(failed),
            thousands(sessions)
        ));
    }
    match (r.int("start_delay_ms"), r.live_at_ms, r.scheduled_start_ms) {
        (Some(d), _, _) if d > 0 => out.push(format!(
            "The stream started {} after its announced time.",
            duration_words(d)
        )),
        (Some(d), _, _) if d < 0 => out.push(format!(
            "The stream started {} before its announced time.",
            duration_words(d)
        )),
        (Some(_), _, _) => out.push("The stream started at its announced time.".to_string()),
        (None, Some(_), None) => {
            out.push("The data does not say when the stream was announced to start.".to_string())
        }
        (None, None, _) => {
            out.push("No audio was ever delivered, so the stream never really started.".to_string())
        }
        (None, Some(_), Some(_)) => {}
    }
    out
}

fn verdict(r: &Report, claim: Claim) -> Verdict {
    let measures: &[&'static str] = match claim.kind {
        ClaimKind::Concurrent => &["peak_connected", "peak_roster", "peak_displayed"],
        ClaimKind::Unique => &[
            "listeners_connected_60s",
            "listeners_connected",
            "listeners_joined",
        ],
    };
    let comparisons: Vec<Comparison> = measures
        .iter()
        .filter_map(|m| {
            r.int(m).map(|v| Comparison {
                measure: m,
                value: v,
                consistent: claim.value as f64 <= v as f64 * (1.0 + ROUNDING),
            })
        })
        .collect();
    let n = thousands(claim.value);
    let first = comparisons.iter().find(|c| c.consistent).map(|c| c.measure);
    let strongest = comparisons.first().map(|c| c.value).unwrap_or(0);
    let times = |v: i64| {
        if v > 0 {
            format!("{:.1}×", claim.value as f64 / v as f64)
        } else {
            "infinitely many times".to_string()
        }
    };
    let summary = match (claim.kind, first) {
        (ClaimKind::Concurrent, Some("peak_connected")) => format!(
            "Supported: up to {} were receiving audio at the same time, which covers a claim of {n} concurrent listeners.",
            thousands(strongest)
        ),
        (ClaimKind::Concurrent, Some("peak_roster")) => format!(
            "Only supported by counting sessions that were not receiving audio: the roster reached {}, but at most {} were receiving audio at once; the claim is {} that.",
            thousands(r.int("peak_roster").unwrap_or(0)),
            thousands(strongest),
            times(strongest)
        ),
        (ClaimKind::Concurrent, Some(_)) => format!(
            "Only the platform's own displayed counter reaches {n}. No measure of sessions reaches it: at most {} were receiving audio at once ({} short of the claim).",
            thousands(strongest),
            times(strongest)
        ),
        (ClaimKind::Unique, Some("listeners_connected_60s")) => format!(
            "Supported: {} distinct accounts listened for at least the minimum listen, which covers a claim of {n}.",
            thousands(strongest)
        ),
        (ClaimKind::Unique, Some("listeners_connected")) => format!(
            "Supported only by counting everyone who heard any audio at all ({}); {} listened for at least the minimum listen.",
            thousands(r.int("listeners_connected").unwrap_or(0)),
            thousands(strongest)
        ),
        (ClaimKind::Unique, Some(_)) => format!(
            "Supported only by counting every account that joined ({}), including those that never received audio; {} heard any audio.",
            thousands(r.int("listeners_joined").unwrap_or(0)),
            thousands(r.int("listeners_connected").unwrap_or(0))
        ),
        (_, None) => format!(
            "Not supported by any measure in the data: the largest, {} = {}, is below the claim of {n} even allowing {:.0} % for rounding.",
            comparisons.last().map(|c| c.measure).unwrap_or("none"),
            thousands(comparisons.last().map(|c| c.value).unwrap_or(0)),
            ROUNDING * 100.0
        ),
    };
    Verdict {
        summary,
        comparisons,
    }
}
