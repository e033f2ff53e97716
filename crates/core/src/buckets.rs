//! Sketches over ranges of buckets.
//!
//! A listener on the roster from bucket 3 to bucket 700 is present in 698 buckets. Inserting it into
//! each would cost a sketch update per bucket per session; instead [`RangeSketches`] is a segment
//! tree over the buckets: a range insert touches O(log n) nodes, and [`RangeSketches::into_leaves`]
//! pushes each node's sketch down into its subtree by merging (a HyperLogLog union is a register-wise
//! max, so the result equals inserting into every bucket).

use std::sync::Arc;

use earshot_sketch::{Sketch, Union};

use crate::BucketRow;

/// The widths the buckets are rolled up to: the steps dashboards zoom through, from 30 seconds to
/// an hour.
pub const ROLLUP_WIDTHS_MS: [i64; 5] = [30_000, 60_000, 300_000, 900_000, 3_600_000];

/// The estimate of sketch bytes the engine has just written (they pass every check).
pub(crate) fn estimate(bytes: &[u8]) -> i64 {
    let e = earshot_sketch::estimate_bytes(bytes).unwrap_or(0.0);
    i64::try_from(earshot_sketch::round_estimate(e)).unwrap_or(i64::MAX)
}

/// One sketch per bucket, filled by ranges.
#[derive(Debug)]
pub struct RangeSketches {
    n: usize,
    nodes: Vec<Option<Sketch>>,
}

impl RangeSketches {
    pub fn new(n: usize) -> RangeSketches {
        RangeSketches {
            n,
            nodes: (0..2 * n).map(|_| None).collect(),
        }
    }

    /// Inserts `hash` into every bucket in `first..=last` (clipped to the buckets that exist).
    pub fn insert(&mut self, first: usize, last: usize, hash: u64) {
        if self.n == 0 || first > last || first >= self.n {
            return;
        }
        let last = last.min(self.n - 1);
        let (mut l, mut r) = (first + self.n, last + 1 + self.n);
        while l < r {
            if l & 1 == 1 {
                self.node(l).insert_hash(hash);
                l += 1;
            }
            if r & 1 == 1 {
                r -= 1;
                self.node(r).insert_hash(hash);
            }
            l >>= 1;
            r >>= 1;
        }
    }

    fn node(&mut self, i: usize) -> &mut Sketch {
        self.nodes[i].get_or_insert_with(Sketch::new)
    }

    /// The serialized sketch of every bucket, in order (what [`Sketch::to_bytes`] gives for each).
    ///
    /// Each node's sketch is pushed down to its children as a [`Union`] of bytes: a merge of two
    /// sorted code lists or two register arrays, far cheaper than the library's merge of sparse
    /// sketches (which decodes and re-encodes them), and the root-to-leaf paths share their work.
    pub fn into_leaf_bytes(self) -> Vec<Vec<u8>> {
        let n = self.n;
        let mut unions: Vec<Option<Union>> = self
            .nodes
            .into_iter()
            .map(|node| {
                node.map(|mut s| {
                    let mut u = Union::new();
                    let bytes = s.to_bytes();
                    // Bytes the sketch itself wrote always parse.
                    let added = u.add_bytes(&bytes);
                    debug_assert!(added.is_ok());
                    u
                })
            })
            .collect();
        for p in 1..n {
            if let Some(u) = unions[p].take() {
                for c in [2 * p, 2 * p + 1] {
                    match &mut unions[c] {
                        Some(child) => child.merge(&u),
                        slot @ None => *slot = Some(u.clone()),
                    }
                }
            }
        }
        let empty = Sketch::new().to_bytes();
        unions
            .drain(n..)
            .map(|u| {
                u.and_then(|u| u.to_bytes())
                    .unwrap_or_else(|| empty.clone())
            })
            .collect()
    }

