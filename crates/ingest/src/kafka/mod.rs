//! Kafka in and out: the exactly-once consumer behind `earshot ingest --kafka`, and the producer
//! behind `earshot produce` and `earshot simulate --kafka`.
//!
//! Exactly once, without Kafka transactions: the tables *are* the checkpoint. Each checkpoint
//! publishes a generation whose `manifest.json` holds, per partition, the next offset to read; the
//! events and rejects it names are exactly the messages before those offsets. A restart resumes
//! from the current generation: it replays the stored events into a fresh engine (which rebuilds the
//! open sessions, buckets, sketches, de-duplication set and watermarks exactly, because the engine
//! depends only on the events and their order) and seeks every partition it is assigned to the
//! stored offset, whatever the consumer group has committed. Offsets are committed to the group
//! only after a checkpoint, for lag monitoring. A message below a partition's position is never
//! applied twice, so redelivery, rebalances and restarts change no figure.
//!
//! The files: `consume` (the loop of [`ingest_kafka`]), `checkpoint` (publishing a generation with
//! its offsets), `resume` (rebuilding the engine from the stored events) and `produce` (the
//! producer). This file holds what they share: settings, errors, the clients' contexts and the
//! topic's metadata. The bare consumer `bench/kafka` compares against lives in `earshot-bench`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use earshot_contract::{Pseudonymizer, parse_event};
use earshot_core::{Engine, Settings};
use earshot_store::{
    CheckpointWith, Generation, KafkaPosition, Manifest, ManifestSettings, SessionRows, StoreError,
    current_generation, read_manifest, stored_events_from,
};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::{At, IngestError, Pipeline, Summary, key_check, new_manifest};

mod bucket;
mod checkpoint;
mod consume;
mod produce;
mod resume;
mod union;
mod workers;

pub use consume::ingest_kafka;
pub use produce::{Pace, Produced, produce};
pub use union::{PARTITIONS, partition_dir};
/// Settings earshot relies on; `-X` may not change them.
const RESERVED: [&str; 6] = [
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "auto.offset.reset",
];

/// Who decides which partitions a consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// The consumer assigns itself every partition of the topic, at its own checkpointed offsets.
    /// The group is used only to publish offsets for lag monitoring. Recovery after a crash does
    /// not depend on the group coordinator noticing the dead member.
    Direct,
    /// The consumer joins the group and reads what the coordinator hands it (several consumers on
    /// one topic). Each partition still starts at earshot's own offset.
    Group,
}

/// Where to read and how.
#[derive(Debug, Clone)]
pub struct KafkaSource {
    pub brokers: String,
    pub topic: String,
    pub group: String,
    pub assignment: Assignment,
    /// librdkafka settings passed through (`-X key=value`): security, SASL, TLS, tuning.
    pub config: Vec<(String, String)>,
    /// Stop once no message has arrived for this long (catch-up jobs, tests).
    pub exit_when_idle: Option<Duration>,
    /// How often every table (and with them the offsets) is published.
    pub checkpoint_every: Duration,
    /// How old what dashboards read (`streams`, `buckets`, `rollups`) may be: between checkpoints
    /// it is published from the engine's live figures whenever a message has waited half this.
    pub freshness: Duration,
    /// A checkpoint also saves the engine's state once this many events were stored since the
    /// last saved state (0: at every checkpoint), and the last checkpoint of a run always does. A
    /// restart loads the state and replays only the events stored after it.
    pub state_every: u64,
    /// Rejected messages are also produced here, with headers saying why.
    pub dead_letter_topic: Option<String>,
    /// How long to keep trying to reach the cluster at start before giving up.
    pub connect_timeout: Duration,
}

/// A checkpoint's figures, for progress lines and `earshot run`.
#[derive(Debug, Clone)]
pub struct Checkpoint<'a> {
    pub summary: &'a Summary,
    pub position: &'a KafkaPosition,
    pub generation: &'a Path,
    /// How long writing the checkpoint took.
    pub took: Duration,
}

