//! Incremental figures: a stream's `streams` row and `buckets` rows kept current as events arrive,
//! so that a publish costs what changed since the last one, not the size of the event.
//!
//! The session state of [`crate::session`] stays the one truth. Each time an event changes a
//! session, the session's [`Footprint`] (join, end, listener, connected intervals) before and after
//! is compared, and only the difference is applied:
//!
//! - **roster and connected** are step functions: their change points live in ordered maps, and a
//!   publish re-sweeps the buckets from the earliest changed point on (`dirty_from`), starting from
//!   the value each bucket stored before its start;
//! - **sketches** only grow: added buckets get the listener inserted. A session that leaves buckets
//!   (its end arrived after the stream moved on, or a late event named another listener) marks them
//!   for a rebuild, and the publish refills those buckets from the sessions that can touch them (the
//!   open and recently ended ones, `recent`), through segment trees over the refilled range. New
//!   buckets get every open session (present: one sketch of them, copied into each) and every
//!   session whose connected interval reaches into them (`reach`) when the stream first moves into
//!   them: that is the one cost proportional to the audience, once per move;
//! - **listener figures** (distinct joined, connected, connected ≥ M) are kept per listener, from
//!   the listener's sessions; session classes, time-to-first-audio and the earliest connect are
//!   counters and ordered multisets.
//!
//! Buckets older than the horizon (the newest event minus twice the lateness and the liveness, and
//! no later than the oldest partition watermark, under which no event counts) keep
//! only their serialized row: their change points are dropped and their sketches freed. An event
//! that would change one of them (a partition far behind, a new partition with old events) sets
//! `full_rebuild`, and the next publish rebuilds this stream's incremental state from every session,
//! which is always correct, only slower. The property tests compare every publish with
//! [`crate::Engine::snapshot`] on random adversarial streams.

mod state;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use earshot_contract::{ListenerKey, Millis};
use earshot_sketch::Sketch;

use crate::session::{SessionAcc, Sessions};
use crate::{FastHash, RangeSketches, Settings};

/// A rebuild from every session gathers what they contribute and builds the structures at once:
/// sorting a few million change points once is far cheaper than as many ordered-map inserts, and a
/// range insert into a segment tree of sketches ([`RangeSketches`]) far cheaper than one insert per
/// bucket per session.
#[derive(Debug)]
struct Bulk {
    /// Present, connected.
    sketches: [RangeSketches; 2],
    /// Roster, connected change points.
    changes: [Vec<(Millis, i64)>; 2],
    ttfa: Vec<i64>,
    connects: Vec<i64>,
}

impl Bulk {
    fn new(buckets: usize) -> Bulk {
        Bulk {
            sketches: [RangeSketches::new(buckets), RangeSketches::new(buckets)],
            changes: [Vec::new(), Vec::new()],
            ttfa: Vec::new(),
            connects: Vec::new(),
        }
    }
}

/// Change points summed per instant (none that sum to zero), as [`add_change`] keeps them.
fn change_map(mut v: Vec<(Millis, i64)>) -> BTreeMap<Millis, i64> {
    v.sort_unstable_by_key(|c| c.0);
    let mut out: Vec<(Millis, i64)> = Vec::with_capacity(v.len());
    for (t, d) in v {
        match out.last_mut() {
            Some(last) if last.0 == t => last.1 += d,
            _ => out.push((t, d)),
        }
    }
    out.retain(|c| c.1 != 0);
    out.into_iter().collect()
}

/// A multiset as [`add_one`] keeps it.
fn multiset(mut v: Vec<i64>) -> BTreeMap<i64, u32> {
    v.sort_unstable();
    let mut out: Vec<(i64, u32)> = Vec::new();
    for x in v {
        match out.last_mut() {
            Some(last) if last.0 == x => last.1 += 1,
            _ => out.push((x, 1)),
        }
    }
    out.into_iter().collect()
}

/// What one session contributes to the figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Footprint {
    pub join: Millis,
    pub end: Option<Millis>,
    pub listener: ListenerKey,
    pub connected: Vec<(Millis, Millis)>,
}

impl Footprint {
    pub fn of(s: &SessionAcc) -> Footprint {
        Footprint {
            join: s.first.0,
            end: s.end_ts(),
            listener: s.listener,
            connected: s.connected().collect(),
        }
    }

    /// On the roster for a while: a session that ends at (or before) its join never is.
    fn on_roster(&self) -> bool {
        self.end.is_none_or(|e| e > self.join)
    }

