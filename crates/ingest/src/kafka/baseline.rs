//! The bare-consumer baseline of `bench/kafka`: none of earshot's work, for comparison.

use super::*;

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
