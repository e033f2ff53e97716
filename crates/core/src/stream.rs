//! Per-stream state and how it becomes rows.

use std::collections::BTreeMap;
use std::io;

use earshot_contract::{Event, EventType, ListenerKey, Millis, StreamState};
use earshot_sketch::Sketch;

use crate::buckets::estimate;

/// Sessions from which a snapshot puts its `present` sketches on a second thread: below it the
/// thread costs more than it saves.
const PARALLEL_SNAPSHOT_SESSIONS: usize = 4096;
use crate::codec::{Dec, Enc, StateError, corrupt};
use crate::live::{Context, Figures, Footprint, Live};
use crate::session::{End, Labels, Sessions, Stamp, union_length};
use crate::{
    BucketRow, EndType, RangeSketches, SessionRow, Settings, Snapshot, StreamRow, nearest_rank,
};

#[derive(Debug)]
pub(crate) struct StreamAcc {
    first_event: Millis,
    last_event: Millis,
    sessions: Sessions,
    labels: Labels,
    /// `display` samples, `(ts, displayed)`.
    displays: Vec<(Millis, i64)>,
    live_state: Option<Millis>,
    /// `(ts, scheduled_start)` of the latest `stream_state` that carries one (largest on a tie).
    scheduled: Option<(Millis, Millis)>,
    /// Per bucket index: joins, connects, leaves, drops.
    event_counts: BTreeMap<i64, [i64; 4]>,
    /// The figures kept current as events arrive (see [`Live`]), when the engine publishes often.
    live: Option<Box<Live>>,
    /// Sessions changed since their rows were last taken ([`StreamAcc::take_changed_rows`]).
    changed: Changed,
}

/// A set of session numbers: a bit per session and the list of those set.
#[derive(Debug, Default)]
struct Changed {
    bits: Vec<u64>,
    list: Vec<u32>,
}

impl Changed {
    fn mark(&mut self, i: u32) {
        let (word, bit) = (i as usize / 64, i % 64);
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & (1 << bit) == 0 {
            self.bits[word] |= 1 << bit;
            self.list.push(i);
        }
    }

    fn take(&mut self) -> Vec<u32> {
        for &i in &self.list {
            self.bits[i as usize / 64] &= !(1 << (i % 64));
        }
        std::mem::take(&mut self.list)
    }
}

impl StreamAcc {
    pub(crate) fn new(ts: Millis) -> StreamAcc {
        StreamAcc {
            first_event: ts,
            last_event: ts,
            sessions: Sessions::new(),
            labels: Labels::default(),
            displays: Vec::new(),
            live_state: None,
            scheduled: None,
            event_counts: BTreeMap::new(),
            live: None,
            changed: Changed::default(),
        }
    }

    /// Keeps the figures current from now on; they are rebuilt from the sessions at the next
    /// publish.
    pub(crate) fn go_live(&mut self, settings: &Settings) {
        if self.live.is_none() {
            self.live = Some(Box::new(Live::new(settings)));
        }
    }

    /// Drops the live figures (they are a function of the sessions; [`StreamAcc::absorb`] needs
    /// a stream without them).
    pub(crate) fn leave_live(&mut self) {
        self.live = None;
    }

    pub(crate) fn live_stats(&self) -> crate::LiveStats {
        self.live
            .as_ref()
            .map_or_else(Default::default, |l| l.stats())
    }

    pub(crate) fn live_bytes(&self) -> usize {
        self.live.as_ref().map_or(0, |l| l.heap_bytes())
    }

    /// Writes what `apply` accumulated, then the live figures if the stream has them (so that a
    /// restart does not rebuild them from every session).
    pub(crate) fn save(&self, e: &mut Enc<'_>) -> io::Result<()> {
        e.i64(self.first_event)?;
        e.i64(self.last_event)?;
        e.len(self.displays.len())?;
        for &(ts, d) in &self.displays {
            e.i64(ts)?;
            e.i64(d)?;
        }
        e.opt_i64(self.live_state)?;
        match self.scheduled {
            None => e.u8(0)?,
            Some((ts, s)) => {
                e.u8(1)?;
                e.i64(ts)?;
                e.i64(s)?;
            }
        }
        e.len(self.event_counts.len())?;
        for (&bucket, counts) in &self.event_counts {
            e.i64(bucket)?;
            for &c in counts {
                e.i64(c)?;
            }
        }
        self.labels.save(e)?;
        self.sessions.save(e)?;
        match &self.live {
            None => e.u8(0),
            Some(live) => {
                e.u8(1)?;
                live.save(e)
            }
        }
    }