    /// The sketch of every bucket, in order.
    pub fn into_leaves(self) -> Vec<Sketch> {
        self.into_leaf_bytes()
            .iter()
            .map(|b| Sketch::from_bytes(b).unwrap_or_default())
            .collect()
    }
}

/// The rows of `buckets` (sorted by stream, then start) rolled up to the stream's bucket width (a
/// copy, so that a timeline at any step reads this one table) and to each of [`ROLLUP_WIDTHS_MS`]
/// that is a larger multiple of the bucket width. A rollup row covers `[start, start + width)`,
/// `start` a multiple of the width since the epoch, and holds what a timeline point of that step
/// shows: the first bucket's `displayed_start`, `roster_start` and `connected_start` (the values
/// at the point's start when the stream was already on), the largest peaks, the summed event counts,
/// the union of the sketches and its estimates, and `final` once every bucket in it is.
pub fn rollups(buckets: &[BucketRow]) -> Vec<BucketRow> {
    rollups_cached(buckets, &mut RollupCache::default())
}

/// The rollup rows of the previous call, each with the bucket rows it was made from: a window
/// whose buckets are the same rows (the same sketch bytes, shared, and the same figures) is copied,
/// not merged again. A live engine publishes every second, and most windows are long final; it
/// hands out the same bytes for a bucket until the bucket changes. (Holding the inputs' bytes
/// keeps their addresses from being reused, so the same address is the same bytes.)
#[derive(Debug, Default)]
pub struct RollupCache {
    rows: std::collections::HashMap<(String, i64, i64), (Vec<Input>, BucketRow)>,
}

/// A bucket row as a rollup's input: its bytes by identity, its figures by value.
#[derive(Debug)]
struct Input {
    present: Arc<[u8]>,
    connected: Arc<[u8]>,
    /// Everything but the sketches (their estimates follow from their bytes).
    figures: [i64; 13],
}

impl Input {
    fn of(b: &BucketRow) -> Input {
        Input {
            present: b.present_hll.clone(),
            connected: b.connected_hll.clone(),
            figures: [
                b.bucket_start,
                b.width_ms,
                b.displayed_start.unwrap_or(i64::MIN),
                i64::from(b.displayed_start.is_some()),
                b.roster_start,
                b.roster_peak,
                b.connected_start,
                b.connected_peak,
                b.joins,
                b.connects,
                b.leaves,
                b.drops,
                i64::from(b.is_final),
            ],
        }
    }

    fn same(&self, b: &BucketRow) -> bool {
        Arc::ptr_eq(&self.present, &b.present_hll)
            && Arc::ptr_eq(&self.connected, &b.connected_hll)
            && self.figures == Input::of(b).figures
    }
}

/// [`rollups`], copying the windows whose buckets are unchanged since the last call from `cache`.
pub fn rollups_cached(buckets: &[BucketRow], cache: &mut RollupCache) -> Vec<BucketRow> {
    let mut used = std::collections::HashMap::with_capacity(cache.rows.len());
    let mut roll_cached = |part: &[BucketRow], width: i64| -> BucketRow {
        let key = (
            part[0].stream_id.clone(),
            width,
            part[0].bucket_start.div_euclid(width),
        );
        let (inputs, row) = match cache.rows.remove(&key) {
            Some((inputs, row))
                if inputs.len() == part.len()
                    && inputs.iter().zip(part).all(|(i, b)| i.same(b)) =>
            {
                (inputs, row)
            }
            _ => (part.iter().map(Input::of).collect(), roll(part, width)),
        };
        used.insert(key, (inputs, row.clone()));
        row
    };
    let out = rollups_with(buckets, &mut roll_cached);
    cache.rows = used;
    out
}

