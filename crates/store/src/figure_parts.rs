//! `buckets` and `rollups` as directories of parts, so that a publish writes what changed.
//!
//! A row that is final (its bucket ends at or before what the engine calls final) does not change
//! again, so it is written once, into a part of final rows, and later generations hard-link that
//! part. The rows that are not final yet (the last few buckets, the current rollup windows) are
//! written whole at every publish, as `open.parquet`. The table is the union of the parts: every
//! row is in exactly one of them.
//!
//! Parts of final rows are merged as they accumulate, like a binary counter: when a part holds at
//! least half as many rows as the part before it, the two become one. So there are about log2(rows)
//! parts, and a row is rewritten about log2(rows) times over an event's life (a publish every second
//! writes one part of one new row most of the time).
//!
//! Exactness does not rest on the engine keeping its promise: the rows already written are kept
//! (their sketch bytes are shared with the engine, not copied) and compared at every publish. If a
//! final row changed, or stopped being final, or the parts on disk are not known row by row (after
//! a resume), every final row is written again as one part.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use earshot_core::BucketRow;

use crate::StoreError;
use crate::writer::write_buckets;

/// The tables kept this way.
pub const FIGURE_PART_TABLES: [&str; 2] = ["buckets", "rollups"];
/// The part holding the rows that are not final.
pub(crate) const OPEN_PART: &str = "open.parquet";

/// (stream, width, start): a row's key.
type Key = (String, i64, i64);

fn key(r: &BucketRow) -> Key {
    (r.stream_id.clone(), r.width_ms, r.bucket_start)
}

#[derive(Clone, Debug)]
struct Part {
    name: String,
    keys: Vec<Key>,
}

/// What the last generation holds of one such table.
#[derive(Clone, Debug, Default)]
pub(crate) struct FinalParts {
    table: &'static str,
    parts: Vec<Part>,
    written: HashMap<Key, BucketRow>,
    /// The parts on disk are not known row by row: the next publish writes every final row again.
    unknown: bool,
    next: u64,
}

impl FinalParts {
    pub fn new(table: &'static str) -> FinalParts {
        FinalParts {
            table,
            next: 1,
            ..FinalParts::default()
        }
    }

    /// The parts of `generation` (written by an earlier process): kept until the next publish,
    /// which replaces them.
    pub fn resume(table: &'static str, generation: &Path) -> Result<FinalParts, StoreError> {
        let mut out = FinalParts::new(table);
        out.unknown = true;
        let dir = generation.join(table);
        if !dir.is_dir() {
            return Ok(out);
        }
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::io("read", &dir, e))? {
            let entry = entry.map_err(|e| StoreError::io("read", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(n) = part_number(&name) {
                out.next = out.next.max(n + 1);
                out.parts.push(Part {
                    name,
                    keys: Vec::new(),
                });
            }
        }
        Ok(out)
    }

    /// Writes `rows` (sorted by key) into `dir/<table>/` of a new generation: new parts of the
    /// final rows not written yet, links to the parts of `previous` that stay, and the open rows.
    /// Returns what the new generation holds; `self` is unchanged, so a failed publish leaves the
    /// last generation's state.
    pub fn publish(
        &self,
        dir: &Path,
        previous: Option<&Path>,
        rows: &[BucketRow],
    ) -> Result<FinalParts, StoreError> {
        let table = self.table;
        let out_dir = dir.join(table);
        fs::create_dir(&out_dir).map_err(|e| StoreError::io("create", &out_dir, e))?;
        let (finals, open): (Vec<&BucketRow>, Vec<&BucketRow>) =
            rows.iter().partition(|r| r.is_final);
        let mut next = self.clone();
        let mut fresh = Vec::new();
        let mut rewrite = self.unknown;
        for r in &finals {
            match self.written.get(&key(r)) {
                None => fresh.push(*r),
                Some(w) if w == *r => {}
                Some(_) => rewrite = true,
            }
        }
        if finals.len() != self.written.len() + fresh.len() {
            // A row written as final is not final any more (or is gone).
            rewrite = true;
        }
        if rewrite {
            next.parts.clear();
            next.written.clear();
            next.unknown = false;
            fresh = finals;
        }
        if !fresh.is_empty() {
            let name = next.new_name();
            write_buckets(&out_dir, table, &name, fresh.iter().copied())?;
            next.parts.push(Part {
                name,
                keys: fresh.iter().map(|r| key(r)).collect(),
            });
            for r in fresh {
                next.written.insert(key(r), r.clone());
            }
        }
        // Merge the newest parts while one is at least half the size of the one before it.
        while let [.., older, newer] = next.parts.as_slice()
            && 2 * newer.keys.len() >= older.keys.len()
        {
            let (Some(newer), Some(older)) = (next.parts.pop(), next.parts.pop()) else {
                break;
            };
            let mut keys = older.keys;
            keys.extend(newer.keys);
            keys.sort();
            let name = next.new_name();
            let written = &next.written;
            write_buckets(
                &out_dir,
                table,
                &name,
                keys.iter().filter_map(|k| written.get(k)),
            )?;
            for gone in [older.name, newer.name] {
                // Written by this publish and merged at once: not part of the generation.
                let _ = fs::remove_file(out_dir.join(gone));
            }
            next.parts.push(Part { name, keys });
        }
        for part in &next.parts {
            let to = out_dir.join(&part.name);
            if !to.exists() {
                let Some(previous) = previous else {
                    return Err(StoreError::Encode {
                        table,
                        message: format!("part {} has no generation to link from", part.name),
                    });
                };
                fs::hard_link(previous.join(table).join(&part.name), &to)
                    .map_err(|e| StoreError::io("link", &to, e))?;
            }
        }
        write_buckets(&out_dir, table, OPEN_PART, open.into_iter())?;
        Ok(next)
    }

    fn new_name(&mut self) -> String {
        let name = format!("part-{:08}.parquet", self.next);
        self.next += 1;
        name
    }
}

fn part_number(name: &str) -> Option<u64> {
    name.strip_prefix("part-")?
        .strip_suffix(".parquet")?
        .parse()
        .ok()
}