    pub(crate) fn load(d: &mut Dec<'_>, settings: &Settings) -> Result<StreamAcc, StateError> {
        let mut s = StreamAcc::new(d.i64()?);
        s.last_event = d.i64()?;
        let (n, reserve) = d.len(16)?;
        s.displays.reserve(reserve);
        for _ in 0..n {
            s.displays.push((d.i64()?, d.i64()?));
        }
        s.live_state = d.opt_i64()?;
        s.scheduled = match d.u8()? {
            0 => None,
            1 => Some((d.i64()?, d.i64()?)),
            _ => return Err(corrupt("a scheduled-start tag other than 0 or 1")),
        };
        let (n, _) = d.len(40)?;
        for _ in 0..n {
            let bucket = d.i64()?;
            let counts = [d.i64()?, d.i64()?, d.i64()?, d.i64()?];
            s.event_counts.insert(bucket, counts);
        }
        s.labels = Labels::load(d)?;
        s.sessions = Sessions::load(d, s.labels.len())?;
        s.live = match d.u8()? {
            0 => None,
            1 => Some(Box::new(Live::load(d, settings, s.sessions.len())?)),
            _ => return Err(corrupt("a live figures tag other than 0 or 1")),
        };
        Ok(s)
    }

    /// Widens the stream's span to `ts` (an engine whose counting happens in shards keeps only
    /// the span, for [`StreamAcc::span_with`]).
    pub(crate) fn widen(&mut self, ts: Millis) {
        self.first_event = self.first_event.min(ts);
        self.last_event = self.last_event.max(ts);
    }

    /// Takes in what a shard counted for this stream: the shard's sessions are none of this
    /// stream's (sessions are sharded by id), so they move in; displays, counts and the host's
    /// times combine as `apply` would have combined them. Not for a live stream. An error names
    /// a session that both hold.
    pub(crate) fn absorb(&mut self, other: StreamAcc) -> Result<(), String> {
        debug_assert!(self.live.is_none() && other.live.is_none());
        self.widen(other.first_event);
        self.widen(other.last_event);
        self.displays.extend(other.displays);
        self.live_state = match (self.live_state, other.live_state) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.scheduled = self.scheduled.max(other.scheduled);
        for (bucket, counts) in other.event_counts {
            let mine = self.event_counts.entry(bucket).or_default();
            for (m, c) in mine.iter_mut().zip(counts) {
                *m += c;
            }
        }
        let labels = &mut self.labels;
        let theirs = other.labels;
        let moved = self
            .sessions
            .absorb(other.sessions, |id| labels.id(theirs.name(id)));
        if moved {
            Ok(())
        } else {
            Err("a session counted in two shards".into())
        }
    }

    /// The number of buckets the stream would span with an event at `ts`.
    pub(crate) fn span_with(&self, ts: Millis, w: i64) -> i64 {
        let last = self.last_event.max(ts).div_euclid(w);
        let first = self.first_event.min(ts).div_euclid(w);
        last.saturating_sub(first).saturating_add(1)
    }

    pub(crate) fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub(crate) fn session_bytes(&self) -> usize {
        self.sessions.heap_bytes()
    }

