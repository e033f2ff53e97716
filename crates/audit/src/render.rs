//! The report as Markdown (with the chart as an SVG file beside it), self-contained HTML, or JSON.

use std::fmt::Write;

use serde_json::{Value as Json, json};

use crate::svg::{chart, escape};
use crate::{LIVENESS_S, MIN_LISTEN_S, ROUNDING, Report, SKETCH_95, Value, thousands};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Md,
    Html,
    Json,
}

/// The rendered report, and for Markdown the charts to write beside it (the timeline, and the
/// failure rate against the load).
pub struct Rendered {
    pub text: String,
    pub svg: Option<String>,
    pub load_svg: Option<String>,
    pub compare_svg: Option<String>,
}

/// Renders `r`; `svg_name` is the file name the Markdown links to for its chart.
pub fn render(r: &Report, format: Format, svg_name: &str) -> Rendered {
    match format {
        Format::Json => Rendered {
            text: format!("{:#}\n", json(r)),
            svg: None,
            load_svg: None,
            compare_svg: None,
        },
        Format::Md => Rendered {
            text: markdown(r, svg_name),
            svg: Some(chart(r)),
            load_svg: Some(crate::load::chart(&r.load)),
            compare_svg: r.compare.as_ref().map(|b| crate::compare::chart(r, b)),
        },
        Format::Html => Rendered {
            text: html(r),
            svg: None,
            load_svg: None,
            compare_svg: None,
        },
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Int(i) => thousands(*i),
        Value::Time(t) => t.clone(),
        Value::Null => "—".to_string(),
    }
}

/// A figure as the tables print it, and a duration also in minutes and seconds, as a journalist
/// quotes it (`2,636,209` ms is 43 min 56 s).
fn figure_text(f: &crate::Figure) -> String {
    match (f.name.contains("_ms"), f.value.int()) {
        (true, Some(ms)) => format!(
            "{} ({})",
            value_text(&f.value),
            crate::compare::minutes_and_seconds(ms)
        ),
        _ => value_text(&f.value),
    }
}

fn value_json(v: &Value) -> Json {
    match v {
        Value::Int(i) => json!(i),
        Value::Time(t) => json!(t),
        Value::Null => Json::Null,
    }
}

fn json(r: &Report) -> Json {
    let figures: serde_json::Map<String, Json> = r
        .figures
        .iter()
        .map(|f| {
            (
                f.name.to_string(),
                json!({
                    "value": value_json(&f.value),
                    "exact": f.interval_95.is_none(),
                    "interval_95": f.interval_95.map(|(lo, hi)| json!([lo, hi])),
                    "meaning": f.meaning,
                }),
            )
        })
        .collect();
    let p = &r.provenance;
    json!({
        "stream_id": r.stream_id,
        "claim": r.claim.map(|c| json!({"value": c.value, "kind": c.kind.as_str()})),
        "verdict": r.verdict.as_ref().map(|v| json!({
            "summary": v.summary,
            "rounding_allowance": ROUNDING,
            "comparisons": v.comparisons.iter().map(|c| json!({
                "measure": c.measure, "value": c.value, "consistent": c.consistent,
            })).collect::<Vec<_>>(),
        })),
        "finding": r.finding,
        "figures": figures,
        "failures_against_load": crate::load::json(&r.load),
        "compare": r.compare.as_ref().map(|b| json(b)),
        "sensitivity": r.sensitivity.iter().map(|s| json!({
            "liveness_s": s.liveness_s,
            "min_listen_s": s.min_listen_s,
            "peak_connected": s.peak_connected,
            "listeners_connected": s.listeners_connected,
            "listeners_listened_min": s.listeners_listened_min,
            "as_ingested": s.as_ingested,
        })).collect::<Vec<_>>(),
        "provenance": {
            "generation": p.generation,
            "manifest": p.manifest,
            "events_by_type": p.events_by_type.iter().map(|(t, n, late)| json!({"type": t, "events": n, "late": late})).collect::<Vec<_>>(),
            "rejects_by_reason": p.rejects_by_reason.iter().map(|(c, n)| json!({"reason_code": c, "rejected": n})).collect::<Vec<_>>(),
            "auditor_version": p.auditor_version,
            "queries": p.queries.iter().map(|q| json!({"name": q.name, "sha256": q.sha256, "sql": q.sql})).collect::<Vec<_>>(),
            "stamp": p.stamp,
        },
    })
}