    fn roster_changes(&self) -> Vec<(Millis, i64)> {
        let mut v = Vec::with_capacity(2);
        if self.on_roster() {
            v.push((self.join, 1));
            if let Some(e) = self.end {
                v.push((e, -1));
            }
        }
        v
    }

    fn connected_changes(&self) -> Vec<(Millis, i64)> {
        let mut v = Vec::with_capacity(2 * self.connected.len());
        for &(a, b) in &self.connected {
            v.push((a, 1));
            v.push((b, -1));
        }
        v.sort_unstable();
        v
    }

    /// Buckets it is present in, inclusive; an open session reaches `i64::MAX`.
    fn present(&self, w: i64) -> Vec<(i64, i64)> {
        if !self.on_roster() {
            return Vec::new();
        }
        let last = self.end.map_or(i64::MAX, |e| (e - 1).div_euclid(w));
        vec![(self.join.div_euclid(w), last)]
    }

    /// Buckets it is connected in, as sorted disjoint inclusive ranges.
    fn connected_buckets(&self, w: i64) -> Vec<(i64, i64)> {
        let mut out: Vec<(i64, i64)> = Vec::with_capacity(self.connected.len());
        for &(a, b) in &self.connected {
            let (x, y) = (a.div_euclid(w), (b - 1).div_euclid(w));
            match out.last_mut() {
                Some(last) if x <= last.1.saturating_add(1) => last.1 = last.1.max(y),
                _ => out.push((x, y)),
            }
        }
        out
    }

    fn connect_ts(&self) -> Option<Millis> {
        self.connected.first().map(|c| c.0)
    }

    /// 0: connected at some point; 1: ended before audio (abandoned); 2: neither (a ghost).
    fn class(&self) -> usize {
        match (self.connect_ts(), self.end) {
            (Some(_), _) => 0,
            (None, Some(_)) => 1,
            (None, None) => 2,
        }
    }

    fn ttfa(&self) -> Option<i64> {
        self.connect_ts().map(|c| c - self.join)
    }
}

/// `a` minus `b`, both sorted disjoint inclusive ranges.
fn minus(a: &[(i64, i64)], b: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    for &(x, y) in a {
        let mut cur = x;
        let mut done = false;
        for &(p, q) in b {
            if q < cur || done {
                continue;
            }
            if p > y {
                break;
            }
            if p > cur {
                out.push((cur, p - 1));
            }
            if q >= y {
                done = true;
            } else {
                cur = q + 1;
            }
        }
        if !done && cur <= y {
            out.push((cur, y));
        }
    }
    out
}

type Changes = Vec<(Millis, i64)>;

