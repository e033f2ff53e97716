//! Sketch work straight on the stored bytes: a union that is an element-wise max over the dense
//! registers (or a merge of sorted sparse codes), and an estimate computed from those registers,
//! with no `hyperloglogplus` structure built except in the one range where the library corrects
//! its raw estimate with its empirical bias table (see [`estimate_registers`]).
//!
//! Everything here must give what the library gives, bit for bit: the same bytes for a union as
//! [`Sketch::merge`] followed by [`Sketch::to_bytes`], the same `f64` as [`Sketch::estimate`].
//! `tests` checks both against the library on random sparse, dense and mixed sketches.

use crate::{
    DENSE, FORMAT_VERSION, HASH_ID, HEADER, MAX_REGISTER, PRECISION, REGISTERS, SPARSE,
    SPARSE_PRECISION, Sketch, SketchError, TRAILER, sparse_code_is_valid,
};

/// Most bytes the library keeps its sparse codes in (as delta varints) before it turns dense:
/// the size of its packed dense registers, 4 bytes per 5 six-bit registers.
pub(crate) const SPARSE_LIMIT_BYTES: usize = 4 * REGISTERS / 5;
/// The library counts sparse sketches by linear counting over 2^24 registers (not 2^25).
const SPARSE_REGISTERS: usize = 1 << (SPARSE_PRECISION - 1);
/// Linear counting is used below this estimate (the library's threshold for precision 14).
const LINEAR_THRESHOLD: f64 = 11_500.0;
/// Registers up to this value keep every partial sum of 2^-r exact in an `f64` (14 + 38 ≤ 52
/// bits), so an integer sum gives exactly what the library's sequential float sum gives.
const EXACT_REGISTER: u8 = 38;

