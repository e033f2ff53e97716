//! A timeline request's parameters, as pure functions: which points it asks for (`from`/`to`
//! widened to whole steps) and which stored rows answer it. No I/O: the fuzz target calls them.

use std::collections::HashMap;

/// `10s`, `60s`, `5m`, `1h`, `250ms`, or milliseconds.
fn parse_step(s: &str) -> Option<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: i64 = s[..split].parse().ok()?;
    let scale = match &s[split..] {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(scale).filter(|v| *v > 0)
}

pub(crate) fn timeline_keys(q: &HashMap<String, String>) -> Result<(), String> {
    match q
        .keys()
        .find(|k| !matches!(k.as_str(), "from" | "to" | "step"))
    {
        Some(k) => Err(format!(
            "unknown parameter {k:?}: the timeline takes from, to and step"
        )),
        None => Ok(()),
    }
}

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z, the first and last times RFC 3339 writes.
const FIRST_MS: i64 = -62_167_219_200_000;
const LAST_MS: i64 = 253_402_300_799_999;

/// The points a timeline request asks for: from `from` to `to` (both multiples of `step`), in ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub from: i64,
    pub to: i64,
    pub step: i64,
}

/// Reads a timeline request's parameters (`from`, `to`: RFC 3339; `step`: a duration) for a stream
/// whose buckets are `width` ms wide and start from `lo` to before `hi`. Missing times default to
/// the stream's span, a missing step to one bucket. Any other input is an error to show the caller.
pub fn timeline_window(
    q: &HashMap<String, String>,
    width: i64,
    lo: i64,
    hi: i64,
) -> Result<Window, String> {
    timeline_keys(q)?;
    let step = match q.get("step") {
        None => width,
        Some(s) => parse_step(s)
            .ok_or_else(|| format!("step {s:?} is not a duration (use e.g. 10s, 60s, 5m, 1h)"))?,
    };
    if width <= 0 || step % width != 0 {
        return Err(format!(
            "step {step} ms is not a multiple of the bucket width ({width} ms)"
        ));
    }
    let time = |name: &str, default: i64| -> Result<i64, String> {
        match q.get(name) {
            None => Ok(default),
            Some(v) => earshot_contract::parse_rfc3339_ms(v).ok_or_else(|| {
                format!("{name} {v:?} is not an RFC 3339 time such as 2024-08-13T00:00:00Z")
            }),
        }
    };
    let from = time("from", lo)?;
    let to = time("to", hi)?;
    if from >= to {
        return Err("from must be before to".into());
    }
    // Whole points only: `from` aligned down to the step, `to` up, so the last point covers its
    // whole step whichever rows it is read from (a minute rollup, or the buckets merged).
    // Within the times RFC 3339 can write (years 0000 to 9999): at its edges a step is aligned
    // inwards instead, so that no point names a year 10000 (there is no data out there anyway).
    let from = match from.div_euclid(step).saturating_mul(step) {
        f if f < FIRST_MS => f.saturating_add(step),
        f => f,
    };
    let to = match to.checked_rem_euclid(step) {
        Some(0) | None => to,
        Some(r) if to.saturating_add(step - r) > LAST_MS => to - r,
        Some(r) => to.saturating_add(step - r),
    };
    if from >= to {
        return Err(format!(
            "from and to leave no whole step of {step} ms between them within the years 0000 to 9999"
        ));
    }
    let span = (to.min(hi) as i128 - from.max(lo) as i128) / step as i128;
    if span > 100_000 {
        return Err("more than 100,000 points: narrow from/to or raise step".into());
    }
    Ok(Window { from, to, step })
}

/// The width of the rows a timeline at `step` reads: the widest rollup that divides the step, else
/// the buckets. Coarser rows mean fewer sketches to merge, none when the step is their width.
pub fn timeline_source(bucket_width: i64, rollups: &[i64], step: i64) -> i64 {
    rollups
        .iter()
        .copied()
        .filter(|&w| w > bucket_width && w > 0 && step % w == 0)
        .max()
        .unwrap_or(bucket_width)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(pairs: &[(&str, &str)]) -> Result<Window, String> {
        let q = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        timeline_window(&q, 10_000, 1_723_500_000_000, 1_723_510_000_000)
    }

    #[test]
    fn the_edges_of_writable_time_are_aligned_inwards() {
        // The last second of year 9999 with a step that ends after it: the window stops before.
        let w = window(&[("to", "9999-12-31T23:59:59Z"), ("step", "1h")]).unwrap();
        assert!(w.to <= LAST_MS && w.to % 3_600_000 == 0, "{w:?}");
        let w = window(&[("from", "0000-01-01T00:00:00Z"), ("step", "1h")]).unwrap();
        assert!(w.from >= FIRST_MS && w.from % 3_600_000 == 0, "{w:?}");
        // A window of less than a step at the edge says so.
        let err = window(&[
            ("from", "9999-12-31T23:30:00Z"),
            ("to", "9999-12-31T23:59:59Z"),
            ("step", "1h"),
        ])
        .unwrap_err();
        assert!(err.contains("no whole step"), "{err}");
    }
}