/// Each width is rolled up from the rows of the widest width already made that divides it (the
/// widths nest: 30 s, 1 min, 5 min, 15 min, 1 h), not from the buckets again: every union, peak,
/// sum and `final` flag is the same either way, and an hour costs 4 merges rather than 360.
fn rollups_with(
    buckets: &[BucketRow],
    roll: &mut dyn FnMut(&[BucketRow], i64) -> BucketRow,
) -> Vec<BucketRow> {
    let mut out = Vec::new();
    for stream in buckets.chunk_by(|a, b| a.stream_id == b.stream_id) {
        let w = stream[0].width_ms;
        // Where each width's rows are in `out`, and the width; the stream's buckets first.
        let mut levels = vec![(out.len()..out.len() + stream.len(), w)];
        out.extend(stream.iter().cloned());
        for width in ROLLUP_WIDTHS_MS {
            if w <= 0 || width <= w || width % w != 0 {
                continue;
            }
            let Some((from, _)) = levels.iter().rev().find(|(_, lw)| width % lw == 0) else {
                continue;
            };
            let rows: Vec<BucketRow> = out[from.clone()]
                .chunk_by(|a, b| {
                    a.bucket_start.div_euclid(width) == b.bucket_start.div_euclid(width)
                })
                .map(|part| roll(part, width))
                .collect();
            levels.push((out.len()..out.len() + rows.len(), width));
            out.extend(rows);
        }
    }
    out
}

fn roll(part: &[BucketRow], width: i64) -> BucketRow {
    let first = &part[0];
    let (mut present, mut connected) = (Union::new(), Union::new());
    let mut row = BucketRow {
        stream_id: first.stream_id.clone(),
        bucket_start: first.bucket_start.div_euclid(width) * width,
        width_ms: width,
        displayed_start: first.displayed_start,
        roster_start: first.roster_start,
        roster_peak: 0,
        connected_start: first.connected_start,
        connected_peak: 0,
        joins: 0,
        connects: 0,
        leaves: 0,
        drops: 0,
        present_hll: Arc::from(Vec::new()),
        connected_hll: Arc::from(Vec::new()),
        present_listeners: 0,
        connected_listeners: 0,
        is_final: true,
    };
    for b in part {
        row.roster_peak = row.roster_peak.max(b.roster_peak);
        row.connected_peak = row.connected_peak.max(b.connected_peak);
        row.joins += b.joins;
        row.connects += b.connects;
        row.leaves += b.leaves;
        row.drops += b.drops;
        row.is_final &= b.is_final;
        // The engine wrote these bytes; they cannot fail the reader's checks.
        let added = present
            .add_bytes(&b.present_hll)
            .and_then(|()| connected.add_bytes(&b.connected_hll));
        debug_assert!(added.is_ok());
    }
    row.present_listeners = count(&present);
    row.connected_listeners = count(&connected);
    row.present_hll = present
        .to_bytes()
        .unwrap_or_else(|| Sketch::new().to_bytes())
        .into();
    row.connected_hll = connected
        .to_bytes()
        .unwrap_or_else(|| Sketch::new().to_bytes())
        .into();
    row
}

fn count(u: &Union) -> i64 {
    i64::try_from(earshot_sketch::round_estimate(u.estimate())).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_inserts_equal_inserting_into_every_bucket() {
        for n in [1usize, 2, 3, 7, 16, 37] {
            let mut tree = RangeSketches::new(n);
            let mut naive: Vec<Sketch> = (0..n).map(|_| Sketch::new()).collect();
            let mut x = 12345u64;
            for k in 0..200u64 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let a = (x >> 33) as usize % n;
                let b = a + ((x >> 13) as usize % (n + 2));
                let h = earshot_sketch::hash_bytes(&k.to_le_bytes());
                tree.insert(a, b, h);
                for s in naive.iter_mut().take(b.min(n - 1) + 1).skip(a) {
                    s.insert_hash(h);
                }
            }
            for (mut got, mut want) in tree.into_leaves().into_iter().zip(naive) {
                assert_eq!(got.to_bytes(), want.to_bytes(), "n = {n}");
            }
        }
    }
}