/// A checked view of a sketch's bytes, borrowing them.
#[derive(Clone, Copy, Debug)]
pub enum SketchBytes<'a> {
    /// Strictly increasing sparse codes, each 4 bytes little-endian.
    Sparse(&'a [u8]),
    /// One byte per register.
    Dense(&'a [u8]),
}

impl<'a> SketchBytes<'a> {
    /// Checks what [`Sketch::from_bytes`] checks, in the same order, and borrows the payload.
    pub fn parse(bytes: &'a [u8]) -> Result<SketchBytes<'a>, SketchError> {
        if bytes.len() < HEADER + TRAILER {
            return Err(SketchError::TooShort(bytes.len()));
        }
        if bytes[0] != FORMAT_VERSION {
            return Err(SketchError::Version(bytes[0]));
        }
        if bytes[1] != PRECISION {
            return Err(SketchError::Precision(bytes[1]));
        }
        if bytes[2] != HASH_ID {
            return Err(SketchError::Hash(bytes[2]));
        }
        let (body, trailer) = bytes.split_at(bytes.len() - TRAILER);
        let mut sum = [0u8; 8];
        sum.copy_from_slice(trailer);
        if xxhash_rust::xxh3::xxh3_64(body) != u64::from_le_bytes(sum) {
            return Err(SketchError::Checksum);
        }
        let payload = &body[HEADER..];
        match body[3] {
            SPARSE => {
                let Some((n, codes)) = payload.split_first_chunk::<4>() else {
                    return Err(SketchError::Malformed("sparse sketch without a length"));
                };
                let n = u32::from_le_bytes(*n) as usize;
                if codes.len() != n * 4 {
                    return Err(SketchError::Malformed(
                        "sparse length does not match its codes",
                    ));
                }
                if n > SPARSE_LIMIT_BYTES {
                    return Err(SketchError::Malformed("too many sparse codes"));
                }
                // One pass: order, ranges, and the size of the library's delta-varint list,
                // which turns dense past the limit, so it never writes a longer sparse sketch
                // (reading one would count it differently).
                let (mut last, mut varints) = (0u32, 0usize);
                for (i, c) in sparse_codes(codes).enumerate() {
                    if i > 0 && c <= last {
                        return Err(SketchError::Malformed(
                            "sparse codes are not strictly increasing",
                        ));
                    }
                    if !sparse_code_is_valid(c) {
                        return Err(SketchError::Malformed("sparse code out of range"));
                    }
                    varints += varint_len(c - last);
                    last = c;
                }
                if varints > SPARSE_LIMIT_BYTES {
                    return Err(SketchError::Malformed("too many sparse codes"));
                }
                Ok(SketchBytes::Sparse(codes))
            }
            DENSE => {
                if payload.len() != REGISTERS {
                    return Err(SketchError::Malformed("dense sketch of the wrong length"));
                }
                // A max over all bytes vectorises; `any` would stop early but not vectorise.
                if payload.iter().fold(0u8, |m, &r| m.max(r)) > MAX_REGISTER {
                    return Err(SketchError::Malformed("register value out of range"));
                }
                Ok(SketchBytes::Dense(payload))
            }
            _ => Err(SketchError::Malformed("unknown representation")),
        }
    }

    /// The estimate [`Sketch::estimate`] gives for these bytes.
    pub fn estimate(self) -> f64 {
        match self {
            SketchBytes::Sparse(codes) => sparse_estimate(codes.len() / 4),
            SketchBytes::Dense(regs) => estimate_registers(regs),
        }
    }
}

fn sparse_codes(codes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    codes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// The estimate of the sketch in `bytes`, checked as [`Sketch::from_bytes`] checks it.
pub fn estimate_bytes(bytes: &[u8]) -> Result<f64, SketchError> {
    Ok(SketchBytes::parse(bytes)?.estimate())
}

/// The estimate rounded as [`Sketch::count`] rounds it.
pub fn round_estimate(e: f64) -> u64 {
    if e.is_finite() && e > 0.0 {
        e.round() as u64
    } else {
        0
    }
}

fn linear_count(registers: usize, zeros: usize) -> f64 {
    registers as f64 * (registers as f64 / zeros as f64).ln()
}

fn sparse_estimate(codes: usize) -> f64 {
    linear_count(SPARSE_REGISTERS, SPARSE_REGISTERS - codes)
}

/// The library's estimate for dense registers: linear counting while it is below the threshold,
/// else the raw HyperLogLog estimate, which above 5 m needs no correction. Between the two the
/// library subtracts a bias interpolated from its empirical table; that table is private to it,
/// so in that range (roughly 11,500 to 82,000 listeners) the registers are handed to the library.
pub fn estimate_registers(regs: &[u8]) -> f64 {
    debug_assert_eq!(regs.len(), REGISTERS);
    // Counted in byte lanes, 255 registers at a time, so the loop vectorises (wrapping adds: the
    // dev profile's overflow checks would stop it vectorising).
    let zeros: usize = regs
        .chunks(255)
        .map(|c| usize::from(c.iter().fold(0u8, |n, &r| n.wrapping_add(u8::from(r == 0)))))
        .sum();
    if zeros != 0 {
        let lc = linear_count(REGISTERS, zeros);
        if lc <= LINEAR_THRESHOLD {
            return lc;
        }
    }
    let m = REGISTERS as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let raw = alpha * m * m / inverse_power_sum(regs);
    if raw <= 5.0 * m {
        return library_estimate(regs);
    }
    raw
}

/// Σ 2^-r over the registers, equal to the library's left-to-right `f64` sum.
fn inverse_power_sum(regs: &[u8]) -> f64 {
    if regs.iter().fold(0u8, |m, &r| m.max(r)) <= EXACT_REGISTER {
        // Every partial sum is a multiple of 2^-38 below 2^15: exact in 53 bits, so the sum in any
        // order is the exact sum. Eight lanes, each 2^-r built from its exponent bits, vectorise.
        let mut acc = [0.0f64; 8];
        for chunk in regs.chunks_exact(8) {
            for (a, &r) in acc.iter_mut().zip(chunk) {
                *a += f64::from_bits((1023 - u64::from(r)) << 52);
            }
        }
        acc.iter().sum()
    } else {
        regs.iter().map(|&r| 1.0 / (1u64 << r) as f64).sum()
    }
}

fn library_estimate(regs: &[u8]) -> f64 {
    let mut shadow = crate::Shadow::empty();
    shadow.registers = Some(crate::ShadowRegisters::pack(regs));
    Sketch {
        inner: shadow.build(),
    }
    .estimate()
}

/// The union of sketches given as bytes, kept as the library would keep it: sparse codes while
/// their delta-varint encoding fits the library's sparse limit, dense registers after.
#[derive(Clone, Debug, Default)]
pub struct Union {
    state: State,
}

#[derive(Clone, Debug, Default)]
enum State {
    /// Nothing added yet.
    #[default]
    Empty,
    Sparse(Vec<u32>),
    Dense(Box<[u8]>),
}

impl Union {
    pub fn new() -> Union {
        Union::default()
    }

    /// True until a sketch is added.
    pub fn is_empty(&self) -> bool {
        matches!(self.state, State::Empty)
    }

    /// Adds the sketch in `bytes` (checked first; on an error the union is unchanged).
    pub fn add_bytes(&mut self, bytes: &[u8]) -> Result<(), SketchError> {
        let parsed = SketchBytes::parse(bytes)?;
        self.add(parsed);
        Ok(())
    }

    /// Adds a checked sketch.
    pub fn add(&mut self, sketch: SketchBytes<'_>) {
        match sketch {
            SketchBytes::Dense(regs) => self.add_dense(regs),
            SketchBytes::Sparse(codes) => self.add_sparse(sparse_codes(codes)),
        }
    }

    /// Adds another union (as if every sketch added to it were added here).
    pub fn merge(&mut self, other: &Union) {
        match &other.state {
            State::Empty => {}
            State::Sparse(codes) => self.add_sparse(codes.iter().copied()),
            State::Dense(regs) => self.add_dense(regs),
        }
    }

    fn add_dense(&mut self, regs: &[u8]) {
        match &mut self.state {
            State::Dense(acc) => {
                for (a, &r) in acc.iter_mut().zip(regs) {
                    *a = (*a).max(r);
                }
            }
            State::Empty => self.state = State::Dense(regs.into()),
            State::Sparse(mine) => {
                let mut acc: Box<[u8]> = regs.into();
                for &c in mine.iter() {
                    set_greater(&mut acc, c);
                }
                self.state = State::Dense(acc);
            }
        }
    }

    /// Adds sparse codes, sorted as a sketch holds them.
    fn add_sparse(&mut self, codes: impl Iterator<Item = u32>) {
        match &mut self.state {
            State::Dense(acc) => {
                for c in codes {
                    set_greater(acc, c);
                }
            }
            State::Empty => {
                self.state = State::Sparse(codes.collect());
                self.settle();
            }
            State::Sparse(mine) => {
                let merged = merge_sorted(mine, codes);
                *mine = merged;
                self.settle();
            }
        }
    }

    /// Turns dense once the sparse codes outgrow the library's limit, as the library does.
    fn settle(&mut self) {
        // Each code takes 1 to 5 varint bytes: only between those bounds is the sum needed.
        if let State::Sparse(codes) = &self.state
            && codes.len() * 5 > SPARSE_LIMIT_BYTES
            && (codes.len() > SPARSE_LIMIT_BYTES || varint_bytes(codes) > SPARSE_LIMIT_BYTES)
        {
            let mut acc = vec![0u8; REGISTERS].into_boxed_slice();
            for &c in codes {
                set_greater(&mut acc, c);
            }
            self.state = State::Dense(acc);
        }
    }

    /// The estimate of the union (0 when empty).
    pub fn estimate(&self) -> f64 {
        match &self.state {
            State::Empty => 0.0,
            State::Sparse(codes) => sparse_estimate(codes.len()),
            State::Dense(regs) => estimate_registers(regs),
        }
    }

    /// The union in the byte format, equal to what [`Sketch::to_bytes`] gives for the library's
    /// union of the same sketches; `None` when nothing was added.
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        let mut out = vec![FORMAT_VERSION, PRECISION, HASH_ID, 0];
        match &self.state {
            State::Empty => return None,
            State::Sparse(codes) => {
                out[3] = SPARSE;
                out.reserve(4 + codes.len() * 4 + TRAILER);
                out.extend_from_slice(&(codes.len() as u32).to_le_bytes());
                for c in codes {
                    out.extend_from_slice(&c.to_le_bytes());
                }
            }
            State::Dense(regs) => {
                out[3] = DENSE;
                out.reserve(REGISTERS + TRAILER);
                out.extend_from_slice(regs);
            }
        }
        let sum = xxhash_rust::xxh3::xxh3_64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        Some(out)
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        match &self.state {
            State::Empty => 0,
            State::Sparse(codes) => codes.capacity() * 4,
            State::Dense(regs) => regs.len(),
        }
    }
}

fn merge_sorted(a: &[u32], b: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len() + 16);
    let mut a = a.iter().copied().peekable();
    let mut b = b.peekable();
    loop {
        let next = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(&x), None) => {
                a.next();
                x
            }
            (None, Some(&y)) => {
                b.next();
                y
            }
            (Some(&x), Some(&y)) => {
                if x <= y {
                    a.next();
                    if x == y {
                        b.next();
                    }
                    x
                } else {
                    b.next();
                    y
                }
            }
        };
        out.push(next);
    }
    out
}

