//! A reference implementation of contract v1, written to be obviously right rather than fast.
//!
//! Every figure is computed straight from its definition in `../shared/design/contract.md`:
//! roster(t), connected(t) and displayed(t) are functions evaluated at instants; a bucket's peak is
//! the maximum over its start and every instant inside it where anything can change; "listened at
//! least M" measures the set where the listener is connected by cutting time at every boundary and
//! evaluating connected(t) on each piece. No state is carried between events except what the
//! contract's order rules (duplicates, lateness) require. It shares nothing with `earshot-core`
//! except the parsed `Event` type and the sketch format.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use earshot_contract::{Event, EventType, ListenerKey, Millis, StreamState};
use earshot_core::{BucketRow, EndType, SessionRow, Settings, Snapshot, StreamRow, Tally};
use earshot_sketch::Sketch;

/// An event that counts, with its arrival position.
#[derive(Clone, Debug)]
struct Counted {
    arrival: usize,
    event: Event,
}

/// What the reference decides for one offered event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Counted,
    Late,
    Duplicate,
    /// Rejected by the time rules of contract §4 (v1.1): a jump nothing confirmed, or an event that
    /// would stretch its stream over the span limit.
    Rejected,
}

/// A witness: a stream and who in it.
type Witness = (String, String);
/// Each partition's stored events: their `ts` and witness.
type Stored = BTreeMap<u32, Vec<(Millis, Witness)>>;

/// Who vouches for an event's clock (contract §4 v1.2): its listener, else its session, else its
/// stream's host side — each as plain text, nothing hashed.
fn witness(e: &Event) -> Witness {
    let who = match (&e.listener_key, &e.session_id) {
        (Some(k), _) => format!("listener {}", k.to_hex()),
        (None, Some(s)) => format!("session {s}"),
        (None, None) => "host".to_string(),
    };
    (e.stream_id.to_string(), who)
}