/// Removes the common elements of two sorted lists; what is left of each is returned.
fn diff(before: &[(Millis, i64)], after: &[(Millis, i64)]) -> (Changes, Changes) {
    let (mut i, mut j) = (0, 0);
    let (mut gone, mut new) = (Vec::new(), Vec::new());
    while i < before.len() || j < after.len() {
        match (before.get(i), after.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x < y => {
                gone.push(*x);
                i += 1;
            }
            (Some(_), Some(y)) => {
                new.push(*y);
                j += 1;
            }
            (Some(x), None) => {
                gone.push(*x);
                i += 1;
            }
            (None, Some(y)) => {
                new.push(*y);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (gone, new)
}

fn add_change(map: &mut BTreeMap<Millis, i64>, t: Millis, d: i64) {
    let v = map.entry(t).or_insert(0);
    *v += d;
    if *v == 0 {
        map.remove(&t);
    }
}

fn add_one(set: &mut BTreeMap<i64, u32>, v: i64) {
    *set.entry(v).or_insert(0) += 1;
}

fn remove_one(set: &mut BTreeMap<i64, u32>, v: i64) {
    if let Some(n) = set.get_mut(&v) {
        *n -= 1;
        if *n == 0 {
            set.remove(&v);
        }
    }
}

/// Nearest-rank percentile of a multiset (see [`crate::nearest_rank`]).
fn rank(set: &BTreeMap<i64, u32>, total: u64, p: u32) -> Option<i64> {
    if total == 0 {
        return None;
    }
    let want = (u64::from(p) * total).div_ceil(100).max(1);
    let mut seen = 0u64;
    for (&v, &n) in set {
        seen += u64::from(n);
        if seen >= want {
            return Some(v);
        }
    }
    None
}

fn hash(l: &ListenerKey) -> u64 {
    earshot_sketch::hash_bytes(&l.0)
}

/// One bucket's incremental state.
#[derive(Debug)]
struct Row {
    present: Sketch,
    connected: Sketch,
    /// Roster and connected just before the bucket's start (every change earlier than it).
    roster_before: i64,
    connected_before: i64,
    roster: (i64, i64),
    connected_now: (i64, i64),
    displayed: Option<i64>,
    /// The serialized sketches and their estimates; `None` once a sketch changed.
    bytes: Option<Box<Serialized>>,
}

#[derive(Debug)]
struct Serialized {
    present_hll: std::sync::Arc<[u8]>,
    connected_hll: std::sync::Arc<[u8]>,
    present_listeners: i64,
    connected_listeners: i64,
}

impl Row {
    fn new() -> Row {
        Row {
            present: Sketch::new(),
            connected: Sketch::new(),
            roster_before: 0,
            connected_before: 0,
            roster: (0, 0),
            connected_now: (0, 0),
            displayed: None,
            bytes: None,
        }
    }
}

/// One listener: its sessions, and whether it counts as connected and as connected ≥ M.
#[derive(Debug)]
struct Listener {
    first: u32,
    // Boxed so that a listener with one session (most) costs 8 bytes here, not 24.
    #[allow(clippy::box_collection)]
    more: Option<Box<Vec<u32>>>,
    connected: bool,
    qualified: bool,
}

impl Listener {
    fn members(&self) -> impl Iterator<Item = u32> + '_ {
        std::iter::once(self.first).chain(self.more.iter().flat_map(|m| m.iter().copied()))
    }
}

/// What a publish needs from the stream besides its sessions.
pub(crate) struct Context<'a> {
    pub sessions: &'a Sessions,
    pub first_event: Millis,
    pub last_event: Millis,
    /// The oldest watermark among the partitions that have one: no counted event is older.
    pub floor: Option<Millis>,
}

/// The incremental state of one stream.
#[derive(Debug)]
pub(crate) struct Live {
    settings: Settings,
    w: i64,
    min_listen_ms: i64,
    /// How far behind the newest event the horizon stays.
    margin: i64,
    /// Bucket index of `rows[0]`.
    b0: i64,
    rows: VecDeque<Row>,
    roster: BTreeMap<Millis, i64>,
    connected: BTreeMap<Millis, i64>,
    /// Latest `displayed` at each `ts` (the largest, on a tie).
    displays: BTreeMap<Millis, i64>,
    /// Bucket-aligned: change points before it are folded into the rows and dropped, and `recent`
    /// holds every session that can touch a bucket from here on.
    horizon: Millis,
    dirty_from: Option<Millis>,
    /// Rows before this bucket index have been swept (their values before their start are
    /// known); rows added after the last since are not.
    swept_end: i64,
    rebuild: BTreeSet<i64>,
    open: HashSet<u32, FastHash>,
    reach: HashSet<u32, FastHash>,
    /// Sessions changed since the horizon last moved, or open, or ended after it (a set: a
    /// session changes at every heartbeat).
    recent: HashSet<u32, FastHash>,
    listeners: HashMap<ListenerKey, Listener, FastHash>,
    listeners_connected: i64,
    listeners_qualified: i64,
    /// Sessions by [`Footprint::class`].
    classes: [i64; 3],
    ttfa: BTreeMap<i64, u32>,
    ttfa_count: u64,
    connects: BTreeMap<Millis, u32>,
    joined: Sketch,
    connected_all: Sketch,
    listener_sketches_stale: bool,
    full_rebuild: bool,
    stats: crate::LiveStats,
    /// While rebuilding from every session: what the sessions contribute, gathered and turned into
    /// the ordered maps and the rows' sketches at the end (see [`Bulk`]).
    bulk: Option<Box<Bulk>>,
}

/// What a publish gives for one stream.
pub(crate) struct Figures {
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
    pub earliest_connect: Option<Millis>,
    pub joined_hll: Vec<u8>,
    pub connected_hll: Vec<u8>,
}

/// One bucket as a publish gives it (the stream adds its id, counts and finality).
pub(crate) struct BucketFigures<'a> {
    pub start: Millis,
    pub displayed_start: Option<i64>,
    pub roster: (i64, i64),
    pub connected: (i64, i64),
    pub present_hll: &'a std::sync::Arc<[u8]>,
    pub connected_hll: &'a std::sync::Arc<[u8]>,
    pub present_listeners: i64,
    pub connected_listeners: i64,
}

