//! Counting on several threads. The decisions that depend on the order of all events stay in one
//! [`Engine`]: de-duplication, lateness, the span guard, partition clocks and the arrival number
//! (and, before it, the [`crate::TimeGate`]). An engine told to [`Engine::count_in_shards`] makes
//! only those decisions; each counted event then goes, with the arrival number the engine gave
//! it, to the [`Shard`] that [`shard_of`] names, where its session is updated. Every event of a
//! session goes to one shard, in arrival order, so each shard holds whole sessions, exactly as
//! one engine would hold them. At the end the engine [`Engine::absorb`]s every shard and makes the
//! snapshot as always: the figures come from the sessions' content (sketches are unions, change
//! points sum, rows are sorted by id), never from which shard held a session or in what order
//! they were merged, so the tables are the same for any number of shards.

use std::collections::HashMap;

use earshot_contract::Event;

use crate::stream::StreamAcc;
use crate::{Engine, FastHash, Settings};

/// The sessions (and the stream-level events) of the events [`shard_of`] sent here.
#[derive(Debug)]
pub struct Shard {
    settings: Settings,
    streams: HashMap<String, StreamAcc, FastHash>,
}

/// Which of `shards` counts `event`: by its stream and session, so that a session's events all go
/// to one shard; events without a session (`display`, `stream_state`) by their stream.
pub fn shard_of(event: &Event, shards: usize) -> usize {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(event.stream_id.as_bytes());
    h.update(&[0xff]);
    if let Some(s) = &event.session_id {
        h.update(s.as_bytes());
    }
    (h.digest() % shards.max(1) as u64) as usize
}

impl Shard {
    pub fn new(settings: Settings) -> Shard {
        Shard {
            settings,
            streams: HashMap::with_hasher(FastHash::new()),
        }
    }

    /// Counts an event that the sequencing engine counted as number `arrival`.
    pub fn apply(&mut self, event: &Event, arrival: u64) {
        let settings = self.settings;
        match self.streams.get_mut(event.stream_id.as_str()) {
            Some(s) => s.apply(event, arrival, &settings),
            None => {
                let mut s = StreamAcc::new(event.ts);
                s.apply(event, arrival, &settings);
                self.streams.insert(event.stream_id.to_string(), s);
            }
        }
    }
}

impl Engine {
    /// From now on this engine only decides (duplicates, lateness, the span guard, the arrival
    /// number) and counts nothing into sessions: the caller applies each counted event to a
    /// [`Shard`] and [`Engine::absorb`]s the shards before a snapshot. For an engine that has seen
    /// no event, and not live (a file ingest).
    pub fn count_in_shards(&mut self) {
        debug_assert!(self.streams.is_empty() && !self.live);
        self.sharded = true;
    }

    /// Takes in what a shard counted. An error (a session counted in two shards) means the
    /// caller did not route by [`shard_of`].
    pub fn absorb(&mut self, shard: Shard) -> Result<(), String> {
        for (id, acc) in shard.streams {
            match self.streams.get_mut(&id) {
                Some(mine) => mine
                    .absorb(acc)
                    .map_err(|e| format!("stream {id:?}: {e}"))?,
                None => {
                    self.streams.insert(id, acc);
                }
            }
        }
        Ok(())
    }

    /// Takes in another engine that counted other partitions of the same input (a worker's
    /// partition, contract §4: each session is keyed to one partition), for a snapshot of their
    /// union: sessions move in whole, change points then sum, sketches and listener sets unite,
    /// counts add. The merged engine is for [`Engine::snapshot`] and [`Engine::session_rows`]
    /// only: it is not live, and it keeps no de-duplication set (each engine de-duplicated its
    /// own partitions). An error names what the two engines share: a partition, or a session
    /// (events of one session sent to two partitions).
    pub fn merge(&mut self, other: Engine) -> Result<(), String> {
        if self.settings != other.settings {
            return Err("the engines were counted with different settings".into());
        }
        self.live = false;
        self.seen = Default::default();
        self.rollup_cache = Default::default();
        for s in self.streams.values_mut() {
            s.leave_live();
        }
        self.tally.counted += other.tally.counted;
        self.tally.late += other.tally.late;
        self.tally.duplicates += other.tally.duplicates;
        self.arrival = self.arrival.max(other.arrival);
        for (p, clock) in other.clocks.into_iter().enumerate() {
            let Some(clock) = clock else { continue };
            if self.clocks.len() <= p {
                self.clocks.resize(p + 1, None);
            }
            if self.clocks[p].is_some() {
                return Err(format!("partition {p} was counted by both engines"));
            }
            self.clocks[p] = Some(clock);
        }
        let mut streams = other.streams;
        for acc in streams.values_mut() {
            acc.leave_live();
        }
        // Whole sessions, as a shard's move in.
        self.absorb(Shard {
            settings: self.settings,
            streams,
        })
    }
}
