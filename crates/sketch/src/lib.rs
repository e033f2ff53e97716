//! HyperLogLog++ sketches of distinct listeners, as a stable, versioned byte format.
//!
//! [`Sketch`] wraps `hyperloglogplus` (pinned to 0.4.1) and fixes everything that must agree for two
//! sketches to merge: precision 14 (standard error 1.04/√16384 ≈ 0.81 %), a fixed-seed xxh3 hash
//! applied here and handed to the library pre-hashed, and the byte layout described in
//! `schemas/sketch.v1.md`. The library's own serde form is its private memory layout and panics on
//! bad bytes, so it never reaches a file: [`Sketch::to_bytes`] writes our layout, and
//! [`Sketch::from_bytes`] checks version, precision, hash id, length, ranges and checksum before
//! anything is built. Bad bytes are an [`SketchError`], never a panic. No I/O, no Kafka, no Arrow.

use std::hash::{BuildHasher, Hasher};

use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
use serde::{Deserialize, Serialize};

mod bytes;
pub use bytes::{SketchBytes, Union, estimate_bytes, estimate_registers, round_estimate};

/// Format version written in byte 0.
pub const FORMAT_VERSION: u8 = 1;
/// Precision (log2 of the register count) of every earshot sketch.
pub const PRECISION: u8 = 14;
/// Number of registers, 2^PRECISION.
pub const REGISTERS: usize = 1 << PRECISION;
/// Id of the hash function written in byte 2: xxh3-64 with [`HASH_SEED`].
pub const HASH_ID: u8 = 1;
/// The fixed seed of the sketch hash. Changing it makes old sketches unmergeable with new ones.
pub const HASH_SEED: u64 = 0x6561_7273_686f_7401;
/// Relative standard error of an estimate, 1.04/√m.
pub const STANDARD_ERROR: f64 = 1.04 / 128.0;

pub(crate) const HEADER: usize = 4;
pub(crate) const TRAILER: usize = 8;
pub(crate) const SPARSE: u8 = 0;
pub(crate) const DENSE: u8 = 1;
/// Largest value a dense register can hold at precision 14: 64 − 14 + 1.
pub(crate) const MAX_REGISTER: u8 = 64 - PRECISION + 1;
pub(crate) const SPARSE_PRECISION: u32 = 25;
const WORD_REGISTERS: usize = 5;

/// Why bytes could not be read as a sketch.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum SketchError {
    #[error("sketch is {0} bytes, too short to be an earshot sketch")]
    TooShort(usize),
    #[error(
        "sketch format version {0} is not supported (this build reads version {FORMAT_VERSION})"
    )]
    Version(u8),
    #[error("sketch precision {0} differs from earshot's fixed precision {PRECISION}")]
    Precision(u8),
    #[error(
        "sketch hash id {0} differs from earshot's hash id {HASH_ID}; sketches from other hashes cannot merge"
    )]
    Hash(u8),
    #[error("sketch checksum does not match: the bytes are corrupt")]
    Checksum,
    #[error("sketch bytes are malformed: {0}")]
    Malformed(&'static str),
}

/// A HyperLogLog++ sketch of distinct listeners, precision 14.
#[derive(Clone, Debug)]
pub struct Sketch {
    inner: HyperLogLogPlus<u64, PreHashed>,
}

impl Default for Sketch {
    fn default() -> Self {
        Sketch::new()
    }
}

/// The sketch hash of a value: xxh3-64 with the fixed seed.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(bytes, HASH_SEED)
}

impl Sketch {
    pub fn new() -> Sketch {
        Sketch { inner: new_inner() }
    }

    /// Adds a value (a listener pseudonym's bytes).
    pub fn insert(&mut self, bytes: &[u8]) {
        self.insert_hash(hash_bytes(bytes));
    }

    /// Adds a value already hashed with [`hash_bytes`].
    pub fn insert_hash(&mut self, hash: u64) {
        self.inner.insert(&hash);
    }

    /// The union of `self` and `other`, in place.
    pub fn merge(&mut self, other: &Sketch) {
        // Both sides have PRECISION by construction, so the library cannot refuse.
        let merged = self.inner.merge(&other.inner);
        debug_assert!(merged.is_ok());
    }

    /// The estimated number of distinct values.
    pub fn estimate(&mut self) -> f64 {
        self.inner.count()
    }

    /// The estimate rounded to a whole number of listeners.
    pub fn count(&mut self) -> u64 {
        round_estimate(self.estimate())
    }

