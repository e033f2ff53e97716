//! The little-endian, length-prefixed encoding of a saved engine state ([`crate::state`]): a
//! writer that hashes what it writes, a reader over checked bytes, and the error a load gives.
//! Each part of the engine writes and reads its own fields with these.

use std::fmt;
use std::io::{self, Write};

use xxhash_rust::xxh3::Xxh3;

/// The version of the bytes [`Engine::save_state`] writes. A change to the layout, or to what
/// `offer` keeps, bumps it; a state of another version is refused, never misread.
/// Format 2 adds the live figures; format 3 the witness of each partition's newest event
/// (contract §4 v1.2: no single device moves time).
pub const STATE_FORMAT: u32 = 3;

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
    pub(crate) fn new(out: &'a mut dyn Write) -> Enc<'a> {
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
    pub(crate) fn finish(mut self) -> io::Result<()> {
        self.flush()?;
        let sum = self.hash.digest();
        self.out.write_all(&sum.to_le_bytes())?;
        self.out.flush()
    }
}

/// Reads what [`Enc`] wrote, from bytes whose checksum was already checked.
pub(crate) struct Dec<'a> {
    pub(crate) bytes: &'a [u8],
}

impl<'a> Dec<'a> {
    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
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
