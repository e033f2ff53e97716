//! Failures against load (contract §3b): per minute, and the overload point, the capacity served
//! and a capacity claim, all from `queries/failures_by_minute.sql` and `queries/overload.sql`.

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float64Type;

use super::{AuditError, Runner, duration_words, int_at, ms_at, thousands};

/// The definitions of §3b, settable in the audit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadSettings {
    /// B: the longest wait for audio that still counts as served.
    pub bound_ms: i64,
    /// A: the fewest attempts for a minute to have a failure rate.
    pub min_attempts: i64,
    /// X: the failure rate above which a minute failed (a fraction).
    pub threshold: f64,
    /// N: how many minutes with a rate, in a row, must fail.
    pub persistence: i64,
}

impl Default for LoadSettings {
    fn default() -> Self {
        LoadSettings {
            bound_ms: 10_000,
            min_attempts: 20,
            threshold: 0.10,
            persistence: 2,
        }
    }
}

/// One minute of attempts.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadMinute {
    pub start_ms: i64,
    pub attempts: i64,
    pub failed: i64,
    pub failure_rate: Option<f64>,
    pub roster_start: Option<i64>,
    pub connected_start: Option<i64>,
    pub connected_peak: Option<i64>,
    pub ttfa_ms_p50: Option<i64>,
    pub ttfa_ms_p90: Option<i64>,
}

/// Where failures first persisted above the threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct OverloadPoint {
    pub minute_ms: i64,
    /// The audience trying to listen at the minute's start (the roster).
    pub roster: Option<i64>,
    pub connected: Option<i64>,
    pub failure_rate: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Load {
    pub settings: LoadSettings,
    pub minutes: Vec<LoadMinute>,
    pub overload: Option<OverloadPoint>,
    /// The largest connected peak of a minute at or under the threshold, and that minute.
    pub capacity_served: Option<(i64, i64)>,
    pub largest_roster: Option<i64>,
    pub largest_connected: Option<i64>,
    /// A claimed capacity and what the data says of it.
    pub claim: Option<(i64, String)>,
    /// Rated minutes by load: (from, to, minutes, attempts, failed, failure rate).
    pub bands: Vec<LoadBand>,
    /// Spearman's rank correlation of the load and the failure rate over rated minutes.
    pub rank_correlation: Option<f64>,
}

/// Rated minutes whose roster at their start was in `[from, to)`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadBand {
    pub from: i64,
    pub to: i64,
    pub minutes: i64,
    pub attempts: i64,
    pub failed: i64,
    pub failure_rate: Option<f64>,
}

/// A float cell; `None` for NULL or a row the batch does not have (no rated minute: no bands).
fn rate_at(batch: &arrow::array::RecordBatch, name: &str, row: usize) -> Option<f64> {
    let c = batch.column_by_name(name)?;
    (row < c.len() && !c.is_null(row)).then(|| c.as_primitive::<Float64Type>().value(row))
}

/// Reads §3b's figures for `stream`.
pub(super) async fn load(
    run: &mut Runner<'_>,
    stream: &str,
    settings: LoadSettings,
    claim: Option<i64>,
) -> Result<Load, AuditError> {
    let params = [
        format!("stream={stream}"),
        format!("bound_ms={}", settings.bound_ms),
        format!("min_attempts={}", settings.min_attempts),
    ];
    let params: Vec<&str> = params.iter().map(String::as_str).collect();
    let m = run.canned("failures_by_minute", &params).await?;
    let minutes = (0..m.num_rows())
        .map(|i| LoadMinute {
            start_ms: ms_at(&m, "minute", i).unwrap_or(0),
            attempts: int_at(&m, "attempts", i).unwrap_or(0),
            failed: int_at(&m, "failed", i).unwrap_or(0),
            failure_rate: rate_at(&m, "failure_rate", i),
            roster_start: int_at(&m, "roster_start", i),
            connected_start: int_at(&m, "connected_start", i),
            connected_peak: int_at(&m, "connected_peak", i),
            ttfa_ms_p50: int_at(&m, "ttfa_ms_p50", i),
            ttfa_ms_p90: int_at(&m, "ttfa_ms_p90", i),
        })
        .collect();
    let threshold = format!("threshold={}", settings.threshold);
    let persistence = format!("persistence={}", settings.persistence);
    let mut all = params.clone();
    all.extend([threshold.as_str(), persistence.as_str()]);
    let o = run.canned("overload", &all).await?;
    let overload = ms_at(&o, "overload_minute", 0).map(|minute_ms| OverloadPoint {
        minute_ms,
        roster: int_at(&o, "overload_roster", 0),
        connected: int_at(&o, "overload_connected", 0),
        failure_rate: rate_at(&o, "overload_failure_rate", 0).unwrap_or(0.0),
    });
    let b = run.canned("failure_by_load", &params).await?;
    let bands = (0..b.num_rows())
        .map(|i| LoadBand {
            from: int_at(&b, "load_from", i).unwrap_or(0),
            to: int_at(&b, "load_to", i).unwrap_or(0),
            minutes: int_at(&b, "minutes", i).unwrap_or(0),
            attempts: int_at(&b, "attempts", i).unwrap_or(0),
            failed: int_at(&b, "failed", i).unwrap_or(0),
            failure_rate: rate_at(&b, "failure_rate", i),
        })
        .collect();
    let rank_correlation = rate_at(&b, "rank_correlation", 0);
    let mut load = Load {
        settings,
        minutes,
        overload,
        capacity_served: int_at(&o, "capacity_served", 0).zip(ms_at(&o, "capacity_minute", 0)),
        largest_roster: int_at(&o, "largest_roster", 0),
        largest_connected: int_at(&o, "largest_connected", 0),
        claim: None,
        bands,
        rank_correlation,
    };
    load.claim = claim.map(|c| (c, capacity_verdict(&load, c)));
    Ok(load)
}

