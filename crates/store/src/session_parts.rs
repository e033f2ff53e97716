//! `sessions` as a directory of parts, so that a checkpoint writes the sessions that changed.
//!
//! A session's row changes as long as its events arrive, so unlike a final bucket it is never
//! written once for good. Each part holds the rows of the sessions that changed since the part
//! before it, and a `version` column (the part's number). The table is, per (stream, session), the
//! row with the largest version: that is the view `earshot sql` registers (`earshot-sql`), a
//! hash aggregate and join over the parts.
//!
//! The parts are rewritten as one (every row, from the engine) when they would hold more than twice
//! as many rows as the table, or number [`MAX_PARTS`]: a query then reads at most twice the table,
//! and a checkpoint writes on average at most about twice what changed (or a sixteenth of the table).

use std::fs::{self, File};
use std::path::Path;

use earshot_core::SessionRow;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::StoreError;
use crate::writer::write_sessions;

/// Most parts before they are rewritten as one.
pub const MAX_PARTS: usize = 16;

/// The rows a checkpoint gives for `sessions`.
#[derive(Clone, Copy, Debug)]
pub enum SessionRows<'a> {
    /// Every row: the table is written again as one part.
    All(&'a [SessionRow]),
    /// The rows of the sessions that changed since the last checkpoint, added as a part (with no
    /// rows, nothing is written). Only over a generation that has parts already (see
    /// [`crate::Generation::sessions_rewrite_due`]).
    Changed(&'a [SessionRow]),
}

#[derive(Clone, Debug, Default)]
pub(crate) struct SessionParts {
    /// Name and rows of each part, oldest first.
    parts: Vec<(String, u64)>,
}

impl SessionParts {
    /// The parts of `generation`, or none when it has the table as one file (an older layout) or
    /// not at all: the next checkpoint then writes every row.
    pub fn resume(generation: &Path) -> Result<SessionParts, StoreError> {
        let dir = generation.join("sessions");
        let mut out = SessionParts::default();
        if !dir.is_dir() {
            return Ok(out);
        }
        for path in crate::part_files(generation, "sessions")? {
            let file = File::open(&path).map_err(|e| StoreError::io("open", &path, e))?;
            let rows = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| StoreError::Encode {
                    table: "sessions",
                    message: format!("{}: {e}", path.display()),
                })?
                .metadata()
                .file_metadata()
                .num_rows();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.parts.push((name, rows.max(0) as u64));
        }
        Ok(out)
    }

    /// Whether the next checkpoint should give every row: there are no parts yet, or with
    /// `changed` more rows they would be too many.
    pub fn rewrite_due(&self, changed: usize, total: usize) -> bool {
        let held: u64 = self.parts.iter().map(|(_, n)| n).sum();
        self.parts.is_empty()
            || self.parts.len() >= MAX_PARTS
            || held + changed as u64 > 2 * total.max(1) as u64
    }

    /// Writes `rows` into `dir/sessions/` of a new generation as part `name` (number `version`),
    /// linking the parts of `previous` that stay. `self` is unchanged.
    pub fn publish(
        &self,
        dir: &Path,
        previous: Option<&Path>,
        rows: Option<SessionRows<'_>>,
        name: &str,
        version: i64,
    ) -> Result<SessionParts, StoreError> {
        let out_dir = dir.join("sessions");
        fs::create_dir(&out_dir).map_err(|e| StoreError::io("create", &out_dir, e))?;
        let mut next = self.clone();
        let new = match rows {
            None => None,
            Some(SessionRows::All(rows)) => {
                next.parts.clear();
                Some(rows)
            }
            Some(SessionRows::Changed(rows)) if self.parts.is_empty() => {
                return Err(StoreError::Encode {
                    table: "sessions",
                    message: format!(
                        "{} changed rows given, but there are no earlier parts to add them to",
                        rows.len()
                    ),
                });
            }
            Some(SessionRows::Changed(rows)) => (!rows.is_empty()).then_some(rows),
        };
        for (part, _) in &next.parts {
            let to = out_dir.join(part);
            let from = previous
                .map(|p| p.join("sessions").join(part))
                .ok_or_else(|| StoreError::Encode {
                    table: "sessions",
                    message: format!("part {part} has no generation to link from"),
                })?;
            fs::hard_link(from, &to).map_err(|e| StoreError::io("link", &to, e))?;
        }
        if let Some(rows) = new {
            write_sessions(&out_dir, name, rows, version)?;
            next.parts.push((name.to_owned(), rows.len() as u64));
        }
        Ok(next)
    }

    /// The largest part number, for numbering the parts after a resume.
    pub fn last_number(&self) -> Option<u64> {
        self.parts
            .iter()
            .filter_map(|(name, _)| {
                name.strip_prefix("part-")?
                    .strip_suffix(".parquet")?
                    .parse()
                    .ok()
            })
            .max()
    }
}
