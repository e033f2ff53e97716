//! Measures the core's memory per open session: offers N joins of distinct sessions (each a
//! realistic 36-byte session id, one per listener) and reads the resident set size before and after.
//! Run: cargo run -p earshot-tests --example session_memory -- 1000000
//! Reports bytes per open session with and without the de-duplication set's share (16 bytes of
//! digest per distinct event_id, plus hash-table slack).

use earshot_contract::{Event, EventType, Pseudonymizer};
use earshot_core::{Engine, Settings};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let p = Pseudonymizer::new(b"memory");
    let mut engine = Engine::new(Settings::default());
    let base_ts = 1_723_507_200_000i64;
    let before = rss_bytes();
    for i in 0..n {
        let e = Event {
            event_id: format!("town-hall-main-{i}"),
            kind: EventType::Join,
            ts: base_ts + (i as i64 % 600_000),
            stream_id: "town-hall-main".into(),
            listener_key: Some(p.pseudonym(&format!("user-{i}"))),
            session_id: Some(format!("{:036}", i)),
            reason: None,
            displayed: None,
            state: None,
            scheduled_start: None,
            client: Some("ios".into()),
            region: Some("us-east".into()),
            audio_ms: None,
        };
        engine.offer(0, &e);
    }
    let after = rss_bytes();
    let per = (after - before) as f64 / n as f64;
    let dedup = (n as f64 * 16.0 / 0.875).max(0.0) / n as f64;
    println!(
        "{n} open sessions: {:.1} MB resident, {per:.0} bytes per open session \
         (of which about {dedup:.0} are the de-duplication set's digest of its join)",
        (after - before) as f64 / 1e6
    );
}