/// `HH:MM UTC` of an instant.
fn clock(ms: i64) -> String {
    let t = earshot_contract::format_rfc3339_ms(ms);
    format!("{} UTC", &t[11..16])
}

fn percent(x: f64) -> String {
    format!("{:.0} %", 100.0 * x)
}

/// What the data says of a claimed capacity (§3b: contradicted when an overload point's load is
/// below it; not checkable beyond the largest load the event brought).
fn capacity_verdict(load: &Load, claim: i64) -> String {
    let s = &load.settings;
    let n = thousands(claim);
    let x = percent(s.threshold);
    let largest = load.largest_roster.unwrap_or(0);
    match &load.overload {
        Some(o) if o.roster.is_some_and(|r| r < claim) => format!(
            "Contradicted: the system failed {} of join attempts (more than {x}, for at least {} \
             minutes) from {}, when {} listeners were trying to listen ({} connected), below the \
             claimed {n}.",
            percent(o.failure_rate),
            s.persistence,
            clock(o.minute_ms),
            thousands(o.roster.unwrap_or(0)),
            thousands(o.connected.unwrap_or(0)),
        ),
        Some(o) => format!(
            "Consistent: failures first stayed above {x} from {}, with {} listeners trying, which \
             is not below the claimed {n}.",
            clock(o.minute_ms),
            thousands(o.roster.unwrap_or(0)),
        ),
        None if largest < claim => format!(
            "Cannot be checked: failures stayed at or under {x} up to the largest audience that \
             came, {} trying to listen at once, which is below the claimed {n}; the data can \
             neither confirm nor refute it.",
            thousands(largest),
        ),
        None => format!(
            "Consistent: failures stayed at or under {x} with up to {} trying to listen at once, \
             at or above the claimed {n}.",
            thousands(largest),
        ),
    }
}

/// The section's sentences, in words a journalist can quote.
pub fn findings(load: &Load) -> Vec<String> {
    let s = &load.settings;
    let mut out = Vec::new();
    let bound = duration_words(s.bound_ms);
    match &load.overload {
        Some(o) => out.push(format!(
            "Overload point: from {}, more than {} of join attempts failed to get audio within \
             {bound} for at least {} minutes in a row ({} in the first minute); {} listeners were \
             trying to listen then, {} of them receiving audio.",
            clock(o.minute_ms),
            percent(s.threshold),
            s.persistence,
            percent(o.failure_rate),
            thousands(o.roster.unwrap_or(0)),
            thousands(o.connected.unwrap_or(0)),
        )),
        None => out.push(format!(
            "No overload point: no {} minutes in a row failed more than {} of join attempts \
             (audio within {bound}).",
            s.persistence,
            percent(s.threshold)
        )),
    }
    if let Some(o) = &load.overload
        && o.connected == Some(0)
        && o.roster.is_some_and(|r| r > 0)
    {
        out.push(
            "No one was receiving audio at that minute's start: everyone on the roster was still \
             waiting for it, as when a crowd that waited for a late start tries at once."
                .to_string(),
        );
    }
    if let Some(rho) = load.rank_correlation {
        let rated: i64 = load.bands.iter().map(|b| b.minutes).sum();
        let how = format!(
            "rank correlation {rho:.2} between the number trying to listen and the failure rate, \
             over {rated} minutes"
        );
        out.push(if rho >= 0.5 {
            format!("Failures rose with the audience ({how}): that is what overload looks like.")
        } else if rho > 0.2 {
            format!("Failures rose somewhat with the audience ({how}).")
        } else if rho > -0.2 {
            format!(
                "Failures did not follow the audience ({how}): the data does not show load as \
                 their cause, and cannot tell what was."
            )
        } else {
            format!(
                "Failures were higher when fewer were trying to listen ({how}): not what overload \
                 looks like; the data cannot tell what the cause was."
            )
        });
        if let Some(low) = load.bands.first()
            && let Some(rate) = low.failure_rate
            && rate > s.threshold
        {
            out.push(format!(
                "Even at the lowest loads ({} to {} trying), {} of attempts failed.",
                thousands(low.from),
                thousands(low.to),
                percent(rate)
            ));
        }
    }
    if let Some((peak, minute)) = load.capacity_served {
        out.push(format!(
            "Capacity served: up to {} listeners received audio at once in a minute when at most \
             {} of attempts failed ({}).",
            thousands(peak),
            percent(s.threshold),
            clock(minute)
        ));
    }
    out
}