/// Kafka could not be used as asked. Each says what to check.
#[derive(Debug, thiserror::Error)]
pub enum KafkaProblem {
    #[error(
        "invalid Kafka setting: {0}\n  hint: -X takes librdkafka properties (https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md), written key=value"
    )]
    Config(String),
    #[error(
        "-X {0} is set by earshot itself and cannot be changed\n  hint: use --kafka for bootstrap.servers and --group for group.id; offsets are managed by earshot's checkpoints"
    )]
    Reserved(String),
    #[error(
        "cannot reach the Kafka cluster at {brokers} (tried for {seconds} s): {detail}\n  hint: check the address and port, that the broker is running and reachable from here, and the security settings (-X security.protocol=…, sasl.*, ssl.*)"
    )]
    Unreachable {
        brokers: String,
        seconds: u64,
        detail: String,
    },
    #[error(
        "topic {topic:?} does not exist on {brokers}\n  hint: check the name (earshot does not create topics), or create it, e.g. `kafka-topics.sh --create --topic {topic} --partitions 6`"
    )]
    NoTopic { topic: String, brokers: String },
    #[error(
        "{data_dir} holds tables from {what}, not from {wanted}\n  hint: give each source its own --data directory"
    )]
    OtherSource {
        data_dir: String,
        what: String,
        wanted: String,
    },
    #[error(
        "{data_dir} was ingested with {field} = {was}, and this run asks for {now}\n  hint: use the same definitions to continue it, or a new --data directory to start over with the new ones"
    )]
    SettingsChanged {
        data_dir: String,
        field: &'static str,
        was: String,
        now: String,
    },
    #[error(
        "the checkpoint in {data_dir} does not replay consistently ({detail}); it was not written by this version of earshot or was altered\n  hint: keep it for inspection and ingest into a new --data directory"
    )]
    Inconsistent { data_dir: String, detail: String },
    #[error(
        "another earshot process replaced the tables at {url} while this one was writing them\n  hint: one consumer per --data location; for several, start each with --assign group (see \"More than one machine\" in the README)"
    )]
    Fenced { url: String },
    #[error(
        "Kafka failed: {0}\n  hint: this error is not one earshot can retry; check the broker's logs"
    )]
    Fatal(String),
    #[error(
        "producing to {topic:?} failed: {detail}\n  hint: check that the topic exists and that this client may write to it"
    )]
    Produce { topic: String, detail: String },
}

/// Splits `key=value` for `-X`.
pub fn parse_setting(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected key=value, got {s:?}")),
    }
}

fn client_config(
    brokers: &str,
    defaults: &[(&str, &str)],
    extra: &[(String, String)],
) -> Result<ClientConfig, KafkaProblem> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in defaults {
        config.set(*k, *v);
    }
    for (k, v) in extra {
        if RESERVED.contains(&k.as_str()) {
            return Err(KafkaProblem::Reserved(k.clone()));
        }
        config.set(k, v);
    }
    Ok(config)
}

/// Remembers librdkafka's latest error, so that a timeout can say what actually went wrong.
#[derive(Default)]
struct LastError(Mutex<Option<String>>);

impl LastError {
    fn set(&self, e: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }
    fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The consumer's view of its partitions, shared with the rebalance callback (which librdkafka
/// runs inside `poll`, on the consuming thread).
#[derive(Default)]
struct Positions {
    /// Per partition: the next offset to apply. Everything below it is already in the engine.
    next: BTreeMap<i32, i64>,
    assigned: BTreeSet<i32>,
    /// Partitions assigned at an offset that is not yet confirmed (see [`Continuity`]).
    unverified: BTreeMap<i32, Continuity>,
    /// A group of workers: the partitions whose data directory this worker has open.
    open: BTreeSet<i32>,
    /// A group of workers: partitions assigned (and paused) whose data directory this worker has
    /// not opened yet; its previous owner may still hold it (see `workers`).
    pending: BTreeSet<i32>,
    /// Assignments received so far.
    assignments: u64,
}

impl Positions {
    /// Where an assigned partition starts: earshot's own position (from its checkpoint), or the
    /// beginning. A position to be checked for continuity (see [`Continuity`]).
    fn start(&mut self, p: i32) -> Offset {
        match self.next.get(&p) {
            Some(&n) => {
                self.unverified.insert(p, Continuity::Rewind(1024));
                Offset::Offset(n)
            }
            None => Offset::Beginning,
        }
    }
}

/// After a partition is assigned at offset `n`, the first message must be at or before `n`.
/// Kafka delivers exactly `n`; some brokers (tansu 0.6) answer a fetch that starts inside a record
/// batch with the *next* batch, which would silently skip messages. So earshot checks, and on a
/// gap seeks further back (the messages before `n` are skipped as already applied).
#[derive(Debug, Clone, Copy)]
enum Continuity {
    /// The next gap rewinds this many offsets before `n`.
    Rewind(i64),
    /// Already rewound to the start of the log: a gap now is real (retention, compaction).
    FromStart,
}

struct ConsumerCtx {
    topic: String,
    /// A group of workers: the data directory holding `partitions/`.
    workers: Option<std::path::PathBuf>,
    positions: Arc<Mutex<Positions>>,
    last_error: LastError,
    rebalances: AtomicU64,
}

impl ClientContext for ConsumerCtx {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "librdkafka error");
        self.last_error.set(format!("{reason} ({error})"));
    }
}