impl Live {
    /// Empty state that rebuilds itself from the stream's sessions at the first publish.
    pub fn new(settings: &Settings) -> Live {
        let w = settings.bucket_ms;
        Live {
            settings: *settings,
            w,
            min_listen_ms: settings.min_listen_ms,
            margin: 2 * (settings.lateness_ms + settings.liveness_ms) + 2 * w,
            b0: 0,
            rows: VecDeque::new(),
            roster: BTreeMap::new(),
            connected: BTreeMap::new(),
            displays: BTreeMap::new(),
            horizon: Millis::MIN,
            dirty_from: None,
            swept_end: i64::MIN,
            rebuild: BTreeSet::new(),
            open: HashSet::default(),
            reach: HashSet::default(),
            recent: HashSet::default(),
            listeners: HashMap::default(),
            listeners_connected: 0,
            listeners_qualified: 0,
            classes: [0; 3],
            ttfa: BTreeMap::new(),
            ttfa_count: 0,
            connects: BTreeMap::new(),
            joined: Sketch::new(),
            connected_all: Sketch::new(),
            listener_sketches_stale: false,
            full_rebuild: true,
            stats: crate::LiveStats::default(),
            bulk: None,
        }
    }

    fn b1(&self) -> i64 {
        self.b0 + self.rows.len() as i64 - 1
    }

    fn start(&self, k: i64) -> Millis {
        k.saturating_mul(self.w)
    }

    fn mark_dirty(&mut self, t: Millis) {
        self.dirty_from = Some(self.dirty_from.map_or(t, |d| d.min(t)));
    }

    fn row(&mut self, k: i64) -> &mut Row {
        &mut self.rows[(k - self.b0) as usize]
    }

    /// A `display` sample.
    pub fn display(&mut self, ts: Millis, displayed: i64) {
        let d = self.displays.entry(ts).or_insert(displayed);
        *d = (*d).max(displayed);
        self.mark_dirty(ts);
    }

    /// The stream now spans `first..=last`: buckets are added at either end. A bucket added after
    /// the last gets every open session and every connected interval reaching into it.
    pub fn extend(&mut self, first: Millis, last: Millis, sessions: &Sessions) {
        if self.full_rebuild {
            return;
        }
        let (f, l) = (first.div_euclid(self.w), last.div_euclid(self.w));
        if self.rows.is_empty() {
            self.b0 = f;
            self.rows.push_back(Row::new());
            self.mark_dirty(self.start(f));
        }
        while self.b0 > f {
            self.rows.push_front(Row::new());
            self.b0 -= 1;
            self.mark_dirty(self.start(self.b0));
        }
        if self.b1() >= l {
            return;
        }
        let from = self.b1() + 1;
        for _ in from..=l {
            self.rows.push_back(Row::new());
        }
        self.mark_dirty(self.start(from));
        let w = self.w;
        // Every open session is present in every new bucket: one sketch of them, copied into
        // each (a jump of twelve buckets at 1M listeners was twelve million inserts).
        if !self.open.is_empty() {
            let mut open = Sketch::new();
            for &i in &self.open {
                open.insert_hash(hash(&sessions.get(i).listener));
            }
            for row in self.rows.range_mut((from - self.b0) as usize..) {
                row.present = open.clone();
            }
        }
        let mut done = Vec::new();
        for &i in &self.reach {
            let fp = Footprint::of(sessions.get(i));
            let h = hash(&fp.listener);
            let ranges = fp.connected_buckets(w);
            for &(x, y) in &ranges {
                for k in x.max(from)..=y.min(l) {
                    self.rows[(k - self.b0) as usize].connected.insert_hash(h);
                }
            }
            if ranges.last().is_none_or(|r| r.1 <= l) {
                done.push(i);
            }
        }
        for i in done {
            self.reach.remove(&i);
        }
    }

    /// Session `i` changed from `before` (`None`: it is new) to its current state.
    pub fn change(&mut self, i: u32, before: Option<&Footprint>, sessions: &Sessions) {
        if self.full_rebuild {
            return;
        }
        let after = Footprint::of(sessions.get(i));
        if before == Some(&after) {
            return;
        }
        self.apply(i, before, &after, sessions);
    }

