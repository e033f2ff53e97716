//! A realistic, reproducible listener-event stream for one livestream, as contract-v1 NDJSON.
//!
//! The story it tells is the one earshot exists for: a stream announced for a time, starting late;
//! a join storm around the announced start; while the platform is overloaded many join attempts
//! never get audio (they time out, get HTTP 503s, or hang forever as ghosts) and listeners retry
//! with new sessions; connected listeners send heartbeats, stall now and then, leave, drop, or
//! vanish without a word; the platform samples the number it displays (a join/leave counter that
//! keeps every ghost). On top, delivery noise: out-of-order arrival, duplicates, a few late events
//! and malformed lines. Everything comes from one seeded PRNG, so a seed gives the same bytes.
//!
//! This crate writes to any `io::Write` and opens no files itself. It emits the wire format as text
//! and never calls the parser (only the contract's timestamp formatter), so it exercises it honestly.

use std::io::{self, Write};

mod capacity;

/// What to simulate. Times are milliseconds.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub stream_id: String,
    /// Distinct accounts that try to listen.
    pub listeners: u64,
    /// The announced start (ms since the epoch).
    pub scheduled_start: i64,
    /// How late the stream really starts.
    pub start_delay_ms: i64,
    /// How long it runs once live.
    pub duration_ms: i64,
    /// After going live, how long the platform is overloaded.
    pub overload_ms: i64,
    /// Chance that a connection attempt during the overload gets audio.
    pub overload_success: f64,
    pub heartbeat_ms: i64,
    /// Mean listening time of a connected session.
    pub mean_listen_ms: i64,
    /// Interval between `display` samples.
    pub display_every_ms: i64,
    /// Fraction of events delivered twice.
    pub duplicate_rate: f64,
    /// Fraction of lines that are malformed.
    pub malformed_rate: f64,
    /// Largest delivery delay of an ordinary event (out-of-order arrival within the lateness).
    pub max_delay_ms: i64,
    /// Fraction of events delivered far behind (beyond the default 60 s lateness).
    pub late_rate: f64,
    /// A platform that serves this many connections at once (see [`capacity`]); `None`: the
    /// overload window above instead.
    pub capacity: Option<u64>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            stream_id: "town-hall-main".into(),
            listeners: 10_000,
            // 2024-08-13T00:00:00Z
            scheduled_start: 1_723_507_200_000,
            start_delay_ms: 42 * 60_000,
            duration_ms: 60 * 60_000,
            overload_ms: 15 * 60_000,
            overload_success: 0.45,
            heartbeat_ms: 10_000,
            mean_listen_ms: 12 * 60_000,
            display_every_ms: 5_000,
            duplicate_rate: 0.01,
            malformed_rate: 0.001,
            max_delay_ms: 5_000,
            late_rate: 0.0002,
            capacity: None,
        }
    }
}

/// What was written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub lines: u64,
    /// Distinct events (before duplication).
    pub events: u64,
    pub duplicates: u64,
    pub malformed: u64,
    pub late: u64,
    pub sessions: u64,
}

/// SplitMix64: small, fast, and the same on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + (self.next_u64() % (hi - lo) as u64) as i64
    }
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next_u64() % items.len() as u64) as usize]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Join,
    Connect,
    Heartbeat,
    Leave,
    Drop(&'static str),
    Display(i64),
    Scheduled,
    Live,
    Ended,
}

#[derive(Clone, Copy, Debug)]
struct SimEvent {
    ts: i64,
    kind: Kind,
    listener: u32,
    session: u32,
    client: u8,
    region: u8,
}

const CLIENTS: [&str; 4] = ["ios", "android", "web", "desktop"];
const REGIONS: [&str; 5] = ["us-east", "us-west", "eu-west", "latam", "apac"];
const FAIL_REASONS: [&str; 3] = ["timeout", "http_503", "ice_failed"];