impl ConsumerContext for ConsumerCtx {
    /// On assignment, every partition starts at earshot's own position (from its checkpoint, or
    /// the beginning), never at the group's committed offset: the tables hold exactly the messages
    /// below those positions.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                let mut paused = TopicPartitionList::new();
                for (topic, p) in partitions {
                    let offset = match &self.workers {
                        _ if topic != self.topic => Offset::Beginning,
                        // A worker reads a partition only once it holds its data directory:
                        // until then it waits, paused, at the offset last stored there.
                        Some(dir) if !positions.open.contains(&p) => {
                            positions.pending.insert(p);
                            let _ = paused.add_partition(&topic, p);
                            union::stored_offset(dir, p).map_or(Offset::Beginning, Offset::Offset)
                        }
                        _ => positions.start(p),
                    };
                    let _ = tpl.set_partition_offset(&topic, p, offset);
                    positions.assigned.insert(p);
                }
                positions.assignments += 1;
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    self.last_error.set(format!("assign failed: {e}"));
                }
                if paused.count() > 0
                    && let Err(e) = consumer.pause(&paused)
                {
                    self.last_error.set(format!("pause failed: {e}"));
                }
                tracing::info!(partitions = ?positions.assigned, "partitions assigned");
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                for e in tpl.elements() {
                    positions.assigned.remove(&e.partition());
                    positions.unverified.remove(&e.partition());
                    positions.pending.remove(&e.partition());
                }
                let _ = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                tracing::info!(partitions = ?positions.assigned, "partitions revoked");
            }
            other => {
                self.last_error.set(format!("rebalance failed: {other:?}"));
                positions.assigned.clear();
                positions.pending.clear();
                let _ = consumer.unassign();
            }
        }
    }
}

/// Counts dead-letter deliveries that failed.
#[derive(Default)]
struct ProducerCtx {
    failed: AtomicU64,
    last_error: LastError,
}

impl ClientContext for ProducerCtx {
    fn error(&self, error: KafkaError, reason: &str) {
        self.last_error.set(format!("{reason} ({error})"));
    }
}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.last_error.set(e.to_string());
        }
    }
}

/// Assigns this consumer every partition in `partitions`, each at earshot's own position, and
/// records them as held (the partitions it already reads keep their place).
fn assign_directly(
    consumer: &BaseConsumer<ConsumerCtx>,
    topic: &str,
    partitions: &[i32],
    positions: &Mutex<Positions>,
) -> Result<(), KafkaProblem> {
    let mut positions = positions.lock().unwrap_or_else(|p| p.into_inner());
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        if positions.assigned.contains(&p) {
            continue;
        }
        let offset = positions.start(p);
        tpl.add_partition_offset(topic, p, offset)
            .map_err(|e| KafkaProblem::Fatal(e.to_string()))?;
        positions.assigned.insert(p);
    }
    consumer
        .incremental_assign(&tpl)
        .map_err(|e| KafkaProblem::Fatal(format!("assigning the partitions failed: {e}")))?;
    tracing::info!(partitions = ?positions.assigned, "partitions assigned directly");
    Ok(())
}

/// The topic's partition ids, from one metadata request.
fn topic_partitions<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> Result<Vec<i32>, KafkaError> {
    // Short: it runs on the consuming thread, and a slow answer only delays the next check.
    let md = client.fetch_metadata(Some(topic), Duration::from_secs(1))?;
    Ok(partition_ids(&md, topic))
}

fn partition_ids(md: &rdkafka::metadata::Metadata, topic: &str) -> Vec<i32> {
    md.topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect()
}

/// Asks for the topic's metadata until the cluster answers or `connect_timeout` passes; returns
/// the topic's partition ids.
fn check_topic<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    brokers: &str,
    topic: &str,
    connect_timeout: Duration,
    last_error: &LastError,
) -> Result<Vec<i32>, KafkaProblem> {
    let deadline = Instant::now() + connect_timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.fetch_metadata(Some(topic), left.max(Duration::from_millis(500))) {
            Ok(md) => {
                let partitions = partition_ids(&md, topic);
                if !partitions.is_empty() {
                    return Ok(partitions);
                }
                return Err(KafkaProblem::NoTopic {
                    topic: topic.to_owned(),
                    brokers: brokers.to_owned(),
                });
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(KafkaProblem::Unreachable {
                    brokers: brokers.to_owned(),
                    seconds: connect_timeout.as_secs(),
                    detail: last_error.take().unwrap_or_else(|| e.to_string()),
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