    fn apply(
        &mut self,
        i: u32,
        before: Option<&Footprint>,
        after: &Footprint,
        sessions: &Sessions,
    ) {
        let w = self.w;
        // Step functions.
        let empty = Vec::new();
        for (before_changes, after_changes, is_roster) in [
            (
                before.map(Footprint::roster_changes),
                after.roster_changes(),
                true,
            ),
            (
                before.map(Footprint::connected_changes),
                after.connected_changes(),
                false,
            ),
        ] {
            let (gone, new) = diff(before_changes.as_ref().unwrap_or(&empty), &after_changes);
            let mut earliest: Option<Millis> = None;
            for (t, d) in gone
                .iter()
                .map(|&(t, d)| (t, -d))
                .chain(new.iter().copied())
            {
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
                match &mut self.bulk {
                    Some(bulk) => bulk.changes[usize::from(!is_roster)].push((t, d)),
                    None if is_roster => add_change(&mut self.roster, t, d),
                    None => add_change(&mut self.connected, t, d),
                }
            }
            if let Some(t) = earliest {
                self.mark_dirty(t);
            }
        }

        // Sketches: buckets gained get the listener; buckets lost are rebuilt at the publish.
        let (b0, b1) = (self.b0, self.b1());
        let h = hash(&after.listener);
        let same = before.is_some_and(|b| b.listener == after.listener);
        let (bp, bc) = before.map_or((Vec::new(), Vec::new()), |b| {
            (b.present(w), b.connected_buckets(w))
        });
        let (ap, ac) = (after.present(w), after.connected_buckets(w));
        let (gained_p, gained_c, lost) = if same {
            let mut lost = minus(&bp, &ap);
            lost.extend(minus(&bc, &ac));
            (minus(&ap, &bp), minus(&ac, &bc), lost)
        } else {
            let mut lost = bp.clone();
            lost.extend(bc.iter().copied());
            (ap.clone(), ac.clone(), lost)
        };
        for (x, y) in lost {
            for k in x.max(b0)..=y.min(b1) {
                self.rebuild.insert(k);
            }
        }
        for (ranges, present) in [(gained_p, true), (gained_c, false)] {
            for (x, y) in ranges {
                let (lo, hi) = (x.max(b0), y.min(b1));
                if let Some(bulk) = &mut self.bulk {
                    if lo <= hi {
                        let (lo, hi) = ((lo - b0) as usize, (hi - b0) as usize);
                        bulk.sketches[usize::from(!present)].insert(lo, hi, h);
                    }
                    continue;
                }
                for k in lo..=hi {
                    let row = &mut self.rows[(k - b0) as usize];
                    if present {
                        row.present.insert_hash(h);
                    } else {
                        row.connected.insert_hash(h);
                    }
                    row.bytes = None;
                }
            }
        }
        if after.end.is_none() {
            self.open.insert(i);
        } else {
            self.open.remove(&i);
        }
        if ac.last().is_some_and(|r| r.1 > b1) {
            self.reach.insert(i);
        } else {
            self.reach.remove(&i);
        }
        self.recent.insert(i);

        // Sessions by class, time to first audio, earliest connect.
        if let Some(b) = before {
            self.classes[b.class()] -= 1;
            if let Some(t) = b.ttfa() {
                remove_one(&mut self.ttfa, t);
                self.ttfa_count -= 1;
            }
            if let Some(c) = b.connect_ts() {
                remove_one(&mut self.connects, c);
            }
        }
        self.classes[after.class()] += 1;
        if let Some(t) = after.ttfa() {
            match &mut self.bulk {
                Some(bulk) => bulk.ttfa.push(t),
                None => add_one(&mut self.ttfa, t),
            }
            self.ttfa_count += 1;
        }
        if let Some(c) = after.connect_ts() {
            match &mut self.bulk {
                Some(bulk) => bulk.connects.push(c),
                None => add_one(&mut self.connects, c),
            }
        }

        // Listeners.
        match before {
            Some(b) if b.listener != after.listener => {
                self.leave_listener(&b.listener, i, sessions);
                self.join_listener(after.listener, i);
            }
            Some(_) => {}
            None => self.join_listener(after.listener, i),
        }
        self.update_listener(&after.listener, sessions);
    }

    fn join_listener(&mut self, l: ListenerKey, i: u32) {
        match self.listeners.get_mut(&l) {
            Some(entry) => entry.more.get_or_insert_with(Default::default).push(i),
            None => {
                self.listeners.insert(
                    l,
                    Listener {
                        first: i,
                        more: None,
                        connected: false,
                        qualified: false,
                    },
                );
                self.joined.insert_hash(hash(&l));
            }
        }
    }

