//! `earshot`: the command line. It parses arguments, wires the library crates together, and writes
//! what people read (progress, summaries, the demo's story). Figures come only from the tables,
//! through `earshot-sql`; this binary never computes one itself.

mod audit;
mod check;
mod demo;
mod kafka;
mod place;
mod serve;
mod sql;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use earshot_contract::{PSEUDONYM_KEY_ENV, Pseudonymizer};
use earshot_core::Settings;
use earshot_ingest::{Input, Summary};
use earshot_sim::SimConfig;

#[derive(Parser)]
#[command(
    name = "earshot",
    version,
    about = "How many people could actually hear it: listener counts you can defend",
    long_about = "earshot turns join/connect/heartbeat/leave events of a livestream into exact counts of \
who was on the roster, who was really receiving audio, and what the platform displayed — \
queryable with SQL."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read listener events (NDJSON files, stdin, or a Kafka topic) and write the tables to a data
    /// directory.
    Ingest(IngestArgs),
    /// Consume a Kafka topic into a data directory and serve it (Postgres wire, HTTP) while it runs.
    Run(Box<kafka::RunArgs>),
    /// Send NDJSON lines to a Kafka topic, keyed by session_id.
    Produce(kafka::ProduceArgs),
    /// Run read-only SQL over a data directory: a query, a query file, stdin, or a prompt.
    Sql(sql::SqlArgs),
    /// Serve a data directory to SQL clients over the Postgres wire protocol.
    Serve(serve::ServeArgs),
    /// A reach audit of one stream: what the data supports about a claim, and how it was obtained.
    Audit(audit::AuditArgs),
    /// Check every file of a data directory (or bucket) against its generations' file lists.
    Check(check::CheckArgs),
    /// Write a realistic simulated event stream as NDJSON.
    Simulate(SimulateArgs),
    /// Simulate a late-starting, overloaded town hall, ingest it, and tell its story.
    Demo(DemoArgs),
    /// A query worker: started by `serve`, `run` and `sql` to run users' SQL in a process of its
    /// own. Not for use by hand.
    #[command(hide = true)]
    Worker,
}

/// The definitions of contract §2–§4 that can be tuned.
#[derive(Args, Clone, Debug)]
struct SettingsArgs {
    /// How long an alive point (connect or heartbeat) keeps a session connected.
    #[arg(long, default_value = "30s", value_parser = parse_duration_ms)]
    liveness: i64,
    /// Bucket width; buckets are aligned to the Unix epoch.
    #[arg(long, default_value = "10s", value_parser = parse_duration_ms)]
    bucket: i64,
    /// How far behind its partition's newest event an event may arrive and still count.
    #[arg(long, default_value = "60s", value_parser = parse_duration_ms)]
    lateness: i64,
    /// Connected time a listener needs to count in listeners_connected_60s.
    #[arg(long, default_value = "60s", value_parser = parse_duration_ms)]
    min_listen: i64,
    /// How far ahead of its partition's newest event an event may jump before a second event must
    /// confirm the new time (a lone event further ahead is rejected as ts_uncorroborated).
    #[arg(long, default_value = "1h", value_parser = parse_duration_ms)]
    max_jump: i64,
}

impl SettingsArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        let s = Settings {
            liveness_ms: self.liveness,
            bucket_ms: self.bucket,
            lateness_ms: self.lateness,
            min_listen_ms: self.min_listen,
            max_jump_ms: self.max_jump,
        };
        s.validate()
            .map_err(|e| anyhow::anyhow!("invalid settings: {e}"))?;
        Ok(s)
    }
}

