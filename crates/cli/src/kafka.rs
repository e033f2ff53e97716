//! The Kafka side of the command line: `ingest --kafka`, `produce`, `simulate --kafka` and `run`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use earshot_core::Settings;
use earshot_ingest::kafka::{Assignment, Checkpoint, KafkaSource, Pace, parse_setting};

use crate::{parse_duration_ms, print_summary, pseudonyms};

/// Where the cluster is and how to talk to it.
#[derive(Args, Clone, Debug)]
pub struct ClusterArgs {
    /// Bootstrap brokers, e.g. 127.0.0.1:9092 or host1:9092,host2:9092.
    #[arg(long = "kafka", value_name = "BROKERS")]
    pub brokers: Option<String>,
    /// The topic to read or write.
    #[arg(long, requires = "brokers")]
    pub topic: Option<String>,
    /// A librdkafka setting passed through, as kcat does (repeatable): -X security.protocol=SASL_SSL
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_setting, requires = "brokers")]
    pub config: Vec<(String, String)>,
    /// How long to keep trying to reach the cluster at start.
    #[arg(long, default_value = "30s", value_parser = parse_duration_ms)]
    pub connect_timeout: i64,
}

impl ClusterArgs {
    fn require(&self) -> anyhow::Result<(&str, &str)> {
        match (&self.brokers, &self.topic) {
            (Some(b), Some(t)) => Ok((b, t)),
            (Some(_), None) => anyhow::bail!("--kafka needs --topic"),
            _ => anyhow::bail!("this needs --kafka BROKERS and --topic TOPIC"),
        }
    }
}

/// `--assign`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Assign {
    Direct,
    Group,
}

/// How `ingest --kafka` and `run` consume.
#[derive(Args, Clone, Debug)]
pub struct ConsumeArgs {
    /// Consumer group (offsets are committed to it after each checkpoint, for lag monitoring).
    #[arg(long, default_value = "earshot")]
    pub group: String,
    /// Who decides which partitions this process reads: `direct` (the default) assigns it every
    /// partition of the topic itself, at its own checkpointed offsets, so a restart after a crash
    /// reads again at once; `group` makes it one of several workers: start N processes with the
    /// same --group and --data, the group coordinator hands partitions out, each partition is
    /// stored in DATA/partitions/<p>/ with its state, and DATA holds the union of them all
    /// (a restart then waits for the group).
    #[arg(long, value_enum, default_value = "direct")]
    pub assign: Assign,
    /// Stop once no message has arrived for this long (e.g. 10s); without it, run until stopped.
    #[arg(long, value_parser = parse_duration_ms)]
    pub exit_when_idle: Option<i64>,
    /// How often every table and the consumed offsets are published together.
    #[arg(long, default_value = "5s", value_parser = parse_duration_ms)]
    pub checkpoint_interval: i64,
    /// How old what dashboards read may be: between checkpoints, `streams`, `buckets` and
    /// `rollups` are published (over the last checkpoint's other tables) as soon as a message has
    /// waited half this long.
    #[arg(long, default_value = "1s", value_parser = parse_duration_ms)]
    pub freshness: i64,
    /// Save the engine's state with a checkpoint once this many events were stored since the
    /// last saved state (0: every checkpoint); the last checkpoint of a run always saves it. A
    /// restart loads the state and replays only the events stored after it.
    #[arg(long, default_value_t = 500_000, value_name = "EVENTS")]
    pub state_every: u64,
    /// Also produce every rejected message to this topic, with headers giving the reason.
    #[arg(long, value_name = "TOPIC")]
    pub dead_letter_topic: Option<String>,
}

impl ConsumeArgs {
    pub fn source(&self, cluster: &ClusterArgs) -> anyhow::Result<KafkaSource> {
        let (brokers, topic) = cluster.require()?;
        if self.checkpoint_interval <= 0 {
            anyhow::bail!("--checkpoint-interval must be positive");
        }
        if self.freshness <= 0 {
            anyhow::bail!("--freshness must be positive");
        }
        Ok(KafkaSource {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            group: self.group.clone(),
            assignment: match self.assign {
                Assign::Direct => Assignment::Direct,
                Assign::Group => Assignment::Group,
            },
            config: cluster.config.clone(),
            exit_when_idle: self.exit_when_idle.map(millis),
            checkpoint_every: millis(self.checkpoint_interval),
            freshness: millis(self.freshness),
            state_every: self.state_every,
            dead_letter_topic: self.dead_letter_topic.clone(),
            connect_timeout: millis(cluster.connect_timeout),
        })
    }
}

fn millis(ms: i64) -> Duration {
    Duration::from_millis(ms.max(0) as u64)
}

/// Sets `stop` on Ctrl-C or SIGTERM, so that the consumer ends with a checkpoint.
pub fn stop_on_signal(stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(crate::serve::shutdown());
        eprintln!("stopping: writing a last checkpoint");
        stop.store(true, Ordering::Relaxed);
    });
}

/// One line per checkpoint on standard error when it is a terminal or when asked.
fn report(c: &Checkpoint<'_>, verbose: bool) {
    if verbose {
        eprintln!(
            "checkpoint {} ({}): {} messages, {} duplicates, {} rejected; written in {:.0} ms",
            c.position.checkpoints,
            c.generation
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            c.summary.messages,
            c.summary.duplicates,
            c.summary.rejected,
            c.took.as_secs_f64() * 1000.0,
        );
    }
}

