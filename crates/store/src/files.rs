//! What a generation holds, verified: `files.json` lists every file of the generation with its
//! size and BLAKE3 hash, and readers trust that list, never a directory listing.
//!
//! The list is written last, after every table, and synced before the generation is renamed into
//! place. A file hard-linked from the previous generation (a part written once and kept) takes its
//! entry from the previous list when it is the very same file (same inode), so a checkpoint hashes
//! only what it wrote.
//!
//! Two depths of checking: [`Depth::Sizes`] (each listed file present with its size and not
//! modified after the list was written, no file that is not listed: a `stat` per file, made
//! whenever a reader opens a generation) and
//! [`Depth::Full`] (also every byte hashed: `earshot check`, and a generation pulled from a bucket).
//! The engine's saved state is not listed: it only makes a restart faster, carries its own
//! checksum, and a state that fails it is replaced by replaying the events.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// The file list's name in a generation directory.
pub const FILE_LIST: &str = "files.json";

/// Names in a generation directory that are not listed (see the module docs).
const UNLISTED: [&str; 2] = [FILE_LIST, crate::generation::STATE_FILE];

/// One listed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub bytes: u64,
    /// BLAKE3 of the file's bytes, in hex (what `b3sum` prints).
    pub blake3: String,
}

/// A generation's `files.json`: path relative to the generation (with `/`) → entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileList {
    pub files: BTreeMap<String, FileEntry>,
}

/// How much of a generation to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Every listed file present with its size; nothing unlisted where tables are read from.
    Sizes,
    /// Also every byte, against the hash.
    Full,
}

/// Why a generation is not whole.
fn not_whole(generation: &Path, file: &str, problem: String) -> StoreError {
    StoreError::NotWhole {
        generation: generation.display().to_string(),
        file: file.to_owned(),
        problem,
    }
}

impl FileList {
    /// Reads `generation`'s list.
    pub fn read(generation: &Path) -> Result<FileList, StoreError> {
        let path = generation.join(FILE_LIST);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(not_whole(
                    generation,
                    FILE_LIST,
                    "is missing, so no file of it can be trusted (a generation written by an earshot before 0.9 has none: ingest again)".into(),
                ));
            }
            Err(e) => return Err(StoreError::io("read", &path, e)),
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| not_whole(generation, FILE_LIST, format!("does not parse: {e}")))
    }

    /// Lists every file of the generation being written in `dir`, reusing `previous`'s entries for
    /// the files hard-linked from `previous_dir`, and writes the list (synced) into `dir`.
    pub(crate) fn write(
        dir: &Path,
        previous: Option<(&Path, &FileList)>,
    ) -> Result<FileList, StoreError> {
        let mut list = FileList::default();
        let mut to_hash = Vec::new();
        for (rel, path) in files_under(dir)? {
            if UNLISTED.contains(&rel.as_str()) {
                continue;
            }
            let meta = fs::metadata(&path).map_err(|e| StoreError::io("read", &path, e))?;
            let kept = previous.and_then(|(prev_dir, prev)| {
                let entry = prev.files.get(&rel)?;
                let old = fs::metadata(prev_dir.join(&rel)).ok()?;
                (old.dev() == meta.dev() && old.ino() == meta.ino() && entry.bytes == meta.len())
                    .then(|| entry.clone())
            });
            match kept {
                Some(entry) => {
                    list.files.insert(rel, entry);
                }
                None => to_hash.push((rel, path)),
            }
        }
        for (rel, entry) in hash_all(&to_hash)? {
            list.files.insert(rel, entry);
        }
        let path = dir.join(FILE_LIST);
        let json = serde_json::to_vec_pretty(&list).map_err(|e| StoreError::Encode {
            table: "files",
            message: e.to_string(),
        })?;
        let mut file = File::create(&path).map_err(|e| StoreError::io("create", &path, e))?;
        file.write_all(&json)
            .and_then(|()| file.sync_all())
            .map_err(|e| StoreError::io("write", &path, e))?;
        Ok(list)
    }

    /// Checks `generation` against its list: the first problem found is the error, naming the
    /// file and the generation.
    pub fn verify(generation: &Path, depth: Depth) -> Result<FileList, StoreError> {
        let list = FileList::read(generation)?;
        let list_path = generation.join(FILE_LIST);
        let listed_at = fs::metadata(&list_path)
            .and_then(|m| m.modified())
            .map_err(|e| StoreError::io("read", &list_path, e))?;
        for (rel, entry) in &list.files {
            let path = generation.join(rel);
            let meta = match fs::metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(not_whole(
                        generation,
                        rel,
                        format!("is missing (the file list says {} bytes)", entry.bytes),
                    ));
                }
                Err(e) => return Err(StoreError::io("read", &path, e)),
            };
            if meta.len() != entry.bytes {
                return Err(not_whole(
                    generation,
                    rel,
                    format!(
                        "has {} bytes where the file list says {}",
                        meta.len(),
                        entry.bytes
                    ),
                ));
            }
            // Written after the list was: perhaps changed in place (same size, other bytes, as an
            // editor or `dd` leaves it), perhaps only copied without its times (`cp -r`). The time
            // is only the fast path: such a file is hashed, and refused only if it differs.
            if depth == Depth::Sizes
                && meta.modified().is_ok_and(|m| m > listed_at)
                && hash_file(&path)? != *entry
            {
                return Err(not_whole(
                    generation,
                    rel,
                    "was modified after the generation was written, and its BLAKE3 differs from the list's".into(),
                ));
            }
        }
        // Tables are read from directories too (parts): a file there that the list does not name
        // would be read as rows of the table.
        for (rel, _) in files_under(generation)? {
            if !UNLISTED.contains(&rel.as_str()) && !list.files.contains_key(&rel) {
                return Err(not_whole(
                    generation,
                    &rel,
                    "is not in the file list: it was added after the generation was written".into(),
                ));
            }
        }
        if depth == Depth::Full {
            let files: Vec<(String, PathBuf)> = list
                .files
                .keys()
                .map(|rel| (rel.clone(), generation.join(rel)))
                .collect();
            for (rel, got) in hash_all(&files)? {
                if got != list.files[&rel] {
                    return Err(not_whole(
                        generation,
                        &rel,
                        format!(
                            "has changed: its BLAKE3 is {} where the file list says {}",
                            got.blake3, list.files[&rel].blake3
                        ),
                    ));
                }
            }
        }
        Ok(list)
    }
}

