//! The consumer's loop: poll, take each message through the pipeline, checkpoint on time.

use super::checkpoint::{checkpoint, publish_figures};
use super::produce::send_with_backpressure;
use super::resume::resume;
use super::*;

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
    // Publishing every second must cost what changed, not a pass over every session.
    pipe.engine.go_live();
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
    // When the oldest message not yet in the published figures arrived.
    let mut unpublished_since: Option<Instant> = None;
    let mut last_publish = Instant::now();
    let mut outage: Option<Instant> = None;
    let mut skipped_redelivered = 0u64;
    let mut unassigned_since = Instant::now();
    let mut warned_unassigned = false;
    let mut idle_tail = Duration::ZERO;
    let finished_by_idle = loop {
        if stop.load(Ordering::Relaxed) {
            break false;
        }
        // Nothing waiting: caught up, so whatever arrived can be published at once.
        let mut caught_up = false;
        // With figures waiting to be published, look again soon: an empty poll means caught up.
        let wait = if unpublished_since.is_some() { 5 } else { 100 };
        match consumer.poll(Duration::from_millis(wait)) {
            None => caught_up = true,
            Some(Err(KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
                caught_up = true;
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
                unpublished_since.get_or_insert(last_message);
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
            unpublished_since = None;
            last_checkpoint = Instant::now();
            last_publish = last_checkpoint;
        } else if unpublished_since.is_some_and(|t| {
            // Under load, once a message has waited half the freshness (the publish itself and a
            // reader's pickup fit in the other half); caught up, at once, but not more than ten
            // times per freshness interval.
            t.elapsed() >= source.freshness / 2
                || (caught_up && last_publish.elapsed() >= source.freshness / 10)
        }) {
            let final_through = live_final_through(&pipe.engine, &positions, &eof);
            publish_figures(&mut pipe, final_through)?;
            unpublished_since = None;
            last_publish = Instant::now();
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