#[derive(Args)]
struct IngestArgs {
    /// NDJSON input file, or `-` for standard input. Repeat for several files: each is one partition.
    #[arg(
        long,
        short,
        required_unless_present = "brokers",
        conflicts_with = "brokers"
    )]
    input: Vec<String>,
    /// Data directory to write the tables into (created if missing), or a bucket
    /// (`s3://BUCKET/PREFIX`, with the usual AWS_* settings). With --kafka it is also the
    /// checkpoint: a restart continues from it.
    #[arg(long, short)]
    data: PathBuf,
    #[command(flatten)]
    settings: SettingsArgs,
    /// Files only: threads that count sessions, besides the one that reads and parses and the
    /// one that decides order (duplicates, lateness) and writes `events`. 1 counts on that one.
    /// The tables are the same for any number.
    #[arg(long, default_value_t = 1, conflicts_with = "brokers")]
    threads: usize,
    /// Files only: publish even an input with no lines, or whose lines were nearly all (90 % or
    /// more) rejected. Without it such an input leaves the current tables as they were.
    #[arg(long, conflicts_with = "brokers")]
    allow_empty: bool,
    #[command(flatten)]
    cluster: kafka::ClusterArgs,
    #[command(flatten)]
    consume: kafka::ConsumeArgs,
}

#[derive(Args)]
struct SimulateArgs {
    /// Distinct accounts that try to listen.
    #[arg(long, default_value_t = 10_000)]
    listeners: u64,
    /// PRNG seed: the same seed writes the same bytes.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Stream id of the simulated stream.
    #[arg(long, default_value = "town-hall-main")]
    stream_id: String,
    /// Where to write the NDJSON (`-` for standard output).
    #[arg(long, short, default_value = "-", conflicts_with = "brokers")]
    output: String,
    /// Send the simulated event to a Kafka topic instead (with --topic).
    #[command(flatten)]
    cluster: kafka::ClusterArgs,
    /// With --kafka: at most this many messages per second.
    #[arg(long, requires = "brokers", conflicts_with = "realtime")]
    rate: Option<f64>,
    /// With --kafka: send each event when its time comes round, for live demos.
    #[arg(long, requires = "brokers")]
    realtime: bool,
    /// With --realtime: how many times faster than real time.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// How late the stream starts after its announced time.
    #[arg(long, default_value = "42m", value_parser = parse_duration_ms)]
    start_delay: i64,
    /// How long the stream runs once live.
    #[arg(long, default_value = "60m", value_parser = parse_duration_ms)]
    duration: i64,
    /// How long the platform is overloaded after going live.
    #[arg(long, default_value = "15m", value_parser = parse_duration_ms)]
    overload: i64,
    /// Chance that a connection attempt during the overload gets audio (0..1).
    #[arg(long, default_value_t = 0.45)]
    overload_success: f64,
    /// Instead of the overload window: a platform that serves this many connections at once and
    /// fails most attempts while it does; listeners arrive spread over the stream, after it goes
    /// live (so the true overload point is known: where the connected count reaches it).
    #[arg(long, conflicts_with_all = ["overload", "overload_success"])]
    capacity: Option<u64>,
    /// Heartbeat interval of connected clients.
    #[arg(long, default_value = "10s", value_parser = parse_duration_ms)]
    heartbeat: i64,
    /// Mean listening time of a connected session.
    #[arg(long, default_value = "12m", value_parser = parse_duration_ms)]
    mean_listen: i64,
    /// Fraction of events delivered twice (0..1).
    #[arg(long, default_value_t = 0.01)]
    duplicates: f64,
    /// Fraction of lines that are malformed (0..1).
    #[arg(long, default_value_t = 0.001)]
    malformed: f64,
    /// Largest delivery delay of an ordinary event (out-of-order arrival).
    #[arg(long, default_value = "5s", value_parser = parse_duration_ms)]
    max_delay: i64,
    /// Fraction of events delivered 90–180 s behind (late under the default lateness).
    #[arg(long, default_value_t = 0.0002)]
    late: f64,
}

