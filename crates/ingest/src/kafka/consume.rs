//! The consumer: [`KafkaIngest`] holds everything one run keeps between messages; its loop polls,
//! takes each message through the pipeline, publishes the figures when they have waited long
//! enough, and checkpoints on time.

use earshot_remote::{Current, Remote};

use super::produce::send_with_backpressure;
use super::resume::{fetch_and_claim, resume};
use super::*;

/// Consumes `source.topic` into `data_dir`, checkpointing every `checkpoint_every` and publishing
/// the dashboards' figures within `freshness`, until `stop` is set or (with `exit_when_idle`) the
/// topic has been quiet that long. Resumes from the data directory's own checkpoint when it has one.
pub fn ingest_kafka(
    source: &KafkaSource,
    data_dir: &Path,
    remote: Option<&Remote>,
    settings: Settings,
    pseudonyms: &Pseudonymizer,
    stop: &AtomicBool,
    on_checkpoint: &mut dyn FnMut(&Checkpoint<'_>),
) -> Result<Summary, IngestError> {
    let started = Instant::now();
    let mut ingest = KafkaIngest::start(
        source,
        data_dir,
        remote,
        settings,
        pseudonyms,
        on_checkpoint,
    )?;
    let idle_tail = ingest.run(stop, on_checkpoint)?;
    if ingest.skipped_redelivered > 0 {
        tracing::info!(
            skipped_redelivered = ingest.skipped_redelivered,
            "redelivered messages skipped"
        );
    }
    let mut summary = std::mem::take(&mut ingest.handed_over);
    let mut memory = earshot_core::MemoryUse::default();
    for part in ingest.parts.values() {
        summary.add(&part.pipe.summary);
        let m = part.pipe.engine.memory();
        memory.sessions += m.sessions;
        memory.session_bytes += m.session_bytes;
        memory.dedup_bytes += m.dedup_bytes;
        memory.live_bytes += m.live_bytes;
    }
    // The wait that decided the topic was idle is not ingest time.
    summary.elapsed = started.elapsed().saturating_sub(idle_tail);
    summary.memory = memory;
    Ok(summary)
}

/// The key of the one part of a single consumer, which holds every partition.
pub(super) const ALL: i32 = -1;

/// One data directory being written: a single consumer's (every partition), or in a group of
/// workers one partition's.
pub(super) struct Part {
    pub(super) pipe: Pipeline,
    /// What the last checkpoint stored, and the counts since.
    pub(super) position: KafkaPosition,
    pub(super) manifest: Manifest,
    /// Partitions whose event source name the pipeline knows.
    named: BTreeSet<i32>,
    /// A message arrived since the last checkpoint.
    pub(super) dirty: bool,
    /// Revoked (a group of workers): checkpointed, and dropped once the group has assigned
    /// partitions again without it (the assignment count then), or after a few seconds.
    pub(super) parked: Option<(u64, Instant)>,
    /// `--data s3://…`: the bucket's pointer as this consumer last claimed or wrote it (see
    /// `bucket`).
    pub(super) pointer: Option<Current>,
}

impl Part {
    pub(super) fn new(
        mut pipe: Pipeline,
        mut position: KafkaPosition,
        source: &KafkaSource,
        settings: &Settings,
        pseudonyms: &Pseudonymizer,
        dead_letters: bool,
    ) -> Part {
        position.group = source.group.clone();
        // Publishing every second must cost what changed, not a pass over every session.
        pipe.engine.go_live();
        if dead_letters {
            pipe.dead_letters = Some(Vec::new());
        }
        Part {
            pipe,
            position,
            manifest: new_manifest(settings, pseudonyms),
            named: BTreeSet::new(),
            dirty: false,
            parked: None,
            pointer: None,
        }
    }
}

/// Which buckets a checkpoint calls final.
#[derive(Clone, Copy, Debug)]
pub(super) enum Final {
    /// None yet (a new data directory's first, empty checkpoint).
    Nothing,
    /// As the watermarks say (see [`live_final_through`]).
    Live,
    /// Every bucket: the topic was idle to its end.
    All,
}

/// One consumer's run: the data directories it writes, where each partition stands, the
/// clients, and the clocks that decide when to publish.
pub(super) struct KafkaIngest<'a> {
    pub(super) source: &'a KafkaSource,
    pub(super) pseudonyms: &'a Pseudonymizer,
    pub(super) settings: Settings,
    /// The local data directory: with `--data s3://…`, this process's copy (see `bucket`).
    pub(super) data_dir: std::path::PathBuf,
    pub(super) remote: Option<&'a Remote>,
    /// Partitions let go because another worker claimed them in the bucket, and when.
    pub(super) fenced: BTreeMap<i32, Instant>,
    /// A group of workers (`Assignment::Group`): one data directory per partition under
    /// `data_dir/partitions/`, and the union published in `data_dir`. Otherwise one part, [`ALL`].
    pub(super) workers: bool,
    pub(super) parts: BTreeMap<i32, Part>,
    /// The summaries of parts handed over to other workers during this run.
    pub(super) handed_over: Summary,
    /// Shared with the rebalance callback.
    pub(super) positions: Arc<Mutex<Positions>>,
    pub(super) consumer: BaseConsumer<ConsumerCtx>,
    pub(super) dead_letters: Option<(String, BaseProducer<ProducerCtx>)>,
    /// Partitions at their end (they do not hold buckets back from being final).
    pub(super) eof: BTreeSet<i32>,
    pub(super) clocks: Clocks,
    skipped_redelivered: u64,
    /// The run is ending: its last checkpoint saves the engine's state.
    pub(super) closing: bool,
}