/// `earshot ingest --kafka …`.
pub fn ingest(
    cluster: &ClusterArgs,
    consume: &ConsumeArgs,
    data: &Path,
    settings: Settings,
) -> anyhow::Result<()> {
    let source = consume.source(cluster)?;
    let p = pseudonyms();
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signal(stop.clone());
    let verbose = std::io::stderr().is_terminal() || std::env::var_os("EARSHOT_PROGRESS").is_some();
    let place = crate::place::Place::for_writing(data)?;
    let summary = earshot_ingest::kafka::ingest_kafka(
        &source,
        &place.local,
        place.remote.as_ref(),
        settings,
        &p,
        &stop,
        &mut |c| report(c, verbose),
    )?;
    print_summary(&summary, data);
    Ok(())
}

#[derive(Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// NDJSON to send, one message per line (`-` for standard input).
    #[arg(long, short, default_value = "-")]
    pub input: String,
    /// At most this many messages per second.
    #[arg(long, conflicts_with = "realtime")]
    pub rate: Option<f64>,
    /// Send each event when its `ts` comes round (relative to the first event), for live demos.
    #[arg(long)]
    pub realtime: bool,
    /// With --realtime: how many times faster than real time.
    #[arg(long, default_value_t = 1.0, requires = "realtime")]
    pub speed: f64,
}

/// The pace asked for by `--rate`, `--realtime` and `--speed`.
pub fn pace(rate: Option<f64>, realtime: bool, speed: f64) -> anyhow::Result<Pace> {
    Ok(match (rate, realtime) {
        (Some(r), _) if r > 0.0 => Pace::Rate(r),
        (Some(r), _) => anyhow::bail!("--rate must be positive, got {r}"),
        (None, true) if speed > 0.0 => Pace::Realtime { speed },
        (None, true) => anyhow::bail!("--speed must be positive"),
        (None, false) => Pace::Unlimited,
    })
}

/// Sends NDJSON lines to a topic and prints what was sent.
pub fn produce_from(
    cluster: &ClusterArgs,
    pace: Pace,
    input: &mut dyn std::io::BufRead,
) -> anyhow::Result<()> {
    let (brokers, topic) = cluster.require()?;
    let produced = earshot_ingest::kafka::produce(
        brokers,
        topic,
        &cluster.config,
        millis(cluster.connect_timeout),
        input,
        pace,
        &mut |_| {},
    )?;
    println!(
        "produced {} messages ({:.1} MB) to {topic} in {:.2} s — {:.0} messages/s",
        produced.messages,
        produced.bytes as f64 / 1e6,
        produced.elapsed.as_secs_f64(),
        produced.messages as f64 / produced.elapsed.as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// `earshot produce`.
pub fn produce(a: &ProduceArgs) -> anyhow::Result<()> {
    let pace = pace(a.rate, a.realtime, a.speed)?;
    if a.input == "-" {
        let stdin = std::io::stdin();
        produce_from(&a.cluster, pace, &mut stdin.lock())
    } else {
        let f =
            std::fs::File::open(&a.input).with_context(|| format!("cannot open {}", a.input))?;
        produce_from(
            &a.cluster,
            pace,
            &mut std::io::BufReader::with_capacity(1 << 20, f),
        )
    }
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub consume: ConsumeArgs,
    #[command(flatten)]
    pub settings: crate::SettingsArgs,
    #[command(flatten)]
    pub serve: crate::serve::ServeArgs,
}

/// `earshot run`: consume into the data directory and serve it, in one process.
pub fn run(mut a: RunArgs) -> anyhow::Result<()> {
    let source = a.consume.source(&a.cluster)?;
    let settings = a.settings.settings()?;
    let data: PathBuf = a.serve.data.clone();
    // With a bucket, the consumer writes one local copy and the servers read another, which
    // follows the bucket (the union there may be another worker's).
    let place = crate::place::Place::for_writing(&data)?;
    let served = Arc::new(crate::place::Place::for_writing(&data)?);
    let p = pseudonyms();
    let stop = Arc::new(AtomicBool::new(false));
    let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
    let ingest_stop = stop.clone();
    let ingest = std::thread::spawn(move || {
        let mut first = Some(first_tx);
        let result = earshot_ingest::kafka::ingest_kafka(
            &source,
            &place.local,
            place.remote.as_ref(),
            settings,
            &p,
            &ingest_stop,
            &mut |c| {
                report(c, std::env::var_os("EARSHOT_PROGRESS").is_some());
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
            },
        );
        drop(first);
        result
    });
    // Serve only once there are tables (the consumer publishes an empty generation at once when
    // the directory is new).
    if first_rx.recv().is_err() {
        return match ingest.join() {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => anyhow::bail!("the consumer thread panicked"),
        };
    }
    if served.remote.is_some() {
        served.refresh()?;
        served.follow(Duration::from_secs(1), stop.clone());
        a.serve.data = served.local.clone();
    }
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = std::thread::spawn(move || {
        let r = ingest.join();
        let _ = done_tx.send(());
        r
    });
    let served = crate::serve::serve(a.serve, async move {
        let _ = done_rx.await;
    });
    stop.store(true, Ordering::Relaxed);
    let ingested = match watcher.join() {
        Ok(Ok(r)) => r,
        _ => anyhow::bail!("the consumer thread panicked"),
    };
    served?;
    let summary = ingested?;
    print_summary(&summary, &data);
    Ok(())
}
