//! A live stream's incremental figures as bytes, saved with the engine's state (see
//! [`crate::state`]) so that a restart goes on publishing from where it stopped instead of
//! rebuilding every figure from every session.
//!
//! Everything [`Live`] holds is written as it is, pending work included (the rows to sweep and to
//! refill, a full rebuild that was due): the loaded value decides every later publish as the saved
//! one would have. Only the publish counters ([`crate::LiveStats`]) start again at zero, as they
//! do in a new process. Session numbers are checked against the stream's sessions, so that a
//! state that passed its checksum but disagrees with itself is refused rather than indexed out of
//! range.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::sync::Arc;

use earshot_contract::ListenerKey;
use earshot_sketch::Sketch;

use super::{Listener, Live, Row, Serialized};
use crate::Settings;
use crate::codec::{Dec, Enc, StateError, corrupt};

fn put_sketch(e: &mut Enc<'_>, s: &Sketch) -> io::Result<()> {
    // Serializing folds the library's temporary set in, which needs `&mut`: a copy does it.
    e.bytes(&s.clone().to_bytes())
}

fn sketch(d: &mut Dec<'_>) -> Result<Sketch, StateError> {
    Sketch::from_bytes(d.bytes()?)
        .map_err(|e| corrupt(&format!("a sketch that does not read: {e}")))
}

fn put_map<'a, V: Copy>(
    e: &mut Enc<'a>,
    map: &BTreeMap<i64, V>,
    value: impl Fn(&mut Enc<'a>, V) -> io::Result<()>,
) -> io::Result<()> {
    e.len(map.len())?;
    for (&k, &v) in map {
        e.i64(k)?;
        value(e, v)?;
    }
    Ok(())
}

fn map<'a, V>(
    d: &mut Dec<'a>,
    size: usize,
    value: impl Fn(&mut Dec<'a>) -> Result<V, StateError>,
) -> Result<BTreeMap<i64, V>, StateError> {
    let (n, _) = d.len(8 + size)?;
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let k = d.i64()?;
        if out.insert(k, value(d)?).is_some() {
            return Err(corrupt("a key saved twice in an ordered map"));
        }
    }
    Ok(out)
}

fn put_set<'s>(e: &mut Enc<'_>, set: impl ExactSizeIterator<Item = &'s u32>) -> io::Result<()> {
    e.len(set.len())?;
    for &i in set {
        e.u32(i)?;
    }
    Ok(())
}

/// Session numbers, each below `sessions`.
fn session_numbers(d: &mut Dec<'_>, sessions: usize) -> Result<Vec<u32>, StateError> {
    let (n, reserve) = d.len(4)?;
    let mut out = Vec::with_capacity(reserve);
    for _ in 0..n {
        let i = d.u32()?;
        if i as usize >= sessions {
            return Err(corrupt("a session number beyond the stream's sessions"));
        }
        out.push(i);
    }
    Ok(out)
}

impl Row {
    fn save(&self, e: &mut Enc<'_>) -> io::Result<()> {
        put_sketch(e, &self.present)?;
        put_sketch(e, &self.connected)?;
        for v in [
            self.roster_before,
            self.connected_before,
            self.roster.0,
            self.roster.1,
            self.connected_now.0,
            self.connected_now.1,
        ] {
            e.i64(v)?;
        }
        e.opt_i64(self.displayed)?;
        match &self.bytes {
            None => e.u8(0),
            Some(b) => {
                e.u8(1)?;
                e.bytes(&b.present_hll)?;
                e.bytes(&b.connected_hll)?;
                e.i64(b.present_listeners)?;
                e.i64(b.connected_listeners)
            }
        }
    }

    fn load(d: &mut Dec<'_>) -> Result<Row, StateError> {
        Ok(Row {
            present: sketch(d)?,
            connected: sketch(d)?,
            roster_before: d.i64()?,
            connected_before: d.i64()?,
            roster: (d.i64()?, d.i64()?),
            connected_now: (d.i64()?, d.i64()?),
            displayed: d.opt_i64()?,
            bytes: match d.u8()? {
                0 => None,
                1 => Some(Box::new(Serialized {
                    present_hll: Arc::from(d.bytes()?),
                    connected_hll: Arc::from(d.bytes()?),
                    present_listeners: d.i64()?,
                    connected_listeners: d.i64()?,
                })),
                _ => return Err(corrupt("a row bytes tag other than 0 or 1")),
            },
        })
    }
}

