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

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use earshot_contract::{Pseudonymizer, parse_event};
use earshot_core::{Engine, Settings};
use earshot_store::{
    Generation, KafkaPosition, Manifest, ManifestSettings, StoreError, current_generation,
    read_manifest, stored_events,
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
    /// How often the tables (and with them the offsets) are published.
    pub checkpoint_every: Duration,
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
                for (topic, p) in partitions {
                    let offset = if topic == self.topic {
                        positions.start(p)
                    } else {
                        Offset::Beginning
                    };
                    let _ = tpl.set_partition_offset(&topic, p, offset);
                    positions.assigned.insert(p);
                }
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    self.last_error.set(format!("assign failed: {e}"));
                }
                tracing::info!(partitions = ?positions.assigned, "partitions assigned");
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                for e in tpl.elements() {
                    positions.assigned.remove(&e.partition());
                    positions.unverified.remove(&e.partition());
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

/// Consumes `source.topic` into `data_dir`, checkpointing every `checkpoint_every`, until `stop` is
/// set or (with `exit_when_idle`) the topic has been quiet that long. Resumes from the data
/// directory's own checkpoint when it has one.
pub fn ingest_kafka(
    source: &KafkaSource,
    data_dir: &Path,
    settings: Settings,
    pseudonyms: &Pseudonymizer,
    stop: &AtomicBool,
    on_checkpoint: &mut dyn FnMut(&Checkpoint<'_>),
) -> Result<Summary, IngestError> {
    let started = Instant::now();
    let (mut pipe, mut position) = resume(source, data_dir, settings, pseudonyms)?;
    position.group = source.group.clone();

    let positions = Arc::new(Mutex::new(Positions {
        next: position.next_offsets.clone(),
        ..Positions::default()
    }));
    let ctx = ConsumerCtx {
        topic: source.topic.clone(),
        positions: positions.clone(),
        last_error: LastError::default(),
        rebalances: AtomicU64::new(0),
    };
    // After a crash the group keeps the dead member until its session times out, and only then
    // hands its partitions to the restarted one: 10 s instead of librdkafka's 45 s (-X can change it).
    let mut config = client_config(
        &source.brokers,
        &[("session.timeout.ms", "10000")],
        &source.config,
    )?;
    config
        .set("group.id", &source.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer<ConsumerCtx> = config
        .create_with_context(ctx)
        .map_err(|e| KafkaProblem::Config(e.to_string()))?;
    let partitions = check_topic(
        consumer.client(),
        &source.brokers,
        &source.topic,
        source.connect_timeout,
        &consumer.context().last_error,
    )?;
    let dead_letters = match &source.dead_letter_topic {
        Some(topic) => {
            let producer: BaseProducer<ProducerCtx> =
                client_config(&source.brokers, &[], &source.config)?
                    .create_with_context(ProducerCtx::default())
                    .map_err(|e| KafkaProblem::Config(e.to_string()))?;
            check_topic(
                producer.client(),
                &source.brokers,
                topic,
                source.connect_timeout,
                &producer.context().last_error,
            )?;
            Some((topic.clone(), producer))
        }
        None => None,
    };
    match source.assignment {
        Assignment::Direct => assign_directly(&consumer, &source.topic, &partitions, &positions)?,
        Assignment::Group => consumer
            .subscribe(&[&source.topic])
            .map_err(|e| KafkaProblem::Fatal(e.to_string()))?,
    }
    let mut partitions_checked = Instant::now();

    let mut manifest = new_manifest(&settings, pseudonyms);
    if position.checkpoints == 0 {
        // A new data directory gets (empty) tables at once, so that it can be served and queried
        // before the first message arrives.
        checkpoint(
            &mut pipe,
            &mut manifest,
            &mut position,
            &positions,
            Some(i64::MIN),
            &consumer,
            None,
            on_checkpoint,
        )?;
    }
    let event_prefix = |p: i32| format!("kafka:{}/{p}@", source.topic);
    let mut named: BTreeSet<i32> = BTreeSet::new();
    if dead_letters.is_some() {
        pipe.dead_letters = Some(Vec::new());
    }
    let mut eof: BTreeSet<i32> = BTreeSet::new();
    let mut last_message = Instant::now();
    let mut last_checkpoint = Instant::now();
    let mut dirty = false;
    let mut outage: Option<Instant> = None;
    let mut skipped_redelivered = 0u64;
    let mut unassigned_since = Instant::now();
    let mut warned_unassigned = false;
    let mut idle_tail = Duration::ZERO;
    let finished_by_idle = loop {
        if stop.load(Ordering::Relaxed) {
            break false;
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => {
                if let KafkaError::MessageConsumptionFatal(_) = e {
                    return Err(KafkaProblem::Fatal(e.to_string()).into());
                }
                // Transient (a broker restarting, a network blip): librdkafka retries by itself.
                if outage.is_none() {
                    tracing::warn!(
                        "Kafka: {e}; retrying (nothing is lost: earshot resumes at its own offsets)"
                    );
                    outage = Some(Instant::now());
                }
            }
            Some(Ok(m)) => {
                outage = None;
                let p = m.partition();
                let offset = m.offset();
                let mut guard = positions.lock().unwrap_or_else(|p| p.into_inner());
                let expected = guard.next.get(&p).copied();
                if let (Some(n), Some(&check)) = (expected, guard.unverified.get(&p)) {
                    if offset <= n {
                        guard.unverified.remove(&p);
                    } else if let Continuity::Rewind(back) = check {
                        // A gap right after an assignment: read from further back.
                        let (to, next_check) = if back < n {
                            (
                                Offset::Offset(n - back),
                                Continuity::Rewind(back.saturating_mul(4)),
                            )
                        } else {
                            (Offset::Beginning, Continuity::FromStart)
                        };
                        guard.unverified.insert(p, next_check);
                        drop(guard);
                        tracing::info!(
                            partition = p,
                            expected = n,
                            got = offset,
                            "gap after assignment; reading from further back"
                        );
                        if let Err(e) = consumer.seek(&source.topic, p, to, Duration::from_secs(10))
                        {
                            tracing::warn!(partition = p, %e, "seek failed; retrying on the next message");
                        }
                        continue;
                    } else {
                        guard.unverified.remove(&p);
                        tracing::warn!(
                            partition = p,
                            "offsets {n}..{offset} of partition {p} are no longer on the broker (retention or compaction); continuing at {offset}"
                        );
                    }
                }
                if let Some(next) = expected
                    && offset < next
                {
                    // Already applied (a redelivery after a rebalance or a seek): never twice.
                    skipped_redelivered += 1;
                    continue;
                }
                guard.next.insert(p, offset + 1);
                drop(guard);
                eof.remove(&p);
                last_message = Instant::now();
                dirty = true;
                let payload = m.payload().unwrap_or(&[]);
                position.bytes += payload.len() as u64;
                *position.messages.entry(p).or_default() += 1;
                if named.insert(p) {
                    pipe.name_partition(p as u32, event_prefix(p));
                }
                pipe.take(
                    p as u32,
                    parse_event(payload, pseudonyms),
                    payload,
                    At {
                        position: offset as u64,
                        bytes: payload.len() as u64,
                    },
                )?;
                if let Some((topic, producer)) = &dead_letters {
                    let queue = pipe.dead_letters.as_mut().map(std::mem::take);
                    for dead in queue.unwrap_or_default() {
                        let headers = OwnedHeaders::new()
                            .insert(Header {
                                key: "earshot.source",
                                value: Some(dead.source.as_str()),
                            })
                            .insert(Header {
                                key: "earshot.reason_code",
                                value: Some(dead.code.as_str()),
                            })
                            .insert(Header {
                                key: "earshot.reason",
                                value: Some(dead.reason.as_str()),
                            });
                        let record = BaseRecord::<[u8], [u8]>::to(topic)
                            .payload(dead.payload.as_slice())
                            .headers(headers);
                        send_with_backpressure(producer, record, topic)?;
                        position.dead_lettered += 1;
                    }
                }
            }
        }
        if let Some((_, producer)) = &dead_letters {
            producer.poll(Duration::ZERO);
        }
        // Idle means caught up with nothing arriving, not waiting for the group to hand over
        // partitions (after a restart that can take a session timeout).
        let holding = !positions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .assigned
            .is_empty();
        if !holding {
            last_message = Instant::now();
            if unassigned_since.elapsed() > Duration::from_secs(60) && !warned_unassigned {
                tracing::warn!(
                    "no partition of {} has been assigned to this consumer for a minute: another member of group {} may hold them (run one earshot per group)",
                    source.topic,
                    source.group
                );
                warned_unassigned = true;
            }
        } else {
            unassigned_since = Instant::now();
        }
        // Partitions added to the topic while running are read too.
        if source.assignment == Assignment::Direct
            && partitions_checked.elapsed() >= Duration::from_secs(30)
        {
            partitions_checked = Instant::now();
            if let Ok(now) = topic_partitions(consumer.client(), &source.topic) {
                let known = positions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .assigned
                    .clone();
                if now.iter().any(|p| !known.contains(p)) {
                    tracing::info!(partitions = ?now, "the topic has new partitions");
                    assign_directly(&consumer, &source.topic, &now, &positions)?;
                }
            }
        }
        if let Some(idle) = source.exit_when_idle
            && last_message.elapsed() >= idle
        {
            idle_tail = last_message.elapsed();
            break true;
        }
        if dirty && last_checkpoint.elapsed() >= source.checkpoint_every {
            let final_through = live_final_through(&pipe.engine, &positions, &eof);
            checkpoint(
                &mut pipe,
                &mut manifest,
                &mut position,
                &positions,
                final_through,
                &consumer,
                dead_letters.as_ref().map(|(_, p)| p),
                on_checkpoint,
            )?;
            dirty = false;
            last_checkpoint = Instant::now();
        }
    };
    // At the end every bucket is final, as at the end of a file; after a stop the live rule holds.
    let final_through = if finished_by_idle {
        None
    } else {
        live_final_through(&pipe.engine, &positions, &eof)
    };
    checkpoint(
        &mut pipe,
        &mut manifest,
        &mut position,
        &positions,
        final_through,
        &consumer,
        dead_letters.as_ref().map(|(_, p)| p),
        on_checkpoint,
    )?;
    if skipped_redelivered > 0 {
        tracing::info!(skipped_redelivered, "redelivered messages skipped");
    }
    // The wait that decided the topic was idle is not ingest time.
    pipe.summary.elapsed = started.elapsed().saturating_sub(idle_tail);
    pipe.summary.memory = pipe.engine.memory();
    Ok(pipe.summary)
}

/// Buckets are final up to the slowest watermark among partitions that still have messages to
/// deliver; partitions at their end do not hold buckets back. With every partition at its end, up
/// to the newest watermark.
fn live_final_through(
    engine: &Engine,
    positions: &Mutex<Positions>,
    eof: &BTreeSet<i32>,
) -> Option<earshot_contract::Millis> {
    let positions = positions.lock().unwrap_or_else(|p| p.into_inner());
    let marks: Vec<(i32, i64)> = positions
        .next
        .keys()
        .filter_map(|&p| engine.watermark(p as u32).map(|w| (p, w)))
        .collect();
    let busy = marks
        .iter()
        .filter(|(p, _)| !eof.contains(p))
        .map(|&(_, w)| w)
        .min();
    // `Some(i64::MIN)`: nothing is final yet.
    Some(
        busy.or_else(|| marks.iter().map(|&(_, w)| w).max())
            .unwrap_or(i64::MIN),
    )
}

#[allow(clippy::too_many_arguments)]
fn checkpoint(
    pipe: &mut Pipeline,
    manifest: &mut Manifest,
    position: &mut KafkaPosition,
    positions: &Mutex<Positions>,
    final_through: Option<earshot_contract::Millis>,
    consumer: &BaseConsumer<ConsumerCtx>,
    dead_letters: Option<&BaseProducer<ProducerCtx>>,
    on_checkpoint: &mut dyn FnMut(&Checkpoint<'_>),
) -> Result<(), IngestError> {
    let t = Instant::now();
    // Dead letters first: a checkpoint never names a reject whose copy is still in flight.
    if let Some(producer) = dead_letters {
        producer
            .flush(Duration::from_secs(30))
            .map_err(|e| KafkaProblem::Produce {
                topic: "the dead-letter topic".into(),
                detail: e.to_string(),
            })?;
        let failed = producer.context().failed.load(Ordering::Relaxed);
        if failed > 0 {
            tracing::warn!(
                failed,
                last = ?producer.context().last_error.take(),
                "dead-letter deliveries failed (the rejects table still has every reject)"
            );
        }
    }
    let snapshot = pipe.engine.snapshot(final_through);
    pipe.fill(manifest, &snapshot);
    let mut next = positions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .next
        .clone();
    // Events still waiting in the gate are not in the tables: the checkpoint stops before the
    // first of them, and a restart reads them again (so they are not counted as read yet).
    let mut stored_position = position.clone();
    for (p, n) in next.iter_mut() {
        let waiting: Vec<At> = pipe.gate.waiting(*p as u32).copied().collect();
        if let Some(first) = waiting.first() {
            *n = (*n).min(first.position as i64);
        }
        for w in &waiting {
            manifest.messages -= 1;
            stored_position.bytes -= w.bytes;
            if let Some(m) = stored_position.messages.get_mut(p) {
                *m -= 1;
            }
        }
    }
    position.next_offsets = next.clone();
    pipe.summary.bytes = position.bytes;
    position.checkpoints += 1;
    stored_position.next_offsets = next.clone();
    stored_position.checkpoints = position.checkpoints;
    manifest.kafka = Some(stored_position);
    let generation = pipe.generation.checkpoint(&snapshot, manifest)?;
    // Only now tell the group, for lag monitoring; a failure here loses nothing.
    let assigned = positions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .assigned
        .clone();
    let mut tpl = TopicPartitionList::new();
    for p in assigned {
        if let Some(&n) = next.get(&p) {
            let _ = tpl.add_partition_offset(&position.topic, p, Offset::Offset(n));
        }
    }
    if tpl.count() > 0
        && let Err(e) = consumer.commit(&tpl, CommitMode::Async)
    {
        tracing::debug!(%e, "offset commit failed (monitoring only)");
    }
    on_checkpoint(&Checkpoint {
        summary: &pipe.summary,
        position,
        generation: &generation,
        took: t.elapsed(),
    });
    Ok(())
}

/// Reads the data directory's checkpoint (or starts empty) and rebuilds the engine from it.
fn resume(
    source: &KafkaSource,
    data_dir: &Path,
    settings: Settings,
    pseudonyms: &Pseudonymizer,
) -> Result<(Pipeline, KafkaPosition), IngestError> {
    let fresh = KafkaPosition {
        topic: source.topic.clone(),
        group: source.group.clone(),
        ..KafkaPosition::default()
    };
    let current = match current_generation(data_dir) {
        Ok(c) => c,
        Err(StoreError::NoData { .. }) => {
            // Also takes the writer lock and checks the directory is writable.
            let generation = Generation::begin(data_dir)?;
            return Ok((
                Pipeline::new(Engine::new(settings), generation, pseudonyms.clone()),
                fresh,
            ));
        }
        Err(e) => return Err(e.into()),
    };
    // Lock first: nobody else may move `current` while it is read.
    let generation = Generation::resume(data_dir)?;
    let current = current_generation(data_dir).unwrap_or(current);
    let manifest = read_manifest(&current)?;
    let dir = data_dir.display().to_string();
    let Some(position) = manifest.kafka.clone() else {
        let what = match manifest.inputs.first() {
            Some(i) => format!("a file ingest ({})", i.source),
            None => "a file ingest".to_owned(),
        };
        return Err(KafkaProblem::OtherSource {
            data_dir: dir,
            what,
            wanted: format!("Kafka topic {:?}", source.topic),
        }
        .into());
    };
    if position.topic != source.topic {
        return Err(KafkaProblem::OtherSource {
            data_dir: dir,
            what: format!("Kafka topic {:?}", position.topic),
            wanted: format!("Kafka topic {:?}", source.topic),
        }
        .into());
    }
    let now: ManifestSettings = (&settings).into();
    let was = &manifest.settings;
    for (field, a, b) in [
        ("liveness", was.liveness_ms, now.liveness_ms),
        ("bucket", was.bucket_ms, now.bucket_ms),
        ("lateness", was.lateness_ms, now.lateness_ms),
        ("min-listen", was.min_listen_ms, now.min_listen_ms),
        ("max-jump", was.max_jump_ms, now.max_jump_ms),
    ] {
        if a != b {
            return Err(KafkaProblem::SettingsChanged {
                data_dir: dir,
                field,
                was: format!("{a} ms"),
                now: format!("{b} ms"),
            }
            .into());
        }
    }
    if manifest.key_check != key_check(pseudonyms) {
        return Err(KafkaProblem::SettingsChanged {
            data_dir: dir,
            field: "the pseudonym key",
            was: manifest.pseudonym_key.clone(),
            now: "a different key".into(),
        }
        .into());
    }
    // Replay: the same events in the same order rebuild the same state, and must come out with
    // the same late flags.
    let mut engine = Engine::new(settings);
    let prefix = format!("kafka:{}/", source.topic);
    let mut rows = 0u64;
    stored_events(&current, |row| {
        rows += 1;
        let inconsistent = |detail: String| StoreError::Encode {
            table: "events",
            message: detail,
        };
        let partition = row
            .source
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split_once('@'))
            .and_then(|(p, _)| p.parse::<u32>().ok())
            .ok_or_else(|| inconsistent(format!("row {rows} has source {:?}", row.source)))?;
        let outcome = engine.offer(partition, &row.event);
        let late = outcome == earshot_core::Outcome::Late;
        let stored = matches!(
            outcome,
            earshot_core::Outcome::Counted | earshot_core::Outcome::Late
        );
        if !stored || late != row.late {
            return Err(inconsistent(format!(
                "row {rows} ({}) replays as {outcome:?}",
                row.source
            )));
        }
        Ok(())
    })
    .map_err(|e| match e {
        StoreError::Encode { message, .. } => IngestError::Kafka(KafkaProblem::Inconsistent {
            data_dir: data_dir.display().to_string(),
            detail: message,
        }),
        other => other.into(),
    })?;
    if engine.tally().counted + engine.tally().late != manifest.events {
        return Err(KafkaProblem::Inconsistent {
            data_dir: dir,
            detail: format!(
                "{} events stored, the manifest says {}",
                rows, manifest.events
            ),
        }
        .into());
    }
    let mut pipe = Pipeline::new(engine, generation, pseudonyms.clone());
    let s = &mut pipe.summary;
    s.resumed_messages = manifest.messages;
    s.bytes = position.bytes;
    s.messages = manifest.messages;
    s.duplicates = manifest.duplicates;
    s.rejected = manifest.rejected;
    for (code, n) in &manifest.rejected_by_reason {
        if let Some(code) = earshot_contract::RejectCode::ALL
            .into_iter()
            .find(|c| c.as_str() == code)
        {
            s.rejected_by_reason.insert(code, *n);
        }
    }
    tracing::info!(events = rows, generation = %current.display(), "resumed from checkpoint");
    Ok((pipe, position))
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

/// Sends one record, waiting while librdkafka's queue is full.
fn send_with_backpressure<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, [u8], [u8]>,
    topic: &str,
) -> Result<(), KafkaProblem> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                r,
            )) => {
                record = r;
                producer.poll(Duration::from_millis(50));
            }
            Err((e, _)) => {
                return Err(KafkaProblem::Produce {
                    topic: topic.to_owned(),
                    detail: e.to_string(),
                });
            }
        }
    }
}

