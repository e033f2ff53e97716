//! The bare-consumer baseline of `bench/kafka`: the librdkafka earshot is built with, reading a
//! topic and doing nothing with the messages, so the benchmark can say how much of a Kafka ingest's
//! time is earshot's own work.
//!
//! Usage: `consume-only BROKERS TOPIC GROUP COUNT`. Reads COUNT messages from the start of TOPIC
//! and prints `{"messages": COUNT, "seconds": S}`, S being the time from the first message to the
//! last. Gives up when no message has come for 10 s (30 s before the first).

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [brokers, topic, group, count] = args.as_slice() else {
        return Err("usage: consume-only BROKERS TOPIC GROUP COUNT".into());
    };
    let count: u64 = count
        .parse()
        .map_err(|_| format!("COUNT {count:?} is not a whole number"))?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|e| format!("cannot create the consumer: {e}"))?;
    consumer
        .subscribe(&[topic.as_str()])
        .map_err(|e| format!("cannot subscribe to {topic}: {e}"))?;
    let (mut seen, mut first, mut last) = (0u64, None::<Instant>, Instant::now());
    while seen < count {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                std::hint::black_box(m.payload());
                first.get_or_insert_with(Instant::now);
                seen += 1;
                last = Instant::now();
            }
            _ if last.elapsed() > Duration::from_secs(if first.is_some() { 10 } else { 30 }) => {
                return Err(format!("stalled after {seen} of {count} messages"));
            }
            _ => {}
        }
    }
    let seconds = first.map(|f| f.elapsed()).unwrap_or_default().as_secs_f64();
    println!("{{\"messages\": {count}, \"seconds\": {seconds}}}");
    Ok(())
}
