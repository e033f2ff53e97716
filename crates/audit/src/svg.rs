//! The timeline chart as a self-contained SVG: displayed, roster and connected over time, the gap
//! between roster and connected (sessions without audio) shaded, the announced and actual starts,
//! the overload point
//! and the connected peak marked. No fonts or scripts are loaded.

use std::fmt::Write;

use crate::Report;

/// The size and margins of every chart of the report.
pub(crate) const W: f64 = 900.0;
pub(crate) const H: f64 = 380.0;
pub(crate) const LEFT: f64 = 70.0;
pub(crate) const RIGHT: f64 = 20.0;
pub(crate) const TOP: f64 = 30.0;
pub(crate) const BOTTOM: f64 = 50.0;

fn hhmm(ms: i64) -> String {
    let s = earshot_contract::format_rfc3339_ms(ms);
    s.get(11..16).unwrap_or("").to_string()
}

pub fn chart(r: &Report) -> String {
    let pts = &r.timeline;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" \
font-family=\"sans-serif\" font-size=\"12\" role=\"img\" aria-label=\"Timeline of stream {}\">",
        escape(&r.stream_id)
    );
    out.push_str("<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n");
    if pts.is_empty() {
        out.push_str("<text x=\"20\" y=\"40\">No buckets for this stream.</text>\n</svg>\n");
        return out;
    }
    let t0 = pts[0].start_ms;
    let t1 = pts[pts.len() - 1].start_ms.max(t0 + 1);
    let ymax = pts
        .iter()
        .map(|p| {
            p.roster_peak
                .max(p.connected_peak)
                .max(p.displayed.unwrap_or(0))
        })
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |t: i64| LEFT + (t - t0) as f64 / (t1 - t0) as f64 * (W - LEFT - RIGHT);
    let y = |v: i64| H - BOTTOM - v as f64 / ymax * (H - TOP - BOTTOM);
    // Axes and grid.
    for i in 0..=4 {
        let v = (ymax * i as f64 / 4.0).round() as i64;
        let yy = y(v);
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#e5e5e5\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#444\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            crate::thousands(v)
        );
    }
    for i in 0..=6 {
        let t = t0 + (t1 - t0) * i / 6;
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444\">{}</text>",
            x(t),
            H - BOTTOM + 18.0,
            hhmm(t)
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444\">time (UTC)</text>",
        (LEFT + W - RIGHT) / 2.0,
        H - 10.0
    );
    // Shaded gap: roster above, connected below.
    let mut poly = String::new();
    for p in pts {
        let _ = write!(poly, "{:.1},{:.1} ", x(p.start_ms), y(p.roster_peak));
    }
    for p in pts.iter().rev() {
        let _ = write!(poly, "{:.1},{:.1} ", x(p.start_ms), y(p.connected_peak));
    }
    let _ = writeln!(
        out,
        "<polygon class=\"ghost-gap\" points=\"{}\" fill=\"#f4a261\" fill-opacity=\"0.25\" stroke=\"none\"/>",
        poly.trim_end()
    );
    let line = |out: &mut String,
                class: &str,
                color: &str,
                dash: &str,
                f: &dyn Fn(&crate::Point) -> Option<i64>| {
        let mut d = String::new();
        for p in pts {
            if let Some(v) = f(p) {
                let _ = write!(d, "{:.1},{:.1} ", x(p.start_ms), y(v));
            }
        }
        if !d.is_empty() {
            let _ = writeln!(
                out,
                "<polyline class=\"{class}\" points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>",
                d.trim_end()
            );
        }
    };
    line(
        &mut out,
        "displayed",
        "#6c757d",
        " stroke-dasharray=\"6 4\"",
        &|p| p.displayed,
    );
    line(&mut out, "roster", "#e76f51", "", &|p| Some(p.roster_peak));
    line(&mut out, "connected", "#1d4ed8", "", &|p| {
        Some(p.connected_peak)
    });
    // Markers.
    let mut marker = |t: Option<i64>, label: &str, color: &str, dy: f64| {
        if let Some(t) = t.filter(|t| (t0..=t1).contains(t)) {
            let xx = x(t);
            let _ = writeln!(
                out,
                "<line x1=\"{xx:.1}\" y1=\"{TOP}\" x2=\"{xx:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-dasharray=\"3 3\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">{label}</text>",
                H - BOTTOM,
                xx + 4.0,
                TOP + dy
            );
        }
    };
    marker(r.scheduled_start_ms, "announced start", "#555", 0.0);
    marker(r.live_at_ms, "actual start", "#2a9d8f", 14.0);
    // Where failures first persisted above the threshold (contract §3b).
    let overload = r.load.overload.as_ref().map(|o| o.minute_ms);
    marker(overload, "overload point", "#b91c1c", 28.0);
    if let Some(peak) = pts.iter().max_by_key(|p| (p.connected_peak, -p.start_ms)) {
        let _ = writeln!(
            out,
            "<circle class=\"peak\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"#1d4ed8\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#1d4ed8\">peak connected {}</text>",
            x(peak.start_ms),
            y(peak.connected_peak),
            x(peak.start_ms) + 8.0,
            y(peak.connected_peak) - 8.0,
            crate::thousands(peak.connected_peak)
        );
    }
    // Legend.
    let legend = [
        ("#6c757d", "displayed by the platform"),
        ("#e76f51", "roster (join/leave counter)"),
        ("#1d4ed8", "connected (receiving audio)"),
        ("#f4a261", "on the roster without audio"),
    ];
    for (i, (color, label)) in legend.iter().enumerate() {
        let lx = LEFT + 10.0 + i as f64 * 200.0;
        let _ = writeln!(
            out,
            "<rect x=\"{lx:.1}\" y=\"8\" width=\"12\" height=\"12\" fill=\"{color}\"/>\
<text x=\"{:.1}\" y=\"18\" fill=\"#222\">{label}</text>",
            lx + 16.0
        );
    }
    out.push_str("</svg>\n");
    out
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