struct Builder<'a> {
    cfg: &'a SimConfig,
    rng: Rng,
    events: Vec<SimEvent>,
    sessions: u32,
    live_at: i64,
    end_at: i64,
}

impl Builder<'_> {
    fn push(&mut self, ts: i64, kind: Kind, listener: u32, session: u32, client: u8, region: u8) {
        self.events.push(SimEvent {
            ts,
            kind,
            listener,
            session,
            client,
            region,
        });
    }

    /// One listener: a first join, maybe retries, and what each session lived through.
    fn listener(&mut self, id: u32) {
        let cfg = self.cfg;
        let client = (self.rng.next_u64() % CLIENTS.len() as u64) as u8;
        let region = (self.rng.next_u64() % REGIONS.len() as u64) as u8;
        let s0 = cfg.scheduled_start;
        // Early birds, the storm around the announced and the real start, and late arrivals.
        let r = self.rng.unit();
        let mut join = if r < 0.25 {
            self.rng.range(s0 - 10 * 60_000, s0)
        } else if r < 0.8 {
            let storm_end = self.live_at + 5 * 60_000;
            s0 + (self.rng.unit().powf(1.6) * (storm_end - s0) as f64) as i64
        } else {
            self.rng.range(self.live_at, self.end_at - 60_000)
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            let session = self.sessions;
            self.sessions += 1;
            self.push(join, Kind::Join, id, session, client, region);
            // Audio cannot flow before the stream is live.
            let try_at = join.max(self.live_at) + self.rng.range(300, 4_000);
            if join < self.live_at && self.rng.chance(0.25) {
                // Gave up waiting for a stream that did not start.
                let gave_up = join + self.rng.range(60_000, 20 * 60_000);
                if gave_up < self.live_at {
                    self.push(gave_up, Kind::Leave, id, session, client, region);
                    if self.rng.chance(0.5) {
                        join = gave_up + self.rng.range(30_000, 10 * 60_000);
                        if join < self.end_at && attempts < 4 {
                            continue;
                        }
                    }
                    return;
                }
            }
            let overloaded = try_at < self.live_at + cfg.overload_ms;
            if overloaded && !self.rng.chance(cfg.overload_success) {
                if self.rng.chance(0.15) {
                    // The client hangs: on the roster forever, never a second of audio.
                    return;
                }
                let fail_at = try_at + self.rng.range(5_000, 30_000);
                let reason = *self.rng.pick(&FAIL_REASONS);
                self.push(fail_at, Kind::Drop(reason), id, session, client, region);
                if attempts < 4 && self.rng.chance(0.7) {
                    join = fail_at + self.rng.range(2_000, 60_000);
                    if join < self.end_at {
                        continue;
                    }
                }
                return;
            }
            if try_at >= self.end_at {
                return;
            }
            self.push(try_at, Kind::Connect, id, session, client, region);
            let listen = self.rng.exp(cfg.mean_listen_ms as f64) as i64 + 5_000;
            let stop = (try_at + listen).min(self.end_at + self.rng.range(0, 20_000));
            let stall = if self.rng.chance(0.1) {
                let at = self.rng.range(try_at, stop.max(try_at + 1));
                Some((at, at + self.rng.range(40_000, 120_000)))
            } else {
                None
            };
            let mut t = try_at + cfg.heartbeat_ms;
            while t < stop {
                if stall.is_none_or(|(a, b)| t < a || t >= b) {
                    self.push(t, Kind::Heartbeat, id, session, client, region);
                }
                t += cfg.heartbeat_ms + self.rng.range(-300, 300);
            }
            let r = self.rng.unit();
            if r < 0.82 {
                self.push(stop, Kind::Leave, id, session, client, region);
            } else if r < 0.94 {
                self.push(stop, Kind::Drop("network"), id, session, client, region);
                if attempts < 4 && stop + 10_000 < self.end_at && self.rng.chance(0.5) {
                    join = stop + self.rng.range(1_000, 15_000);
                    continue;
                }
            }
            // else: the client vanished without a word — audio lapses, the roster keeps it.
            return;
        }
    }

    /// The platform's counter: sessions joined and not ended by a leave or drop, rounded the way
    /// platforms show big numbers.
    fn displays(&mut self) {
        let mut changes: Vec<(i64, i64)> = Vec::new();
        let mut by_session: std::collections::HashMap<u32, (i64, Option<i64>)> = Default::default();
        for e in &self.events {
            match e.kind {
                Kind::Join => {
                    by_session.entry(e.session).or_insert((e.ts, None)).0 = e.ts;
                }
                Kind::Leave | Kind::Drop(_) => {
                    by_session.entry(e.session).or_insert((e.ts, None)).1 = Some(e.ts);
                }
                _ => {}
            }
        }
        for (join, end) in by_session.values() {
            changes.push((*join, 1));
            if let Some(e) = end {
                changes.push((*e, -1));
            }
        }
        changes.sort_unstable();
        let (mut i, mut value) = (0usize, 0i64);
        let mut t = self.cfg.scheduled_start - 10 * 60_000;
        while t <= self.end_at {
            while i < changes.len() && changes[i].0 <= t {
                value += changes[i].1;
                i += 1;
            }
            self.push(t, Kind::Display(round_for_display(value)), 0, 0, 0, 0);
            t += self.cfg.display_every_ms;
        }
    }
}

