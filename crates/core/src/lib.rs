//! The counting core: validated events in, the figures of contract §2–§4 out.
//!
//! [`Engine::offer`] takes events one at a time, in arrival order, each tagged with its source
//! partition. It de-duplicates by `event_id`, classifies late events against the partition's
//! watermark, and folds the rest into compact per-session state: the session's earliest event, its
//! end, and the union of its alive windows `[a, a + L)` (not every heartbeat), so memory grows with
//! sessions, not with events. [`Engine::snapshot`] turns that state into `streams`, `buckets` and
//! `sessions` rows by sweeping change points, exactly as the contract defines roster, connected and
//! displayed. The design choice: all order-sensitive decisions (late, duplicate, first-to-arrive
//! ties) are made in `offer`; everything in `snapshot` is a pure function of the accumulated state.
//!
//! This crate does no I/O, knows nothing of JSON, Kafka, Arrow or files, and never panics on a valid
//! event: late and duplicate events are [`Outcome`]s, not errors.

mod buckets;
mod codec;
mod gate;
mod live;
mod session;
mod shard;
mod state;
mod stream;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use earshot_contract::{Event, Millis};

pub use buckets::{ROLLUP_WIDTHS_MS, RangeSketches, RollupCache, rollups, rollups_cached};
pub use codec::{STATE_FORMAT, StateError};
pub use gate::{TimeGate, Verdict, witness};
pub use shard::{Shard, shard_of};
use stream::StreamAcc;

/// The tunable definitions of contract §2–§4, with the contract's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// L: how long an alive point keeps a session connected.
    pub liveness_ms: i64,
    /// Width of a bucket; buckets are aligned to the Unix epoch.
    pub bucket_ms: i64,
    /// How far behind its partition's newest event an event may be and still count.
    pub lateness_ms: i64,
    /// M: connected time a listener needs to count in `listeners_connected_60s`.
    pub min_listen_ms: i64,
    /// J: how far ahead of its partition's time an event may be before it needs a second event
    /// to confirm that time really moved on (see [`TimeGate`]).
    pub max_jump_ms: i64,
}

/// Most buckets one stream may have (about 115 days at 10 s): an event that would stretch its
/// stream further is refused ([`Outcome::OutOfSpan`]) — a wrong clock, not a livestream.
pub const MAX_BUCKETS_PER_STREAM: i64 = 1_000_000;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            liveness_ms: 30_000,
            bucket_ms: 10_000,
            lateness_ms: 60_000,
            min_listen_ms: 60_000,
            max_jump_ms: 3_600_000,
        }
    }
}

impl Settings {
    /// Checks that the settings make sense (all positive, lateness may be zero).
    pub fn validate(&self) -> Result<(), String> {
        if self.liveness_ms <= 0 {
            return Err("liveness must be positive".into());
        }
        if self.bucket_ms <= 0 {
            return Err("bucket width must be positive".into());
        }
        if self.lateness_ms < 0 {
            return Err("allowed lateness cannot be negative".into());
        }
        if self.min_listen_ms < 0 {
            return Err("minimum listen cannot be negative".into());
        }
        if self.max_jump_ms <= 0 {
            return Err("maximum jump must be positive".into());
        }
        Ok(())
    }
}

/// What became of one offered event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new, on-time event: it counts.
    Counted,
    /// A new event below its partition's watermark: kept, flagged, changes no figure.
    Late,
    /// An `event_id` seen before: changes nothing.
    Duplicate,
    /// Counting it would stretch its stream over [`MAX_BUCKETS_PER_STREAM`] buckets: a wrong
    /// clock. Rejected; it does not claim its `event_id`.
    OutOfSpan,
}

/// Running totals of what `offer` decided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub counted: u64,
    pub late: u64,
    pub duplicates: u64,
}

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndType {
    Leave,
    Drop,
}

impl EndType {
    pub fn as_str(self) -> &'static str {
        match self {
            EndType::Leave => "leave",
            EndType::Drop => "drop",
        }
    }
}