/// Sections shared by Markdown and HTML, as (heading, Markdown-ish body) built by the two writers.
fn method_note() -> String {
    format!(
        "Exact figures are counted from every session. Estimates come from HyperLogLog sketches \
(precision 14); their 95 % interval is ±{:.2} % of the estimate. A claim is taken as consistent \
with a measure when it is at most {:.0} % above it, allowing for rounding (\"a million\").",
        SKETCH_95 * 100.0,
        ROUNDING * 100.0
    )
}

fn markdown(r: &Report, svg_name: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# Reach audit: `{}`\n", r.stream_id);
    if let Some(c) = r.claim {
        let _ = writeln!(
            o,
            "Claim examined: **{} {} listeners**.\n",
            thousands(c.value),
            c.kind.as_str()
        );
    }
    let _ = writeln!(o, "## Finding\n");
    for s in &r.finding {
        let _ = writeln!(o, "{s}");
    }
    o.push('\n');
    if let Some(v) = &r.verdict {
        let _ = writeln!(o, "## Verdict on the claim\n\n{}\n", v.summary);
        let _ = writeln!(
            o,
            "| measure | value | consistent with the claim |\n|---|---:|---|"
        );
        for c in &v.comparisons {
            let _ = writeln!(
                o,
                "| `{}` | {} | {} |",
                c.measure,
                thousands(c.value),
                if c.consistent { "yes" } else { "no" }
            );
        }
        o.push('\n');
    }
    let _ = writeln!(
        o,
        "## Timeline\n\n![Displayed, roster and connected over time]({svg_name})\n"
    );
    markdown_load(&mut o, &r.load, &load_svg_name(svg_name));
    if let Some(b) = &r.compare {
        let (la, lb) = crate::compare::labels(r, b);
        let _ = writeln!(
            o,
            "## Side by side: `{la}` and `{lb}`\n\nThe same definitions and settings for both.\n"
        );
        let _ = writeln!(o, "| | `{la}` | `{lb}` |\n|---|---:|---:|");
        for [what, x, y] in crate::compare::rows(r, b) {
            let _ = writeln!(o, "| {what} | {x} | {y} |");
        }
        let _ = writeln!(
            o,
            "\n![Both events' failure rate against the number trying to listen]({})\n",
            compare_svg_name(svg_name)
        );
    }
    let _ = writeln!(o, "## Figures\n\n{}\n", method_note());
    let _ = writeln!(
        o,
        "| figure | value | exact or estimated | meaning |\n|---|---:|---|---|"
    );
    for f in &r.figures {
        let how = match f.interval_95 {
            None => "exact".to_string(),
            Some((lo, hi)) => format!("estimated, 95 % in [{}, {}]", thousands(lo), thousands(hi)),
        };
        let _ = writeln!(
            o,
            "| `{}` | {} | {how} | {} |",
            f.name,
            figure_text(f),
            f.meaning
        );
    }
    let _ = writeln!(
        o,
        "\n## Sensitivity to the definitions\n\nThe headline figures recomputed from the same events \
with liveness (how long a heartbeat counts as proof of audio) of {} s and a minimum listen of {} s. \
The row marked * uses the definitions the tables were built with.\n",
        LIVENESS_S.map(|v| v.to_string()).join(" / "),
        MIN_LISTEN_S.map(|v| v.to_string()).join(" / ")
    );
    let _ = writeln!(
        o,
        "| liveness | minimum listen | peak_connected | listeners_connected | listened at least the minimum |\n|---:|---:|---:|---:|---:|"
    );
    for s in &r.sensitivity {
        let _ = writeln!(
            o,
            "| {} s{} | {} s | {} | {} | {} |",
            s.liveness_s,
            if s.as_ingested { " *" } else { "" },
            s.min_listen_s,
            thousands(s.peak_connected),
            thousands(s.listeners_connected),
            thousands(s.listeners_listened_min)
        );
    }
    let p = &r.provenance;
    let _ = writeln!(o, "\n## Provenance\n");
    let _ = writeln!(o, "- Data generation: `{}`", p.generation);
    if let Some(inputs) = p.manifest["inputs"].as_array() {
        for i in inputs {
            let _ = writeln!(
                o,
                "- Input `{}` (partition {}): {} bytes, {} lines, SHA-256 `{}`",
                i["source"].as_str().unwrap_or("?"),
                i["partition"],
                i["bytes"],
                i["messages"],
                i["sha256"].as_str().unwrap_or("not recorded")
            );
        }
    }
    let m = &p.manifest;
    let _ = writeln!(
        o,
        "- Lines read: {}; valid events: {}; counted: {}; late: {}; duplicates ignored: {}; rejected: {}",
        m["messages"], m["events"], m["counted"], m["late"], m["duplicates"], m["rejected"]
    );
    let _ = writeln!(
        o,
        "- Settings at ingest: liveness {} ms, bucket {} ms, lateness {} ms, minimum listen {} ms",
        m["settings"]["liveness_ms"],
        m["settings"]["bucket_ms"],
        m["settings"]["lateness_ms"],
        m["settings"]["min_listen_ms"]
    );
    let _ = writeln!(
        o,
        "- Pseudonym key: {}; ingested by earshot {}; audited by earshot {}",
        m["pseudonym_key"].as_str().unwrap_or("?"),
        m["earshot_version"].as_str().unwrap_or("?"),
        p.auditor_version
    );
    if let Some(stamp) = &p.stamp {
        let _ = writeln!(o, "- Report generated at {stamp}");
    }
    let _ = writeln!(
        o,
        "\nEvents of this stream by type:\n\n| type | events | late |\n|---|---:|---:|"
    );
    for (t, n, late) in &p.events_by_type {
        let _ = writeln!(o, "| {t} | {} | {} |", thousands(*n), thousands(*late));
    }
    let _ = writeln!(
        o,
        "\nRejected lines (whole ingest) by reason:\n\n| reason | lines |\n|---|---:|"
    );
    for (c, n) in &p.rejects_by_reason {
        let _ = writeln!(o, "| {c} | {} |", thousands(*n));
    }
    let _ = writeln!(o, "\n### Queries run\n");
    for q in &p.queries {
        let _ = writeln!(
            o,
            "`{}` — SHA-256 `{}`\n\n```sql\n{}\n```\n",
            q.name,
            q.sha256,
            q.sql.trim_end()
        );
    }
    o
}