/// When things last happened.
pub(super) struct Clocks {
    pub(super) last_message: Instant,
    last_checkpoint: Instant,
    last_publish: Instant,
    /// How long the last checkpoint and the last figures publish took. While there is a backlog
    /// the next checkpoint waits at least four times that, and the next figures publish nine
    /// times, so that a large event makes the figures older rather than the consumer slower.
    checkpoint_took: Duration,
    publish_took: Duration,
    /// A message arrived since the last checkpoint.
    dirty: bool,
    /// When the oldest message not yet in the published figures arrived.
    unpublished_since: Option<Instant>,
    outage: Option<Instant>,
    unassigned_since: Instant,
    warned_unassigned: bool,
    partitions_checked: Instant,
    /// When pending partitions' data directories were last tried (see `workers`).
    pub(super) pending_tried: Instant,
    /// A group of workers: this worker checkpointed since the union was last published (see
    /// `union_due`).
    pub(super) union_owed: bool,
    /// The assignments received when the idle clock last looked.
    assignments_seen: u64,
}

impl<'a> KafkaIngest<'a> {
    /// Resumes (or starts) the data directory, connects, checks the topic, and assigns or
    /// subscribes. A new data directory gets its first (empty) checkpoint at once.
    fn start(
        source: &'a KafkaSource,
        data_dir: &Path,
        remote: Option<&'a Remote>,
        settings: Settings,
        pseudonyms: &'a Pseudonymizer,
        on_checkpoint: &mut dyn FnMut(&Checkpoint<'_>),
    ) -> Result<KafkaIngest<'a>, IngestError> {
        let workers = source.assignment == Assignment::Group;
        super::union::check_layout(data_dir, workers, remote)?;
        let single = if workers {
            None
        } else {
            let pointer =
                match remote {
                    Some(r) => Some(fetch_and_claim(r, "", data_dir)?.ok_or_else(|| {
                        KafkaProblem::Fenced {
                            url: r.url().to_owned(),
                        }
                    })?),
                    None => None,
                };
            let (pipe, position) = resume(source, data_dir, settings, pseudonyms)?;
            Some((pipe, position, pointer))
        };
        let positions = Arc::new(Mutex::new(Positions {
            next: single
                .as_ref()
                .map(|(_, position, _)| position.next_offsets.clone())
                .unwrap_or_default(),
            ..Positions::default()
        }));
        let ctx = ConsumerCtx {
            topic: source.topic.clone(),
            workers: workers.then(|| data_dir.to_owned()),
            positions: positions.clone(),
            last_error: LastError::default(),
            rebalances: AtomicU64::new(0),
        };
        // After a crash the group keeps the dead member until its session times out, and only then
        // hands its partitions to the restarted one: 10 s instead of librdkafka's 45 s (-X can
        // change it).
        // A fetch waits at most 100 ms for data (librdkafka's default is 500 ms): a broker that
        // does not answer a waiting fetch as soon as data arrives (tansu) would otherwise hold
        // every message back up to half a second, and freshness is the point.
        let mut config = client_config(
            &source.brokers,
            &[
                ("session.timeout.ms", "10000"),
                ("fetch.wait.max.ms", "100"),
            ],
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
            Assignment::Direct => {
                assign_directly(&consumer, &source.topic, &partitions, &positions)?
            }
            Assignment::Group => consumer
                .subscribe(&[&source.topic])
                .map_err(|e| KafkaProblem::Fatal(e.to_string()))?,
        }
        let now = Instant::now();
        let mut parts = BTreeMap::new();
        let mut first = false;
        if let Some((pipe, position, pointer)) = single {
            first = position.checkpoints == 0;
            let mut part = Part::new(
                pipe,
                position,
                source,
                &settings,
                pseudonyms,
                dead_letters.is_some(),
            );
            part.pointer = pointer;
            parts.insert(ALL, part);
        }
        let mut ingest = KafkaIngest {
            source,
            pseudonyms,
            settings,
            data_dir: data_dir.to_owned(),
            remote,
            fenced: BTreeMap::new(),
            workers,
            parts,
            handed_over: Summary::default(),
            positions,
            consumer,
            dead_letters,
            eof: BTreeSet::new(),
            clocks: Clocks {
                last_message: now,
                last_checkpoint: now,
                last_publish: now,
                checkpoint_took: Duration::ZERO,
                publish_took: Duration::ZERO,
                dirty: false,
                unpublished_since: None,
                outage: None,
                unassigned_since: now,
                warned_unassigned: false,
                partitions_checked: now,
                pending_tried: now,
                union_owed: false,
                assignments_seen: 0,
            },
            skipped_redelivered: 0,
            closing: false,
        };
        if first {
            // A new data directory gets (empty) tables at once, so that it can be served and
            // queried before the first message arrives.
            ingest.checkpoint(Final::Nothing, on_checkpoint)?;
        }
        if workers {
            // The union, at once: of the partitions other workers (or earlier runs) stored.
            ingest.publish_union(on_checkpoint)?;
        }
        Ok(ingest)
    }