    fn leave_listener(&mut self, l: &ListenerKey, i: u32, sessions: &Sessions) {
        let Some(entry) = self.listeners.get_mut(l) else {
            return;
        };
        if entry.first == i {
            match entry.more.as_mut().and_then(|m| m.pop()) {
                Some(next) => entry.first = next,
                None => {
                    let gone = self.listeners.remove(l);
                    if let Some(g) = gone {
                        self.listeners_connected -= i64::from(g.connected);
                        self.listeners_qualified -= i64::from(g.qualified);
                    }
                    self.listener_sketches_stale = true;
                    return;
                }
            }
        } else if let Some(m) = entry.more.as_mut() {
            m.retain(|&x| x != i);
        }
        if entry.more.as_ref().is_some_and(|m| m.is_empty()) {
            entry.more = None;
        }
        self.update_listener(l, sessions);
    }

    /// Recomputes whether listener `l` is connected, and connected at least M in total (the union
    /// of its sessions' connected intervals).
    fn update_listener(&mut self, l: &ListenerKey, sessions: &Sessions) {
        let Some(entry) = self.listeners.get_mut(l) else {
            return;
        };
        let mut intervals: Vec<(Millis, Millis)> = Vec::new();
        for m in entry.members() {
            intervals.extend(sessions.get(m).connected());
        }
        intervals.sort_unstable();
        let connected = !intervals.is_empty();
        let qualified =
            connected && crate::session::union_length(intervals.into_iter()) >= self.min_listen_ms;
        if connected != entry.connected {
            if connected {
                self.listeners_connected += 1;
                self.connected_all.insert_hash(hash(l));
            } else {
                self.listeners_connected -= 1;
                self.listener_sketches_stale = true;
            }
            entry.connected = connected;
        }
        if qualified != entry.qualified {
            self.listeners_qualified += if qualified { 1 } else { -1 };
            entry.qualified = qualified;
        }
    }

    /// Starts over from the stream's sessions and displays.
    fn rebuild_all(&mut self, ctx: &Context<'_>, displays: &[(Millis, i64)]) {
        let mut stats = self.stats;
        stats.full_rebuilds += 1;
        *self = Live {
            full_rebuild: false,
            stats,
            ..Live::new(&self.settings)
        };
        self.extend(ctx.first_event, ctx.last_event, ctx.sessions);
        for &(t, d) in displays {
            self.display(t, d);
        }
        self.bulk = Some(Box::new(Bulk::new(self.rows.len())));
        for (i, s) in ctx.sessions.iter().enumerate() {
            let fp = Footprint::of(s);
            self.apply(i as u32, None, &fp, ctx.sessions);
        }
        if let Some(bulk) = self.bulk.take() {
            // Everything here is new (the state was emptied above, and no session had been
            // applied): the gathered values are the structures.
            let Bulk {
                sketches: [present, connected],
                changes: [roster, connected_changes],
                ttfa,
                connects,
            } = *bulk;
            let leaves = present
                .into_leaves()
                .into_iter()
                .zip(connected.into_leaves());
            for (row, (p, c)) in self.rows.iter_mut().zip(leaves) {
                row.present = p;
                row.connected = c;
                row.bytes = None;
            }
            self.roster = change_map(roster);
            self.connected = change_map(connected_changes);
            self.ttfa = multiset(ttfa);
            self.connects = multiset(connects);
        }
    }

