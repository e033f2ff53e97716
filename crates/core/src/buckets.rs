//! Sketches over ranges of buckets.
//!
//! A listener on the roster from bucket 3 to bucket 700 is present in 698 buckets. Inserting it into
//! each would cost a sketch update per bucket per session; instead [`RangeSketches`] is a segment
//! tree over the buckets: a range insert touches O(log n) nodes, and [`RangeSketches::into_leaves`]
//! pushes each node's sketch down into its subtree by merging (a HyperLogLog union is a register-wise
//! max, so the result equals inserting into every bucket).

use earshot_sketch::Sketch;

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

    /// The sketch of every bucket, in order.
    pub fn into_leaves(mut self) -> Vec<Sketch> {
        for p in 1..self.n {
            if let Some(s) = self.nodes[p].take() {
                for c in [2 * p, 2 * p + 1] {
                    match &mut self.nodes[c] {
                        Some(child) => child.merge(&s),
                        slot @ None => *slot = Some(s.clone()),
                    }
                }
            }
        }
        self.nodes
            .drain(self.n..)
            .map(Option::unwrap_or_default)
            .collect()
    }
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