/// Bytes the library's delta-varint list takes for these sorted codes.
fn varint_bytes(codes: &[u32]) -> usize {
    let mut last = 0u32;
    codes
        .iter()
        .map(|&c| varint_len(c - std::mem::replace(&mut last, c)))
        .sum()
}

fn varint_len(d: u32) -> usize {
    (32 - d.leading_zeros()).max(1).div_ceil(7) as usize
}

/// Raises a dense register to what a sparse code says, as the library decodes codes.
fn set_greater(regs: &mut [u8], code: u32) {
    let shift = SPARSE_PRECISION - u32::from(PRECISION);
    let (zeros, index) = if code & 1 == 1 {
        (
            ((code >> 1) & 0x3f) + shift,
            (code >> (32 - u32::from(PRECISION))) as usize,
        )
    } else {
        let index = (code >> (shift + 1)) & ((1 << PRECISION) - 1);
        let rest = code << (32 - SPARSE_PRECISION + u32::from(PRECISION) - 1);
        (rest.leading_zeros() + 1, index as usize)
    };
    let zeros = zeros as u8;
    if regs[index] < zeros {
        regs[index] = zeros;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: a fixed, dependency-free stream of test values.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    /// A sketch of `n` values drawn from a universe of `universe`, so random sketches overlap.
    fn random_sketch(rng: &mut Rng, n: u64, universe: u64) -> Sketch {
        let mut s = Sketch::new();
        for _ in 0..n {
            s.insert(&(rng.next() % universe).to_le_bytes());
        }
        s
    }

    const SIZES: [u64; 12] = [
        0, 1, 7, 120, 900, 2_500, 4_000, 9_000, 14_000, 40_000, 120_000, 600_000,
    ];

    #[test]
    fn estimates_equal_the_library_on_random_sketches() {
        let mut rng = Rng(7);
        for &n in &SIZES {
            for universe in [n.max(1) * 4, u64::MAX] {
                let mut s = random_sketch(&mut rng, n, universe);
                let bytes = s.to_bytes();
                let want = Sketch::from_bytes(&bytes).unwrap().estimate();
                assert_eq!(
                    estimate_bytes(&bytes).unwrap().to_bits(),
                    want.to_bits(),
                    "n = {n}"
                );
                assert_eq!(want.to_bits(), s.estimate().to_bits());
            }
        }
    }

    #[test]
    fn unions_equal_the_library_on_random_sparse_dense_and_mixed_sketches() {
        let mut rng = Rng(11);
        for round in 0..60 {
            let k = 1 + (rng.next() % 9) as usize;
            let universe = [5_000u64, 60_000, 1 << 40][round % 3];
            let sketches: Vec<Sketch> = (0..k)
                .map(|_| {
                    let n = SIZES[(rng.next() % SIZES.len() as u64) as usize] / [1, 3][round % 2];
                    random_sketch(&mut rng, n, universe)
                })
                .collect();
            let mut lib = Sketch::new();
            let mut union = Union::new();
            for s in &sketches {
                lib.merge(s);
                union.add_bytes(&s.clone().to_bytes()).unwrap();
            }
            let want = lib.to_bytes();
            assert_eq!(union.to_bytes().unwrap(), want, "round {round}");
            assert_eq!(
                union.estimate().to_bits(),
                lib.estimate().to_bits(),
                "round {round}"
            );
            assert_eq!(
                estimate_bytes(&want).unwrap().to_bits(),
                lib.estimate().to_bits()
            );
        }
    }

    #[test]
    fn sparse_unions_turn_dense_where_the_library_does() {
        // Sparse sketches whose union crosses the sparse limit: big steps until it is near, then
        // one value at a time, so the crossing is checked to the byte.
        let mut rng = Rng(3);
        let mut lib = Sketch::new();
        let mut union = Union::new();
        let mut saw = [false; 2];
        while !matches!(union.state, State::Dense(_)) {
            let near = match &union.state {
                State::Sparse(codes) => varint_bytes(codes) + 400 > SPARSE_LIMIT_BYTES,
                _ => false,
            };
            let mut s = random_sketch(&mut rng, if near { 1 } else { 150 }, u64::MAX);
            lib.merge(&s);
            union.add_bytes(&s.to_bytes()).unwrap();
            let (a, b) = (union.to_bytes().unwrap(), lib.to_bytes());
            assert_eq!(a, b);
            saw[usize::from(a[3])] = true;
        }
        assert_eq!(
            saw,
            [true, true],
            "the test must cross from sparse to dense"
        );
    }

    #[test]
    fn high_registers_take_the_sequential_sum() {
        // Registers above 38 are rare (2^-38 per value) but legal; the estimate must still match.
        let mut rng = Rng(5);
        for _ in 0..20 {
            let mut regs: Vec<u8> = (0..REGISTERS)
                .map(|_| 8 + (rng.next() % 12) as u8)
                .collect();
            for _ in 0..1 + rng.next() % 40 {
                regs[(rng.next() % REGISTERS as u64) as usize] =
                    39 + (rng.next() % u64::from(MAX_REGISTER - 38)) as u8;
            }
            let mut bytes = vec![FORMAT_VERSION, PRECISION, HASH_ID, DENSE];
            bytes.extend(&regs);
            let sum = xxhash_rust::xxh3::xxh3_64(&bytes);
            bytes.extend(sum.to_le_bytes());
            let want = Sketch::from_bytes(&bytes).unwrap().estimate();
            assert_eq!(estimate_bytes(&bytes).unwrap().to_bits(), want.to_bits());
        }
    }

    /// Sparse bytes of `n` codes 2^15 apart: each takes 3 varint bytes in the library's list.
    fn spread_sparse(n: u32) -> Vec<u8> {
        let mut bytes = vec![FORMAT_VERSION, PRECISION, HASH_ID, SPARSE];
        bytes.extend(n.to_le_bytes());
        for k in 1..=n {
            // index25 << 7 | zeros << 1 | 1, with zeros = 1: a valid code.
            bytes.extend(((k << 15) | (1 << 1) | 1).to_le_bytes());
        }
        let sum = xxhash_rust::xxh3::xxh3_64(&bytes);
        bytes.extend(sum.to_le_bytes());
        bytes
    }

    #[test]
    fn sparse_bytes_longer_than_the_library_writes_are_refused() {
        // 4,369 codes take 13,107 varint bytes, the library's limit; 4,370 take 13,110.
        let fits = spread_sparse(4_369);
        assert!(estimate_bytes(&fits).is_ok());
        assert_eq!(
            Sketch::from_bytes(&fits).unwrap().estimate().to_bits(),
            estimate_bytes(&fits).unwrap().to_bits()
        );
        let over = spread_sparse(4_370);
        let refused = SketchError::Malformed("too many sparse codes");
        assert_eq!(estimate_bytes(&over), Err(refused.clone()));
        assert_eq!(Sketch::from_bytes(&over).unwrap_err(), refused);
        assert_eq!(Union::new().add_bytes(&over), Err(refused));
    }

    #[test]
    fn bad_bytes_leave_the_union_unchanged() {
        let mut rng = Rng(9);
        let mut good = random_sketch(&mut rng, 30_000, u64::MAX).to_bytes();
        let mut union = Union::new();
        union.add_bytes(&good).unwrap();
        let before = union.to_bytes();
        good[50] ^= 1;
        assert_eq!(union.add_bytes(&good), Err(SketchError::Checksum));
        assert_eq!(union.add_bytes(&[1, 14]), Err(SketchError::TooShort(2)));
        assert_eq!(union.to_bytes(), before);
        assert!(Union::new().to_bytes().is_none());
    }
}