/// Hashes files on every core, each whole.
fn hash_all(files: &[(String, PathBuf)]) -> Result<Vec<(String, FileEntry)>, StoreError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((rel, path)) = files.get(i) else {
                            return Ok(out);
                        };
                        out.push((rel.clone(), hash_file(path)?));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(StoreError::Encode {
                        table: "files",
                        message: "a hashing thread panicked".into(),
                    })
                })
            })
            .collect::<Vec<Result<Vec<_>, StoreError>>>()
    });
    let mut all = Vec::with_capacity(files.len());
    for r in results {
        all.extend(r?);
    }
    Ok(all)
}

fn hash_file(path: &Path) -> Result<FileEntry, StoreError> {
    let mut file = File::open(path).map_err(|e| StoreError::io("read", path, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| StoreError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok(FileEntry {
        bytes,
        blake3: hasher.finalize().to_hex().to_string(),
    })
}

/// Every file under `root`, as (path relative to it with `/`, path), sorted: what a generation
/// holds (the file list's view, and what a push to a bucket uploads).
pub fn files_under(root: &Path) -> Result<Vec<(String, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    let mut dirs = vec![(String::new(), root.to_owned())];
    while let Some((rel, dir)) = dirs.pop() {
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::io("read", &dir, e))? {
            let entry = entry.map_err(|e| StoreError::io("read", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let sub = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let kind = entry
                .file_type()
                .map_err(|e| StoreError::io("read", &dir, e))?;
            if kind.is_dir() {
                dirs.push((sub, entry.path()));
            } else {
                out.push((sub, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Marks a generation whose every byte was just checked ([`Depth::Full`]) as checked now: its files
/// were written in another order (downloaded from a bucket), so the list must be newest.
pub fn mark_verified(generation: &Path) -> Result<(), StoreError> {
    let path = generation.join(FILE_LIST);
    File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()))
        .map_err(|e| StoreError::io("write", &path, e))
}

/// Writes the file list of a generation directory assembled by other means (a test's, a tool's),
/// hashing every file in it.
pub fn write_file_list(generation: &Path) -> Result<FileList, StoreError> {
    FileList::write(generation, None)
}
