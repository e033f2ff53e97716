//! `earshot demo`: simulate, ingest, and tell the story — every figure read back through SQL.

use std::path::Path;

use anyhow::{Context, bail};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type, TimestampMillisecondType};
use arrow::record_batch::RecordBatch;
use earshot_contract::format_rfc3339_ms;
use earshot_sim::SimConfig;

use crate::{print_summary, pseudonyms, run_ingest, runtime};

/// The first row of a query result, read by column name.
struct Row<'a>(&'a RecordBatch);

impl Row<'_> {
    fn int(&self, name: &str) -> Option<i64> {
        let col = self.0.column_by_name(name)?;
        if col.is_null(0) {
            return None;
        }
        match col.data_type() {
            DataType::Int64 => Some(col.as_primitive::<Int64Type>().value(0)),
            DataType::Timestamp(_, _) => {
                Some(col.as_primitive::<TimestampMillisecondType>().value(0))
            }
            _ => None,
        }
    }
}

fn n(v: Option<i64>) -> String {
    match v {
        None => "n/a".into(),
        Some(v) => {
            let s = v.abs().to_string();
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            if v < 0 { format!("-{out}") } else { out }
        }
    }
}

fn pct(part: Option<i64>, whole: Option<i64>) -> String {
    match (part, whole) {
        (Some(p), Some(w)) if w > 0 => format!("{:.1} %", 100.0 * p as f64 / w as f64),
        _ => "n/a".into(),
    }
}

fn dur(ms: Option<i64>) -> String {
    match ms {
        None => "n/a".into(),
        Some(ms) if ms.abs() < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{:.1} min", ms as f64 / 60_000.0),
    }
}

pub fn run(data: &Path, listeners: u64, seed: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(data).with_context(|| format!("cannot create {}", data.display()))?;
    let input = data.join("events.ndjson");
    let cfg = SimConfig {
        listeners,
        seed,
        ..SimConfig::default()
    };
    println!(
        "earshot demo: a town hall announced for {}, {} accounts trying to listen\n",
        format_rfc3339_ms(cfg.scheduled_start),
        n(Some(listeners as i64))
    );
    let mut f = std::fs::File::create(&input)
        .with_context(|| format!("cannot create {}", input.display()))?;
    let stats = earshot_sim::simulate(&cfg, &mut f)?;
    drop(f);
    println!(
        "simulated {} lines into {} (with {} duplicates, {} late and {} malformed lines on purpose)",
        n(Some(stats.lines as i64)),
        input.display(),
        n(Some(stats.duplicates as i64)),
        n(Some(stats.late as i64)),
        n(Some(stats.malformed as i64)),
    );
    let p = pseudonyms();
    let input_str = input.to_str().context("demo path is not UTF-8")?.to_owned();
    let summary = run_ingest(
        &[input_str],
        data,
        earshot_core::Settings::default(),
        &p,
        1,
        false,
    )?;
    print_summary(&summary, data);

    let rt = runtime()?;
    let stream = cfg.stream_id.replace('\'', "''");
    let (streams, peak) = rt.block_on(async {
        let ctx = earshot_sql::context(data).await?;
        let streams = earshot_sql::run(
            &ctx,
            &format!(
                "SELECT *, hll_count(joined_hll) AS joined_estimate, \
                 hll_count(connected_hll) AS connected_estimate \
                 FROM streams WHERE stream_id = '{stream}'"
            ),
        )
        .await?;
        let peak = earshot_sql::run(
            &ctx,
            &format!(
                "SELECT bucket_start, displayed_start, roster_peak, connected_peak \
                 FROM buckets WHERE stream_id = '{stream}' AND displayed_start IS NOT NULL \
                 ORDER BY displayed_start DESC, bucket_start LIMIT 1"
            ),
        )
        .await?;
        Ok::<_, earshot_sql::SqlError>((streams, peak))
    })?;
    let Some(s) = streams.iter().find(|b| b.num_rows() > 0) else {
        bail!("the demo stream is missing from the streams table (this is a bug in earshot)");
    };
    let s = Row(s);
    let at_peak = peak.iter().find(|b| b.num_rows() > 0).map(Row);

    println!("\nWhat the numbers say about '{}':", cfg.stream_id);
    println!(
        "  The platform displayed up to {} listeners.",
        n(s.int("peak_displayed"))
    );
    println!(
        "  At most {} were receiving audio at the same time; the roster (a join/leave counter) peaked at {}.",
        n(s.int("peak_connected")),
        n(s.int("peak_roster"))
    );
    if let Some(p) = &at_peak {
        let (roster, connected) = (p.int("roster_peak"), p.int("connected_peak"));
        println!(
            "  In the 10 s from {} (the displayed peak): displayed {}, roster up to {}, connected up to {}.",
            p.int("bucket_start")
                .map(format_rfc3339_ms)
                .unwrap_or_default(),
            n(p.int("displayed_start")),
            n(roster),
            n(connected)
        );
    }
    println!(
        "  Distinct listeners: {} joined, {} ever heard audio, {} listened at least a minute \
         (sketch estimates: {} and {}).",
        n(s.int("listeners_joined")),
        n(s.int("listeners_connected")),
        n(s.int("listeners_connected_60s")),
        n(s.int("joined_estimate")),
        n(s.int("connected_estimate"))
    );
    println!(
        "  {} of {} join attempts never got audio ({}): {} gave up or failed, {} are ghosts still on the roster.",
        n(s.int("failed_joins")),
        n(s.int("sessions")),
        pct(s.int("failed_joins"), s.int("sessions")),
        n(s.int("abandoned_before_audio")),
        n(s.int("ghost_sessions"))
    );
    println!(
        "  Time to first audio: median {}, 90th percentile {} (waiting for the late start included).",
        dur(s.int("ttfa_ms_p50")),
        dur(s.int("ttfa_ms_p90"))
    );
    match s.int("start_delay_ms") {
        Some(d) => println!(
            "  The stream went live at {}, {} after its announced start.",
            s.int("live_at").map(format_rfc3339_ms).unwrap_or_default(),
            dur(Some(d))
        ),
        None => println!("  The start delay is unknown (no announced start or no live signal)."),
    }
    let shown = data.display();
    println!("\nData: {shown} (Parquet under {shown}/current/, readable by DuckDB and pyarrow)");
    println!("Ask your own questions, e.g.:");
    println!(
        "  earshot sql --data {shown} \"SELECT date_trunc('minute', bucket_start) AS minute, \
         max(displayed_start) AS displayed, max(roster_peak) AS roster, max(connected_peak) AS connected, \
         hll_count(hll_merge(connected_hll)) AS listeners FROM buckets GROUP BY 1 ORDER BY 1\""
    );
    Ok(())
}