/// The reference's reading of "no single event and no single device moves time" (the rule README
/// and ARCHITECTURE.md state): per partition, lateness is measured from the second-largest of its
/// witnesses' latest stored `ts`; an event more than J ahead of the largest stored `ts` (or a
/// partition's first, or more than J either way from the newest of a partition with one witness)
/// waits until a later event of the partition, with another id and of another witness, lands
/// within J of it (then it counts) or a later event shows the partition's time elsewhere (then it
/// is rejected); at the end of the input, or when more than 16 wait, a waiting event is rejected if
/// its partition has a stored event; if not, it counts when another waiting event (any witness)
/// is within J of it, or when no two other waiting events are within J of each other. Returns `(index, decision)` in the order
/// decisions are made, which is the order the counting sees the events.
pub fn classify(events: &[(u32, Event)], settings: &Settings) -> Vec<(usize, Decision)> {
    let j = settings.max_jump_ms;
    let mut stored: Stored = BTreeMap::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut spans: BTreeMap<&str, (Millis, Millis)> = BTreeMap::new();
    let mut waiting: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    let mut out: Vec<(usize, Decision)> = Vec::new();

    // The counting step of one event, as contract §1 and §4 say.
    // Each witness's latest stored `ts` in partition `p`, largest first.
    let latest = |stored: &Stored, p: u32| {
        let mut by: BTreeMap<Witness, Millis> = BTreeMap::new();
        for (ts, w) in stored.get(&p).into_iter().flatten() {
            let t = by.entry(w.clone()).or_insert(*ts);
            *t = (*t).max(*ts);
        }
        let mut v: Vec<Millis> = by.into_values().collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    };
    let mut count = |i: usize, stored: &mut Stored, out: &mut Vec<(usize, Decision)>| {
        let (p, e) = &events[i];
        if seen.contains(e.event_id.as_str()) {
            out.push((i, Decision::Duplicate));
            return;
        }
        let late = latest(stored, *p)
            .get(1)
            .is_some_and(|second| e.ts < second - settings.lateness_ms);
        if !late && let Some(&(lo, hi)) = spans.get(e.stream_id.as_str()) {
            let w = settings.bucket_ms;
            let buckets = hi.max(e.ts).div_euclid(w) - lo.min(e.ts).div_euclid(w) + 1;
            if buckets > earshot_core::MAX_BUCKETS_PER_STREAM {
                out.push((i, Decision::Rejected));
                return;
            }
        }
        seen.insert(e.event_id.as_str());
        stored.entry(*p).or_default().push((e.ts, witness(e)));
        if late {
            out.push((i, Decision::Late));
        } else {
            let span = spans.entry(e.stream_id.as_str()).or_insert((e.ts, e.ts));
            *span = (span.0.min(e.ts), span.1.max(e.ts));
            out.push((i, Decision::Counted));
        }
    };
    let newest = |stored: &Stored, p: u32| latest(stored, p).first().copied();
    let jump = |stored: &Stored, p: u32, ts: Millis| {
        let witnesses = latest(stored, p).len();
        match newest(stored, p) {
            None => true,
            // One witness so far: either direction needs another.
            Some(n) if witnesses < 2 => (ts - n).abs() > j,
            Some(n) => ts > n + j,
        }
    };
    let agree = |a: usize, b: usize| {
        events[a].1.event_id != events[b].1.event_id
            && witness(&events[a].1) != witness(&events[b].1)
            && (events[a].1.ts - events[b].1.ts).abs() <= j
    };
    // Decides what can be decided among a partition's waiting events.
    let mut settle = |p: u32,
                      at_end: bool,
                      stored: &mut Stored,
                      waiting: &mut Vec<usize>,
                      out: &mut Vec<(usize, Decision)>| {
        while let Some(&head) = waiting.first() {
            let ts = events[head].1.ts;
            let counts = !jump(stored, p, ts) || waiting[1..].iter().any(|&k| agree(head, k));
            if counts {
                waiting.remove(0);
                count(head, stored, out);
                continue;
            }
            let shown_elsewhere = (1..waiting.len()).any(|a| {
                !jump(stored, p, events[waiting[a]].1.ts)
                    || waiting[a + 1..].iter().any(|&b| agree(waiting[a], b))
            });
            if shown_elsewhere {
                waiting.remove(0);
                out.push((head, Decision::Rejected));
            } else if at_end || waiting.len() > 16 {
                waiting.remove(0);
                // With no stored event, witnesses cannot decide: events do, as in v1.1.
                let near = |a: usize, b: usize| {
                    events[a].1.event_id != events[b].1.event_id
                        && (events[a].1.ts - events[b].1.ts).abs() <= j
                };
                let confirmed = waiting.iter().any(|&k| near(head, k));
                let elsewhere = (0..waiting.len())
                    .any(|a| waiting[a + 1..].iter().any(|&b| near(waiting[a], b)));
                if newest(stored, p).is_some() || (!confirmed && elsewhere) {
                    out.push((head, Decision::Rejected));
                } else {
                    count(head, stored, out);
                }
            } else {
                return;
            }
        }
    };
    for (i, (p, _)) in events.iter().enumerate() {
        let queue = waiting.entry(*p).or_default();
        queue.push(i);
        settle(*p, false, &mut stored, queue, &mut out);
    }
    for (p, queue) in waiting.iter_mut() {
        settle(*p, true, &mut stored, queue, &mut out);
    }
    out
}

struct Session {
    id: String,
    listener: ListenerKey,
    join: Millis,
    end: Option<Millis>,
    end_type: Option<EndType>,
    end_reason: Option<String>,
    alive: Vec<Millis>,
    heartbeats: u64,
    client: Option<String>,
    region: Option<String>,
}