/// One row of the `sessions` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    pub stream_id: String,
    pub session_id: String,
    pub listener_key: earshot_contract::ListenerKey,
    pub join_ts: Millis,
    pub connect_ts: Option<Millis>,
    pub end_ts: Option<Millis>,
    pub end_type: Option<EndType>,
    pub end_reason: Option<String>,
    /// Length of the session's connected intervals.
    pub listened_ms: i64,
    /// Heartbeat events received for the session (after-end ones included; they change no count).
    pub heartbeats: u64,
    pub client: Option<String>,
    pub region: Option<String>,
}

/// One row of the `buckets` table.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketRow {
    pub stream_id: String,
    pub bucket_start: Millis,
    pub width_ms: i64,
    pub displayed_start: Option<i64>,
    pub roster_start: i64,
    pub roster_peak: i64,
    pub connected_start: i64,
    pub connected_peak: i64,
    pub joins: i64,
    pub connects: i64,
    pub leaves: i64,
    pub drops: i64,
    /// Shared, not copied: a live engine hands out the bytes it keeps for a bucket until the
    /// bucket changes, and rollups keep the bytes of the buckets they were made from.
    pub present_hll: std::sync::Arc<[u8]>,
    pub connected_hll: std::sync::Arc<[u8]>,
    /// The estimates of the two sketches, stored so that a point of one row needs no sketch.
    pub present_listeners: i64,
    pub connected_listeners: i64,
    pub is_final: bool,
}

/// One row of the `streams` table.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamRow {
    pub stream_id: String,
    pub scheduled_start: Option<Millis>,
    pub live_at: Option<Millis>,
    pub start_delay_ms: Option<i64>,
    pub first_event: Millis,
    pub last_event: Millis,
    pub sessions: i64,
    pub peak_displayed: Option<i64>,
    pub peak_roster: i64,
    pub peak_connected: i64,
    pub listeners_joined: i64,
    pub listeners_connected: i64,
    pub listeners_connected_60s: i64,
    pub failed_joins: i64,
    pub abandoned_before_audio: i64,
    pub ghost_sessions: i64,
    pub ttfa_ms_p50: Option<i64>,
    pub ttfa_ms_p90: Option<i64>,
    pub joined_hll: Vec<u8>,
    pub connected_hll: Vec<u8>,
}

/// The three derived tables, each sorted by its key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub streams: Vec<StreamRow>,
    pub buckets: Vec<BucketRow>,
    /// The buckets themselves and rolled up to each of [`ROLLUP_WIDTHS_MS`] that the bucket width
    /// divides, sorted by (stream, width, start).
    pub rollups: Vec<BucketRow>,
    pub sessions: Vec<SessionRow>,
}

/// What the engine's two growing structures hold, in heap bytes (allocator overhead not included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// Sessions held (open and ended: the `sessions` table needs both).
    pub sessions: usize,
    /// Session state: index, compact records, id bytes, boxed ends and extra windows.
    pub session_bytes: usize,
    /// The `event_id` de-duplication set.
    pub dedup_bytes: usize,
    /// The incremental figures of a live engine ([`Engine::go_live`]): per-listener state, open
    /// sessions, change points (sketches not counted).
    pub live_bytes: usize,
}

impl MemoryUse {
    /// Session-state bytes per session held.
    pub fn bytes_per_session(&self) -> f64 {
        self.session_bytes as f64 / self.sessions.max(1) as f64
    }
}

/// How a live engine's publishes went, summed over streams (see [`Engine::go_live`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveStats {
    /// Streams published.
    pub publishes: u64,
    /// Of those, how many rebuilt the stream's figures from every session: an event changed a
    /// bucket behind the horizon (or the stream had just gone live).
    pub full_rebuilds: u64,
    /// Buckets whose sketches were refilled because a session left them.
    pub refilled_buckets: u64,
}

/// The streaming state of contract §2–§4 for any number of streams and partitions.
#[derive(Debug)]
pub struct Engine {
    settings: Settings,
    seen: HashSet<u128, BuildHasherDefault<IdHasher>>,
    /// Per source partition, the two largest `ts` of its stored (counted or late) events.
    /// Indexed by partition (partition ids are small: input numbers, Kafka partition ids).
    clocks: Vec<Option<Clock>>,
    streams: HashMap<String, StreamAcc, FastHash>,
    arrival: u64,
    tally: Tally,
    /// Whether each stream keeps its figures current as events arrive ([`Engine::go_live`]).
    live: bool,
    /// Whether counted events are applied by [`Shard`]s rather than here
    /// ([`Engine::count_in_shards`]); `streams` then hold only each stream's span until the
    /// shards are absorbed.
    sharded: bool,
    rollup_cache: RollupCache,
}

