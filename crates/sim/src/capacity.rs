//! A platform with a capacity (`SimConfig::capacity`): it admits a connection while fewer than C
//! sessions are connected, and fails most attempts while C are, so the true overload point of a
//! simulated event is known. Listeners arrive after the stream goes live, spread over its length
//! (no crowd waiting for the start: that is the go-live rush the default model shows), and every
//! attempt is decided in time order against the sessions connected at that instant.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::{Builder, FAIL_REASONS, Kind};

/// Chance that an attempt gets audio while fewer than C sessions are connected.
const UNDER_CAPACITY: f64 = 0.99;
/// Chance that an attempt gets audio while C sessions are connected.
const AT_CAPACITY: f64 = 0.05;

/// What happens next to a listener, in time order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    /// A session starts (`attempts` so far, this one included).
    Join { listener: u32, attempts: u32 },
    /// The session `session` asks for audio.
    Try {
        listener: u32,
        session: u32,
        attempts: u32,
    },
}

/// Every listener's sessions, against a platform that serves `capacity` connections at once.
pub(super) fn listeners(b: &mut Builder, capacity: u64) {
    let cfg = b.cfg;
    let count = cfg.listeners as u32;
    let mut who = Vec::with_capacity(count as usize);
    // (time, order, step): the order keeps ties deterministic.
    let mut queue: BinaryHeap<Reverse<(i64, u64, Step)>> = BinaryHeap::new();
    let mut order = 0u64;
    let last_join = (b.end_at - 60_000).max(b.live_at + 1);
    for id in 0..count {
        let client = (b.rng.next_u64() % super::CLIENTS.len() as u64) as u8;
        let region = (b.rng.next_u64() % super::REGIONS.len() as u64) as u8;
        who.push((client, region));
        let join = b.rng.range(b.live_at, last_join);
        order += 1;
        queue.push(Reverse((
            join,
            order,
            Step::Join {
                listener: id,
                attempts: 1,
            },
        )));
    }
    // When each connected session stops being connected.
    let mut connected: BinaryHeap<Reverse<i64>> = BinaryHeap::new();
    while let Some(Reverse((t, _, step))) = queue.pop() {
        match step {
            Step::Join { listener, attempts } => {
                let (client, region) = who[listener as usize];
                let session = b.sessions;
                b.sessions += 1;
                b.push(t, Kind::Join, listener, session, client, region);
                let try_at = t + b.rng.range(300, 4_000);
                order += 1;
                queue.push(Reverse((
                    try_at,
                    order,
                    Step::Try {
                        listener,
                        session,
                        attempts,
                    },
                )));
            }
            Step::Try {
                listener,
                session,
                attempts,
            } => {
                let (client, region) = who[listener as usize];
                while connected.peek().is_some_and(|Reverse(end)| *end <= t) {
                    connected.pop();
                }
                let room = (connected.len() as u64) < capacity;
                let served = b
                    .rng
                    .chance(if room { UNDER_CAPACITY } else { AT_CAPACITY });
                if !served {
                    if b.rng.chance(0.15) {
                        continue; // the client hangs: on the roster, never a second of audio
                    }
                    let fail_at = t + b.rng.range(5_000, 30_000);
                    let reason = *b.rng.pick(&FAIL_REASONS);
                    b.push(
                        fail_at,
                        Kind::Drop(reason),
                        listener,
                        session,
                        client,
                        region,
                    );
                    if attempts < 4 && b.rng.chance(0.7) {
                        let again = fail_at + b.rng.range(2_000, 60_000);
                        if again < b.end_at {
                            order += 1;
                            queue.push(Reverse((
                                again,
                                order,
                                Step::Join {
                                    listener,
                                    attempts: attempts + 1,
                                },
                            )));
                        }
                    }
                    continue;
                }
                if t >= b.end_at {
                    continue;
                }
                b.push(t, Kind::Connect, listener, session, client, region);
                let listen = b.rng.exp(cfg.mean_listen_ms as f64) as i64 + 5_000;
                let stop = (t + listen).min(b.end_at + b.rng.range(0, 20_000));
                let mut beat = t + cfg.heartbeat_ms;
                while beat < stop {
                    b.push(beat, Kind::Heartbeat, listener, session, client, region);
                    beat += cfg.heartbeat_ms + b.rng.range(-300, 300);
                }
                b.push(stop, Kind::Leave, listener, session, client, region);
                connected.push(Reverse(stop));
            }
        }
    }
}