impl Live {
    /// Writes every field but the publish counters. Not called during a publish (the only time
    /// the bulk rebuild's buffers exist).
    pub(crate) fn save(&self, e: &mut Enc<'_>) -> io::Result<()> {
        debug_assert!(self.bulk.is_none(), "saved in the middle of a rebuild");
        e.i64(self.b0)?;
        e.len(self.rows.len())?;
        for row in &self.rows {
            row.save(e)?;
        }
        put_map(e, &self.roster, Enc::i64)?;
        put_map(e, &self.connected, Enc::i64)?;
        put_map(e, &self.displays, Enc::i64)?;
        e.i64(self.horizon)?;
        e.opt_i64(self.dirty_from)?;
        e.i64(self.swept_end)?;
        e.len(self.rebuild.len())?;
        for &k in &self.rebuild {
            e.i64(k)?;
        }
        put_set(e, self.open.iter())?;
        put_set(e, self.reach.iter())?;
        put_set(e, self.recent.iter())?;
        e.len(self.listeners.len())?;
        for (key, l) in &self.listeners {
            e.put(&key.0)?;
            e.u32(l.first)?;
            let more: &[u32] = l.more.as_deref().map_or(&[], |m| m.as_slice());
            put_set(e, more.iter())?;
            e.u8(u8::from(l.connected) | u8::from(l.qualified) << 1)?;
        }
        e.i64(self.listeners_connected)?;
        e.i64(self.listeners_qualified)?;
        for c in self.classes {
            e.i64(c)?;
        }
        put_map(e, &self.ttfa, Enc::u32)?;
        e.u64(self.ttfa_count)?;
        put_map(e, &self.connects, Enc::u32)?;
        put_sketch(e, &self.joined)?;
        put_sketch(e, &self.connected_all)?;
        e.u8(u8::from(self.listener_sketches_stale) | u8::from(self.full_rebuild) << 1)
    }

    /// What [`Live::save`] wrote, for a stream of `sessions` sessions.
    pub(crate) fn load(
        d: &mut Dec<'_>,
        settings: &Settings,
        sessions: usize,
    ) -> Result<Live, StateError> {
        let mut live = Live::new(settings);
        live.b0 = d.i64()?;
        let (n, reserve) = d.len(64)?;
        live.rows = VecDeque::with_capacity(reserve);
        for _ in 0..n {
            live.rows.push_back(Row::load(d)?);
        }
        live.roster = map(d, 8, Dec::i64)?;
        live.connected = map(d, 8, Dec::i64)?;
        live.displays = map(d, 8, Dec::i64)?;
        live.horizon = d.i64()?;
        live.dirty_from = d.opt_i64()?;
        live.swept_end = d.i64()?;
        let (n, _) = d.len(8)?;
        for _ in 0..n {
            live.rebuild.insert(d.i64()?);
        }
        live.open = session_numbers(d, sessions)?.into_iter().collect();
        live.reach = session_numbers(d, sessions)?.into_iter().collect();
        live.recent = session_numbers(d, sessions)?.into_iter().collect();
        let (n, reserve) = d.len(16 + 4 + 8 + 1)?;
        live.listeners.reserve(reserve);
        for _ in 0..n {
            let key = ListenerKey(d.array()?);
            let first = d.u32()?;
            if first as usize >= sessions {
                return Err(corrupt("a session number beyond the stream's sessions"));
            }
            let more = session_numbers(d, sessions)?;
            let flags = d.u8()?;
            if flags > 3 {
                return Err(corrupt("listener flags beyond connected and qualified"));
            }
            let listener = Listener {
                first,
                more: (!more.is_empty()).then(|| Box::new(more)),
                connected: flags & 1 != 0,
                qualified: flags & 2 != 0,
            };
            if live.listeners.insert(key, listener).is_some() {
                return Err(corrupt("a listener saved twice"));
            }
        }
        live.listeners_connected = d.i64()?;
        live.listeners_qualified = d.i64()?;
        live.classes = [d.i64()?, d.i64()?, d.i64()?];
        live.ttfa = map(d, 4, Dec::u32)?;
        live.ttfa_count = d.u64()?;
        live.connects = map(d, 4, Dec::u32)?;
        live.joined = sketch(d)?;
        live.connected_all = sketch(d)?;
        let flags = d.u8()?;
        if flags > 3 {
            return Err(corrupt(
                "live flags beyond stale sketches and a due rebuild",
            ));
        }
        live.listener_sketches_stale = flags & 1 != 0;
        live.full_rebuild = flags & 2 != 0;
        Ok(live)
    }
}