/// The per-minute table's header and rows, for the Markdown and HTML writers.
pub const TABLE_HEADER: [&str; 8] = [
    "minute",
    "attempts",
    "failed",
    "failure rate",
    "trying to listen (roster) at its start",
    "connected at its start",
    "connected at its peak",
    "wait for audio, median / 90 %",
];

pub fn table(load: &Load) -> Vec<[String; 8]> {
    let count = |v: Option<i64>| v.map_or("–".to_string(), thousands);
    let wait = |v: Option<i64>| {
        v.map_or("–".to_string(), |ms| {
            format!("{:.1} s", ms as f64 / 1000.0)
        })
    };
    load.minutes
        .iter()
        .map(|m| {
            [
                clock(m.start_ms),
                thousands(m.attempts),
                thousands(m.failed),
                m.failure_rate
                    .map_or("–".to_string(), |r| format!("{:.1} %", 100.0 * r)),
                count(m.roster_start),
                count(m.connected_start),
                count(m.connected_peak),
                format!("{} / {}", wait(m.ttfa_ms_p50), wait(m.ttfa_ms_p90)),
            ]
        })
        .collect()
}

/// The section's JSON: every figure, and the settings it was computed with.
pub fn json(load: &Load) -> serde_json::Value {
    use serde_json::json;
    let s = &load.settings;
    json!({
        "settings": {
            "bound_ms": s.bound_ms, "min_attempts": s.min_attempts,
            "threshold": s.threshold, "persistence_minutes": s.persistence,
        },
        "overload_point": load.overload.as_ref().map(|o| json!({
            "minute": earshot_contract::format_rfc3339_ms(o.minute_ms),
            "roster": o.roster, "connected": o.connected, "failure_rate": o.failure_rate,
        })),
        "capacity_served": load.capacity_served.map(|(peak, minute)| json!({
            "connected": peak, "minute": earshot_contract::format_rfc3339_ms(minute),
        })),
        "largest_roster": load.largest_roster,
        "largest_connected": load.largest_connected,
        "capacity_claim": load.claim.as_ref().map(|(c, v)| json!({"value": c, "verdict": v})),
        "findings": findings(load),
        "rank_correlation": load.rank_correlation,
        "bands": load.bands.iter().map(|b| json!({
            "load_from": b.from, "load_to": b.to, "minutes": b.minutes,
            "attempts": b.attempts, "failed": b.failed, "failure_rate": b.failure_rate,
        })).collect::<Vec<_>>(),
        "minutes": load.minutes.iter().map(|m| json!({
            "minute": earshot_contract::format_rfc3339_ms(m.start_ms),
            "attempts": m.attempts, "failed": m.failed, "failure_rate": m.failure_rate,
            "roster_start": m.roster_start, "connected_start": m.connected_start,
            "connected_peak": m.connected_peak,
            "ttfa_ms_p50": m.ttfa_ms_p50, "ttfa_ms_p90": m.ttfa_ms_p90,
        })).collect::<Vec<_>>(),
    })
}

/// The failure rate against the load, each rated minute a point coloured by its time (blue early,
/// red late), the threshold dashed and the overload point ringed: a self-contained SVG.
pub fn chart(load: &Load) -> String {
    chart_of(&[(load, "", None)])
}

