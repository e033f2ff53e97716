//! Random and adversarial event streams for the property tests.
//!
//! A scenario is a few streams with a handful of listeners and sessions each, on a coarse clock
//! (whole seconds, often exactly on bucket boundaries, sometimes ±1 ms), with everything the
//! contract has rules for: missing joins, heartbeats after the leave, stalls longer than the
//! liveness, sessions that never end, several sessions per listener (even in parallel), leave and
//! drop at once, display samples sharing a `ts`, stream_state with and without `scheduled_start`.
//! Delivery then shuffles events within the lateness, sends some far too late, duplicates some
//! (sometimes with different content under the same `event_id`), and spreads them over partitions.

use earshot_sim::Rng;

/// One message as delivered: its partition and its NDJSON text.
pub type Delivery = (u32, String);

fn ts(ms: i64) -> String {
    earshot_contract::format_rfc3339_ms(ms)
}

struct Gen {
    rng: Rng,
    next_id: u64,
    out: Vec<(i64, String)>,
}

impl Gen {
    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("e{}", self.next_id)
    }

    fn instant(&mut self, lo: i64, hi: i64) -> i64 {
        let s = self.rng.range(lo, hi);
        let ms = match self.rng.next_u64() % 6 {
            0 => 1,
            1 => 999,
            2 => self.rng.range(0, 1000),
            _ => 0,
        };
        s * 1000 + ms
    }

    fn session_event(&mut self, stream: &str, kind: &str, t: i64, listener: &str, session: &str) {
        let id = self.id();
        let mut line = format!(
            r#"{{"v":1,"event_id":"{id}","type":"{kind}","ts":"{}","stream_id":"{stream}","listener_id":"{listener}","session_id":"{session}""#,
            ts(t)
        );
        if kind == "drop" {
            line.push_str(r#","reason":"timeout""#);
        }
        if self.rng.chance(0.3) {
            line.push_str(&format!(r#","client":"c{}""#, self.rng.next_u64() % 3));
        }
        if self.rng.chance(0.2) {
            line.push_str(&format!(r#","region":"r{}""#, self.rng.next_u64() % 2));
        }
        line.push('}');
        self.out.push((t, line));
    }

    fn session(&mut self, stream: &str, listener: &str, session: &str, horizon: i64) {
        let start = self.instant(0, horizon);
        if self.rng.chance(0.85) {
            self.session_event(stream, "join", start, listener, session);
        }
        let mut t = start;
        if self.rng.chance(0.7) {
            t += self.rng.range(0, 8) * 1000;
            self.session_event(stream, "connect", t, listener, session);
            let beats = self.rng.range(0, 8);
            for _ in 0..beats {
                // Mostly every 10 s; sometimes a stall longer than the liveness.
                let gap = if self.rng.chance(0.2) {
                    self.rng.range(31, 90)
                } else {
                    self.rng.range(5, 15)
                };
                t += gap * 1000 + self.rng.range(-1, 2);
                self.session_event(stream, "heartbeat", t, listener, session);
            }
        }
        match self.rng.next_u64() % 10 {
            0..=3 => {
                let end = t + self.rng.range(0, 20) * 1000;
                self.session_event(stream, "leave", end, listener, session);
                if self.rng.chance(0.2) {
                    // A heartbeat after the leave, and sometimes a second ending at the same instant.
                    self.session_event(stream, "heartbeat", end + 5000, listener, session);
                    self.session_event(stream, "drop", end, listener, session);
                }
            }
            4..=5 => {
                let end = self.instant(0, horizon).max(start);
                self.session_event(stream, "drop", end, listener, session);
            }
            _ => {} // never ends: a ghost, or a connected session that lapses
        }
    }

    fn stream(&mut self, stream: &str, horizon: i64) {
        let sessions = self.rng.range(0, 9);
        for k in 0..sessions {
            let listener = format!("l{}", self.rng.next_u64() % 5);
            self.session(stream, &listener, &format!("x{k}"), horizon);
        }
        for _ in 0..self.rng.range(0, 6) {
            let t = self.instant(0, horizon);
            let v = self.rng.range(0, 50);
            let id = self.id();
            self.out.push((
                t,
                format!(r#"{{"v":1,"event_id":"{id}","type":"display","ts":"{}","stream_id":"{stream}","displayed":{v}}}"#, ts(t)),
            ));
            if self.rng.chance(0.3) {
                let id = self.id();
                let v2 = self.rng.range(0, 50);
                self.out.push((
                    t,
                    format!(r#"{{"v":1,"event_id":"{id}","type":"display","ts":"{}","stream_id":"{stream}","displayed":{v2}}}"#, ts(t)),
                ));
            }
        }
        for _ in 0..self.rng.range(0, 3) {
            let t = self.instant(0, horizon);
            let state = *self.rng.pick(&["scheduled", "live", "ended"]);
            let id = self.id();
            let sched = if self.rng.chance(0.6) {
                format!(
                    r#","scheduled_start":"{}""#,
                    ts(self.rng.range(0, horizon) * 1000)
                )
            } else {
                String::new()
            };
            self.out.push((
                t,
                format!(r#"{{"v":1,"event_id":"{id}","type":"stream_state","ts":"{}","stream_id":"{stream}","state":"{state}"{sched}}}"#, ts(t)),
            ));
        }
    }
}

/// A random scenario from `seed`, delivered in arrival order.
pub fn scenario(seed: u64, lateness_ms: i64) -> Vec<Delivery> {
    let mut g = Gen {
        rng: Rng::new(seed),
        next_id: 0,
        out: Vec::new(),
    };
    let streams = g.rng.range(1, 4);
    let horizon = g.rng.range(20, 300);
    for s in 0..streams {
        g.stream(&format!("s{s}"), horizon);
    }
    let partitions = g.rng.range(1, 4) as u32;
    let mut delivered: Vec<(i64, u32, String)> = Vec::new();
    let events = std::mem::take(&mut g.out);
    for (t, line) in &events {
        let delay = if g.rng.chance(0.03) {
            lateness_ms + g.rng.range(1_000, 60_000)
        } else {
            g.rng.range(0, lateness_ms.max(1))
        };
        let p = (g.rng.next_u64() % partitions as u64) as u32;
        delivered.push((t + delay, p, line.clone()));
        if g.rng.chance(0.08) {
            let copy = if g.rng.chance(0.3) {
                // Same event_id, different content: the first copy to arrive wins.
                line.replacen(r#""type":""#, r#""client":"dup","type":""#, 1)
            } else {
                line.clone()
            };
            let p2 = (g.rng.next_u64() % partitions as u64) as u32;
            delivered.push((t + delay + g.rng.range(0, 30_000), p2, copy));
        }
    }
    delivered.sort_by_key(|d| d.0);
    delivered.into_iter().map(|(_, p, l)| (p, l)).collect()
}