impl SimulateArgs {
    fn config(&self) -> anyhow::Result<SimConfig> {
        for (name, v) in [
            ("--overload-success", self.overload_success),
            ("--duplicates", self.duplicates),
            ("--malformed", self.malformed),
            ("--late", self.late),
        ] {
            if !(0.0..=1.0).contains(&v) {
                bail!("{name} must be between 0 and 1, got {v}");
            }
        }
        if self.heartbeat <= 0 || self.duration <= 0 {
            bail!("--heartbeat and --duration must be positive");
        }
        if self.listeners > u64::from(u32::MAX) / 8 {
            bail!("--listeners is limited to {}", u32::MAX / 8);
        }
        Ok(SimConfig {
            seed: self.seed,
            stream_id: self.stream_id.clone(),
            listeners: self.listeners,
            start_delay_ms: self.start_delay,
            duration_ms: self.duration,
            overload_ms: self.overload,
            overload_success: self.overload_success,
            heartbeat_ms: self.heartbeat,
            mean_listen_ms: self.mean_listen,
            duplicate_rate: self.duplicates,
            malformed_rate: self.malformed,
            max_delay_ms: self.max_delay,
            late_rate: self.late,
            capacity: self.capacity,
            ..SimConfig::default()
        })
    }
}

#[derive(Args)]
struct DemoArgs {
    /// Where to put the simulated input and the tables.
    #[arg(long, short, default_value = "earshot-demo")]
    data: PathBuf,
    /// Distinct accounts in the simulated town hall.
    #[arg(long, default_value_t = 20_000)]
    listeners: u64,
    /// PRNG seed of the simulation.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// Parses `250ms`, `30s`, `5m`, `1h`. A bare number is refused: tools disagree on whether `10`
/// means milliseconds or seconds, and guessing wrong makes a catch-up job exit at once.
pub(crate) fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => {
            return Err(format!(
                "{s:?} has no unit\n  hint: write {s}s for seconds or {s}ms for milliseconds (units: ms, s, m, h)"
            ));
        }
    };
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (use e.g. 500ms, 30s, 5m, 1h)"))?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?} (use ms, s, m or h)"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// The pseudonymizer from the environment, warning loudly when it is the development key.
fn pseudonyms() -> Pseudonymizer {
    let p = Pseudonymizer::from_env();
    if p.is_development() {
        eprintln!(
            "warning: {PSEUDONYM_KEY_ENV} is not set; listener ids are pseudonymised with earshot's \
built-in DEVELOPMENT key,\n         which anyone with earshot's source can use to test guesses. Set \
{PSEUDONYM_KEY_ENV} to a secret for real data."
        );
    }
    p
}