    pub(crate) fn apply(&mut self, e: &Event, arrival: u64, settings: &Settings) {
        self.first_event = self.first_event.min(e.ts);
        self.last_event = self.last_event.max(e.ts);
        if let Some(live) = &mut self.live {
            live.extend(self.first_event, self.last_event, &self.sessions);
        }
        let at = (e.ts, arrival);
        let counter = match e.kind {
            EventType::Join => Some(0),
            EventType::Connect => Some(1),
            EventType::Leave => Some(2),
            EventType::Drop => Some(3),
            _ => None,
        };
        if let Some(c) = counter {
            self.event_counts
                .entry(e.ts.div_euclid(settings.bucket_ms))
                .or_default()[c] += 1;
        }
        match e.kind {
            EventType::Display => {
                if let Some(d) = e.displayed {
                    self.displays.push((e.ts, d));
                    if let Some(live) = &mut self.live {
                        live.display(e.ts, d);
                    }
                }
            }
            EventType::StreamState => {
                if e.state == Some(StreamState::Live) {
                    self.live_state = Some(self.live_state.map_or(e.ts, |t| t.min(e.ts)));
                }
                if let Some(ss) = e.scheduled_start {
                    self.scheduled = self.scheduled.max(Some((e.ts, ss)));
                }
            }
            _ => self.apply_session(e, at, settings),
        }
    }

    fn apply_session(&mut self, e: &Event, at: Stamp, settings: &Settings) {
        let (Some(session_id), Some(listener)) = (e.session_id.as_deref(), e.listener_key) else {
            return;
        };
        // A live stream needs the session as it was before this event (one lookup serves both).
        let live = self.live.is_some();
        let mut before = None;
        let i = self.change_session(e, at, session_id, listener, settings, |s| {
            if live {
                before = Some(Footprint::of(s));
            }
        });
        if let Some(live) = &mut self.live {
            live.change(i, before.as_ref(), &self.sessions);
            // Only a live engine's checkpoints take the changed rows: a file ingest writes every
            // row once, and a resume's replay re-applies events whose rows are stored already.
            self.changed.mark(i);
        }
    }

    fn change_session(
        &mut self,
        e: &Event,
        at: Stamp,
        session_id: &str,
        listener: ListenerKey,
        settings: &Settings,
        found: impl FnOnce(&crate::session::SessionAcc),
    ) -> u32 {
        let labels = &mut self.labels;
        let (i, s, new) = self.sessions.get_or_insert(session_id, || {
            (
                at,
                listener,
                labels.id(e.client.as_deref()),
                labels.id(e.region.as_deref()),
            )
        });
        if !new {
            found(s);
        }
        if !new && at < s.first {
            // An earlier event arrived late (within the lateness): it names the session's listener.
            s.first = at;
            s.listener = listener;
            s.client = labels.id(e.client.as_deref());
            s.region = labels.id(e.region.as_deref());
        }
        match e.kind {
            EventType::Connect | EventType::Heartbeat => {
                if e.kind == EventType::Heartbeat {
                    s.heartbeats = s.heartbeats.saturating_add(1);
                }
                s.alive.add(e.ts, e.ts.saturating_add(settings.liveness_ms));
            }
            EventType::Leave | EventType::Drop if s.end.as_ref().is_none_or(|end| at < end.at) => {
                let kind = if e.kind == EventType::Leave {
                    EndType::Leave
                } else {
                    EndType::Drop
                };
                s.end = Some(Box::new(End {
                    at,
                    kind,
                    reason: labels.id(e.reason.as_deref()),
                }));
            }
            _ => {}
        }
        i
    }

    fn session_row(
        &self,
        stream_id: &str,
        id: &str,
        s: &crate::session::SessionAcc,
        listened_ms: i64,
    ) -> SessionRow {
        SessionRow {
            stream_id: stream_id.to_owned(),
            session_id: id.to_string(),
            listener_key: s.listener,
            join_ts: s.first.0,
            connect_ts: s.connect_ts(),
            end_ts: s.end_ts(),
            end_type: s.end.as_ref().map(|e| e.kind),
            end_reason: s
                .end
                .as_ref()
                .and_then(|e| self.labels.name(e.reason).map(str::to_owned)),
            listened_ms,
            heartbeats: u64::from(s.heartbeats),
            client: self.labels.name(s.client).map(str::to_owned),
            region: self.labels.name(s.region).map(str::to_owned),
        }
    }

    /// How many sessions changed since their rows were last taken.
    pub(crate) fn changed_count(&self) -> usize {
        self.changed.list.len()
    }

    /// Forgets which sessions changed (their rows are being written with all the others).
    pub(crate) fn forget_changed(&mut self) {
        self.changed.take();
    }