/// How fast `produce` sends.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as the broker takes them.
    Unlimited,
    /// At most this many messages per second.
    Rate(f64),
    /// As the events happened: each message waits until its `ts` (relative to the first event's)
    /// has come, at `speed` times real time.
    Realtime { speed: f64 },
}

/// What `produce` did.
#[derive(Debug, Clone, Default)]
pub struct Produced {
    pub messages: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// The parts of an event that routing and pacing need; anything unreadable just has none.
#[derive(serde::Deserialize)]
struct Routing<'a> {
    #[serde(borrow, default)]
    session_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    stream_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    ts: Option<std::borrow::Cow<'a, str>>,
}

/// Sends every line of `input` as one message to `topic`, keyed by its `session_id`, or by its
/// `stream_id` for stream-level events (`display`, `stream_state`), so that each session's and each
/// stream counter's events stay in order in one partition. Lines that are not JSON go unkeyed, and
/// are sent as they are, so that a consumer can be tested on them. Returns once the broker has acknowledged every message.
pub fn produce(
    brokers: &str,
    topic: &str,
    config: &[(String, String)],
    connect_timeout: Duration,
    input: &mut dyn std::io::BufRead,
    pace: Pace,
    progress: &mut dyn FnMut(u64),
) -> Result<Produced, IngestError> {
    let started = Instant::now();
    let producer: BaseProducer<ProducerCtx> =
        client_config(brokers, &[("linger.ms", "20")], config)?
            .create_with_context(ProducerCtx::default())
            .map_err(|e| KafkaProblem::Config(e.to_string()))?;
    check_topic(
        producer.client(),
        brokers,
        topic,
        connect_timeout,
        &producer.context().last_error,
    )?;
    let mut buf = Vec::new();
    let mut out = Produced::default();
    let mut first_ts: Option<i64> = None;
    let mut newest_ts = i64::MIN;
    while crate::read_line_capped(input, &mut buf, usize::MAX)
        .map_err(|e| IngestError::Input {
            source_name: "the input".into(),
            error: e,
        })?
        .is_some()
    {
        let routing: Option<Routing<'_>> = serde_json::from_slice(&buf).ok();
        let key = routing
            .as_ref()
            .and_then(|r| r.session_id.as_deref().or(r.stream_id.as_deref()))
            .map(str::to_owned);
        match pace {
            Pace::Unlimited => {}
            Pace::Rate(per_second) => {
                let due = Duration::from_secs_f64(out.messages as f64 / per_second.max(1e-9));
                wait_until(started + due, &producer);
            }
            Pace::Realtime { speed } => {
                if let Some(ts) = routing
                    .as_ref()
                    .and_then(|r| r.ts.as_deref())
                    .and_then(earshot_contract::parse_rfc3339_ms)
                {
                    let first = *first_ts.get_or_insert(ts);
                    newest_ts = newest_ts.max(ts);
                    let due = Duration::from_secs_f64(
                        (newest_ts - first).max(0) as f64 / 1000.0 / speed.max(1e-9),
                    );
                    wait_until(started + due, &producer);
                }
            }
        }
        let mut record = BaseRecord::to(topic).payload(buf.as_slice());
        if let Some(k) = &key {
            record = record.key(k.as_bytes());
        }
        send_with_backpressure(&producer, record, topic)?;
        out.messages += 1;
        out.bytes += buf.len() as u64;
        if out.messages % 65_536 == 0 {
            progress(out.messages);
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| KafkaProblem::Produce {
            topic: topic.to_owned(),
            detail: format!(
                "{e}{}",
                producer
                    .context()
                    .last_error
                    .take()
                    .map(|l| format!(" (last error: {l})"))
                    .unwrap_or_default()
            ),
        })?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(KafkaProblem::Produce {
            topic: topic.to_owned(),
            detail: format!(
                "{failed} of {} messages were not delivered (last error: {})",
                out.messages,
                producer.context().last_error.take().unwrap_or_default()
            ),
        }
        .into());
    }
    progress(out.messages);
    out.elapsed = started.elapsed();
    Ok(out)
}