    /// The loop, until `stop` or an idle topic; ends with a checkpoint. Returns how long the topic
    /// had been idle when that ended it.
    fn run(
        &mut self,
        stop: &AtomicBool,
        on_checkpoint: &mut dyn FnMut(&Checkpoint<'_>),
    ) -> Result<Duration, IngestError> {
        let mut idle_tail = Duration::ZERO;
        let finished_by_idle = loop {
            if stop.load(Ordering::Relaxed) {
                break false;
            }
            // With figures waiting to be published, look again soon: an empty poll means caught
            // up, and then they are published at once.
            let wait = if self.clocks.unpublished_since.is_some() {
                5
            } else {
                100
            };
            let caught_up = match self.consumer.poll(Duration::from_millis(wait)) {
                None => true,
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    self.eof.insert(p);
                    true
                }
                Some(Err(e)) => {
                    if let KafkaError::MessageConsumptionFatal(_) = e {
                        return Err(KafkaProblem::Fatal(e.to_string()).into());
                    }
                    // Transient (a broker restarting, a network blip): librdkafka retries by
                    // itself.
                    if self.clocks.outage.is_none() {
                        tracing::warn!(
                            "Kafka: {e}; retrying (nothing is lost: earshot resumes at its own offsets)"
                        );
                        self.clocks.outage = Some(Instant::now());
                    }
                    false
                }
                Some(Ok(m)) => {
                    self.clocks.outage = None;
                    let (p, offset) = (m.partition(), m.offset());
                    let payload = m.payload().unwrap_or(&[]).to_vec();
                    drop(m);
                    self.take(p, offset, &payload)?;
                    false
                }
            };
            if let Some((_, producer)) = &self.dead_letters {
                producer.poll(Duration::ZERO);
            }
            // Revoked partitions are parked first, so that the idle check sees them.
            if self.workers {
                self.tend_partitions(on_checkpoint)?;
            }
            self.watch_assignment()?;
            if let Some(idle) = self.source.exit_when_idle
                && self.clocks.last_message.elapsed() >= idle
            {
                idle_tail = self.clocks.last_message.elapsed();
                break true;
            }
            let c = &self.clocks;
            if c.dirty
                && c.last_checkpoint.elapsed()
                    >= self.source.checkpoint_every.max(c.checkpoint_took * 4)
            {
                self.checkpoint(Final::Live, on_checkpoint)?;
            } else if c.unpublished_since.is_some_and(|t| {
                // Caught up: at once, but not more than ten times per freshness interval (nothing
                // waits to be consumed, so the publish costs no throughput). Under load: once a
                // message has waited half the freshness (the publish itself and a reader's pickup
                // fit in the other half), and at least nine times the last publish's cost after
                // it, so that it takes at most a tenth of a consumer that has a backlog.
                let since = c.last_publish.elapsed();
                if caught_up {
                    since >= self.source.freshness / 10
                } else {
                    t.elapsed() >= self.source.freshness / 2 && since >= c.publish_took * 9
                }
            }) {
                self.publish_figures()?;
            }
        };
        // At the end every bucket is final, as at the end of a file; after a stop the live rule
        // holds.
        let last = if finished_by_idle {
            Final::All
        } else {
            Final::Live
        };
        self.closing = true;
        self.checkpoint(last, on_checkpoint)?;
        if self.workers && self.clocks.union_owed {
            // Checkpoints of partitions handed over before the end, not yet in the union.
            self.publish_union(on_checkpoint)?;
        }
        Ok(idle_tail)
    }