    /// The serialized form (see `schemas/sketch.v1.md`). Equal sets give equal bytes.
    pub fn to_bytes(&mut self) -> Vec<u8> {
        // `count` folds the library's unordered temporary set into its sorted sparse list, so what
        // follows is deterministic.
        self.inner.count();
        let shadow = Shadow::of(&self.inner);
        let mut out = Vec::with_capacity(HEADER + TRAILER + 16);
        out.extend_from_slice(&[FORMAT_VERSION, PRECISION, HASH_ID, 0]);
        match &shadow.registers {
            None => {
                out[3] = SPARSE;
                let codes = shadow.sparse.decode().unwrap_or_default();
                out.extend_from_slice(&(codes.len() as u32).to_le_bytes());
                for c in codes {
                    out.extend_from_slice(&c.to_le_bytes());
                }
            }
            Some(regs) => {
                out[3] = DENSE;
                out.extend(regs.unpack());
            }
        }
        let sum = xxhash_rust::xxh3::xxh3_64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Reads a serialized sketch, checking every byte that could make the library misbehave.
    pub fn from_bytes(bytes: &[u8]) -> Result<Sketch, SketchError> {
        let mut shadow = Shadow::empty();
        match SketchBytes::parse(bytes)? {
            SketchBytes::Sparse(codes) => {
                for c in codes.chunks_exact(4) {
                    shadow
                        .sparse
                        .push(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                }
            }
            SketchBytes::Dense(regs) => shadow.registers = Some(ShadowRegisters::pack(regs)),
        }
        Ok(Sketch {
            inner: shadow.build(),
        })
    }
}

pub(crate) fn sparse_code_is_valid(c: u32) -> bool {
    if c & 1 == 1 {
        // index (25 bits) << 7 | zeros (6 bits) << 1 | 1; zeros counts within the low 64−25 bits.
        let zeros = (c >> 1) & 0x3f;
        (1..=64 - SPARSE_PRECISION + 1).contains(&zeros)
    } else {
        // index << 1, whose bits below the dense index are not all zero.
        let low = (c >> 1) & ((1 << (SPARSE_PRECISION - u32::from(PRECISION))) - 1);
        c >> (SPARSE_PRECISION + 1) == 0 && low != 0
    }
}

fn new_inner() -> HyperLogLogPlus<u64, PreHashed> {
    match HyperLogLogPlus::new(PRECISION, PreHashed) {
        Ok(h) => h,
        // PRECISION is a constant inside the library's bounds (4..=18).
        Err(_) => unreachable!("precision 14 is valid"),
    }
}

/// A hasher that passes a pre-computed u64 hash through unchanged.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct PreHashed;

#[derive(Default)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `u64: Hash`; fold anything else so it is still a hash.
        self.0 = hash_bytes(bytes) ^ self.0.rotate_left(5);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }
}

impl BuildHasher for PreHashed {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

// ---- A mirror of hyperloglogplus 0.4.1's serde layout -------------------------------------------
//
// The library keeps its registers and sparse list private; its serde derive is the only door. These
// structs have the same fields in the same order, so bincode moves state between the library and a
// form we can read and check. The exact version pin in Cargo.toml is what keeps the mirror true, and
// `mirror_matches_the_library` tests it.

#[derive(Serialize, Deserialize)]
struct Shadow {
    builder: PreHashed,
    precision: u8,
    counts: (usize, usize, usize),
    tmpset: std::collections::HashSet<u32>,
    sparse: ShadowDifIntVec,
    registers: Option<ShadowRegisters>,
    phantom: std::marker::PhantomData<u64>,
}

#[derive(Serialize, Deserialize, Default)]
struct ShadowDifIntVec {
    count: usize,
    last: u32,
    buf: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct ShadowRegisters {
    buf: Vec<u32>,
    count: usize,
    zeros: usize,
}

impl Shadow {
    fn empty() -> Shadow {
        Shadow::of(&new_inner())
    }

    fn of(h: &HyperLogLogPlus<u64, PreHashed>) -> Shadow {
        bincode::serialize(h)
            .ok()
            .and_then(|b| bincode::deserialize(&b).ok())
            .unwrap_or_else(|| unreachable!("the mirror matches hyperloglogplus 0.4.1"))
    }

    fn build(&self) -> HyperLogLogPlus<u64, PreHashed> {
        bincode::serialize(self)
            .ok()
            .and_then(|b| bincode::deserialize(&b).ok())
            .unwrap_or_else(|| unreachable!("the mirror matches hyperloglogplus 0.4.1"))
    }
}

impl ShadowDifIntVec {
    fn push(&mut self, val: u32) {
        let mut d = val - self.last;
        while d >= 0x80 {
            self.buf.push((d as u8 & 0x7f) | 0x80);
            d >>= 7;
        }
        self.buf.push(d as u8);
        self.last = val;
        self.count += 1;
    }

