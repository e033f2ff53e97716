//! A data directory's generations: events and rejects appended as parts, the derived tables and
//! the manifest published atomically as a new generation at each checkpoint.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use earshot_contract::{Event, Millis};
use earshot_core::{Engine, Snapshot};

use crate::figure_parts::{FIGURE_PART_TABLES, FinalParts};
use crate::files::FileList;
use crate::manifest::{EngineState, Manifest};
use crate::session_parts::{SessionParts, SessionRows};
use crate::writer::{
    BATCH_ROWS, Closing, EventRows, REJECT_PAYLOAD_BYTES, RejectColumns, TableFile, closed,
    write_streams,
};
use crate::{CURRENT, StoreError};

/// Where a generation's events and rejects live: one directory per table, holding Parquet parts
/// named `part-NNNNNNNN.parquet` in the order they were written (arrival order across parts).
pub const PART_TABLES: [&str; 2] = ["events", "rejects"];

fn part_name(n: u64) -> String {
    format!("part-{n:08}.parquet")
}

/// The part files of `table` in `generation`, in the order they were written.
pub fn part_files(generation: &Path, table: &str) -> Result<Vec<PathBuf>, StoreError> {
    let dir = generation.join(table);
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).map_err(|e| StoreError::io("read", &dir, e))? {
        let entry = entry.map_err(|e| StoreError::io("read", &dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("part-") && name.ends_with(".parquet") {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Events and rejects being appended to a data directory, with the derived tables rewritten at
/// every [`Generation::checkpoint`]. Rows pushed since the last checkpoint are invisible to readers.
///
/// Events and rejects only ever grow, so a checkpoint does not rewrite them: it closes the part
/// written since the previous checkpoint and hard-links the earlier parts into the new generation.
pub struct Generation {
    /// Held (locked) for as long as this writer lives.
    _lock: File,
    data_dir: PathBuf,
    /// Where open parts are written before a checkpoint moves them into a generation.
    staging: PathBuf,
    /// The generation the committed parts are linked from (none before the first checkpoint).
    previous: Option<PathBuf>,
    /// File names of the committed parts, per table (same order as [`PART_TABLES`]).
    committed: [Vec<String>; 2],
    /// Parts closed since the last checkpoint (in `staging/<table>/`), per table.
    closed: [Vec<String>; 2],
    next_part: u64,
    /// The engine state the last generation carries (written then, or linked from before).
    state: Option<EngineState>,
    /// `buckets` and `rollups`: what the last generation holds (same order as
    /// [`FIGURE_PART_TABLES`]).
    figures: [FinalParts; 2],
    /// `sessions`: what the last generation holds.
    sessions: SessionParts,
    events: Option<TableFile<EventRows>>,
    event_rows: EventRows,
    rejects: Option<TableFile>,
    reject_rows: RejectColumns,
    /// Parts of `events` and `rejects` (the index in [`PART_TABLES`]) whose input has ended,
    /// still being encoded and synced: the next checkpoint waits for them and names them.
    closing: Vec<(usize, Closing)>,
}

impl Generation {
    /// Starts a fresh data set in `data_dir` (created if missing); its first checkpoint replaces
    /// whatever was current.
    pub fn begin(data_dir: &Path) -> Result<Generation, StoreError> {
        let mut g = Generation::open(data_dir, None)?;
        // Every generation has at least one part per table, so that any tool can read it.
        g.events = Some(g.new_events_part()?);
        g.rejects = Some(g.new_part(1)?);
        Ok(g)
    }

    /// Continues the current generation of `data_dir`: its events and rejects are kept and new rows
    /// are appended after them.
    pub fn resume(data_dir: &Path) -> Result<Generation, StoreError> {
        let current = crate::current_generation(data_dir)?;
        let mut g = Generation::open(data_dir, Some(current.clone()))?;
        for (i, table) in PART_TABLES.iter().enumerate() {
            for path in part_files(&current, table)? {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if let Some(n) = name
                    .strip_prefix("part-")
                    .and_then(|s| s.strip_suffix(".parquet"))
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    g.next_part = g.next_part.max(n + 1);
                }
                g.committed[i].push(name);
            }
        }
        for (i, table) in FIGURE_PART_TABLES.into_iter().enumerate() {
            g.figures[i] = FinalParts::resume(table, &current)?;
        }
        g.sessions = SessionParts::resume(&current)?;
        if let Some(n) = g.sessions.last_number() {
            g.next_part = g.next_part.max(n + 1);
        }
        // A state the manifest names but the directory lacks is not carried on.
        g.state = crate::read_manifest(&current)
            .ok()
            .and_then(|m| m.engine_state)
            .filter(|st| current.join(&st.file).is_file());
        Ok(g)
    }

    fn open(data_dir: &Path, previous: Option<PathBuf>) -> Result<Generation, StoreError> {
        fs::create_dir_all(data_dir).map_err(|e| StoreError::io("create", data_dir, e))?;
        // One writer per data directory: an advisory lock that the kernel releases when the
        // process ends, however it ends.
        let lock_path = data_dir.join(".writer.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::io("create", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Busy {
                    path: data_dir.display().to_string(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(StoreError::io("lock", &lock_path, e)),
        }
        // Debris of a writer that was killed: never visible to readers, safe to remove. (One
        // writer per data directory at a time.)
        for entry in fs::read_dir(data_dir).map_err(|e| StoreError::io("read", data_dir, e))? {
            let entry = entry.map_err(|e| StoreError::io("read", data_dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".gen-tmp-") || name.starts_with(".staging-") {
                fs::remove_dir_all(entry.path())
                    .map_err(|e| StoreError::io("clear", &entry.path(), e))?;
            } else if name.starts_with(".current-tmp-") {
                fs::remove_file(entry.path())
                    .map_err(|e| StoreError::io("clear", &entry.path(), e))?;
            }
        }
        let staging = data_dir.join(format!(".staging-{}", std::process::id()));
        for table in PART_TABLES {
            let dir = staging.join(table);
            fs::create_dir_all(&dir).map_err(|e| StoreError::io("create", &dir, e))?;
        }
        Ok(Generation {
            _lock: lock,
            data_dir: data_dir.to_owned(),
            staging,
            previous,
            committed: Default::default(),
            closed: Default::default(),
            next_part: 1,
            state: None,
            figures: FIGURE_PART_TABLES.map(FinalParts::new),
            sessions: SessionParts::default(),
            events: None,
            event_rows: EventRows::default(),
            rejects: None,
            reject_rows: RejectColumns::default(),
            closing: Vec::new(),
        })
    }

    fn new_part(&mut self, table: usize) -> Result<TableFile, StoreError> {
        let name = part_name(self.next_part);
        self.next_part += 1;
        TableFile::create(
            &self.staging.join(PART_TABLES[table]),
            PART_TABLES[table],
            name,
        )
    }

    fn new_events_part(&mut self) -> Result<TableFile<EventRows>, StoreError> {
        let name = part_name(self.next_part);
        self.next_part += 1;
        TableFile::create_events(&self.staging.join(PART_TABLES[0]), name)
    }

    fn write_events(&mut self) -> Result<(), StoreError> {
        if self.events.is_none() {
            self.events = Some(self.new_events_part()?);
        }
        let events = self.events.as_mut().ok_or_else(|| closed("events"))?;
        // The rows go to the encoder thread; an emptied batch it handed back takes their place.
        let spare = events.reusable().unwrap_or_default();
        events.write(std::mem::replace(&mut self.event_rows, spare))
    }

    fn write_rejects(&mut self) -> Result<(), StoreError> {
        if self.rejects.is_none() {
            self.rejects = Some(self.new_part(1)?);
        }
        let cols = self.reject_rows.finish();
        self.rejects
            .as_mut()
            .ok_or_else(|| closed("rejects"))?
            .write(cols)
    }

    /// Hands the rows pushed so far to their tables' encoder threads and ends the open parts'
    /// input, so that encoding and syncing them overlaps with what the caller does next (the
    /// final snapshot of a file ingest) instead of waiting for the checkpoint, which names them.
    /// Rows pushed after this go to new parts.
    pub fn flush_rows(&mut self) -> Result<(), StoreError> {
        if self.event_rows.len() > 0 {
            self.write_events()?;
        }
        if self.reject_rows.rows > 0 {
            self.write_rejects()?;
        }
        if let Some(part) = self.events.take() {
            self.closing.push((0, part.close()));
        }
        if let Some(part) = self.rejects.take() {
            self.closing.push((1, part.close()));
        }
        Ok(())
    }

    /// Adds a finished Parquet part of `table` (`events` or `rejects`) written elsewhere on the
    /// same file system, hard-linked, after the parts written so far: the next checkpoint
    /// publishes it. (A union of workers' data directories is one generation of their parts.)
    pub fn adopt_part(&mut self, table: &str, file: &Path) -> Result<(), StoreError> {
        let i = PART_TABLES
            .iter()
            .position(|t| *t == table)
            .ok_or_else(|| StoreError::Encode {
                table: "generation",
                message: format!("{table} is not a table of parts"),
            })?;
        let name = part_name(self.next_part);
        self.next_part += 1;
        let to = self.staging.join(table).join(&name);
        fs::hard_link(file, &to).map_err(|e| StoreError::io("link", &to, e))?;
        self.closed[i].push(name);
        Ok(())
    }

    /// Appends one valid, de-duplicated event (late or not) to the `events` table; its `source` is
    /// written as `SOURCE:POSITION` (a line number) or `SOURCE@POSITION` (a Kafka offset): the
    /// caller passes the separator as the end of `source`.
    pub fn push_event(
        &mut self,
        e: Event,
        late: bool,
        source: &str,
        position: u64,
    ) -> Result<(), StoreError> {
        self.event_rows.push(e, late, source, position);
        if self.event_rows.len() >= BATCH_ROWS {
            self.write_events()?;
        }
        Ok(())
    }

    /// Appends one rejected message to the `rejects` table (its first 4 KiB).
    pub fn push_reject(
        &mut self,
        source: &str,
        received_at: Millis,
        code: &str,
        reason: &str,
        payload: &[u8],
    ) -> Result<(), StoreError> {
        let kept = &payload[..payload.len().min(REJECT_PAYLOAD_BYTES)];
        self.reject_rows
            .push(source, received_at, code, reason, kept);
        if self.reject_rows.rows >= BATCH_ROWS {
            self.write_rejects()?;
        }
        Ok(())
    }

    /// Publishes everything pushed so far with the derived tables of `snapshot` and `manifest` as a
    /// new generation, atomically; the writer stays open for more rows. Returns the generation's
    /// directory.
    pub fn checkpoint(
        &mut self,
        snapshot: &Snapshot,
        manifest: &Manifest,
    ) -> Result<PathBuf, StoreError> {
        let with = CheckpointWith {
            sessions: SessionRows::All(&snapshot.sessions),
            state: None,
        };
        self.checkpoint_with(snapshot, manifest, with)
    }

    /// [`Generation::checkpoint`], with what `with` says: which `sessions` rows to write (then
    /// `snapshot.sessions` is not read), and whether to save the engine's state.
    pub fn checkpoint_with(
        &mut self,
        snapshot: &Snapshot,
        manifest: &Manifest,
        with: CheckpointWith<'_>,
    ) -> Result<PathBuf, StoreError> {
        // Close the open parts: a part is immutable once a generation names it.
        self.flush_rows()?;
        for (i, part) in std::mem::take(&mut self.closing) {
            self.closed[i].push(part.name.clone());
            part.finish()?;
        }

        let number = next_generation_number(&self.data_dir)?;
        let tmp_dir = self
            .data_dir
            .join(format!(".gen-tmp-{}-{number}", std::process::id()));
        let part = self.next_part;
        self.next_part += 1;
        let full = Full {
            manifest,
            sessions: with.sessions,
            sessions_part: part,
            state: with.state,
        };
        let done = match self.publish(&tmp_dir, number, snapshot, Some(full)) {
            Ok(done) => done,
            Err(e) => {
                // A full disk, say: leave nothing behind that would keep it full, and keep the
                // closed parts in staging so a later checkpoint can still publish them.
                self.undo(&tmp_dir);
                return Err(e);
            }
        };
        for i in 0..PART_TABLES.len() {
            let moved = std::mem::take(&mut self.closed[i]);
            self.committed[i].extend(moved);
        }
        let dir = self.published(done);
        remove_old_generations(&self.data_dir, number)?;
        Ok(dir)
    }

    /// The new generation is current: remember what it holds.
    fn published(&mut self, done: Published) -> PathBuf {
        self.previous = Some(done.dir.clone());
        self.state = done.state;
        self.figures = done.figures;
        self.sessions = done.sessions;
        done.dir
    }

    /// Whether the next checkpoint should give every `sessions` row rather than the `changed`
    /// ones, the table having `total` rows: see [`crate::session_parts`].
    pub fn sessions_rewrite_due(&self, changed: usize, total: usize) -> bool {
        self.sessions.rewrite_due(changed, total)
    }

    /// The engine state the last generation carries.
    pub fn engine_state(&self) -> Option<&EngineState> {
        self.state.as_ref()
    }

    /// Stops carrying the last generation's engine state on (it would not load): the next
    /// checkpoint saves a new one or none.
    pub fn forget_engine_state(&mut self) {
        self.state = None;
    }

    /// Publishes new `streams`, `buckets` and `rollups` (from `snapshot`; its sessions are not
    /// read) over the last checkpoint, whose events, rejects, sessions and manifest are linked
    /// unchanged: the dashboards' tables move on between checkpoints, and a restart still resumes
    /// from the checkpoint (the manifest's offsets are its). Needs a checkpoint first.
    pub fn publish_figures(&mut self, snapshot: &Snapshot) -> Result<PathBuf, StoreError> {
        if self.previous.is_none() {
            return Err(StoreError::Encode {
                table: "streams",
                message: "figures can only be published over a checkpoint, and there is none yet"
                    .into(),
            });
        }
        let number = next_generation_number(&self.data_dir)?;
        let tmp_dir = self
            .data_dir
            .join(format!(".gen-tmp-{}-{number}", std::process::id()));
        let done = match self.publish(&tmp_dir, number, snapshot, None) {
            Ok(done) => done,
            Err(e) => {
                self.undo(&tmp_dir);
                return Err(e);
            }
        };
        let dir = self.published(done);
        remove_old_generations(&self.data_dir, number)?;
        Ok(dir)
    }

    /// Writes generation `number` in `tmp_dir`, then makes it current. With a manifest: links to
    /// the committed parts, the closed parts moved in, every derived table and the manifest.
    /// Without: links to the committed parts, new `streams`, `buckets` and `rollups`, and the
    /// previous generation's `sessions` and manifest.
    fn publish(
        &self,
        tmp_dir: &Path,
        number: u64,
        snapshot: &Snapshot,
        full: Option<Full<'_>>,
    ) -> Result<Published, StoreError> {
        let tmp_dir = tmp_dir.to_path_buf();
        fs::create_dir(&tmp_dir).map_err(|e| StoreError::io("create", &tmp_dir, e))?;
        for (i, table) in PART_TABLES.iter().enumerate() {
            let dir = tmp_dir.join(table);
            fs::create_dir(&dir).map_err(|e| StoreError::io("create", &dir, e))?;
            if let Some(prev) = &self.previous {
                for name in &self.committed[i] {
                    let to = dir.join(name);
                    fs::hard_link(prev.join(table).join(name), &to)
                        .map_err(|e| StoreError::io("link", &to, e))?;
                }
            }
            if full.is_some() {
                for name in &self.closed[i] {
                    let to = dir.join(name);
                    fs::rename(self.staging.join(table).join(name), &to)
                        .map_err(|e| StoreError::io("move", &to, e))?;
                }
            }
            sync_dir(&dir)?;
        }
        let [buckets, rollups] = &self.figures;
        let previous = self.previous.as_deref();
        // The four tables are independent files: each is encoded and synced on a thread of its
        // own, so the end of an ingest waits for the largest, not for their sum.
        let (streams, buckets, rollups, sessions) = std::thread::scope(|scope| {
            let dir = tmp_dir.as_path();
            let streams = scope.spawn(move || write_streams(dir, snapshot));
            let buckets = scope.spawn(move || buckets.publish(dir, previous, &snapshot.buckets));
            let rollups = scope.spawn(move || rollups.publish(dir, previous, &snapshot.rollups));
            let sessions = match &full {
                Some(full) => self.sessions.publish(
                    dir,
                    previous,
                    Some(full.sessions),
                    &part_name(full.sessions_part),
                    full.sessions_part as i64,
                ),
                None => self.sessions.publish(dir, previous, None, "", 0),
            };
            (joined(streams), joined(buckets), joined(rollups), sessions)
        });
        streams?;
        let figures = [buckets?, rollups?];
        let sessions = sessions?;
        let manifest_path = tmp_dir.join("manifest.json");
        let link = |name: &str| -> Result<(), StoreError> {
            let prev = self.previous.as_ref().ok_or_else(|| closed("sessions"))?;
            let to = tmp_dir.join(name);
            fs::hard_link(prev.join(name), &to).map_err(|e| StoreError::io("link", &to, e))
        };
        let state = match full {
            Some(full) => {
                let state = match (full.state, &self.state) {
                    (Some(engine), _) => Some(self.save_state(&tmp_dir, engine, full.manifest)?),
                    (None, Some(kept)) => {
                        link(&kept.file)?;
                        Some(kept.clone())
                    }
                    (None, None) => None,
                };
                let manifest = Manifest {
                    engine_state: state.clone(),
                    ..full.manifest.clone()
                };
                let json =
                    serde_json::to_vec_pretty(&manifest).map_err(|e| StoreError::Encode {
                        table: "manifest",
                        message: e.to_string(),
                    })?;
                fs::write(&manifest_path, json)
                    .map_err(|e| StoreError::io("write", &manifest_path, e))?;
                state
            }
            None => {
                link("manifest.json")?;
                if let Some(kept) = &self.state {
                    link(&kept.file)?;
                }
                self.state.clone()
            }
        };
        // Last, the list of every file above: readers trust it, not the directory.
        let previous_list = previous.and_then(|p| FileList::read(p).ok().map(|l| (p, l)));
        FileList::write(&tmp_dir, previous_list.as_ref().map(|(p, l)| (*p, l)))?;
        sync_dir(&tmp_dir)?;

        let name = format!("gen-{number:06}");
        let final_dir = self.data_dir.join(&name);
        fs::rename(&tmp_dir, &final_dir).map_err(|e| StoreError::io("rename", &final_dir, e))?;
        let tmp_link = self
            .data_dir
            .join(format!(".current-tmp-{}", std::process::id()));
        let _ = fs::remove_file(&tmp_link);
        let current = self.data_dir.join(CURRENT);
        let switched = std::os::unix::fs::symlink(&name, &tmp_link)
            .map_err(|e| StoreError::io("link", &tmp_link, e))
            .and_then(|()| {
                fs::rename(&tmp_link, &current).map_err(|e| StoreError::io("rename", &current, e))
            });
        if let Err(e) = switched {
            // Not current: back to a temporary generation, for the caller to undo.
            let _ = fs::remove_file(&tmp_link);
            let _ = fs::rename(&final_dir, &tmp_dir);
            return Err(e);
        }
        sync_dir(&self.data_dir)?;
        Ok(Published {
            dir: final_dir,
            state,
            figures,
            sessions,
        })
    }

    /// Writes `engine`'s state into the new generation `dir`; it counts every event of the parts
    /// this checkpoint publishes.
    fn save_state(
        &self,
        dir: &Path,
        engine: &Engine,
        manifest: &Manifest,
    ) -> Result<EngineState, StoreError> {
        let path = dir.join(STATE_FILE);
        let mut file = File::create(&path).map_err(|e| StoreError::io("create", &path, e))?;
        // Not synced, unlike the tables: the state only makes a restart faster. A state cut short
        // by a power loss fails its checksum, and the restart replays every stored event instead
        // (and saves a sound one). Syncing hundreds of MB took most of a checkpoint that saved
        // one, on the consumer's thread, while dashboards waited for the next publish.
        engine
            .save_state(&mut file)
            .map_err(|e| StoreError::io("write", &path, e))?;
        let bytes = file
            .metadata()
            .map_err(|e| StoreError::io("write", &path, e))?
            .len();
        Ok(EngineState {
            file: STATE_FILE.into(),
            event_parts: (self.committed[0].len() + self.closed[0].len()) as u64,
            events: manifest.events,
            bytes,
        })
    }

    /// Undoes a failed [`Generation::publish`]: the closed parts go back to staging, the rest of
    /// the temporary generation is removed.
    fn undo(&self, tmp_dir: &Path) {
        for (i, table) in PART_TABLES.iter().enumerate() {
            for name in &self.closed[i] {
                let moved = tmp_dir.join(table).join(name);
                if moved.exists() {
                    let _ = fs::rename(&moved, self.staging.join(table).join(name));
                }
            }
        }
        // If even this fails, the next writer on this directory clears it (see `open`).
        let _ = fs::remove_dir_all(tmp_dir);
    }

    /// Publishes everything (see [`Generation::checkpoint`]) and closes the writer.
    pub fn commit(
        mut self,
        snapshot: &Snapshot,
        manifest: &Manifest,
    ) -> Result<PathBuf, StoreError> {
        self.checkpoint(snapshot, manifest)
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        // Rows not yet checkpointed leave nothing behind.
        let _ = fs::remove_dir_all(&self.staging);
    }
}

/// What [`Generation::publish`] made current.
struct Published {
    dir: PathBuf,
    state: Option<EngineState>,
    figures: [FinalParts; 2],
    sessions: SessionParts,
}

/// What a table-writing thread returned; its panic becomes an error.
fn joined<T>(h: std::thread::ScopedJoinHandle<'_, Result<T, StoreError>>) -> Result<T, StoreError> {
    h.join().unwrap_or_else(|_| {
        Err(StoreError::Encode {
            table: "generation",
            message: "a table-writing thread panicked".into(),
        })
    })
}

/// The saved engine state's file in a generation.
pub(crate) const STATE_FILE: &str = "engine.state";

/// What a checkpoint does beyond writing the tables.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointWith<'a> {
    /// The `sessions` rows to write: all of them, or those of the sessions that changed (see
    /// [`Generation::sessions_rewrite_due`]).
    pub sessions: SessionRows<'a>,
    /// Saves this engine's state, which must count every event pushed so far: a restart loads it
    /// and replays only the events stored after it. Without, the previous generation's state (if
    /// any) is carried on.
    pub state: Option<&'a Engine>,
}

/// A checkpoint's part of [`Generation::publish`].
struct Full<'a> {
    manifest: &'a Manifest,
    sessions: SessionRows<'a>,
    /// The number of the `sessions` part it may write.
    sessions_part: u64,
    state: Option<&'a Engine>,
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("sync", dir, e))
}

/// The generations in `data_dir`, as (number, directory name). A name may carry a suffix after
/// its number (`gen-000007-3fa2c1`: a generation pulled from object storage, see `earshot-remote`).
fn generation_numbers(data_dir: &Path) -> Result<Vec<(u64, String)>, StoreError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(data_dir).map_err(|e| StoreError::io("read", data_dir, e))? {
        let entry = entry.map_err(|e| StoreError::io("read", data_dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Some(n) = name
            .strip_prefix("gen-")
            .map(|s| s.split_once('-').map_or(s, |(n, _)| n))
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((n, name));
        }
    }
    Ok(out)
}

fn next_generation_number(data_dir: &Path) -> Result<u64, StoreError> {
    Ok(generation_numbers(data_dir)?
        .into_iter()
        .map(|(n, _)| n)
        .max()
        .unwrap_or(0)
        + 1)
}

/// Keeps the new generation and the one before it; readers of the old one are not cut off.
fn remove_old_generations(data_dir: &Path, newest: u64) -> Result<(), StoreError> {
    for (n, name) in generation_numbers(data_dir)? {
        if n + 1 < newest {
            let dir = data_dir.join(name);
            fs::remove_dir_all(&dir).map_err(|e| StoreError::io("remove", &dir, e))?;
        }
    }
    Ok(())
}