/// 1,234 stays; 12,345 → 12,000; 1,234,567 → 1,200,000 (two significant digits past 10k).
fn round_for_display(v: i64) -> i64 {
    if v < 10_000 {
        return v;
    }
    let mut scale = 1i64;
    while v / scale >= 100 {
        scale *= 10;
    }
    (v / scale) * scale
}

fn ts_string(ms: i64) -> String {
    earshot_contract::format_rfc3339_ms(ms)
}

fn render(cfg: &SimConfig, e: &SimEvent, event_id: u64, out: &mut String) {
    use std::fmt::Write as _;
    out.clear();
    let ts = ts_string(e.ts);
    let sid = &cfg.stream_id;
    let head = |out: &mut String, ty: &str| {
        let _ = write!(
            out,
            r#"{{"v":1,"event_id":"{sid}-{event_id}","type":"{ty}","ts":"{ts}","stream_id":"{sid}""#
        );
    };
    let session = |out: &mut String| {
        let _ = write!(
            out,
            r#","listener_id":"user-{}","session_id":"{sid}-s{}","client":"{}","region":"{}""#,
            e.listener, e.session, CLIENTS[e.client as usize], REGIONS[e.region as usize]
        );
    };
    match e.kind {
        Kind::Join => {
            head(out, "join");
            session(out);
        }
        Kind::Connect => {
            head(out, "connect");
            session(out);
        }
        Kind::Heartbeat => {
            head(out, "heartbeat");
            session(out);
            let _ = write!(out, r#","audio_ms":{}"#, cfg.heartbeat_ms);
        }
        Kind::Leave => {
            head(out, "leave");
            session(out);
        }
        Kind::Drop(reason) => {
            head(out, "drop");
            session(out);
            let _ = write!(out, r#","reason":"{reason}""#);
        }
        Kind::Display(v) => {
            head(out, "display");
            let _ = write!(out, r#","displayed":{v}"#);
        }
        Kind::Scheduled | Kind::Live | Kind::Ended => {
            head(out, "stream_state");
            let state = match e.kind {
                Kind::Scheduled => "scheduled",
                Kind::Live => "live",
                _ => "ended",
            };
            let _ = write!(
                out,
                r#","state":"{state}","scheduled_start":"{}""#,
                ts_string(cfg.scheduled_start)
            );
        }
    }
    out.push('}');
}

/// A malformed line of one of several kinds, built from a real one.
fn malformed(rng: &mut Rng, good: &str) -> String {
    match rng.next_u64() % 8 {
        0 => good[..good.len() / 2].to_owned(),
        1 => "<html>502 Bad Gateway</html>".to_owned(),
        2 => good.replacen(r#""v":1"#, r#""v":"1""#, 1),
        3 => good.replacen(r#""type":""#, r#""type":"x"#, 1),
        4 => good.replacen(r#""ts":""#, r#""ts":"not a time "#, 1),
        5 => String::new(),
        6 => format!("[{good}]"),
        _ => good.replacen(r#""v":1,"#, r#""v":1,"v":1,"#, 1),
    }
}

/// Writes the simulated stream as NDJSON, in delivery order.
pub fn simulate(cfg: &SimConfig, out: &mut dyn Write) -> io::Result<SimStats> {
    let live_at = cfg.scheduled_start + cfg.start_delay_ms;
    let end_at = live_at + cfg.duration_ms;
    let mut b = Builder {
        cfg,
        rng: Rng::new(cfg.seed),
        events: Vec::new(),
        sessions: 0,
        live_at,
        end_at,
    };
    b.push(
        cfg.scheduled_start - 30 * 60_000,
        Kind::Scheduled,
        0,
        0,
        0,
        0,
    );
    b.push(live_at, Kind::Live, 0, 0, 0, 0);
    b.push(end_at, Kind::Ended, 0, 0, 0, 0);
    match cfg.capacity {
        Some(c) => capacity::listeners(&mut b, c),
        None => {
            for id in 0..cfg.listeners {
                b.listener(id as u32);
            }
        }
    }
    b.displays();
    let mut stats = SimStats {
        sessions: u64::from(b.sessions),
        events: b.events.len() as u64,
        ..SimStats::default()
    };
    let mut rng = b.rng;
    // Delivery: each event (and each duplicate) gets an arrival time; late ones arrive far behind.
    let mut deliveries: Vec<(i64, u32)> = Vec::with_capacity(b.events.len() + b.events.len() / 50);
    for (i, e) in b.events.iter().enumerate() {
        let delay = if rng.chance(cfg.late_rate) {
            stats.late += 1;
            rng.range(90_000, 180_000)
        } else {
            rng.range(0, cfg.max_delay_ms.max(1))
        };
        deliveries.push((e.ts + delay, i as u32));
        if rng.chance(cfg.duplicate_rate) {
            stats.duplicates += 1;
            deliveries.push((e.ts + delay + rng.range(0, 10_000), i as u32));
        }
    }
    deliveries.sort_unstable();
    let mut w = io::BufWriter::with_capacity(1 << 20, out);
    let mut line = String::with_capacity(512);
    for (_, i) in deliveries {
        render(cfg, &b.events[i as usize], u64::from(i), &mut line);
        if rng.chance(cfg.malformed_rate) {
            stats.malformed += 1;
            let bad = malformed(&mut rng, &line);
            w.write_all(bad.as_bytes())?;
            w.write_all(b"\n")?;
            stats.lines += 1;
        }
        w.write_all(line.as_bytes())?;
        w.write_all(b"\n")?;
        stats.lines += 1;
    }
    w.flush()?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let cfg = SimConfig {
            listeners: 200,
            ..SimConfig::default()
        };
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        let sa = simulate(&cfg, &mut a).unwrap();
        simulate(&cfg, &mut b).unwrap();
        simulate(
            &SimConfig {
                seed: 7,
                ..cfg.clone()
            },
            &mut c,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(sa.lines as usize, a.iter().filter(|&&x| x == b'\n').count());
        assert!(
            sa.sessions > 200,
            "retries make more sessions than listeners"
        );
    }

    #[test]
    fn timestamps_and_display_rounding() {
        assert_eq!(ts_string(1_723_507_200_000), "2024-08-13T00:00:00.000Z");
        assert_eq!(ts_string(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(round_for_display(9_999), 9_999);
        assert_eq!(round_for_display(12_345), 12_000);
        assert_eq!(round_for_display(1_234_567), 1_200_000);
    }
}