    /// One message at `offset` of partition `p`: checked against the partition's position (a gap
    /// right after an assignment reads from further back; a redelivery is skipped), then taken
    /// through the pipeline, and its rejects sent to the dead-letter topic.
    fn take(&mut self, p: i32, offset: i64, payload: &[u8]) -> Result<(), IngestError> {
        let key = if self.workers { p } else { ALL };
        if !self.parts.contains_key(&key) {
            // A worker's partition it has not opened (yet) or has handed over: not applied, and
            // its position does not move (it is read again from the stored offset).
            return Ok(());
        }
        let mut guard = self.positions.lock().unwrap_or_else(|p| p.into_inner());
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
                if let Err(e) =
                    self.consumer
                        .seek(&self.source.topic, p, to, Duration::from_secs(10))
                {
                    tracing::warn!(partition = p, %e, "seek failed; retrying on the next message");
                }
                return Ok(());
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
            self.skipped_redelivered += 1;
            return Ok(());
        }
        guard.next.insert(p, offset + 1);
        drop(guard);
        self.eof.remove(&p);
        self.clocks.last_message = Instant::now();
        self.clocks.dirty = true;
        if !self.workers {
            // A group of workers publishes the union at its checkpoints only.
            self.clocks
                .unpublished_since
                .get_or_insert(self.clocks.last_message);
        }
        let Some(part) = self.parts.get_mut(&key) else {
            return Ok(());
        };
        part.dirty = true;
        part.position.bytes += payload.len() as u64;
        *part.position.messages.entry(p).or_default() += 1;
        if part.named.insert(p) {
            part.pipe
                .name_partition(p as u32, format!("kafka:{}/{p}@", self.source.topic));
        }
        part.pipe.take(
            p as u32,
            parse_event(payload, self.pseudonyms),
            payload,
            At {
                position: offset as u64,
                bytes: payload.len() as u64,
            },
        )?;
        self.send_dead_letters(key)
    }

    fn send_dead_letters(&mut self, key: i32) -> Result<(), IngestError> {
        let (Some((topic, producer)), Some(part)) = (&self.dead_letters, self.parts.get_mut(&key))
        else {
            return Ok(());
        };
        let queue = part.pipe.dead_letters.as_mut().map(std::mem::take);
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
            part.position.dead_lettered += 1;
        }
        Ok(())
    }

    /// Idle means caught up with nothing arriving, not waiting for the group to hand over
    /// partitions (after a restart that can take a session timeout). Partitions added to the
    /// topic while running are read too.
    fn watch_assignment(&mut self) -> Result<(), IngestError> {
        let (assigned, pending, assignments) = {
            let positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
            (
                !positions.assigned.is_empty(),
                !positions.pending.is_empty(),
                positions.assignments,
            )
        };
        if assignments != self.clocks.assignments_seen {
            // New partitions are work to do: idle counts from here.
            self.clocks.assignments_seen = assignments;
            self.clocks.last_message = Instant::now();
        }
        let holding = assigned && !pending;
        // Not idle: a single consumer that holds no partition (after a restart the group may take
        // a session timeout to hand them back), a worker waiting for a partition's previous owner
        // to let go, or one holding a revoked partition. A worker the group left without
        // partitions is idle like any other: the group gives its partitions to the others.
        let busy = if self.workers {
            pending || self.parts.values().any(|p| p.parked.is_some())
        } else {
            !holding
        };
        if busy {
            self.clocks.last_message = Instant::now();
        }
        if !holding {
            if self.clocks.unassigned_since.elapsed() > Duration::from_secs(60)
                && !self.clocks.warned_unassigned
            {
                let hint = if self.workers {
                    "a group has no use for more workers than the topic has partitions"
                } else {
                    "run one earshot per group, or --assign group for several workers"
                };
                tracing::warn!(
                    "no partition of {} has been assigned to this consumer for a minute: another member of group {} may hold them ({hint})",
                    self.source.topic,
                    self.source.group
                );
                self.clocks.warned_unassigned = true;
            }
        } else {
            self.clocks.unassigned_since = Instant::now();
        }
        if self.source.assignment == Assignment::Direct
            && self.clocks.partitions_checked.elapsed() >= Duration::from_secs(30)
        {
            self.clocks.partitions_checked = Instant::now();
            if let Ok(now) = topic_partitions(self.consumer.client(), &self.source.topic) {
                let known = self
                    .positions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .assigned
                    .clone();
                if now.iter().any(|p| !known.contains(p)) {
                    tracing::info!(partitions = ?now, "the topic has new partitions");
                    assign_directly(&self.consumer, &self.source.topic, &now, &self.positions)?;
                }
            }
        }
        Ok(())
    }

    /// Marks the figures (and with `checkpoint` every table) as published now, after `took`.
    pub(super) fn published(&mut self, checkpoint: bool, took: Duration) {
        let now = Instant::now();
        self.clocks.unpublished_since = None;
        self.clocks.last_publish = now;
        if checkpoint {
            self.clocks.dirty = false;
            self.clocks.last_checkpoint = now;
            self.clocks.checkpoint_took = took;
        } else {
            self.clocks.publish_took = took;
        }
    }
}

/// Buckets are final up to the slowest watermark among partitions that still have messages to
/// deliver; partitions at their end do not hold buckets back. With every partition at its end, up
/// to the newest watermark.
pub(super) fn live_final_through(
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