    /// The rows of the sessions changed since the last call, sorted by session id.
    pub(crate) fn take_changed_rows(&mut self, stream_id: &str, out: &mut Vec<SessionRow>) {
        let changed = self.changed.take();
        self.push_rows(
            stream_id,
            changed.iter().map(|&i| self.sessions.get(i)),
            out,
        );
    }

    /// The stream's `sessions` rows, sorted by session id.
    pub(crate) fn session_rows(&self, stream_id: &str, out: &mut Vec<SessionRow>) {
        self.push_rows(stream_id, self.sessions.iter(), out);
    }

    fn push_rows<'a>(
        &'a self,
        stream_id: &str,
        sessions: impl Iterator<Item = &'a crate::session::SessionAcc>,
        out: &mut Vec<SessionRow>,
    ) {
        let mut ordered: Vec<(&str, &crate::session::SessionAcc)> =
            sessions.map(|s| (self.sessions.id(s), s)).collect();
        ordered.sort_unstable_by_key(|(id, _)| *id);
        for (id, s) in ordered {
            let listened = s.connected().map(|(a, b)| b - a).sum();
            out.push(self.session_row(stream_id, id, s, listened));
        }
    }

    /// The stream's `streams` row and `buckets` rows from the figures kept current (the stream
    /// goes live first if it was not).
    pub(crate) fn publish(
        &mut self,
        stream_id: &str,
        settings: &Settings,
        final_through: Option<Millis>,
        floor: Option<Millis>,
        out: &mut Snapshot,
    ) {
        self.go_live(settings);
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let ctx = Context {
            sessions: &self.sessions,
            first_event: self.first_event,
            last_event: self.last_event,
            floor,
        };
        let w = settings.bucket_ms;
        let counts = &self.event_counts;
        let f = live.publish(&ctx, &self.displays, |b| {
            let c = counts
                .get(&b.start.div_euclid(w))
                .copied()
                .unwrap_or_default();
            out.buckets.push(BucketRow {
                stream_id: stream_id.to_owned(),
                bucket_start: b.start,
                width_ms: w,
                displayed_start: b.displayed_start,
                roster_start: b.roster.0,
                roster_peak: b.roster.1,
                connected_start: b.connected.0,
                connected_peak: b.connected.1,
                joins: c[0],
                connects: c[1],
                leaves: c[2],
                drops: c[3],
                present_hll: b.present_hll.clone(),
                connected_hll: b.connected_hll.clone(),
                present_listeners: b.present_listeners,
                connected_listeners: b.connected_listeners,
                is_final: final_through.is_none_or(|f| b.start + w <= f),
            });
        });
        let row = self.stream_row(stream_id, f);
        out.streams.push(row);
    }

    pub(crate) fn snapshot(
        &self,
        stream_id: &str,
        settings: &Settings,
        final_through: Option<Millis>,
        out: &mut Snapshot,
        rows: bool,
    ) {
        let w = settings.bucket_ms;
        let b0 = self.first_event.div_euclid(w);
        let b1 = self.last_event.div_euclid(w);
        let n = (b1 - b0 + 1) as usize;
        let bucket_of =
            |t: Millis| -> usize { (t.div_euclid(w) - b0).clamp(0, n as i64 - 1) as usize };

        // Who was present in each bucket, and who joined at all: the heaviest sketch work, done on
        // a thread of its own for a large stream while this one does the rest (sketches do not
        // depend on the order of their inserts, so the bytes are the same either way).
        let present_side = || {
            let mut present = RangeSketches::new(if rows { n } else { 0 });
            let mut joined = Sketch::new();
            for s in self.sessions.iter() {
                let (join, end) = (s.first.0, s.end_ts());
                let hash = earshot_sketch::hash_bytes(&s.listener.0);
                joined.insert_hash(hash);
                if rows && end.is_none_or(|e| e > join) {
                    let last = end.map_or(n - 1, |e| bucket_of(e - 1));
                    present.insert(bucket_of(join), last, hash);
                }
            }
            let leaves = if rows {
                present.into_leaf_bytes()
            } else {
                Vec::new()
            };
            (leaves, joined)
        };
        std::thread::scope(|scope| {
            let present_job = (self.sessions.len() >= PARALLEL_SNAPSHOT_SESSIONS)
                .then(|| scope.spawn(present_side));
            let mut roster_changes: Vec<(Millis, i64)> = Vec::new();
            let mut connected_changes: Vec<(Millis, i64)> = Vec::new();
            let mut connected_buckets = RangeSketches::new(n);
            let mut connected_all = Sketch::new();
            // Listeners and their connected intervals as flat lists, sorted and grouped below: no hash
            // table and no allocation per listener (millions at a large event).
            let mut listeners: Vec<ListenerKey> = Vec::with_capacity(self.sessions.len());
            let mut connected_time: Vec<(ListenerKey, Millis, Millis)> = Vec::new();
            let (mut failed, mut abandoned, mut ghosts) = (0i64, 0i64, 0i64);
            let mut ttfa: Vec<i64> = Vec::new();
            let mut earliest_connect: Option<Millis> = None;

            let mut ordered: Vec<(&str, &crate::session::SessionAcc)> = self
                .sessions
                .iter()
                .map(|s| (self.sessions.id(s), s))
                .collect();
            if rows {
                // Session rows are sorted by id; the figures do not depend on the order.
                ordered.sort_unstable_by_key(|(id, _)| *id);
            }
            for (id, s) in ordered {
                let join = s.first.0;
                let end = s.end_ts();
                let hash = earshot_sketch::hash_bytes(&s.listener.0);
                listeners.push(s.listener);
                if end.is_none_or(|e| e > join) {
                    roster_changes.push((join, 1));
                    if let Some(e) = end {
                        roster_changes.push((e, -1));
                    }
                }
                let mut listened = 0i64;
                for (a, b) in s.connected() {
                    connected_changes.push((a, 1));
                    connected_changes.push((b, -1));
                    if rows {
                        connected_buckets.insert(bucket_of(a), bucket_of(b - 1), hash);
                    }
                    connected_time.push((s.listener, a, b));
                    listened += b - a;
                }
                let connect_ts = s.connect_ts();
                match connect_ts {
                    Some(c) => {
                        connected_all.insert_hash(hash);
                        ttfa.push(c - join);
                        earliest_connect = Some(earliest_connect.map_or(c, |t| t.min(c)));
                    }
                    None => {
                        failed += 1;
                        if end.is_some() {
                            abandoned += 1;
                        } else {
                            ghosts += 1;
                        }
                    }
                }
                if !rows {
                    continue;
                }
                out.sessions
                    .push(self.session_row(stream_id, id, s, listened));
            }

            roster_changes.sort_unstable();
            connected_changes.sort_unstable();
            let mut displays = self.displays.clone();
            displays.sort_unstable();
            let mut roster = Sweep::new(&roster_changes);
            let mut connected = Sweep::new(&connected_changes);
            let mut shown: Option<i64> = None;
            let mut di = 0usize;
            // The sketches only when the rows are wanted (the peaks need none).
            let mut connected_sketches = if rows {
                connected_buckets.into_leaf_bytes().into_iter()
            } else {
                Vec::new().into_iter()
            };
            let (present, mut joined) = match present_job {
                Some(job) => job.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                None => present_side(),
            };
            let mut present = present.into_iter();
            let (mut peak_roster, mut peak_connected) = (0i64, 0i64);
            for k in 0..n {
                let start = (b0 + k as i64) * w;
                let (roster_start, roster_peak) = roster.bucket(start, start + w);
                let (connected_start, connected_peak) = connected.bucket(start, start + w);
                while di < displays.len() && displays[di].0 <= start {
                    shown = Some(displays[di].1);
                    di += 1;
                }
                peak_roster = peak_roster.max(roster_peak);
                peak_connected = peak_connected.max(connected_peak);
                if !rows {
                    continue;
                }
                let counts = self
                    .event_counts
                    .get(&(b0 + k as i64))
                    .copied()
                    .unwrap_or_default();
                let (Some(present_hll), Some(connected_hll)) =
                    (present.next(), connected_sketches.next())
                else {
                    unreachable!("a leaf per bucket");
                };
                out.buckets.push(BucketRow {
                    stream_id: stream_id.to_owned(),
                    bucket_start: start,
                    width_ms: w,
                    displayed_start: shown,
                    roster_start,
                    roster_peak,
                    connected_start,
                    connected_peak,
                    joins: counts[0],
                    connects: counts[1],
                    leaves: counts[2],
                    drops: counts[3],
                    present_listeners: estimate(&present_hll),
                    connected_listeners: estimate(&connected_hll),
                    present_hll: present_hll.into(),
                    connected_hll: connected_hll.into(),
                    is_final: final_through.is_none_or(|f| start + w <= f),
                });
            }

            listeners.sort_unstable();
            listeners.dedup();
            connected_time.sort_unstable();
            let (mut listeners_connected, mut connected_60s) = (0i64, 0i64);
            for one in connected_time.chunk_by(|x, y| x.0 == y.0) {
                listeners_connected += 1;
                if union_length(one.iter().map(|&(_, a, b)| (a, b))) >= settings.min_listen_ms {
                    connected_60s += 1;
                }
            }
            ttfa.sort_unstable();
            let row = self.stream_row(
                stream_id,
                Figures {
                    peak_roster,
                    peak_connected,
                    listeners_joined: listeners.len() as i64,
                    listeners_connected,
                    listeners_connected_60s: connected_60s,
                    failed_joins: failed,
                    abandoned_before_audio: abandoned,
                    ghost_sessions: ghosts,
                    ttfa_ms_p50: nearest_rank(&ttfa, 50),
                    ttfa_ms_p90: nearest_rank(&ttfa, 90),
                    earliest_connect,
                    joined_hll: joined.to_bytes(),
                    connected_hll: connected_all.to_bytes(),
                },
            );
            out.streams.push(row);
        });
    }

    /// The `streams` row from the figures over the sessions (however they were computed) and the
    /// stream's own state.
    fn stream_row(&self, stream_id: &str, f: Figures) -> StreamRow {
        let live_at = self.live_state.or(f.earliest_connect);
        let scheduled_start = self.scheduled.map(|(_, s)| s);
        StreamRow {
            stream_id: stream_id.to_owned(),
            scheduled_start,
            live_at,
            start_delay_ms: live_at.zip(scheduled_start).map(|(l, s)| l - s),
            first_event: self.first_event,
            last_event: self.last_event,
            sessions: self.sessions.len() as i64,
            peak_displayed: self.displays.iter().map(|d| d.1).max(),
            peak_roster: f.peak_roster,
            peak_connected: f.peak_connected,
            listeners_joined: f.listeners_joined,
            listeners_connected: f.listeners_connected,
            listeners_connected_60s: f.listeners_connected_60s,
            failed_joins: f.failed_joins,
            abandoned_before_audio: f.abandoned_before_audio,
            ghost_sessions: f.ghost_sessions,
            ttfa_ms_p50: f.ttfa_ms_p50,
            ttfa_ms_p90: f.ttfa_ms_p90,
            joined_hll: f.joined_hll,
            connected_hll: f.connected_hll,
        }
    }
}

/// Walks a sorted list of `(time, delta)` changes bucket by bucket.
struct Sweep<'a> {
    changes: &'a [(Millis, i64)],
    i: usize,
    value: i64,
}

impl<'a> Sweep<'a> {
    fn new(changes: &'a [(Millis, i64)]) -> Sweep<'a> {
        Sweep {
            changes,
            i: 0,
            value: 0,
        }
    }

    /// The value at `start` and the maximum over `[start, end)`, with every change at one instant
    /// applied before the value at that instant is read.
    fn bucket(&mut self, start: Millis, end: Millis) -> (i64, i64) {
        while self.i < self.changes.len() && self.changes[self.i].0 <= start {
            self.value += self.changes[self.i].1;
            self.i += 1;
        }
        let at_start = self.value;
        let mut peak = at_start;
        while self.i < self.changes.len() && self.changes[self.i].0 < end {
            let t = self.changes[self.i].0;
            while self.i < self.changes.len() && self.changes[self.i].0 == t {
                self.value += self.changes[self.i].1;
                self.i += 1;
            }
            peak = peak.max(self.value);
        }
        (at_start, peak)
    }
}