    fn decode(&self) -> Option<Vec<u32>> {
        let mut out = Vec::with_capacity(self.count);
        let (mut i, mut last) = (0usize, 0u32);
        while i < self.buf.len() {
            let (mut val, mut shift) = (0u32, 0u32);
            loop {
                let b = *self.buf.get(i)?;
                i += 1;
                val |= u32::from(b & 0x7f).checked_shl(shift)?;
                if b & 0x80 == 0 {
                    break;
                }
                shift += 7;
            }
            last = last.checked_add(val)?;
            out.push(last);
        }
        Some(out)
    }
}

impl ShadowRegisters {
    fn unpack(&self) -> Vec<u8> {
        (0..self.count)
            .map(|i| {
                let w = self.buf[i / WORD_REGISTERS];
                ((w >> ((i % WORD_REGISTERS) * 6)) & 0x3f) as u8
            })
            .collect()
    }

    fn pack(regs: &[u8]) -> ShadowRegisters {
        let mut buf = vec![0u32; regs.len().div_ceil(WORD_REGISTERS)];
        let mut zeros = 0;
        for (i, &r) in regs.iter().enumerate() {
            if r == 0 {
                zeros += 1;
            }
            buf[i / WORD_REGISTERS] |= u32::from(r) << ((i % WORD_REGISTERS) * 6);
        }
        ShadowRegisters {
            buf,
            count: regs.len(),
            zeros,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sketch_of(range: std::ops::Range<u64>) -> Sketch {
        let mut s = Sketch::new();
        for i in range {
            s.insert(&i.to_le_bytes());
        }
        s
    }

    #[test]
    fn mirror_matches_the_library() {
        for n in [0u64, 5, 300, 5_000, 100_000] {
            let mut s = sketch_of(0..n);
            s.estimate();
            let lib = bincode::serialize(&s.inner).unwrap();
            let shadow: Shadow = bincode::deserialize(&lib).unwrap();
            assert_eq!(bincode::serialize(&shadow).unwrap(), lib, "n = {n}");
        }
    }

    #[test]
    fn round_trips_sparse_and_dense() {
        for n in [0u64, 1, 17, 900, 3_000, 50_000] {
            let mut s = sketch_of(0..n);
            let bytes = s.to_bytes();
            let mut back = Sketch::from_bytes(&bytes).unwrap();
            assert_eq!(back.estimate(), s.estimate(), "n = {n}");
            assert_eq!(back.to_bytes(), bytes, "n = {n}");
        }
    }

    #[test]
    fn corrupt_bytes_are_errors_not_panics() {
        let good = sketch_of(0..50_000).to_bytes();
        assert_eq!(
            Sketch::from_bytes(&[]).unwrap_err(),
            SketchError::TooShort(0)
        );
        let mut v = good.clone();
        v[0] = 9;
        assert_eq!(Sketch::from_bytes(&v).unwrap_err(), SketchError::Version(9));
        let mut v = good.clone();
        v[1] = 12;
        assert_eq!(
            Sketch::from_bytes(&v).unwrap_err(),
            SketchError::Precision(12)
        );
        let mut v = good.clone();
        v[100] ^= 0x40;
        assert_eq!(Sketch::from_bytes(&v).unwrap_err(), SketchError::Checksum);
        assert!(Sketch::from_bytes(&good[..good.len() - 1]).is_err());
        // Every single-byte truncation and every flipped byte of a small sketch: error or a valid
        // sketch, never a panic.
        let small = sketch_of(0..40).to_bytes();
        for cut in 0..small.len() {
            let _ = Sketch::from_bytes(&small[..cut]);
        }
        for i in 0..small.len() {
            let mut v = small.clone();
            v[i] = v[i].wrapping_add(1);
            assert!(Sketch::from_bytes(&v).is_err());
        }
    }

    #[test]
    fn accuracy_within_three_standard_errors() {
        for n in [1_000u64, 20_000, 200_000] {
            let mut s = sketch_of(n * 7..n * 8);
            let e = s.estimate();
            let rel = (e - n as f64).abs() / n as f64;
            assert!(rel < 3.0 * STANDARD_ERROR, "n={n} estimate={e} rel={rel}");
        }
        let mut small = sketch_of(0..100);
        assert_eq!(small.count(), 100);
    }

    #[test]
    fn merge_is_union_commutative_and_associative() {
        let (a, b, c) = (
            sketch_of(0..3_000),
            sketch_of(2_000..30_000),
            sketch_of(25_000..26_000),
        );
        let mut ab_c = a.clone();
        ab_c.merge(&b);
        ab_c.merge(&c);
        let mut bc = b.clone();
        bc.merge(&c);
        let mut a_bc = a.clone();
        a_bc.merge(&bc);
        let mut c_b_a = c.clone();
        c_b_a.merge(&b);
        c_b_a.merge(&a);
        let mut direct = sketch_of(0..30_000);
        assert_eq!(ab_c.to_bytes(), a_bc.to_bytes());
        assert_eq!(ab_c.to_bytes(), c_b_a.to_bytes());
        assert_eq!(ab_c.estimate(), direct.estimate());
    }
}
