//! `earshot audit`: the reach audit report.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use earshot_audit::{Claim, ClaimKind, Format};

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Concurrent,
    Unique,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Md,
    Html,
    Json,
}

#[derive(Args)]
pub struct AuditArgs {
    /// Data directory written by `earshot ingest`.
    #[arg(long, short)]
    data: PathBuf,
    /// The stream to audit.
    #[arg(long)]
    stream: String,
    /// A claimed number of listeners to check against every measure (e.g. 1000000 or 1.3M).
    #[arg(long)]
    claim: Option<String>,
    /// What the claim counts: people at the same time, or distinct people over the stream.
    #[arg(long, value_enum, default_value = "concurrent")]
    claim_kind: KindArg,
    /// A claimed capacity ("tested for 8 million") to check against the failures: contradicted
    /// if joins failed above --failure-threshold while fewer were trying to listen.
    #[arg(long)]
    claim_capacity: Option<String>,
    /// How long an attempt may wait for audio and still count as served (contract §3b's B).
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration_ms)]
    failure_bound: i64,
    /// The failure rate above which a minute failed, in percent (§3b's X).
    #[arg(long, default_value_t = 10.0)]
    failure_threshold: f64,
    /// How many minutes with a rate, in a row, must fail for an overload point (§3b's N).
    #[arg(long, default_value_t = 2)]
    failure_minutes: i64,
    /// The fewest attempts for a minute to have a failure rate (§3b's A).
    #[arg(long, default_value_t = 20)]
    min_attempts: i64,
    /// Another stream to set beside this one (headline figures, start delays, overload points,
    /// capacity served, and both failure-rate charts on the same axes).
    #[arg(long)]
    compare: Option<String>,
    /// The data directory (or s3:// bucket) of the --compare stream, if not --data.
    #[arg(long, requires = "compare")]
    compare_data: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "md")]
    format: FormatArg,
    /// Write the report here (Markdown also writes its charts beside it as FILE-stem.svg and
    /// FILE-stem-load.svg).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Add the time the report was made (otherwise re-running gives byte-identical output).
    #[arg(long)]
    stamp: bool,
}

/// `1000000`, `1,000,000`, `1.3M`, `640k`.
fn parse_claim(s: &str) -> anyhow::Result<i64> {
    let t = s.trim().replace([',', '_', ' '], "");
    let (num, scale) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1e3),
        Some('m' | 'M') => (&t[..t.len() - 1], 1e6),
        Some('b' | 'B') => (&t[..t.len() - 1], 1e9),
        _ => (t.as_str(), 1.0),
    };
    match num.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v * scale < 9e15 => Ok((v * scale).round() as i64),
        _ => bail!("{s:?} is not a number of listeners (e.g. 1000000, 1.3M, 640k)"),
    }
}

pub fn run(a: AuditArgs) -> anyhow::Result<()> {
    let claim = match &a.claim {
        Some(c) => Some(Claim {
            value: parse_claim(c)?,
            kind: match a.claim_kind {
                KindArg::Concurrent => ClaimKind::Concurrent,
                KindArg::Unique => ClaimKind::Unique,
            },
        }),
        None => None,
    };
    let format = match a.format {
        FormatArg::Md => Format::Md,
        FormatArg::Html => Format::Html,
        FormatArg::Json => Format::Json,
    };
    let stamp = a
        .stamp
        .then(|| chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let rt = crate::runtime()?;
    let place = crate::place::Place::for_reading(&a.data)?;
    if !(0.0..=100.0).contains(&a.failure_threshold) {
        bail!("--failure-threshold is a percentage between 0 and 100");
    }
    if a.failure_minutes < 1 || a.min_attempts < 1 || a.failure_bound < 0 {
        bail!(
            "--failure-minutes and --min-attempts must be at least 1, --failure-bound not negative"
        );
    }
    let load = earshot_audit::LoadSettings {
        bound_ms: a.failure_bound,
        min_attempts: a.min_attempts,
        threshold: a.failure_threshold / 100.0,
        persistence: a.failure_minutes,
    };
    let capacity = a.claim_capacity.as_deref().map(parse_claim).transpose()?;
    let other_place = match &a.compare_data {
        Some(d) => Some(crate::place::Place::for_reading(d)?),
        None => None,
    };
    let compare = a.compare.as_deref().map(|stream| {
        let data = other_place.as_ref().map_or(&place.local, |p| &p.local);
        (data.as_path(), stream)
    });
    let report = rt.block_on(earshot_audit::build(
        &place.local,
        &a.stream,
        claim,
        (load, capacity),
        stamp,
        compare,
    ))?;
    let svg_path = a.output.as_ref().map(|o| o.with_extension("svg"));
    let svg_name = svg_path
        .as_ref()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "timeline.svg".to_string());
    let rendered = earshot_audit::render(&report, format, &svg_name);
    match &a.output {
        Some(path) => {
            std::fs::write(path, &rendered.text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            if let (Some(svg), Some(svg_path)) = (&rendered.svg, &svg_path) {
                let load_path = svg_path.with_file_name(earshot_audit::load_svg_name(&svg_name));
                let compare_path =
                    svg_path.with_file_name(earshot_audit::compare_svg_name(&svg_name));
                let mut written = vec![path.display().to_string()];
                for (file, chart) in [
                    (svg_path, Some(svg)),
                    (&load_path, rendered.load_svg.as_ref()),
                    (&compare_path, rendered.compare_svg.as_ref()),
                ] {
                    if let Some(chart) = chart {
                        std::fs::write(file, chart)
                            .with_context(|| format!("cannot write {}", file.display()))?;
                        written.push(file.display().to_string());
                    }
                }
                eprintln!("wrote {}", written.join(", "));
            } else {
                eprintln!("wrote {}", path.display());
            }
        }
        None => {
            use std::io::Write;
            std::io::stdout().write_all(rendered.text.as_bytes())?;
            if rendered.svg.is_some() {
                eprintln!("note: the charts are written beside the report with -o FILE.md");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_claim;

    #[test]
    fn claims_read_like_people_write_them() {
        assert_eq!(parse_claim("1000000").unwrap(), 1_000_000);
        assert_eq!(parse_claim("1,300,000").unwrap(), 1_300_000);
        assert_eq!(parse_claim("1.3M").unwrap(), 1_300_000);
        assert_eq!(parse_claim("640k").unwrap(), 640_000);
        assert!(parse_claim("a lot").is_err());
        assert!(parse_claim("-5").is_err());
        assert!(parse_claim("NaN").is_err());
    }
}