fn wait_until<C: ProducerContext>(when: Instant, producer: &BaseProducer<C>) {
    while Instant::now() < when {
        let left = when - Instant::now();
        producer.poll(left.min(Duration::from_millis(50)));
    }
}

/// Reads `count` messages of `topic` and does nothing with them: the bare-consumer baseline of
/// `bench/kafka` (same librdkafka, same broker, none of earshot's work). Returns the time from the
/// first message to the last.
pub fn consume_only(
    brokers: &str,
    topic: &str,
    group: &str,
    config: &[(String, String)],
    count: u64,
) -> Result<Duration, IngestError> {
    let consumer: BaseConsumer = client_config(brokers, &[], config)?
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|e| KafkaProblem::Config(e.to_string()))?;
    consumer
        .subscribe(&[topic])
        .map_err(|e| KafkaProblem::Fatal(e.to_string()))?;
    let mut seen = 0u64;
    let mut first: Option<Instant> = None;
    let mut last_seen = Instant::now();
    while seen < count {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                std::hint::black_box(m.payload());
                first.get_or_insert_with(Instant::now);
                seen += 1;
                last_seen = Instant::now();
            }
            _ if first.is_some() && last_seen.elapsed() > Duration::from_secs(10) => {
                return Err(KafkaProblem::Fatal(format!(
                    "stalled after {seen} of {count} messages"
                ))
                .into());
            }
            _ => {}
        }
    }
    Ok(first.map(|f| f.elapsed()).unwrap_or_default())
}
