//! Arrow batches and Parquet files: how earshot's five tables sit on disk.
//!
//! A data directory holds generations: `gen-000042/` with `streams.parquet`, a directory of Parquet
//! parts for each append-only table (`events/part-00000001.parquet`, …; `rejects/…`), for `buckets/`
//! and `rollups/` (parts of final rows written once, plus `open.parquet`) and for `sessions/` (parts
//! of changed rows with a `version`), a `manifest.json` (with, for Kafka, `engine.state`, the
//! engine's saved state), and a symlink
//! `current` naming the newest complete one. A generation is written under a temporary name, synced,
//! renamed into place, and only then does `current` move (a symlink replaced by `rename`, which is
//! atomic). A crash at any instant leaves `current` on a whole, older generation; a reader that
//! resolved `current` keeps a consistent set of tables even while a newer one is committed. The
//! previous generation is kept, so such a reader is not cut off mid-query.
//!
//! This crate writes and locates files; it computes no figure (those come from `earshot-core`) and
//! runs no query (that is `earshot-sql`).

mod figure_parts;
mod files;
mod generation;
mod manifest;
mod reader;
mod schema;
mod session_parts;
mod writer;

use std::path::{Path, PathBuf};

pub use figure_parts::FIGURE_PART_TABLES;
pub use files::{
    Depth, FILE_LIST, FileEntry, FileList, files_under, mark_verified, write_file_list,
};
pub use generation::{CheckpointWith, Generation, PART_TABLES, part_files};
pub use manifest::{EngineState, KafkaPosition, Manifest, ManifestInput, ManifestSettings};
pub use reader::{StoredEvent, read_manifest, stored_events, stored_events_from};
pub use schema::{SESSION_VERSION, TABLES, sessions_part_schema, table_schema};
pub use session_parts::SessionRows;
pub use writer::REJECT_PAYLOAD_BYTES;

/// Name of the symlink to the newest complete generation.
pub const CURRENT: &str = "current";

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The user pointed at something that is not (yet) an earshot data directory.
    #[error(
        "{path} holds no earshot data\n  hint: run `earshot ingest --input FILE --data {path}` first"
    )]
    NoData { path: String },
    /// Another process is writing to the same data directory.
    #[error(
        "another earshot process is writing to {path}\n  hint: stop it first, or give this one its own --data directory"
    )]
    Busy { path: String },
    /// The disk or file system refused (permissions, space). Retrying helps once that is fixed.
    #[error("cannot {action} {path}: {cause}\n  hint: {}", io_hint(cause))]
    Io {
        action: &'static str,
        path: String,
        /// Not a `source`: the message already says it, and error chains would say it twice.
        cause: std::io::Error,
    },
    /// A generation lacks a file its list names, has one it does not, or a file differs from it.
    #[error(
        "the tables in {generation} are not whole: {file} {problem}\n  hint: nothing was read from them; restore the file from a backup or ingest again (`earshot check --data DIR` checks every file)"
    )]
    NotWhole {
        generation: String,
        file: String,
        problem: String,
    },
    /// Building Arrow batches or Parquet files failed: a bug in earshot.
    #[error(
        "internal error writing {table}: {message} (this is a bug in earshot; please report it)"
    )]
    Encode {
        table: &'static str,
        message: String,
    },
}

/// What to do about a file-system error, by its kind.
fn io_hint(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::StorageFull => {
            "the disk holding the data directory is full: free space (or point --data at another disk) and run again; nothing half-written was kept"
        }
        ErrorKind::QuotaExceeded => {
            "your disk quota is used up: free space or raise the quota, then run again; nothing half-written was kept"
        }
        ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied => {
            "the data directory cannot be written here: use a writable --data directory"
        }
        _ => "check that the directory exists, is writable and has free space",
    }
}

impl StoreError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> StoreError {
        StoreError::Io {
            action,
            path: path.display().to_string(),
            cause: source,
        }
    }
}

/// The directory of the current generation of a data directory, checked against its file list
/// ([`Depth::Sizes`]): the one door every reader opens tables by, so that a missing, truncated or
/// added file is an error naming it, never an empty or a bigger table.
pub fn current_generation(data_dir: &Path) -> Result<PathBuf, StoreError> {
    let generation = resolve_current(data_dir)?;
    FileList::verify(&generation, Depth::Sizes)?;
    Ok(generation)
}

/// [`current_generation`], or `None` when the directory holds no data yet; a generation that is
/// not whole is still an error.
pub fn current_generation_if_any(data_dir: &Path) -> Result<Option<PathBuf>, StoreError> {
    match current_generation(data_dir) {
        Ok(generation) => Ok(Some(generation)),
        Err(StoreError::NoData { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where `current` points, not yet checked (to see whether it moved; read nothing through it).
pub fn resolve_current(data_dir: &Path) -> Result<PathBuf, StoreError> {
    let link = data_dir.join(CURRENT);
    match std::fs::canonicalize(&link) {
        Ok(p) if p.is_dir() => Ok(p),
        _ => Err(StoreError::NoData {
            path: data_dir.display().to_string(),
        }),
    }
}

/// Where `table` lives in a generation: a directory of Parquet parts (`events`, `rejects`, and
/// `buckets`, `rollups` and `sessions` since they are written in parts), or else one Parquet file
/// (a generation written before).
pub fn table_location(generation: &Path, table: &str) -> PathBuf {
    let dir = generation.join(table);
    if PART_TABLES.contains(&table) || dir.is_dir() {
        dir
    } else {
        generation.join(format!("{table}.parquet"))
    }
}