fn run_ingest(
    inputs: &[String],
    data: &Path,
    settings: Settings,
    pseudonyms: &Pseudonymizer,
    threads: usize,
    allow_empty: bool,
) -> anyhow::Result<Summary> {
    let mut opened = Vec::new();
    let mut total_bytes = 0u64;
    for i in inputs {
        if i == "-" {
            opened.push(Input::stdin());
        } else {
            let path = Path::new(i);
            total_bytes += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            opened.push(Input::file(path)?);
        }
    }
    let bar = if std::io::stderr().is_terminal() {
        let bar = if total_bytes > 0 {
            indicatif::ProgressBar::new(total_bytes)
        } else {
            indicatif::ProgressBar::new_spinner()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} ingesting {bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Some(bar)
    } else {
        None
    };
    let mut done_before = 0u64;
    let mut last = 0u64;
    let mut progress = |bytes: u64| {
        if bytes < last {
            done_before += last;
        }
        last = bytes;
        if let Some(b) = &bar {
            b.set_position(done_before + bytes);
        }
    };
    let summary = earshot_ingest::ingest(
        opened,
        data,
        settings,
        pseudonyms,
        threads,
        allow_empty,
        &mut progress,
    )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(summary)
}

fn print_summary(s: &Summary, data: &Path) {
    println!(
        "ingested {} lines ({:.1} MB) in {:.2} s — {:.0} lines/s",
        s.messages - s.resumed_messages,
        s.bytes as f64 / 1e6,
        s.elapsed.as_secs_f64(),
        s.messages_per_second()
    );
    if s.resumed_messages > 0 {
        println!(
            "  resumed:    after {} messages already in the checkpoint ({} in all)",
            s.resumed_messages, s.messages
        );
    }
    println!(
        "  events:     {} valid ({} counted, {} late), {} duplicates ignored",
        s.events, s.counted, s.late, s.duplicates
    );
    if s.rejected == 0 {
        println!("  rejected:   0");
    } else {
        let by: Vec<String> = s
            .rejected_by_reason
            .iter()
            .map(|(k, v)| format!("{} {v}", k.as_str()))
            .collect();
        println!("  rejected:   {} ({})", s.rejected, by.join(", "));
    }
    println!("  streams:    {}, sessions: {}", s.streams, s.sessions);
    println!(
        "  state:      sessions {:.1} MB ({:.0} B per session), event-id set {:.1} MB",
        s.memory.session_bytes as f64 / 1e6,
        s.memory.bytes_per_session(),
        s.memory.dedup_bytes as f64 / 1e6
    );
    println!("  tables in:  {}", data.display());
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// mimalloc rather than the system allocator: events are allocated by the parsing thread and freed
/// by the counting thread, which glibc's per-thread arenas handle poorly (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Lets the allocator back large allocations with 2 MiB pages where the kernel allows it (THP in
/// `madvise` mode). The de-duplication set and session index are gigabytes at a large event and are
/// hit at random once per event: fewer TLB misses made a 1M-listener ingest 9 % faster.
#[allow(unsafe_code)]
fn use_large_pages() {
    // SAFETY: sets one of mimalloc's documented runtime options; no pointers are involved.
    unsafe { libmimalloc_sys::mi_option_set(libmimalloc_sys::mi_option_large_os_pages, 1) };
}

fn main() -> std::process::ExitCode {
    use_large_pages();
    let cli = Cli::parse();
    // Diagnostics (rebalances, retries) on stderr; EARSHOT_LOG=info shows more.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EARSHOT_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("earshot_ingest=warn,earshot_serve=warn")
            }),
        )
        .init();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // A reader that went away (`earshot sql … | head`) is not an error worth a message.
        Err(e) if is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ingest(a) if a.cluster.brokers.is_some() => {
            let settings = a.settings.settings()?;
            kafka::ingest(&a.cluster, &a.consume, &a.data, settings)?;
        }
        Command::Run(a) => kafka::run(*a)?,
        Command::Produce(a) => kafka::produce(&a)?,
        Command::Ingest(a) => {
            let settings = a.settings.settings()?;
            let p = pseudonyms();
            let place = place::Place::for_writing(&a.data)?;
            let seen = place.start_replacing()?;
            let summary = run_ingest(
                &a.input,
                &place.local,
                settings,
                &p,
                a.threads,
                a.allow_empty,
            )?;
            place.publish(seen)?;
            print_summary(&summary, &a.data);
        }
        Command::Sql(a) => sql::run(a)?,
        Command::Serve(a) => serve::run(a)?,
        Command::Audit(a) => audit::run(a)?,
        Command::Check(a) => check::run(&a)?,
        Command::Simulate(a) => {
            let cfg = a.config()?;
            let stats = if a.cluster.brokers.is_some() {
                let mut buf = Vec::new();
                let stats = earshot_sim::simulate(&cfg, &mut buf)?;
                let pace = kafka::pace(a.rate, a.realtime, a.speed)?;
                kafka::produce_from(&a.cluster, pace, &mut buf.as_slice())?;
                stats
            } else if a.output == "-" {
                let stdout = std::io::stdout();
                earshot_sim::simulate(&cfg, &mut stdout.lock())?
            } else {
                let mut f = std::fs::File::create(&a.output)
                    .with_context(|| format!("cannot create {}", a.output))?;
                earshot_sim::simulate(&cfg, &mut f)?
            };
            eprintln!(
                "simulated {} listeners: {} sessions, {} events, {} lines ({} duplicates, {} late, {} malformed)",
                cfg.listeners,
                stats.sessions,
                stats.events,
                stats.lines,
                stats.duplicates,
                stats.late,
                stats.malformed
            );
        }
        Command::Demo(a) => demo::run(&a.data, a.listeners, a.seed)?,
        Command::Worker => earshot_serve::worker_main::run()?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        let bare = parse_duration_ms("10").unwrap_err();
        assert!(bare.contains("no unit") && bare.contains("10s"), "{bare}");
        assert!(parse_duration_ms("3 days").is_err());
        assert!(parse_duration_ms("s").is_err());
    }
}