impl Session {
    fn from_events(id: &str, evs: &[&Counted]) -> Session {
        let by_order = |c: &&&Counted| (c.event.ts, c.arrival);
        let first = evs
            .iter()
            .min_by_key(by_order)
            .expect("a session has an event");
        let end_event = evs
            .iter()
            .filter(|c| matches!(c.event.kind, EventType::Leave | EventType::Drop))
            .min_by_key(by_order);
        let end = end_event.map(|c| c.event.ts);
        let alive: Vec<Millis> = evs
            .iter()
            .filter(|c| matches!(c.event.kind, EventType::Connect | EventType::Heartbeat))
            .map(|c| c.event.ts)
            .filter(|t| end.is_none_or(|e| *t < e))
            .collect();
        Session {
            id: id.to_owned(),
            listener: first
                .event
                .listener_key
                .expect("session events have a listener"),
            join: evs.iter().map(|c| c.event.ts).min().unwrap_or_default(),
            end,
            end_type: end_event.map(|c| {
                if c.event.kind == EventType::Leave {
                    EndType::Leave
                } else {
                    EndType::Drop
                }
            }),
            end_reason: end_event.and_then(|c| c.event.reason.as_deref().map(str::to_owned)),
            alive,
            heartbeats: evs
                .iter()
                .filter(|c| c.event.kind == EventType::Heartbeat)
                .count() as u64,
            // Like the listener, client and region are those of the session's earliest event.
            client: first.event.client.as_deref().map(str::to_owned),
            region: first.event.region.as_deref().map(str::to_owned),
        }
    }

    fn on_roster(&self, t: Millis) -> bool {
        self.join <= t && self.end.is_none_or(|e| t < e)
    }

    fn connect_ts(&self) -> Option<Millis> {
        self.alive.iter().copied().min()
    }

    fn connected(&self, t: Millis, liveness: i64) -> bool {
        let Some(c) = self.connect_ts() else {
            return false;
        };
        if t < c || self.end.is_some_and(|e| t >= e) {
            return false;
        }
        let latest = self.alive.iter().copied().filter(|a| *a <= t).max();
        latest.is_some_and(|a| t < a + liveness)
    }

    /// Every instant at which this session's roster or connected status can change.
    fn change_points(&self, liveness: i64) -> Vec<Millis> {
        let mut v = vec![self.join];
        v.extend(self.end);
        for a in &self.alive {
            v.push(*a);
            v.push(a + liveness);
        }
        v
    }
}

/// Measure of the set of instants where `pred` holds, given every instant where it can change.
fn measure(points: &mut Vec<Millis>, pred: impl Fn(Millis) -> bool) -> i64 {
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .filter(|w| pred(w[0]))
        .map(|w| w[1] - w[0])
        .sum()
}

/// The library's estimate of a set's sketch.
fn estimate_of(listeners: &BTreeSet<ListenerKey>) -> i64 {
    let mut s = Sketch::new();
    for l in listeners {
        s.insert(&l.0);
    }
    s.count() as i64
}

/// The sketch of a set, built by the library's inserts (never by the byte-level union).
fn sketch_of(listeners: &BTreeSet<ListenerKey>) -> Vec<u8> {
    let mut s = Sketch::new();
    for l in listeners {
        s.insert(&l.0);
    }
    s.to_bytes()
}

fn nearest_rank(sorted: &[i64], p: usize) -> Option<i64> {
    // The smallest value with at least p % of values at or below it.
    sorted
        .iter()
        .copied()
        .find(|v| sorted.iter().filter(|x| *x <= v).count() * 100 >= p * sorted.len())
}

