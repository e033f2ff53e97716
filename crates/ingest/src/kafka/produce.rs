//! The producer behind `earshot produce` and `earshot simulate --kafka`.

use super::*;

/// Sends one record, waiting while librdkafka's queue is full.
pub(super) fn send_with_backpressure<C: ProducerContext<DeliveryOpaque = ()>>(
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
