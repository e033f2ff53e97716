//! The engine's state as bytes, so that a restart loads it instead of replaying every stored event.
//!
//! What is saved is what [`Engine::offer`] accumulated: the settings, the de-duplication set, each
//! partition's clock, the arrival counter and tally, and per stream its sessions, labels, `display`
//! samples and event counts. The incremental figures of a live engine are not saved: they are a
//! function of the sessions, rebuilt at the first publish after loading (as after a replay).
//!
//! The format is versioned and checked on load: a magic string, [`STATE_FORMAT`], the settings,
//! then the body, then an xxh3-64 checksum of everything before it. Any mismatch is a
//! [`StateError`], and the caller falls back to replaying the stored events. The checksum is checked
//! before anything is decoded, and a length never reserves more than the bytes left could hold.
//! This module writes through [`Write`] and reads a byte slice: where the bytes live is the store's
//! business.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Write};

use xxhash_rust::xxh3::Xxh3;

use crate::{Clock, Engine, RollupCache, Settings, Tally};

/// The version of the bytes [`Engine::save_state`] writes. A change to the layout, or to what
/// `offer` keeps, bumps it; a state of another version is refused, never misread.
pub const STATE_FORMAT: u32 = 1;

const MAGIC: &[u8; 16] = b"earshot engine\0\0";
const CHUNK: usize = 1 << 16;

/// Why a saved state was not loaded.
#[derive(Debug)]
pub enum StateError {
    Io(io::Error),
    /// Not an engine state at all.
    NotState,
    /// A state of another format version.
    Format {
        found: u32,
    },
    /// Saved under other settings.
    Settings,
    /// The bytes do not match their checksum, or say something impossible.
    Corrupt(String),
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                write!(f, "the state is cut short")
            }
            StateError::Io(e) => write!(f, "{e}"),
            StateError::NotState => write!(f, "not an earshot engine state"),
            StateError::Format { found } => write!(
                f,
                "state format {found}, this earshot reads format {STATE_FORMAT}"
            ),
            StateError::Settings => write!(f, "saved under other settings"),
            StateError::Corrupt(why) => write!(f, "corrupt: {why}"),
        }
    }
}

impl std::error::Error for StateError {}

impl From<io::Error> for StateError {
    fn from(e: io::Error) -> Self {
        StateError::Io(e)
    }
}

/// Writes values in little-endian order through a buffer, hashing every byte written.
pub(crate) struct Enc<'a> {
    out: &'a mut dyn Write,
    buf: Vec<u8>,
    hash: Xxh3,
}

impl<'a> Enc<'a> {
    fn new(out: &'a mut dyn Write) -> Enc<'a> {
        Enc {
            out,
            buf: Vec::with_capacity(CHUNK),
            hash: Xxh3::new(),
        }
    }

    pub fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.buf.len() + bytes.len() > CHUNK {
            self.flush()?;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.hash.update(&self.buf);
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    pub fn u8(&mut self, v: u8) -> io::Result<()> {
        self.put(&[v])
    }
    pub fn u32(&mut self, v: u32) -> io::Result<()> {
        self.put(&v.to_le_bytes())
    }
    pub fn u64(&mut self, v: u64) -> io::Result<()> {
        self.put(&v.to_le_bytes())
    }
    pub fn i64(&mut self, v: i64) -> io::Result<()> {
        self.put(&v.to_le_bytes())
    }
    pub fn len(&mut self, n: usize) -> io::Result<()> {
        self.u64(n as u64)
    }
    pub fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        self.len(b.len())?;
        self.put(b)
    }
    pub fn opt_i64(&mut self, v: Option<i64>) -> io::Result<()> {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1)?;
                self.i64(v)
            }
        }
    }

    /// Writes the checksum of everything so far, and flushes.
    fn finish(mut self) -> io::Result<()> {
        self.flush()?;
        let sum = self.hash.digest();
        self.out.write_all(&sum.to_le_bytes())?;
        self.out.flush()
    }
}

/// Reads what [`Enc`] wrote, from bytes whose checksum was already checked.
pub(crate) struct Dec<'a> {
    bytes: &'a [u8],
}

impl<'a> Dec<'a> {
    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        if n > self.bytes.len() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], StateError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, StateError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, StateError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64, StateError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub fn u128(&mut self) -> Result<u128, StateError> {
        Ok(u128::from_le_bytes(self.array()?))
    }

    /// A length of elements at least `size` bytes each, and how many may be reserved for it up
    /// front: never more than the bytes left could hold.
    pub fn len(&mut self, size: usize) -> Result<(usize, usize), StateError> {
        let n = self.u64()?;
        let n = usize::try_from(n).map_err(|_| corrupt("a length beyond memory"))?;
        Ok((n, n.min(self.bytes.len() / size.max(1))))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], StateError> {
        let (n, _) = self.len(1)?;
        self.take(n)
    }

    pub fn string(&mut self) -> Result<String, StateError> {
        std::str::from_utf8(self.bytes()?)
            .map(str::to_owned)
            .map_err(|_| corrupt("a string that is not UTF-8"))
    }

    pub fn opt_i64(&mut self) -> Result<Option<i64>, StateError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.i64()?)),
            _ => Err(corrupt("an option tag other than 0 or 1")),
        }
    }
}

pub(crate) fn corrupt(why: &str) -> StateError {
    StateError::Corrupt(why.to_owned())
}

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
    /// read at once: the checksum is checked before anything is decoded). Not live:
    /// [`Engine::go_live`] rebuilds the incremental figures from the loaded sessions.
    pub fn load_state(bytes: &[u8], settings: Settings) -> Result<Engine, StateError> {
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
                    second: d.opt_i64()?,
                }),
                _ => return Err(corrupt("a clock tag other than 0 or 1")),
            };
            engine.clocks.push(clock);
        }
        let (n, reserve) = d.len(16)?;
        engine.seen = HashSet::with_capacity_and_hasher(reserve, Default::default());
        for _ in 0..n {
            if !engine.seen.insert(d.u128()?) {
                return Err(corrupt("an event id saved twice"));
            }
        }
        let (n, _) = d.len(1)?;
        for _ in 0..n {
            let id = d.string()?;
            let stream = crate::stream::StreamAcc::load(&mut d)?;
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