    /// Brings every figure up to date and hands out the bucket rows and the stream's figures.
    pub fn publish(
        &mut self,
        ctx: &Context<'_>,
        displays: &[(Millis, i64)],
        mut each_bucket: impl FnMut(BucketFigures<'_>),
    ) -> Figures {
        self.stats.publishes += 1;
        let horizon_bucket = self.horizon.div_euclid(self.w);
        if self.full_rebuild
            || self.dirty_from.is_some_and(|d| d < self.horizon)
            || self.rebuild.first().is_some_and(|&k| k < horizon_bucket)
        {
            self.rebuild_all(ctx, displays);
        }
        self.refill(ctx.sessions);
        self.sweep();
        if self.listener_sketches_stale {
            self.joined = Sketch::new();
            self.connected_all = Sketch::new();
            for (l, entry) in &self.listeners {
                let h = hash(l);
                self.joined.insert_hash(h);
                if entry.connected {
                    self.connected_all.insert_hash(h);
                }
            }
            self.listener_sketches_stale = false;
        }
        let (mut peak_roster, mut peak_connected) = (0i64, 0i64);
        for (k, row) in self.rows.iter_mut().enumerate() {
            peak_roster = peak_roster.max(row.roster.1);
            peak_connected = peak_connected.max(row.connected_now.1);
            let bytes = row.bytes.get_or_insert_with(|| {
                let (present_hll, connected_hll) =
                    (row.present.to_bytes(), row.connected.to_bytes());
                Box::new(Serialized {
                    present_listeners: crate::buckets::estimate(&present_hll),
                    connected_listeners: crate::buckets::estimate(&connected_hll),
                    present_hll: present_hll.into(),
                    connected_hll: connected_hll.into(),
                })
            });
            each_bucket(BucketFigures {
                start: (self.b0 + k as i64) * self.w,
                displayed_start: row.displayed,
                roster: row.roster,
                connected: row.connected_now,
                present_hll: &bytes.present_hll,
                connected_hll: &bytes.connected_hll,
                present_listeners: bytes.present_listeners,
                connected_listeners: bytes.connected_listeners,
            });
        }
        let figures = Figures {
            peak_roster,
            peak_connected,
            listeners_joined: self.listeners.len() as i64,
            listeners_connected: self.listeners_connected,
            listeners_connected_60s: self.listeners_qualified,
            failed_joins: self.classes[1] + self.classes[2],
            abandoned_before_audio: self.classes[1],
            ghost_sessions: self.classes[2],
            ttfa_ms_p50: rank(&self.ttfa, self.ttfa_count, 50),
            ttfa_ms_p90: rank(&self.ttfa, self.ttfa_count, 90),
            earliest_connect: self.connects.keys().next().copied(),
            joined_hll: self.joined.to_bytes(),
            connected_hll: self.connected_all.to_bytes(),
        };
        self.advance_horizon(ctx);
        figures
    }

    /// Refills the sketches of the buckets some session left, from the sessions that can touch
    /// them (all of `recent`: the horizon is at or before every one of these buckets).
    fn refill(&mut self, sessions: &Sessions) {
        if self.rebuild.is_empty() {
            return;
        }
        let (b0, b1, w) = (self.b0, self.b1(), self.w);
        let todo: BTreeSet<i64> = std::mem::take(&mut self.rebuild)
            .into_iter()
            .filter(|&k| k >= b0 && k <= b1)
            .collect();
        self.stats.refilled_buckets += todo.len() as u64;
        let (Some(&lo), Some(&hi)) = (todo.first(), todo.last()) else {
            return;
        };
        // Each session's buckets go into segment trees over `lo..=hi` (O(log n) sketch inserts
        // per session, not one per bucket: during a catch-up at 1M listeners hundreds of buckets
        // were refilled from every open session at each publish), and the trees' leaves are
        // unions of bytes, as in a rebuild.
        let n = (hi - lo + 1) as usize;
        let mut trees = [RangeSketches::new(n), RangeSketches::new(n)];
        let clip = |(x, y): (i64, i64)| {
            let (x, y) = (x.max(lo), y.min(hi));
            (x <= y).then(|| ((x - lo) as usize, (y - lo) as usize))
        };
        for &i in &self.recent {
            let fp = Footprint::of(sessions.get(i));
            let h = hash(&fp.listener);
            for (x, y) in fp.present(w).into_iter().filter_map(clip) {
                trees[0].insert(x, y, h);
            }
            for (x, y) in fp.connected_buckets(w).into_iter().filter_map(clip) {
                trees[1].insert(x, y, h);
            }
        }
        let [present, connected] = trees;
        let leaves = present
            .into_leaves()
            .into_iter()
            .zip(connected.into_leaves());
        for (k, (p, c)) in (lo..).zip(leaves) {
            if todo.contains(&k) {
                let row = self.row(k);
                row.present = p;
                row.connected = c;
                row.bytes = None;
            }
        }
    }

    /// Recomputes roster, connected and displayed of every bucket from the earliest change on.
    fn sweep(&mut self) {
        let Some(from) = self.dirty_from.take() else {
            return;
        };
        let (b0, b1, w) = (self.b0, self.b1(), self.w);
        let mut k0 = from.div_euclid(w).clamp(b0, b1);
        if k0 >= self.swept_end {
            // A row never swept: start at the last one that was (its value before is known).
            k0 = self.swept_end.saturating_sub(1).clamp(b0, b1);
        }
        // Nothing changes before the stream's first bucket.
        let (mut roster, mut connected) = if k0 == b0 {
            (0, 0)
        } else {
            let r = &self.rows[(k0 - b0) as usize];
            (r.roster_before, r.connected_before)
        };
        let start0 = k0 * w;
        let mut shown = self.displays.range(..=start0).next_back().map(|(_, &d)| d);
        let mut displays = self.displays.range(start0 + 1..).peekable();
        let mut rs = self.roster.range(start0..).peekable();
        let mut cs = self.connected.range(start0..).peekable();
        for k in k0..=b1 {
            let start = k * w;
            let row = &mut self.rows[(k - b0) as usize];
            row.roster_before = roster;
            row.connected_before = connected;
            row.roster = bucket(&mut rs, &mut roster, start, start + w);
            row.connected_now = bucket(&mut cs, &mut connected, start, start + w);
            while let Some((_, &d)) = displays.next_if(|&(&t, _)| t <= start) {
                shown = Some(d);
            }
            row.displayed = shown;
        }
        self.swept_end = b1 + 1;
    }

    /// Moves the horizon up behind the newest event: older change points are dropped, sessions
    /// ended before it leave `recent`, and buckets before it keep only their bytes.
    fn advance_horizon(&mut self, ctx: &Context<'_>) {
        // Behind the newest event by the margin, and behind every partition's watermark, so that
        // a partition catching up from behind does not fall under it.
        let newest = ctx.last_event.saturating_sub(self.margin);
        let target = ctx
            .floor
            .map_or(newest, |f| f.min(newest))
            .div_euclid(self.w)
            .max(self.b0)
            * self.w;
        if target <= self.horizon {
            return;
        }
        self.horizon = target;
        self.roster = self.roster.split_off(&target);
        self.connected = self.connected.split_off(&target);
        let sessions = ctx.sessions;
        self.recent
            .retain(|&i| sessions.get(i).end_ts().is_none_or(|e| e > target));
        let keep_from = target.div_euclid(self.w);
        for k in self.b0..keep_from.min(self.b1() + 1) {
            let row = &mut self.rows[(k - self.b0) as usize];
            if row.bytes.is_some() {
                row.present = Sketch::new();
                row.connected = Sketch::new();
            }
        }
    }

    pub fn stats(&self) -> crate::LiveStats {
        self.stats
    }

    /// Heap bytes of the structures that grow with the audience (approximate: table entries and
    /// map nodes, not allocator overhead; sketches not counted).
    pub fn heap_bytes(&self) -> usize {
        let listener = std::mem::size_of::<(ListenerKey, Listener)>() + 1;
        self.listeners.capacity() * listener
            + (self.open.capacity() + self.reach.capacity()) * 5
            + self.recent.capacity() * 5
            + (self.roster.len() + self.connected.len()) * 24
    }
}

/// The value at `start` (every change at that instant applied) and the peak over `[start, end)`,
/// advancing `changes` and `value` past the bucket.
fn bucket<'a>(
    changes: &mut std::iter::Peekable<impl Iterator<Item = (&'a Millis, &'a i64)>>,
    value: &mut i64,
    start: Millis,
    end: Millis,
) -> (i64, i64) {
    while let Some((_, &d)) = changes.next_if(|&(&t, _)| t <= start) {
        *value += d;
    }
    let at_start = *value;
    let mut peak = at_start;
    while let Some((_, &d)) = changes.next_if(|&(&t, _)| t < end) {
        *value += d;
        peak = peak.max(*value);
    }
    (at_start, peak)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_difference() {
        assert_eq!(minus(&[(0, 10)], &[(3, 4)]), vec![(0, 2), (5, 10)]);
        assert_eq!(minus(&[(0, 10)], &[(0, 10)]), vec![]);
        assert_eq!(minus(&[(0, 10)], &[(-5, 2), (8, 20)]), vec![(3, 7)]);
        assert_eq!(minus(&[(0, i64::MAX)], &[(0, 5)]), vec![(6, i64::MAX)]);
        assert_eq!(minus(&[(0, 5)], &[(0, i64::MAX)]), vec![]);
        assert_eq!(minus(&[(0, 2), (5, 9)], &[(1, 6)]), vec![(0, 0), (7, 9)]);
        assert_eq!(minus(&[(3, 4)], &[]), vec![(3, 4)]);
    }

    #[test]
    fn list_difference() {
        let (gone, new) = diff(&[(1, 1), (5, -1)], &[(1, 1), (7, -1)]);
        assert_eq!((gone, new), (vec![(5, -1)], vec![(7, -1)]));
    }

    #[test]
    fn ranks_agree_with_nearest_rank() {
        let values = [5i64, 1, 9, 9, 3, 7, 7, 7, 2];
        let mut set = BTreeMap::new();
        for v in values {
            add_one(&mut set, v);
        }
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        for p in [1, 10, 50, 90, 99, 100] {
            assert_eq!(
                rank(&set, values.len() as u64, p),
                crate::nearest_rank(&sorted, p)
            );
        }
        assert_eq!(rank(&BTreeMap::new(), 0, 50), None);
    }
}