fn html(r: &Report) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Reach audit: {id}</title>\n<style>\
body{{font-family:system-ui,sans-serif;max-width:960px;margin:2rem auto;padding:0 1rem;color:#222;line-height:1.45}}\
table{{border-collapse:collapse;margin:0.5rem 0 1.5rem}}td,th{{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}}\
td.n{{text-align:right;font-variant-numeric:tabular-nums}}.finding{{font-size:1.15rem}}\
.verdict{{background:#f6f6f6;border-left:4px solid #1d4ed8;padding:0.6rem 1rem}}\
pre{{background:#f6f6f6;padding:0.6rem;overflow-x:auto}}svg{{max-width:100%;height:auto}}\
</style></head><body>\n<h1>Reach audit: <code>{id}</code></h1>\n",
        id = escape(&r.stream_id)
    );
    if let Some(c) = r.claim {
        let _ = writeln!(
            o,
            "<p>Claim examined: <strong>{} {} listeners</strong>.</p>",
            thousands(c.value),
            c.kind.as_str()
        );
    }
    let _ = writeln!(o, "<h2>Finding</h2>\n<p class=\"finding\">");
    for s in &r.finding {
        let _ = writeln!(o, "{} ", escape(s));
    }
    o.push_str("</p>\n");
    if let Some(v) = &r.verdict {
        let _ = writeln!(
            o,
            "<h2>Verdict on the claim</h2>\n<p class=\"verdict\">{}</p>\n<table><tr><th>measure</th><th>value</th><th>consistent with the claim</th></tr>",
            escape(&v.summary)
        );
        for c in &v.comparisons {
            let _ = writeln!(
                o,
                "<tr><td><code>{}</code></td><td class=\"n\">{}</td><td>{}</td></tr>",
                c.measure,
                thousands(c.value),
                if c.consistent { "yes" } else { "no" }
            );
        }
        o.push_str("</table>\n");
    }
    let _ = writeln!(
        o,
        "<h2>Timeline</h2>\n<figure id=\"chart\">\n{}</figure>",
        chart(r)
    );
    html_load(&mut o, &r.load);
    if let Some(b) = &r.compare {
        let (la, lb) = crate::compare::labels(r, b);
        let _ = writeln!(
            o,
            "<h2>Side by side: <code>{a}</code> and <code>{b}</code></h2>\n<p>The same definitions \
and settings for both.</p>\n<table><tr><th></th><th>{a}</th><th>{b}</th></tr>",
            a = escape(&la),
            b = escape(&lb)
        );
        for [what, x, y] in crate::compare::rows(r, b) {
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                escape(&what.replace('`', "")),
                escape(&x),
                escape(&y)
            );
        }
        let _ = writeln!(
            o,
            "</table>\n<figure id=\"compare-chart\">\n{}</figure>",
            crate::compare::chart(r, b)
        );
    }
    let _ = writeln!(
        o,
        "<h2>Figures</h2>\n<p>{}</p>\n<table><tr><th>figure</th><th>value</th><th>exact or estimated</th><th>meaning</th></tr>",
        escape(&method_note())
    );
    for f in &r.figures {
        let how = match f.interval_95 {
            None => "exact".to_string(),
            Some((lo, hi)) => format!("estimated, 95 % in [{}, {}]", thousands(lo), thousands(hi)),
        };
        let _ = writeln!(
            o,
            "<tr><td><code>{}</code></td><td class=\"n\">{}</td><td>{how}</td><td>{}</td></tr>",
            f.name,
            escape(&figure_text(f)),
            escape(f.meaning)
        );
    }
    o.push_str("</table>\n<h2>Sensitivity to the definitions</h2>\n<p>The headline figures recomputed from the same events for other liveness and minimum-listen definitions; * marks the definitions the tables were built with.</p>\n<table><tr><th>liveness</th><th>minimum listen</th><th>peak_connected</th><th>listeners_connected</th><th>listened at least the minimum</th></tr>\n");
    for s in &r.sensitivity {
        let _ = writeln!(
            o,
            "<tr><td class=\"n\">{} s{}</td><td class=\"n\">{} s</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            s.liveness_s,
            if s.as_ingested { " *" } else { "" },
            s.min_listen_s,
            thousands(s.peak_connected),
            thousands(s.listeners_connected),
            thousands(s.listeners_listened_min)
        );
    }
    o.push_str("</table>\n<h2>Provenance</h2>\n");
    // The provenance details are the Markdown's, as preformatted text, so both stay in step.
    let md = markdown(r, "");
    let prov = md.split("## Provenance\n").nth(1).unwrap_or("");
    let _ = writeln!(o, "<pre>{}</pre>\n</body></html>", escape(prov.trim()));
    o
}

/// The words that head the failures section, for both writers.
fn load_intro(load: &crate::Load) -> String {
    let s = &load.settings;
    format!(
        "A join attempt starts when the listener joins, or when the stream went live if that was \
later; it is served if audio arrived within {} s, failed otherwise. A minute has a failure rate when \
it has at least {} attempts (contract §3b).",
        s.bound_ms / 1000,
        s.min_attempts
    )
}

/// The file name of the side-by-side chart beside the timeline's (`report-compare.svg`).
pub fn compare_svg_name(svg_name: &str) -> String {
    match svg_name.strip_suffix(".svg") {
        Some(stem) => format!("{stem}-compare.svg"),
        None => format!("{svg_name}-compare.svg"),
    }
}

/// The file name of the load chart beside the timeline's (`report.svg` → `report-load.svg`).
pub fn load_svg_name(svg_name: &str) -> String {
    match svg_name.strip_suffix(".svg") {
        Some(stem) => format!("{stem}-load.svg"),
        None => format!("{svg_name}-load.svg"),
    }
}

fn markdown_load(o: &mut String, load: &crate::Load, chart_name: &str) {
    let _ = writeln!(o, "## Failures against load\n\n{}\n", load_intro(load));
    if let Some((claim, verdict)) = &load.claim {
        let _ = writeln!(o, "**Claimed capacity {}.** {verdict}\n", thousands(*claim));
    }
    for f in crate::load::findings(load) {
        let _ = writeln!(o, "{f}");
    }
    let _ = writeln!(
        o,
        "\n![Failure rate against the number trying to listen, each minute a point]({chart_name})\n"
    );
    bands_markdown(o, load);
    let _ = writeln!(o, "\n| {} |", crate::load::TABLE_HEADER.join(" | "));
    let _ = writeln!(
        o,
        "|---|{}",
        "---:|".repeat(crate::load::TABLE_HEADER.len() - 1)
    );
    for row in crate::load::table(load) {
        let _ = writeln!(o, "| {} |", row.join(" | "));
    }
    o.push('\n');
}

fn html_load(o: &mut String, load: &crate::Load) {
    let _ = writeln!(
        o,
        "<h2>Failures against load</h2>\n<p>{}</p>",
        escape(&load_intro(load))
    );
    if let Some((claim, verdict)) = &load.claim {
        let _ = writeln!(
            o,
            "<p class=\"verdict\"><strong>Claimed capacity {}.</strong> {}</p>",
            thousands(*claim),
            escape(verdict)
        );
    }
    o.push_str("<p>");
    for f in crate::load::findings(load) {
        let _ = write!(o, "{} ", escape(&f));
    }
    let _ = writeln!(
        o,
        "</p>\n<figure id=\"load-chart\">\n{}</figure>",
        crate::load::chart(load)
    );
    o.push_str("<table><tr>");
    for h in crate::load::TABLE_HEADER {
        let _ = write!(o, "<th>{}</th>", escape(h));
    }
    o.push_str("</tr>\n");
    for row in crate::load::table(load) {
        o.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            let class = if i == 0 { "" } else { " class=\"n\"" };
            let _ = write!(o, "<td{class}>{}</td>", escape(cell));
        }
        o.push_str("</tr>\n");
    }
    o.push_str("</table>\n");
}

/// The failure rate by load band, in Markdown.
fn bands_markdown(o: &mut String, load: &crate::Load) {
    if load.bands.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "| trying to listen | minutes | attempts | failed | failure rate |\n|---|---:|---:|---:|---:|"
    );
    for b in &load.bands {
        let _ = writeln!(
            o,
            "| {} to {} | {} | {} | {} | {} |",
            thousands(b.from),
            thousands(b.to),
            b.minutes,
            thousands(b.attempts),
            thousands(b.failed),
            b.failure_rate
                .map_or("–".to_string(), |r| format!("{:.1} %", 100.0 * r))
        );
    }
}
