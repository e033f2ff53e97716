//! Two events side by side (`earshot audit --compare`): the headline figures, the start delays, the
//! overload points and the capacity served in one table, and both events' failure rate against the
//! load in one chart on the same axes. Every figure is the other report's, built the same way.

use crate::{Report, thousands};

/// The rows of the side-by-side table: (what, this event, the other), plain name first and the
/// column name beside it.
pub fn rows(a: &Report, b: &Report) -> Vec<[String; 3]> {
    let mut out = Vec::new();
    for name in [
        "peak_displayed",
        "peak_roster",
        "peak_connected",
        "listeners_joined",
        "listeners_connected",
        "listeners_connected_60s",
        "sessions",
        "failed_joins",
    ] {
        let meaning = a.figure(name).map_or("", |f| f.meaning);
        let v = |r: &Report| {
            r.figure(name)
                .and_then(|f| f.value.int())
                .map_or("–".into(), thousands)
        };
        out.push([format!("{meaning} (`{name}`)"), v(a), v(b)]);
    }
    let delay = |r: &Report| {
        r.figure("start_delay_ms")
            .and_then(|f| f.value.int())
            .map_or("–".into(), minutes_and_seconds)
    };
    out.push(["start delay (`start_delay_ms`)".into(), delay(a), delay(b)]);
    let waits = |r: &Report| {
        let s = |n: &str| {
            r.figure(n)
                .and_then(|f| f.value.int())
                .map_or("–".into(), minutes_and_seconds)
        };
        format!("{} / {}", s("ttfa_ms_p50"), s("ttfa_ms_p90"))
    };
    out.push([
        "wait for audio from joining, median / 90 % (`ttfa_ms_p50`, `ttfa_ms_p90`)".into(),
        waits(a),
        waits(b),
    ]);
    let overload = |r: &Report| match &r.load.overload {
        Some(o) => format!(
            "{} UTC, {} trying to listen ({:.0} % failed)",
            &earshot_contract::format_rfc3339_ms(o.minute_ms)[11..16],
            o.roster.map_or("–".into(), thousands),
            100.0 * o.failure_rate
        ),
        None => "none".into(),
    };
    out.push(["overload point".into(), overload(a), overload(b)]);
    let served = |r: &Report| {
        r.load
            .capacity_served
            .map_or("–".into(), |(p, _)| thousands(p))
    };
    out.push([
        "capacity served (connected, failures at or under the threshold)".into(),
        served(a),
        served(b),
    ]);
    let rho = |r: &Report| {
        r.load
            .rank_correlation
            .map_or("–".into(), |x| format!("{x:.2}"))
    };
    out.push([
        "rank correlation of load and failure rate".into(),
        rho(a),
        rho(b),
    ]);
    out
}

/// The two columns' names: the streams, told apart when they share a name (two directories).
pub fn labels(a: &Report, b: &Report) -> (String, String) {
    if a.stream_id == b.stream_id {
        (
            format!("{} ({})", a.stream_id, a.provenance.generation),
            format!("{} (compared, {})", b.stream_id, b.provenance.generation),
        )
    } else {
        (a.stream_id.clone(), b.stream_id.clone())
    }
}

/// `2,636,209` ms as `43 min 56 s`; under a minute, seconds with a decimal.
pub fn minutes_and_seconds(ms: i64) -> String {
    let sign = if ms < 0 { "−" } else { "" };
    let ms = ms.unsigned_abs();
    if ms < 60_000 {
        format!("{sign}{:.1} s", ms as f64 / 1000.0)
    } else {
        let s = ms / 1000;
        format!("{sign}{} min {:02} s", s / 60, s % 60)
    }
}

/// Both events' failure rate against the load, on the same axes.
pub fn chart(a: &Report, b: &Report) -> String {
    let (la, lb) = labels(a, b);
    crate::load::chart_of(&[
        (&a.load, la.as_str(), Some("#1d4ed8")),
        (&b.load, lb.as_str(), Some("#e76f51")),
    ])
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_as_minutes_and_seconds() {
        assert_eq!(super::minutes_and_seconds(2_636_209), "43 min 56 s");
        assert_eq!(super::minutes_and_seconds(2_500), "2.5 s");
        assert_eq!(super::minutes_and_seconds(-90_000), "−1 min 30 s");
    }
}