/// The tables for `events` (offered in this order, each with its partition) at end of input.
pub fn reference(events: &[(u32, Event)], settings: &Settings) -> (Snapshot, Tally) {
    let mut tally = Tally::default();
    let mut counted: Vec<Counted> = Vec::new();
    for (order, (i, decision)) in classify(events, settings).into_iter().enumerate() {
        match decision {
            Decision::Duplicate => tally.duplicates += 1,
            Decision::Late => tally.late += 1,
            Decision::Rejected => {}
            Decision::Counted => {
                tally.counted += 1;
                counted.push(Counted {
                    arrival: order,
                    event: events[i].1.clone(),
                });
            }
        }
    }
    let l = settings.liveness_ms;
    let w = settings.bucket_ms;
    let mut by_stream: BTreeMap<&str, Vec<&Counted>> = BTreeMap::new();
    for c in &counted {
        by_stream
            .entry(c.event.stream_id.as_str())
            .or_default()
            .push(c);
    }
    let mut snap = Snapshot::default();
    for (stream_id, evs) in by_stream {
        let mut by_session: BTreeMap<&str, Vec<&Counted>> = BTreeMap::new();
        for c in &evs {
            if let Some(s) = c.event.session_id.as_deref()
                && c.event.kind.is_session()
            {
                by_session.entry(s).or_default().push(c);
            }
        }
        let sessions: Vec<Session> = by_session
            .iter()
            .map(|(id, evs)| Session::from_events(id, evs))
            .collect();
        let displays: Vec<(Millis, i64)> = evs
            .iter()
            .filter(|c| c.event.kind == EventType::Display)
            .map(|c| (c.event.ts, c.event.displayed.unwrap_or_default()))
            .collect();
        let displayed = |t: Millis| -> Option<i64> {
            let latest = displays.iter().map(|d| d.0).filter(|d| *d <= t).max()?;
            displays.iter().filter(|d| d.0 == latest).map(|d| d.1).max()
        };
        let roster = |t: Millis| sessions.iter().filter(|s| s.on_roster(t)).count() as i64;
        let connected = |t: Millis| sessions.iter().filter(|s| s.connected(t, l)).count() as i64;
        let all_points: Vec<Millis> = sessions.iter().flat_map(|s| s.change_points(l)).collect();

        let first = evs.iter().map(|c| c.event.ts).min().unwrap_or_default();
        let last = evs.iter().map(|c| c.event.ts).max().unwrap_or_default();
        // The row of the window [lo, hi), evaluated at its start and at every change point in it.
        let window = |lo: Millis, hi: Millis, start: Millis, width: i64| -> BucketRow {
            let instants: Vec<Millis> = std::iter::once(lo)
                .chain(all_points.iter().copied().filter(|t| *t > lo && *t < hi))
                .collect();
            let count = |k: EventType| {
                evs.iter()
                    .filter(|c| c.event.kind == k && c.event.ts >= lo && c.event.ts < hi)
                    .count() as i64
            };
            let present: BTreeSet<ListenerKey> = sessions
                .iter()
                .filter(|s| instants.iter().any(|t| s.on_roster(*t)))
                .map(|s| s.listener)
                .collect();
            let connected_set: BTreeSet<ListenerKey> = sessions
                .iter()
                .filter(|s| instants.iter().any(|t| s.connected(*t, l)))
                .map(|s| s.listener)
                .collect();
            BucketRow {
                stream_id: stream_id.to_owned(),
                bucket_start: start,
                width_ms: width,
                displayed_start: displayed(lo),
                roster_start: roster(lo),
                roster_peak: instants.iter().map(|t| roster(*t)).max().unwrap_or(0),
                connected_start: connected(lo),
                connected_peak: instants.iter().map(|t| connected(*t)).max().unwrap_or(0),
                joins: count(EventType::Join),
                connects: count(EventType::Connect),
                leaves: count(EventType::Leave),
                drops: count(EventType::Drop),
                present_hll: sketch_of(&present).into(),
                connected_hll: sketch_of(&connected_set).into(),
                present_listeners: estimate_of(&present),
                connected_listeners: estimate_of(&connected_set),
                is_final: true,
            }
        };
        let (mut peak_roster, mut peak_connected) = (0, 0);
        let (lo, hi) = (first.div_euclid(w) * w, (last.div_euclid(w) + 1) * w);
        let mut b = lo;
        while b < hi {
            let row = window(b, b + w, b, w);
            peak_roster = peak_roster.max(row.roster_peak);
            peak_connected = peak_connected.max(row.connected_peak);
            snap.buckets.push(row);
            b += w;
        }
        // Rollups: the buckets again, then the same definitions over each whole minute or hour,
        // clipped to the buckets.
        snap.rollups.extend(
            snap.buckets
                .iter()
                .filter(|b| b.stream_id == stream_id)
                .cloned(),
        );
        for width in earshot_core::ROLLUP_WIDTHS_MS {
            if width <= w || width % w != 0 {
                continue;
            }
            let mut s = lo.div_euclid(width) * width;
            while s < hi {
                snap.rollups
                    .push(window(s.max(lo), (s + width).min(hi), s, width));
                s += width;
            }
        }

        let listeners: BTreeSet<ListenerKey> = sessions.iter().map(|s| s.listener).collect();
        let ever_connected: BTreeSet<ListenerKey> = sessions
            .iter()
            .filter(|s| s.connect_ts().is_some())
            .map(|s| s.listener)
            .collect();
        // Of the listeners ever connected (so the count never exceeds listeners_connected, even when
        // M = 0): those whose connected time, over all their sessions, reaches M.
        let long_listeners = ever_connected
            .iter()
            .filter(|lk| {
                let mine: Vec<&Session> = sessions.iter().filter(|s| s.listener == **lk).collect();
                let mut pts: Vec<Millis> = mine.iter().flat_map(|s| s.change_points(l)).collect();
                measure(&mut pts, |t| mine.iter().any(|s| s.connected(t, l)))
                    >= settings.min_listen_ms
            })
            .count() as i64;
        let mut ttfa: Vec<i64> = sessions
            .iter()
            .filter_map(|s| s.connect_ts().map(|c| c - s.join))
            .collect();
        ttfa.sort_unstable();
        let live_state = evs
            .iter()
            .filter(|c| c.event.state == Some(StreamState::Live))
            .map(|c| c.event.ts)
            .min();
        let live_at = live_state.or(sessions.iter().filter_map(|s| s.connect_ts()).min());
        let scheduled = evs
            .iter()
            .filter(|c| c.event.scheduled_start.is_some())
            .map(|c| (c.event.ts, c.event.scheduled_start))
            .max()
            .and_then(|(_, s)| s);
        let failed = sessions.iter().filter(|s| s.connect_ts().is_none());
        snap.streams.push(StreamRow {
            stream_id: stream_id.to_owned(),
            scheduled_start: scheduled,
            live_at,
            start_delay_ms: live_at.zip(scheduled).map(|(a, b)| a - b),
            first_event: first,
            last_event: last,
            sessions: sessions.len() as i64,
            peak_displayed: displays.iter().map(|d| d.1).max(),
            peak_roster,
            peak_connected,
            listeners_joined: listeners.len() as i64,
            listeners_connected: ever_connected.len() as i64,
            listeners_connected_60s: long_listeners,
            failed_joins: failed.clone().count() as i64,
            abandoned_before_audio: failed.clone().filter(|s| s.end.is_some()).count() as i64,
            ghost_sessions: failed.filter(|s| s.end.is_none()).count() as i64,
            ttfa_ms_p50: nearest_rank(&ttfa, 50),
            ttfa_ms_p90: nearest_rank(&ttfa, 90),
            joined_hll: sketch_of(&listeners),
            connected_hll: sketch_of(&ever_connected),
        });
        for s in &sessions {
            let mut pts = s.change_points(l);
            snap.sessions.push(SessionRow {
                stream_id: stream_id.to_owned(),
                session_id: s.id.clone(),
                listener_key: s.listener,
                join_ts: s.join,
                connect_ts: s.connect_ts(),
                end_ts: s.end,
                end_type: s.end_type,
                end_reason: s.end_reason.clone(),
                listened_ms: measure(&mut pts, |t| s.connected(t, l)),
                heartbeats: s.heartbeats,
                client: s.client.clone(),
                region: s.region.clone(),
            });
        }
    }
    (snap, tally)
}
