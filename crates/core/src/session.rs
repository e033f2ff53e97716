//! Compact per-session state, and where it is kept.
//!
//! Memory per open session is the budget that decides whether an 8-million-listener event fits on
//! one machine, so the layout is deliberate: an 88-byte [`SessionAcc`] with no heap allocation in the
//! common case (one connected run, no end yet), stored in fixed-size chunks (no doubling slack),
//! found through an index keyed by a 128-bit digest of the session id (no string key in the table),
//! with the id bytes in an append-only arena and client/region/reason strings interned per stream.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::io;

use earshot_contract::{ListenerKey, Millis};

use crate::codec::{Dec, Enc, StateError, corrupt};
use crate::{EndType, FastHash, IdHasher};

/// Order of events inside a session: by `ts`, then by arrival.
pub(crate) type Stamp = (Millis, u64);

/// "No label".
pub(crate) const NONE: u32 = u32::MAX;

const CHUNK: usize = 4096;
const ARENA_CHUNK: usize = 1 << 20;

#[derive(Debug)]
pub(crate) struct End {
    pub at: Stamp,
    pub kind: EndType,
    pub reason: u32,
}

/// Union of the alive windows `[a, a + L)`, sorted and disjoint; one run is stored inline.
#[derive(Debug)]
pub(crate) enum Alive {
    None,
    One((Millis, Millis)),
    // Boxed so the enum stays 24 bytes (a bare Vec would make it 32): rare stalls pay the extra hop.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<(Millis, Millis)>>),
}

impl Alive {
    pub fn windows(&self) -> &[(Millis, Millis)] {
        match self {
            Alive::None => &[],
            Alive::One(w) => std::slice::from_ref(w),
            Alive::Many(v) => v,
        }
    }

    /// Adds the window `[a, b)`.
    pub fn add(&mut self, a: Millis, b: Millis) {
        match self {
            Alive::None => *self = Alive::One((a, b)),
            Alive::One((x, y)) if a <= *y && *x <= b => {
                *x = (*x).min(a);
                *y = (*y).max(b);
            }
            Alive::One(w) => {
                let mut v = vec![*w];
                insert_window(&mut v, a, b);
                *self = Alive::Many(Box::new(v));
            }
            Alive::Many(v) => insert_window(v, a, b),
        }
    }
}

fn insert_window(v: &mut Vec<(Millis, Millis)>, a: Millis, b: Millis) {
    let i = v.partition_point(|w| w.1 < a);
    let mut j = i;
    let (mut lo, mut hi) = (a, b);
    while j < v.len() && v[j].0 <= hi {
        lo = lo.min(v[j].0);
        hi = hi.max(v[j].1);
        j += 1;
    }
    v.splice(i..j, [(lo, hi)]);
}

#[derive(Debug)]
pub(crate) struct SessionAcc {
    /// The earliest event: `join_ts`, and the event that names the listener, client and region.
    pub first: Stamp,
    pub listener: ListenerKey,
    pub end: Option<Box<End>>,
    pub alive: Alive,
    /// Where the session id's bytes are in the arena.
    id: u64,
    pub heartbeats: u32,
    pub client: u32,
    pub region: u32,
}

impl SessionAcc {
    pub fn end_ts(&self) -> Option<Millis> {
        self.end.as_ref().map(|e| e.at.0)
    }

    /// Connected intervals: the alive windows cut at the session's end.
    pub fn connected(&self) -> impl Iterator<Item = (Millis, Millis)> + '_ {
        let end = self.end_ts().unwrap_or(Millis::MAX);
        self.alive
            .windows()
            .iter()
            .take_while(move |(a, _)| *a < end)
            .map(move |&(a, b)| (a, b.min(end)))
    }

    pub fn connect_ts(&self) -> Option<Millis> {
        self.connected().next().map(|(a, _)| a)
    }
}

/// Interned strings of one stream (client, region, drop reason).
#[derive(Debug, Default)]
pub(crate) struct Labels {
    names: Vec<Box<str>>,
    ids: HashMap<Box<str>, u32, FastHash>,
}

impl Labels {
    pub fn id(&mut self, s: Option<&str>) -> u32 {
        let Some(s) = s else { return NONE };
        if let Some(&i) = self.ids.get(s) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(s.into());
        self.ids.insert(s.into(), i);
        i
    }