impl Engine {
    pub fn new(settings: Settings) -> Engine {
        Engine {
            settings,
            seen: HashSet::default(),
            clocks: Vec::new(),
            streams: HashMap::with_hasher(FastHash::new()),
            arrival: 0,
            tally: Tally::default(),
            live: false,
            sharded: false,
            rollup_cache: RollupCache::default(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn tally(&self) -> Tally {
        self.tally
    }

    fn clock(&self, partition: u32) -> Option<&Clock> {
        self.clocks.get(partition as usize).and_then(Option::as_ref)
    }

    /// A partition's time: the largest `ts` that two witnesses (two listeners, or a stream's host
    /// side and a listener; see [`gate::witness`]) have each reached among its stored events, so
    /// that no single event and no single device can move it (contract §4, v1.2). `None` until the
    /// partition has events of two witnesses.
    pub fn partition_time(&self, partition: u32) -> Option<Millis> {
        self.clock(partition).and_then(|c| c.second)
    }

    /// The largest `ts` among a partition's stored events (what [`TimeGate`] measures jumps from).
    pub fn partition_newest(&self, partition: u32) -> Option<Millis> {
        self.clock(partition).map(|c| c.first)
    }

    /// A partition's watermark: its time minus the allowed lateness.
    pub fn watermark(&self, partition: u32) -> Option<Millis> {
        self.partition_time(partition)
            .map(|t| t.saturating_sub(self.settings.lateness_ms))
    }

    /// Takes one valid event that arrived on `partition`, in arrival order. This is the counting
    /// step alone: a live input goes through [`TimeGate`] first, which decides whether an event
    /// that jumps ahead is confirmed; a replay of stored events comes straight here.
    pub fn offer(&mut self, partition: u32, event: &Event) -> Outcome {
        let id = xxhash_rust::xxh3::xxh3_128(event.event_id.as_bytes());
        // One hash-table operation in the common case (the set is gigabytes at 8M listeners).
        if !self.seen.insert(id) {
            self.tally.duplicates += 1;
            return Outcome::Duplicate;
        }
        let late = self.watermark(partition).is_some_and(|w| event.ts < w);
        if !late
            && let Some(s) = self.streams.get(event.stream_id.as_str())
            && s.span_with(event.ts, self.settings.bucket_ms) > MAX_BUCKETS_PER_STREAM
        {
            // Not stored, not counted, and its event_id stays free (contract §1: a rejected
            // message does not claim it).
            self.seen.remove(&id);
            return Outcome::OutOfSpan;
        }
        let slot = partition as usize;
        if self.clocks.len() <= slot {
            self.clocks.resize(slot + 1, None);
        }
        let witness = gate::witness(event);
        match &mut self.clocks[slot] {
            Some(c) => c.add(event.ts, witness),
            none => {
                *none = Some(Clock {
                    first: event.ts,
                    first_witness: witness,
                    second: None,
                })
            }
        }
        if late {
            self.tally.late += 1;
            return Outcome::Late;
        }
        self.arrival += 1;
        self.tally.counted += 1;
        let settings = self.settings;
        if self.sharded {
            // The shard counts it; here only the span the guard above needs.
            match self.streams.get_mut(event.stream_id.as_str()) {
                Some(s) => s.widen(event.ts),
                None => {
                    self.streams
                        .insert(event.stream_id.to_string(), StreamAcc::new(event.ts));
                }
            }
            return Outcome::Counted;
        }
        match self.streams.get_mut(event.stream_id.as_str()) {
            Some(s) => s.apply(event, self.arrival, &settings),
            None => {
                let mut s = StreamAcc::new(event.ts);
                if self.live {
                    s.go_live(&settings);
                }
                s.apply(event, self.arrival, &settings);
                self.streams.insert(event.stream_id.to_string(), s);
            }
        }
        Outcome::Counted
    }

    /// Makes room in the de-duplication set for `more` events (a file ingest that knows its size
    /// up front): one allocation instead of a rehash at every doubling. A hint: when the room
    /// cannot be had, the set grows as events come, as it would have without it.
    pub fn expect_events(&mut self, more: usize) {
        let _ = self.seen.try_reserve(more);
    }

    /// Heap bytes held by the de-duplication set (its table's allocation).
    pub fn dedup_bytes(&self) -> usize {
        session::table_buckets(self.seen.capacity()) * (std::mem::size_of::<u128>() + 1)
    }

    /// Heap bytes held by session state, all streams (see [`MemoryUse`]).
    pub fn memory(&self) -> MemoryUse {
        MemoryUse {
            sessions: self.session_count(),
            session_bytes: self.streams.values().map(|s| s.session_bytes()).sum(),
            dedup_bytes: self.dedup_bytes(),
            live_bytes: self.streams.values().map(|s| s.live_bytes()).sum(),
        }
    }

    /// Number of sessions held in memory.
    pub fn session_count(&self) -> usize {
        self.streams.values().map(|s| s.session_count()).sum()
    }

    /// The tables as of now. `final_through`: buckets ending at or before it are final; `None`
    /// means the input has ended and every bucket is final.
    pub fn snapshot(&self, final_through: Option<Millis>) -> Snapshot {
        let mut ids: Vec<&String> = self.streams.keys().collect();
        ids.sort();
        let mut out = Snapshot::default();
        for id in ids {
            self.streams[id].snapshot(id, &self.settings, final_through, &mut out, true);
        }
        out.rollups = buckets::rollups(&out.buckets);
        out
    }

    /// From now on, every stream keeps its `streams` and `buckets` figures current as events
    /// arrive, so that [`Engine::publish`] costs what changed since the last publish rather than
    /// a pass over every session. (An engine that publishes once, at the end of a file, does not
    /// need it: [`Engine::snapshot`] is cheaper for a single pass.)
    pub fn go_live(&mut self) {
        self.live = true;
        let settings = self.settings;
        for s in self.streams.values_mut() {
            s.go_live(&settings);
        }
    }

    /// The `streams`, `buckets` and `rollups` rows as of now, equal to those of
    /// [`Engine::snapshot`]; `sessions` is left empty (see [`Engine::session_rows`]). Goes live
    /// first if the engine was not.
    pub fn publish(&mut self, final_through: Option<Millis>) -> Snapshot {
        self.go_live();
        let mut ids: Vec<String> = self.streams.keys().cloned().collect();
        ids.sort();
        let settings = self.settings;
        // No counted event can be older than the oldest watermark among the partitions that have
        // one, so nothing before it changes again (short of a new partition with old events).
        let floor = self
            .clocks
            .iter()
            .flatten()
            .filter_map(|c| c.second)
            .min()
            .map(|t| t.saturating_sub(settings.lateness_ms));
        let mut out = Snapshot::default();
        for id in ids {
            if let Some(s) = self.streams.get_mut(&id) {
                s.publish(&id, &settings, final_through, floor, &mut out);
            }
        }
        out.rollups = buckets::rollups_cached(&out.buckets, &mut self.rollup_cache);
        out
    }

    /// How many sessions [`Engine::take_changed_session_rows`] would give rows for.
    pub fn changed_session_count(&self) -> usize {
        self.streams.values().map(|s| s.changed_count()).sum()
    }

    /// Forgets which sessions changed, when a checkpoint writes every row instead.
    pub fn forget_changed_sessions(&mut self) {
        for s in self.streams.values_mut() {
            s.forget_changed();
        }
    }

    /// The `sessions` rows of the sessions a counted event changed since the last call, while the
    /// engine was live ([`Engine::go_live`]), sorted by stream and session id. A checkpoint appends them
    /// as a part of `sessions` rather than writing every row again.
    pub fn take_changed_session_rows(&mut self) -> Vec<SessionRow> {
        let mut ids: Vec<&String> = self.streams.keys().collect();
        ids.sort();
        let ids: Vec<String> = ids.into_iter().cloned().collect();
        let mut out = Vec::new();
        for id in ids {
            if let Some(s) = self.streams.get_mut(&id) {
                s.take_changed_rows(&id, &mut out);
            }
        }
        out
    }

    /// How the publishes went so far.
    pub fn live_stats(&self) -> LiveStats {
        let mut out = LiveStats::default();
        for s in self.streams.values() {
            let l = s.live_stats();
            out.publishes += l.publishes;
            out.full_rebuilds += l.full_rebuilds;
            out.refilled_buckets += l.refilled_buckets;
        }
        out
    }

    /// The rows of `sessions`, sorted by stream and session id (what [`Engine::snapshot`] gives).
    pub fn session_rows(&self) -> Vec<SessionRow> {
        let mut ids: Vec<&String> = self.streams.keys().collect();
        ids.sort();
        let mut out = Vec::with_capacity(self.session_count());
        for id in ids {
            self.streams[id].session_rows(id, &mut out);
        }
        out
    }

    /// The `streams` row of one stream as if `min_listen_ms` had been the setting (the minimum
    /// listen only matters here, never in [`Engine::offer`]), without building the stream's session
    /// and bucket rows. For what-if analyses over one set of offered events.
    pub fn stream_row(&self, stream_id: &str, min_listen_ms: i64) -> Option<StreamRow> {
        let settings = Settings {
            min_listen_ms,
            ..self.settings
        };
        let mut out = Snapshot::default();
        self.streams
            .get(stream_id)?
            .snapshot(stream_id, &settings, None, &mut out, false);
        out.streams.pop()
    }
}

/// A partition's clock: the largest `ts` of its stored events and whose it is, and the largest
/// `ts` of any other witness's events — the top two of the witnesses' latest times, which is all
/// that the second-largest of them needs, since a witness's latest time only grows.
#[derive(Clone, Copy, Debug)]
struct Clock {
    first: Millis,
    first_witness: u64,
    second: Option<Millis>,
}

impl Clock {
    fn add(&mut self, ts: Millis, witness: u64) {
        if witness == self.first_witness {
            // The leading witness moves on alone: the time two have reached does not change.
            self.first = self.first.max(ts);
        } else if ts > self.first {
            self.second = Some(self.first);
            self.first = ts;
            self.first_witness = witness;
        } else if self.second.is_none_or(|s| ts > s) {
            self.second = Some(ts);
        }
    }
}

/// Hashes event-id digests, which are already uniform xxh3-128 values: take 64 of their bits.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
    fn write_u128(&mut self, i: u128) {
        self.0 = i as u64;
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = self.0.rotate_left(29) ^ i;
    }
}

/// xxh3 with a per-process random seed for maps keyed by ids from the input (stream, session):
/// fast, and not open to crafted collisions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FastHash(u64);

impl FastHash {
    pub(crate) fn new() -> FastHash {
        FastHash(std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64))
    }
}

impl Default for FastHash {
    fn default() -> Self {
        FastHash::new()
    }
}

impl BuildHasher for FastHash {
    type Hasher = SeededXxh3;
    fn build_hasher(&self) -> SeededXxh3 {
        SeededXxh3(self.0)
    }
}

pub(crate) struct SeededXxh3(u64);

impl Hasher for SeededXxh3 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    fn write_u8(&mut self, i: u8) {
        self.0 = (self.0 ^ u64::from(i)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Nearest-rank percentile of sorted values: the smallest value with at least `p` % at or below it.
pub fn nearest_rank(sorted: &[i64], p: u32) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len() as u64;
    let rank = (u64::from(p) * n).div_ceil(100).max(1);
    sorted.get(rank as usize - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use earshot_contract::EventType;

    /// The size hint comes from a file's length: a hint no allocator can meet is ignored, not a
    /// crash, and the engine still counts.
    #[test]
    fn an_impossible_size_hint_is_ignored() {
        let mut engine = Engine::new(Settings::default());
        engine.expect_events(usize::MAX);
        engine.expect_events(usize::MAX / 64);
        assert_eq!(engine.dedup_bytes(), 0);
        engine.expect_events(1000);
        assert!(engine.dedup_bytes() >= 1000 * std::mem::size_of::<u128>());
    }

    #[test]
    fn nearest_rank_matches_the_contract_example() {
        assert_eq!(nearest_rank(&[1000, 2000], 50), Some(1000));
        assert_eq!(nearest_rank(&[1000, 2000], 90), Some(2000));
        assert_eq!(nearest_rank(&[5], 90), Some(5));
        assert_eq!(nearest_rank(&[], 50), None);
        let v: Vec<i64> = (1..=10).collect();
        assert_eq!(nearest_rank(&v, 90), Some(9));
        assert_eq!(nearest_rank(&v, 91), Some(10));
    }

    fn event(n: u64, kind: EventType, ts: Millis, session: u64) -> Event {
        Event {
            event_id: format!("e-{n}").into(),
            kind,
            ts,
            stream_id: "s".into(),
            listener_key: Some(earshot_contract::ListenerKey([session as u8; 16])),
            session_id: Some(format!("sess-{session:08}-0123456789abcdef").into()),
            reason: None,
            displayed: None,
            state: None,
            scheduled_start: None,
            client: Some("ios".into()),
            region: Some("eu-west".into()),
            audio_ms: None,
        }
    }

    #[test]
    fn stream_row_equals_the_snapshot_under_that_minimum_listen() {
        let mut engines: Vec<(i64, Engine)> = [0, 20_000, 60_000]
            .into_iter()
            .map(|m| {
                let settings = Settings {
                    min_listen_ms: m,
                    ..Settings::default()
                };
                (m, Engine::new(settings))
            })
            .collect();
        let mut n = 0;
        for s in 0..300u64 {
            let t = (s as i64 % 17) * 7_000;
            let listen = (s as i64 % 5) * 15_000;
            let mut kinds = vec![(EventType::Join, t), (EventType::Connect, t + 1_000)];
            kinds.extend(
                (1..=listen / 10_000).map(|k| (EventType::Heartbeat, t + 1_000 + k * 10_000)),
            );
            kinds.push((EventType::Leave, t + 2_000 + listen));
            for (kind, ts) in kinds {
                n += 1;
                for (_, engine) in &mut engines {
                    engine.offer(0, &event(n, kind, ts, s % 120));
                }
            }
        }
        let base = &engines[0].1;
        for (m, engine) in &engines {
            let full = engine.snapshot(None).streams.remove(0);
            assert_eq!(base.stream_row("s", *m), Some(full), "min listen {m}");
        }
        assert_eq!(base.stream_row("other", 0), None);
    }

    /// The budget of issue 7: under 200 bytes of session state per session, counted from the
    /// allocations themselves (the index table, records, id bytes, boxed ends), at a size where
    /// the table's power-of-two growth is neither at its best nor its worst.
    #[test]
    fn session_state_stays_under_200_bytes_per_session() {
        let mut engine = Engine::new(Settings::default());
        let mut n = 0;
        let sessions = 150_000u64;
        for s in 0..sessions {
            let t = (s as i64) * 10;
            for (kind, dt) in [
                (EventType::Join, 0),
                (EventType::Connect, 2_000),
                (EventType::Heartbeat, 12_000),
                (EventType::Heartbeat, 22_000),
            ] {
                n += 1;
                engine.offer(0, &event(n, kind, t + dt, s));
            }
            if s % 2 == 0 {
                n += 1;
                engine.offer(0, &event(n, EventType::Leave, t + 30_000, s));
            }
        }
        let m = engine.memory();
        assert_eq!(m.sessions, sessions as usize);
        assert!(
            m.bytes_per_session() < 200.0,
            "{:.1} bytes per session",
            m.bytes_per_session()
        );
        assert!(
            m.bytes_per_session() > 100.0,
            "the accounting counts the records"
        );
    }

    /// A platform's day is many small streams: a stream's session state starts small and grows
    /// with it (a whole 4,096-session chunk and a 1 MiB id arena per stream made 1,000 one-event
    /// streams take 1.6 GB).
    #[test]
    fn a_stream_of_one_session_costs_one_session() {
        let mut engine = Engine::new(Settings::default());
        let streams = 2_000u64;
        for s in 0..streams {
            let mut e = event(s, EventType::Join, s as i64 * 1_000, s);
            e.stream_id = format!("space-{s}").into();
            engine.offer(0, &e);
        }
        let m = engine.memory();
        assert_eq!(m.sessions, streams as usize);
        assert!(
            m.bytes_per_session() < 1_000.0,
            "{:.1} bytes per session",
            m.bytes_per_session()
        );
    }
}