/// Several events' failure rate against the load on the same axes: each event's points in its
/// colour (or, for one event without a colour, coloured by time), each overload point ringed.
pub fn chart_of(series: &[(&Load, &str, Option<&str>)]) -> String {
    use crate::svg::{BOTTOM, H, LEFT, RIGHT, TOP, W};
    use std::fmt::Write;
    let points = |load: &Load| -> Vec<(i64, i64, f64)> {
        load.minutes
            .iter()
            .filter_map(|m| Some((m.start_ms, m.roster_start?, m.failure_rate?)))
            .collect()
    };
    let all: Vec<Vec<(i64, i64, f64)>> = series.iter().map(|(l, ..)| points(l)).collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" \
height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\" role=\"img\" \
aria-label=\"Failure rate against the number trying to listen\">\n\
<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>"
    );
    if all.iter().all(Vec::is_empty) {
        out.push_str(
            "<text x=\"20\" y=\"40\">No minute has enough attempts for a rate.</text>\n</svg>\n",
        );
        return out;
    }
    let xmax = all.iter().flatten().map(|p| p.1).max().unwrap_or(1).max(1) as f64;
    let x = |v: i64| LEFT + v as f64 / xmax * (W - LEFT - RIGHT);
    let y = |r: f64| H - BOTTOM - r * (H - TOP - BOTTOM);
    for i in 0..=4 {
        let r = i as f64 / 4.0;
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#e5e5e5\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#444\">{:.0} %</text>",
            W - RIGHT,
            LEFT - 6.0,
            y(r) + 4.0,
            100.0 * r,
            yy = y(r)
        );
        let v = (xmax * r).round() as i64;
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444\">{}</text>",
            x(v),
            H - BOTTOM + 18.0,
            thousands(v)
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444\">trying to listen at \
the minute's start (roster)</text>",
        (LEFT + W - RIGHT) / 2.0,
        H - 10.0,
    );
    let legend = match series {
        [(_, _, None)] => "colour: its time, <tspan fill=\"hsl(240,70%,45%)\">blue early</tspan> \
to <tspan fill=\"hsl(0,70%,45%)\">red late</tspan>"
            .to_string(),
        _ => series
            .iter()
            .map(|(_, name, colour)| {
                format!(
                    "<tspan fill=\"{}\">{}</tspan>",
                    colour.unwrap_or("#444"),
                    crate::svg::escape(name)
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
    };
    let _ = writeln!(
        out,
        "<text x=\"{LEFT}\" y=\"{:.1}\" fill=\"#444\">each point a minute; {legend}; dashed: the \
failure threshold</text>",
        TOP - 12.0
    );
    for ((load, name, colour), pts) in series.iter().zip(&all) {
        let _ = writeln!(
            out,
            "<line class=\"threshold\" x1=\"{LEFT}\" y1=\"{t:.1}\" x2=\"{:.1}\" y2=\"{t:.1}\" \
stroke=\"#6b7280\" stroke-dasharray=\"6 4\"/>",
            W - RIGHT,
            t = y(load.settings.threshold)
        );
        let (first, last) = match (pts.first(), pts.last()) {
            (Some(f), Some(l)) => (f.0, l.0.max(f.0 + 1)),
            _ => continue,
        };
        for (start, roster, rate) in pts {
            let fill = match colour {
                Some(c) => c.to_string(),
                None => {
                    let when = (start - first) as f64 / (last - first) as f64;
                    format!("hsl({:.0},70%,45%)", 240.0 * (1.0 - when))
                }
            };
            let _ = writeln!(
                out,
                "<circle class=\"minute\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{fill}\">\
<title>{}{}: {} trying, {:.1} % failed</title></circle>",
                x(*roster),
                y(*rate),
                crate::svg::escape(name),
                if name.is_empty() {
                    String::new()
                } else {
                    " ".to_string()
                } + &clock(*start),
                thousands(*roster),
                100.0 * rate
            );
        }
        if let Some(o) = &load.overload
            && let Some(roster) = o.roster
        {
            // The label on the side with room: left of the ring in the chart's right half.
            let (label_x, anchor) = if x(roster) > W / 2.0 {
                (x(roster) - 12.0, "end")
            } else {
                (x(roster) + 12.0, "start")
            };
            let _ = writeln!(
                out,
                "<circle class=\"overload-point\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"9\" fill=\"none\" \
stroke=\"#111\" stroke-width=\"2\"/><text x=\"{label_x:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\" \
fill=\"#111\">overload point{}{}, {}</text>",
                x(roster),
                y(o.failure_rate),
                (y(o.failure_rate) - 10.0).max(TOP + 10.0),
                if name.is_empty() { "" } else { " of " },
                crate::svg::escape(name),
                clock(o.minute_ms)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}
