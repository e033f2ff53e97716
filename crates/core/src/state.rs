//! The engine's state as bytes, so that a restart loads it instead of replaying every stored event.
//!
//! What is saved is what [`Engine::offer`] accumulated: the settings, the de-duplication set, each
//! partition's clock, the arrival counter and tally, and per stream its sessions, labels, `display`
//! samples and event counts. A live engine's incremental figures are saved too (see
//! `live/state.rs`): they are a function of the sessions, but rebuilding them from every session
//! at the first publish after a restart took 9–13 s at 1M listeners.
//!
//! The format is versioned and checked on load: a magic string, [`STATE_FORMAT`], the settings,
//! then the body, then an xxh3-64 checksum of everything before it. Any mismatch is a
//! [`StateError`], and the caller falls back to replaying the stored events. The checksum is checked
//! before anything is decoded, and a length never reserves more than the bytes left could hold.
//! This module writes through [`Write`] and reads a byte slice: where the bytes live is the store's
//! business.

use std::collections::HashSet;
use std::io::{self, Write};

use crate::codec::{Dec, Enc, STATE_FORMAT, StateError, corrupt};
use crate::{Clock, Engine, RollupCache, Settings, Tally};

const MAGIC: &[u8; 16] = b"earshot engine\0\0";

fn put_settings(e: &mut Enc<'_>, s: &Settings) -> io::Result<()> {
    for v in [
        s.liveness_ms,
        s.bucket_ms,
        s.lateness_ms,
        s.min_listen_ms,
        s.max_jump_ms,
    ] {
        e.i64(v)?;
    }
    Ok(())
}

impl Engine {
    /// Writes the engine's state (see the module docs) to `out`, ending with its checksum.
    pub fn save_state(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut e = Enc::new(out);
        e.put(MAGIC)?;
        e.u32(STATE_FORMAT)?;
        put_settings(&mut e, &self.settings)?;
        e.u8(u8::from(self.live))?;
        e.u64(self.arrival)?;
        for v in [self.tally.counted, self.tally.late, self.tally.duplicates] {
            e.u64(v)?;
        }
        e.len(self.clocks.len())?;
        for clock in &self.clocks {
            match clock {
                None => e.u8(0)?,
                Some(c) => {
                    e.u8(1)?;
                    e.i64(c.first)?;
                    e.u64(c.first_witness)?;
                    e.opt_i64(c.second)?;
                }
            }
        }
        e.len(self.seen.len())?;
        for id in &self.seen {
            e.put(&id.to_le_bytes())?;
        }
        let mut ids: Vec<&String> = self.streams.keys().collect();
        ids.sort();
        e.len(ids.len())?;
        for id in ids {
            e.bytes(id.as_bytes())?;
            self.streams[id].save(&mut e)?;
        }
        e.finish()
    }

    /// An engine from bytes [`Engine::save_state`] wrote under the same `settings` (a whole file,
    /// read at once: the checksum is checked before anything is decoded). Live if the saved engine
    /// was, with the figures it had.
    pub fn load_state(bytes: &[u8], settings: Settings) -> Result<Engine, StateError> {
        Engine::load(bytes, settings, true)
    }

    /// [`Engine::load_state`] without the de-duplication set (the largest part of a state: 16
    /// bytes per stored event), which is read past, not built: for an engine that is only
    /// [`Engine::merge`]d and snapshotted, or offered events already known to be distinct (the
    /// stored events of the same data directory). Every check of the bytes is still made.
    pub fn load_state_for_merge(bytes: &[u8], settings: Settings) -> Result<Engine, StateError> {
        Engine::load(bytes, settings, false)
    }

    fn load(bytes: &[u8], settings: Settings, dedup: bool) -> Result<Engine, StateError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(StateError::NotState);
        }
        let Some((body, sum)) = bytes.split_last_chunk::<8>() else {
            return Err(corrupt("the state is cut short"));
        };
        let mut d = Dec { bytes: body };
        d.take(MAGIC.len())?;
        let found = d.u32()?;
        if found != STATE_FORMAT {
            return Err(StateError::Format { found });
        }
        let saved = Settings {
            liveness_ms: d.i64()?,
            bucket_ms: d.i64()?,
            lateness_ms: d.i64()?,
            min_listen_ms: d.i64()?,
            max_jump_ms: d.i64()?,
        };
        if u64::from_le_bytes(*sum) != xxhash_rust::xxh3::xxh3_64(body) {
            return Err(corrupt("the checksum does not match the bytes"));
        }
        if saved != settings {
            return Err(StateError::Settings);
        }
        let mut engine = Engine::new(settings);
        engine.live = match d.u8()? {
            0 => false,
            1 => true,
            _ => return Err(corrupt("a live tag other than 0 or 1")),
        };
        engine.arrival = d.u64()?;
        engine.tally = Tally {
            counted: d.u64()?,
            late: d.u64()?,
            duplicates: d.u64()?,
        };
        let (n, reserve) = d.len(1)?;
        if n > u32::MAX as usize {
            return Err(corrupt("more partitions than partition ids"));
        }
        engine.clocks.reserve(reserve);
        for _ in 0..n {
            let clock = match d.u8()? {
                0 => None,
                1 => Some(Clock {
                    first: d.i64()?,
                    first_witness: d.u64()?,
                    second: d.opt_i64()?,
                }),
                _ => return Err(corrupt("a clock tag other than 0 or 1")),
            };
            engine.clocks.push(clock);
        }
        let (n, reserve) = d.len(16)?;
        if dedup {
            engine.seen = HashSet::with_capacity_and_hasher(reserve, Default::default());
            for _ in 0..n {
                if !engine.seen.insert(d.u128()?) {
                    return Err(corrupt("an event id saved twice"));
                }
            }
        } else {
            d.take(
                n.checked_mul(16)
                    .ok_or_else(|| corrupt("too many event ids"))?,
            )?;
        }
        let (n, _) = d.len(1)?;
        for _ in 0..n {
            let id = d.string()?;
            let stream = crate::stream::StreamAcc::load(&mut d, &settings)?;
            if engine.streams.insert(id, stream).is_some() {
                return Err(corrupt("a stream saved twice"));
            }
        }
        if !d.bytes.is_empty() {
            return Err(corrupt("bytes follow the state"));
        }
        engine.rollup_cache = RollupCache::default();
        Ok(engine)
    }
}