    pub fn name(&self, id: u32) -> Option<&str> {
        self.names.get(id as usize).map(|s| &**s)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }
}

/// All sessions of one stream.
#[derive(Debug)]
pub(crate) struct Sessions {
    // Two u64 halves rather than a u128: alignment 8 keeps a table entry at 24 bytes, not 32.
    index: HashMap<(u64, u64), u32, BuildHasherDefault<IdHasher>>,
    chunks: Vec<Vec<SessionAcc>>,
    arena: Vec<String>,
    seed: u64,
}

impl Sessions {
    pub fn new() -> Sessions {
        Sessions {
            index: HashMap::default(),
            chunks: Vec::new(),
            arena: Vec::new(),
            seed: FastHash::new().0,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    fn digest(&self, id: &str) -> (u64, u64) {
        let d = xxhash_rust::xxh3::xxh3_128_with_seed(id.as_bytes(), self.seed);
        ((d >> 64) as u64, d as u64)
    }

    fn slot(&mut self, i: u32) -> &mut SessionAcc {
        let i = i as usize;
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    /// Session number `i` (numbers count up from 0 in order of creation).
    pub fn get(&self, i: u32) -> &SessionAcc {
        let i = i as usize;
        &self.chunks[i / CHUNK][i % CHUNK]
    }

    /// The session `id` and its number, created by `make` if it is new; the flag says whether
    /// it was new.
    pub fn get_or_insert(
        &mut self,
        id: &str,
        make: impl FnOnce() -> (Stamp, ListenerKey, u32, u32),
    ) -> (u32, &mut SessionAcc, bool) {
        let digest = self.digest(id);
        if let Some(&i) = self.index.get(&digest) {
            return (i, self.slot(i), false);
        }
        let location = self.store_id(id);
        let (first, listener, client, region) = make();
        let i = self.push(
            digest,
            SessionAcc {
                first,
                listener,
                end: None,
                alive: Alive::None,
                id: location,
                heartbeats: 0,
                client,
                region,
            },
        );
        (i, self.slot(i), true)
    }

    /// Adds a new session (its id already in the arena) under `digest`; its number.
    fn push(&mut self, digest: (u64, u64), s: SessionAcc) -> u32 {
        let i = self.index.len() as u32;
        self.index.insert(digest, i);
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            // The first chunk grows with its sessions (most streams of a platform's day are
            // small: a whole chunk is 352 KiB); later ones are allocated whole.
            self.chunks.push(if self.chunks.is_empty() {
                Vec::new()
            } else {
                Vec::with_capacity(CHUNK)
            });
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(s);
        }
        i
    }

    /// Moves every session of `other` (a disjoint set: no id in both) in, with each label number
    /// mapped by `label` from `other`'s labels to this stream's. Returns false, adding nothing
    /// more, at an id already here.
    pub fn absorb(&mut self, other: Sessions, mut label: impl FnMut(u32) -> u32) -> bool {
        let Sessions { chunks, arena, .. } = other;
        self.index.reserve(chunks.iter().map(Vec::len).sum());
        for mut s in chunks.into_iter().flatten() {
            let id = in_arena(&arena, s.id);
            let digest = self.digest(id);
            if self.index.contains_key(&digest) {
                return false;
            }
            s.id = self.store_id(id);
            s.client = label(s.client);
            s.region = label(s.region);
            if let Some(end) = &mut s.end {
                end.reason = label(end.reason);
            }
            self.push(digest, s);
        }
        true
    }

    fn store_id(&mut self, id: &str) -> u64 {
        if self
            .arena
            .last()
            .is_none_or(|a| a.len() + id.len() > ARENA_CHUNK)
        {
            // Likewise the first piece of the id arena grows with the ids (up to 1 MiB).
            self.arena.push(if self.arena.is_empty() {
                String::new()
            } else {
                String::with_capacity(ARENA_CHUNK)
            });
        }
        let chunk = self.arena.len() - 1;
        let a = &mut self.arena[chunk];
        let offset = a.len();
        a.push_str(id);
        ((chunk as u64) << 40) | ((offset as u64) << 8) | id.len() as u64
    }

    pub fn id(&self, s: &SessionAcc) -> &str {
        in_arena(&self.arena, s.id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &SessionAcc> {
        self.chunks.iter().flatten()
    }

    /// Heap bytes allocated for these sessions: the index table, the chunks, the id arena, and the
    /// boxed ends and extra windows. The allocator's own per-allocation overhead is not included.
    pub fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<((u64, u64), u32)>() + 1;
        let index = table_buckets(self.index.capacity()) * entry;
        let chunks: usize = self
            .chunks
            .iter()
            .map(|c| c.capacity() * std::mem::size_of::<SessionAcc>())
            .sum();
        let arena: usize = self.arena.iter().map(String::capacity).sum();
        let boxed: usize = self
            .iter()
            .map(|s| {
                let end = s.end.as_ref().map_or(0, |_| std::mem::size_of::<End>());
                let many = match &s.alive {
                    Alive::Many(v) => {
                        std::mem::size_of::<Vec<(Millis, Millis)>>()
                            + v.capacity() * std::mem::size_of::<(Millis, Millis)>()
                    }
                    _ => 0,
                };
                end + many
            })
            .sum();
        index + chunks + arena + boxed
    }
}

impl Labels {
    pub fn save(&self, e: &mut Enc<'_>) -> io::Result<()> {
        e.len(self.names.len())?;
        for n in &self.names {
            e.bytes(n.as_bytes())?;
        }
        Ok(())
    }

    pub fn load(d: &mut Dec<'_>) -> Result<Labels, StateError> {
        let mut labels = Labels::default();
        let (n, _) = d.len(1)?;
        for _ in 0..n {
            let name = d.string()?;
            if labels.id(Some(&name)) as usize != labels.names.len() - 1 {
                return Err(corrupt("a label saved twice"));
            }
        }
        Ok(labels)
    }
}

fn save_stamp(e: &mut Enc<'_>, (ts, arrival): Stamp) -> io::Result<()> {
    e.i64(ts)?;
    e.u64(arrival)
}

fn load_stamp(d: &mut Dec<'_>) -> Result<Stamp, StateError> {
    Ok((d.i64()?, d.u64()?))
}

impl Sessions {
    /// Every session in order of creation (so that numbers survive a load), with its id.
    pub fn save(&self, e: &mut Enc<'_>) -> io::Result<()> {
        e.len(self.len())?;
        for s in self.iter() {
            e.bytes(self.id(s).as_bytes())?;
            save_stamp(e, s.first)?;
            e.put(&s.listener.0)?;
            match &s.end {
                None => e.u8(0)?,
                Some(end) => {
                    e.u8(match end.kind {
                        EndType::Leave => 1,
                        EndType::Drop => 2,
                    })?;
                    save_stamp(e, end.at)?;
                    e.u32(end.reason)?;
                }
            }
            let windows = s.alive.windows();
            e.len(windows.len())?;
            for &(a, b) in windows {
                e.i64(a)?;
                e.i64(b)?;
            }
            e.u32(s.heartbeats)?;
            e.u32(s.client)?;
            e.u32(s.region)?;
        }
        Ok(())
    }

    /// Sessions saved by [`Sessions::save`]; `labels` is how many labels the stream has (every
    /// label number must name one).
    pub fn load(d: &mut Dec<'_>, labels: usize) -> Result<Sessions, StateError> {
        let label = |id: u32| {
            if id == NONE || (id as usize) < labels {
                Ok(id)
            } else {
                Err(corrupt("a label number beyond the labels"))
            }
        };
        let mut sessions = Sessions::new();
        // A saved session is at least 60 bytes.
        let (n, reserve) = d.len(60)?;
        sessions.index.reserve(reserve);
        for _ in 0..n {
            let id = d.string()?;
            if id.len() > 0xff {
                return Err(corrupt("a session id over 255 bytes"));
            }
            let first = load_stamp(d)?;
            let listener = ListenerKey(d.array()?);
            let end = match d.u8()? {
                0 => None,
                kind @ (1 | 2) => Some(Box::new(End {
                    kind: if kind == 1 {
                        EndType::Leave
                    } else {
                        EndType::Drop
                    },
                    at: load_stamp(d)?,
                    reason: label(d.u32()?)?,
                })),
                _ => return Err(corrupt("an end tag other than 0, 1 or 2")),
            };
            let mut alive = Alive::None;
            let (windows, _) = d.len(16)?;
            let mut last = Millis::MIN;
            for _ in 0..windows {
                let (a, b) = (d.i64()?, d.i64()?);
                if a > b || a < last {
                    return Err(corrupt("alive windows out of order"));
                }
                last = b;
                alive.add(a, b);
            }
            let (heartbeats, client, region) = (d.u32()?, label(d.u32()?)?, label(d.u32()?)?);
            // Numbered in order of creation, as when they were saved.
            let (_, s, new) = sessions.get_or_insert(&id, || (first, listener, client, region));
            if !new {
                return Err(corrupt("a session saved twice"));
            }
            s.end = end;
            s.alive = alive;
            s.heartbeats = heartbeats;
        }
        Ok(sessions)
    }
}

/// The id stored at `location` (chunk, offset, length) of an id arena.
fn in_arena(arena: &[String], location: u64) -> &str {
    let chunk = (location >> 40) as usize;
    let offset = ((location >> 8) & 0xffff_ffff) as usize;
    let len = (location & 0xff) as usize;
    arena
        .get(chunk)
        .and_then(|a| a.get(offset..offset + len))
        .unwrap_or("")
}

/// Length of the union of half-open intervals given in order of their start.
pub(crate) fn union_length(intervals: impl Iterator<Item = (Millis, Millis)>) -> i64 {
    let mut total = 0i64;
    let mut cur: Option<(Millis, Millis)> = None;
    for (a, b) in intervals {
        match &mut cur {
            Some((_, ce)) if a <= *ce => *ce = (*ce).max(b),
            _ => {
                if let Some((cs, ce)) = cur {
                    total += ce - cs;
                }
                cur = Some((a, b));
            }
        }
    }
    if let Some((cs, ce)) = cur {
        total += ce - cs;
    }
    total
}

/// Buckets a hashbrown table allocates for `capacity` usable slots (7/8 load, power of two).
pub(crate) fn table_buckets(capacity: usize) -> usize {
    if capacity == 0 {
        0
    } else if capacity < 8 {
        (capacity + 1).next_power_of_two()
    } else {
        (capacity * 8 / 7).next_power_of_two()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_windows_merge_in_any_order() {
        let mut s = Alive::None;
        for a in [50, 0, 100, 20, 200, 80] {
            s.add(a, a + 30);
        }
        assert_eq!(s.windows(), &[(0, 130), (200, 230)]);
        s.add(140, 170);
        assert_eq!(s.windows(), &[(0, 130), (140, 170), (200, 230)]);
        s.add(125, 205);
        assert_eq!(s.windows(), &[(0, 230)]);
        let mut t = Alive::None;
        t.add(10, 40);
        t.add(40, 70);
        assert_eq!(t.windows(), &[(10, 70)]);
        t.add(0, 5);
        assert_eq!(t.windows(), &[(0, 5), (10, 70)]);
    }

    #[test]
    fn union_length_counts_overlaps_once() {
        assert_eq!(union_length([(0, 10), (5, 20), (30, 40)].into_iter()), 30);
        assert_eq!(union_length([(0, 10), (2, 4), (10, 12)].into_iter()), 12);
        assert_eq!(union_length(std::iter::empty()), 0);
    }

    #[test]
    fn the_layout_stays_small() {
        assert!(std::mem::size_of::<SessionAcc>() <= 88);
        assert_eq!(std::mem::size_of::<Alive>(), 24);
    }

    #[test]
    fn ids_round_trip_through_the_arena() {
        let mut s = Sessions::new();
        for i in 0..10_000 {
            let id = format!("session-{i}-{}", "x".repeat(i % 100));
            s.get_or_insert(&id, || ((0, 0), ListenerKey([0; 16]), NONE, NONE));
        }
        for (i, acc) in s.iter().enumerate() {
            assert_eq!(s.id(acc), format!("session-{i}-{}", "x".repeat(i % 100)));
        }
        assert_eq!(s.len(), 10_000);
    }
}
