//! Writing one generation: events and rejects streamed as they arrive, the derived tables at commit.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use earshot_contract::{Event, Millis};
use earshot_core::{BucketRow, Settings, Snapshot};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

use crate::{CURRENT, StoreError, table_schema};

const BATCH_ROWS: usize = 64 * 1024;
/// How much of a rejected payload is kept.
pub const REJECT_PAYLOAD_BYTES: usize = 4 * 1024;

/// What produced a generation: written as `manifest.json` beside the tables.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Manifest {
    pub earshot_version: String,
    pub contract_version: u32,
    pub settings: ManifestSettings,
    /// `development` when the built-in pseudonym key was used, `operator` otherwise.
    pub pseudonym_key: String,
    /// The pseudonym of a fixed, made-up id under the key used: equal across runs iff the key is.
    pub key_check: String,
    pub inputs: Vec<ManifestInput>,
    pub messages: u64,
    pub events: u64,
    pub counted: u64,
    pub late: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// For a Kafka ingest: where each partition was read up to (the checkpoint's offsets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaPosition>,
}

/// The consumed position of a Kafka ingest, stored with the tables it produced.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct KafkaPosition {
    pub topic: String,
    pub group: String,
    /// Per partition: the next offset to read (every message before it is in these tables).
    pub next_offsets: BTreeMap<i32, i64>,
    /// Per partition: messages read (each exactly once).
    pub messages: BTreeMap<i32, u64>,
    /// Payload bytes read.
    pub bytes: u64,
    /// Rejected messages sent to the dead-letter topic (at least once; see the README).
    pub dead_lettered: u64,
    /// Number of checkpoints written so far.
    pub checkpoints: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ManifestSettings {
    pub liveness_ms: i64,
    pub bucket_ms: i64,
    pub lateness_ms: i64,
    pub min_listen_ms: i64,
    /// Written since v1.1 of the contract (no single event moves time); absent in older manifests.
    pub max_jump_ms: i64,
}

impl From<&Settings> for ManifestSettings {
    fn from(s: &Settings) -> Self {
        ManifestSettings {
            liveness_ms: s.liveness_ms,
            bucket_ms: s.bucket_ms,
            lateness_ms: s.lateness_ms,
            min_listen_ms: s.min_listen_ms,
            max_jump_ms: s.max_jump_ms,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ManifestInput {
    /// `file:PATH` or `stdin`.
    pub source: String,
    /// Source partition number the input was read as.
    pub partition: u32,
    pub bytes: u64,
    pub messages: u64,
    /// SHA-256 (hex) of the bytes read from the input.
    pub sha256: String,
}

fn encode_err(table: &'static str) -> impl Fn(String) -> StoreError {
    move |message| StoreError::Encode { table, message }
}

/// A Parquet writer's error: the disk's own (no space, read-only, quota), said as such with the
/// file it was writing, or else an encoding error (a bug).
fn parquet_err<'a>(
    table: &'static str,
    path: &'a Path,
) -> impl Fn(ParquetError) -> StoreError + 'a {
    move |e| match e {
        ParquetError::External(inner) => match inner.downcast::<std::io::Error>() {
            Ok(io) => StoreError::io("write", path, *io),
            Err(other) => encode_err(table)(other.to_string()),
        },
        other => {
            let text = other.to_string();
            match os_error_in(&text) {
                Some(io) => StoreError::io("write", path, io),
                None => encode_err(table)(text),
            }
        }
    }
}

/// The file-system error a Parquet error carries only as text: the writer's final flush
/// (`into_inner`) reports "fail to get inner writer: … (os error 28)".
fn os_error_in(text: &str) -> Option<std::io::Error> {
    let (_, rest) = text.rsplit_once("(os error ")?;
    let code: i32 = rest.split_once(')')?.0.parse().ok()?;
    Some(std::io::Error::from_raw_os_error(code))
}

/// Columns whose values are (nearly) unique per row: a dictionary would only be built to be thrown
/// away when its page overflows, so they are written plain.
const UNIQUE_COLUMNS: [&str; 4] = ["event_id", "source", "session_id", "listener_key"];

/// Tables with a sketch per row, read by time window.
const SKETCH_TABLES: [&str; 2] = ["buckets", "rollups"];
/// Rows per data page in those tables: 64 dense sketches are about 1 MiB before compression.
const SKETCH_PAGE_ROWS: usize = 64;

/// A Parquet file being written under the temporary generation directory. Encoding and compression
/// run on a thread of their own, so the thread that counts only builds Arrow columns: batches go to
/// the encoder through a short queue, and [`TableFile::finish`] waits for the file to be complete
/// and on disk.
struct TableFile {
    table: &'static str,
    /// The file's name in its directory.
    name: String,
    schema: SchemaRef,
    batches: Option<mpsc::SyncSender<RecordBatch>>,
    encoder: Option<thread::JoinHandle<Result<(), StoreError>>>,
}

impl TableFile {
    fn create(dir: &Path, table: &'static str, name: String) -> Result<TableFile, StoreError> {
        let path = dir.join(&name);
        let file = File::create(&path).map_err(|e| StoreError::io("create", &path, e))?;
        let schema = table_schema(table).ok_or_else(|| StoreError::Encode {
            table,
            message: "no schema".into(),
        })?;
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_created_by(format!("earshot {}", env!("CARGO_PKG_VERSION")));
        for column in UNIQUE_COLUMNS {
            props = props.set_column_dictionary_enabled(ColumnPath::from(column), false);
        }
        if SKETCH_TABLES.contains(&table) {
            // Small pages, so that a query for a window reads (and decompresses) the sketches of
            // that window only: DataFusion skips the pages the page index puts outside it. The
            // page size is checked once per write batch, so that is small too.
            props = props
                .set_data_page_row_count_limit(SKETCH_PAGE_ROWS)
                .set_write_batch_size(SKETCH_PAGE_ROWS);
        }
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props.build()))
            .map_err(parquet_err(table, &path))?;
        let (batches, queue) = mpsc::sync_channel::<RecordBatch>(2);
        let encoder = thread::Builder::new()
            .name(format!("earshot-{table}-writer"))
            .spawn(move || {
                for batch in queue {
                    writer.write(&batch).map_err(parquet_err(table, &path))?;
                }
                let file = writer.into_inner().map_err(parquet_err(table, &path))?;
                file.sync_all()
                    .map_err(|e| StoreError::io("sync", &path, e))
            })
            .map_err(|e| StoreError::io("start a writer for", Path::new(table), e))?;
        Ok(TableFile {
            table,
            name,
            schema,
            batches: Some(batches),
            encoder: Some(encoder),
        })
    }

    fn write(&mut self, columns: Vec<ArrayRef>) -> Result<(), StoreError> {
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| encode_err(self.table)(e.to_string()))?;
        let sent = match &self.batches {
            Some(queue) => queue.send(batch).is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            // The encoder stopped early: its error says why.
            self.batches = None;
            self.join().and_then(|()| Err(closed(self.table)))
        }
    }

    fn join(&mut self) -> Result<(), StoreError> {
        match self.encoder.take() {
            Some(handle) => handle.join().unwrap_or_else(|_| {
                Err(encode_err(self.table)(
                    "the Parquet encoder panicked".into(),
                ))
            }),
            None => Err(closed(self.table)),
        }
    }

    /// Ends the file and waits until it is written and synced.
    fn finish(mut self) -> Result<(), StoreError> {
        self.batches = None;
        self.join()
    }
}

#[derive(Default)]
struct EventColumns {
    rows: usize,
    event_id: StringBuilder,
    kind: StringBuilder,
    ts: TimestampMillisecondBuilder,
    stream_id: StringBuilder,
    listener_key: StringBuilder,
    session_id: StringBuilder,
    reason: StringBuilder,
    displayed: Int64Builder,
    state: StringBuilder,
    scheduled_start: TimestampMillisecondBuilder,
    client: StringBuilder,
    region: StringBuilder,
    audio_ms: Int64Builder,
    late: BooleanBuilder,
    source: StringBuilder,
}

fn utc(b: &mut TimestampMillisecondBuilder) -> ArrayRef {
    Arc::new(b.finish().with_timezone("UTC"))
}

impl EventColumns {
    fn push(&mut self, e: &Event, late: bool, source: &str, position: u64) {
        use std::fmt::Write as _;
        self.rows += 1;
        self.event_id.append_value(&e.event_id);
        self.kind.append_value(e.kind.as_str());
        self.ts.append_value(e.ts);
        self.stream_id.append_value(&e.stream_id);
        match e.listener_key {
            Some(k) => self.listener_key.append_value(hex(&k.0, &mut [0; 32])),
            None => self.listener_key.append_null(),
        }
        self.session_id.append_option(e.session_id.as_deref());
        self.reason.append_option(e.reason.as_deref());
        self.displayed.append_option(e.displayed);
        self.state.append_option(e.state.map(|s| s.as_str()));
        self.scheduled_start.append_option(e.scheduled_start);
        self.client.append_option(e.client.as_deref());
        self.region.append_option(e.region.as_deref());
        self.audio_ms.append_option(e.audio_ms);
        self.late.append_value(late);
        let mut digits = [0u8; 20];
        let _ = self.source.write_str(source);
        self.source.append_value(decimal(position, &mut digits));
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        self.rows = 0;
        vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.kind.finish()),
            utc(&mut self.ts),
            Arc::new(self.stream_id.finish()),
            Arc::new(self.listener_key.finish()),
            Arc::new(self.session_id.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.displayed.finish()),
            Arc::new(self.state.finish()),
            utc(&mut self.scheduled_start),
            Arc::new(self.client.finish()),
            Arc::new(self.region.finish()),
            Arc::new(self.audio_ms.finish()),
            Arc::new(self.late.finish()),
            Arc::new(self.source.finish()),
        ]
    }
}

/// Lower-case hex of 16 bytes, without the formatting machinery (this runs once per event).
fn hex<'a>(bytes: &[u8; 16], buf: &'a mut [u8; 32]) -> &'a str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        buf[2 * i] = DIGITS[usize::from(b >> 4)];
        buf[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
    std::str::from_utf8(buf).unwrap_or_default()
}

/// `n` in decimal, written into the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or_default()
}

#[derive(Default)]
struct RejectColumns {
    rows: usize,
    source: StringBuilder,
    received_at: TimestampMillisecondBuilder,
    reason_code: StringBuilder,
    reason: StringBuilder,
    payload: BinaryBuilder,
    payload_text: StringBuilder,
}

impl RejectColumns {
    fn finish(&mut self) -> Vec<ArrayRef> {
        self.rows = 0;
        vec![
            Arc::new(self.source.finish()),
            utc(&mut self.received_at),
            Arc::new(self.reason_code.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.payload.finish()),
            Arc::new(self.payload_text.finish()),
        ]
    }
}

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
    events: Option<TableFile>,
    event_rows: EventColumns,
    rejects: Option<TableFile>,
    reject_rows: RejectColumns,
}

impl Generation {
    /// Starts a fresh data set in `data_dir` (created if missing); its first checkpoint replaces
    /// whatever was current.
    pub fn begin(data_dir: &Path) -> Result<Generation, StoreError> {
        let mut g = Generation::open(data_dir, None)?;
        // Every generation has at least one part per table, so that any tool can read it.
        g.events = Some(g.new_part(0)?);
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
            events: None,
            event_rows: EventColumns::default(),
            rejects: None,
            reject_rows: RejectColumns::default(),
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

    fn write_events(&mut self) -> Result<(), StoreError> {
        if self.events.is_none() {
            self.events = Some(self.new_part(0)?);
        }
        let cols = self.event_rows.finish();
        self.events
            .as_mut()
            .ok_or_else(|| closed("events"))?
            .write(cols)
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

    /// Appends one valid, de-duplicated event (late or not) to the `events` table; its `source` is
    /// written as `SOURCE:POSITION` (a line number) or `SOURCE@POSITION` (a Kafka offset): the
    /// caller passes the separator as the end of `source`.
    pub fn push_event(
        &mut self,
        e: &Event,
        late: bool,
        source: &str,
        position: u64,
    ) -> Result<(), StoreError> {
        self.event_rows.push(e, late, source, position);
        if self.event_rows.rows >= BATCH_ROWS {
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
        let r = &mut self.reject_rows;
        r.rows += 1;
        r.source.append_value(source);
        r.received_at.append_value(received_at);
        r.reason_code.append_value(code);
        r.reason.append_value(reason);
        r.payload.append_value(kept);
        r.payload_text.append_value(String::from_utf8_lossy(kept));
        if r.rows >= BATCH_ROWS {
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
        self.checkpoint_with(snapshot, manifest, false)
    }

    /// [`Generation::checkpoint`], keeping the previous generation's `sessions` file (linked, not
    /// rewritten) when `same_sessions` says its rows have not changed since; `snapshot.sessions`
    /// is then not read. Without a previous generation the rows are written.
    pub fn checkpoint_with(
        &mut self,
        snapshot: &Snapshot,
        manifest: &Manifest,
        same_sessions: bool,
    ) -> Result<PathBuf, StoreError> {
        // Close the open parts: a part is immutable once a generation names it.
        if self.event_rows.rows > 0 {
            self.write_events()?;
        }
        if self.reject_rows.rows > 0 {
            self.write_rejects()?;
        }
        for (i, part) in [self.events.take(), self.rejects.take()]
            .into_iter()
            .enumerate()
        {
            if let Some(part) = part {
                self.closed[i].push(part.name.clone());
                part.finish()?;
            }
        }

        let number = next_generation_number(&self.data_dir)?;
        let tmp_dir = self
            .data_dir
            .join(format!(".gen-tmp-{}-{number}", std::process::id()));
        let sessions = if same_sessions && self.previous.is_some() {
            Sessions::Link
        } else {
            Sessions::Write
        };
        let final_dir = match self.publish(&tmp_dir, number, snapshot, Some((manifest, sessions))) {
            Ok(dir) => dir,
            Err(e) => {
                // A full disk, say: leave nothing behind that would keep it full, and keep the
                // closed parts in staging so a later checkpoint can still publish them.
                self.undo(&tmp_dir);
                return Err(e);
            }
        };
        remove_old_generations(&self.data_dir, number)?;

        for i in 0..PART_TABLES.len() {
            let moved = std::mem::take(&mut self.closed[i]);
            self.committed[i].extend(moved);
        }
        self.previous = Some(final_dir.clone());
        Ok(final_dir)
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
        let final_dir = match self.publish(&tmp_dir, number, snapshot, None) {
            Ok(dir) => dir,
            Err(e) => {
                self.undo(&tmp_dir);
                return Err(e);
            }
        };
        remove_old_generations(&self.data_dir, number)?;
        self.previous = Some(final_dir.clone());
        Ok(final_dir)
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
        manifest: Option<(&Manifest, Sessions)>,
    ) -> Result<PathBuf, StoreError> {
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
            if manifest.is_some() {
                for name in &self.closed[i] {
                    let to = dir.join(name);
                    fs::rename(self.staging.join(table).join(name), &to)
                        .map_err(|e| StoreError::io("move", &to, e))?;
                }
            }
            sync_dir(&dir)?;
        }
        write_figures(&tmp_dir, snapshot)?;
        let manifest_path = tmp_dir.join("manifest.json");
        let link = |name: &str| -> Result<(), StoreError> {
            let prev = self.previous.as_ref().ok_or_else(|| closed("sessions"))?;
            let to = tmp_dir.join(name);
            fs::hard_link(prev.join(name), &to).map_err(|e| StoreError::io("link", &to, e))
        };
        match manifest {
            Some((manifest, sessions)) => {
                match sessions {
                    Sessions::Write => write_sessions(&tmp_dir, snapshot)?,
                    Sessions::Link => link("sessions.parquet")?,
                }
                let json = serde_json::to_vec_pretty(manifest).map_err(|e| StoreError::Encode {
                    table: "manifest",
                    message: e.to_string(),
                })?;
                fs::write(&manifest_path, json)
                    .map_err(|e| StoreError::io("write", &manifest_path, e))?;
            }
            None => {
                link("sessions.parquet")?;
                link("manifest.json")?;
            }
        }
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
        Ok(final_dir)
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

/// Whether a checkpoint writes `sessions` or links the previous generation's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sessions {
    Write,
    Link,
}

fn closed(table: &'static str) -> StoreError {
    StoreError::Encode {
        table,
        message: "table already closed".into(),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("sync", dir, e))
}

fn generation_numbers(data_dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(data_dir).map_err(|e| StoreError::io("read", data_dir, e))? {
        let entry = entry.map_err(|e| StoreError::io("read", data_dir, e))?;
        if let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.strip_prefix("gen-"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push(n);
        }
    }
    Ok(out)
}

fn next_generation_number(data_dir: &Path) -> Result<u64, StoreError> {
    Ok(generation_numbers(data_dir)?.into_iter().max().unwrap_or(0) + 1)
}

/// Keeps the new generation and the one before it; readers of the old one are not cut off.
fn remove_old_generations(data_dir: &Path, newest: u64) -> Result<(), StoreError> {
    for n in generation_numbers(data_dir)? {
        if n + 1 < newest {
            let dir = data_dir.join(format!("gen-{n:06}"));
            fs::remove_dir_all(&dir).map_err(|e| StoreError::io("remove", &dir, e))?;
        }
    }
    Ok(())
}

/// `streams`, `buckets` and `rollups`.
fn write_figures(dir: &Path, snap: &Snapshot) -> Result<(), StoreError> {
    let mut t = TableFile::create(dir, "streams", "streams.parquet".into())?;
    for chunk in snap.streams.chunks(BATCH_ROWS) {
        let mut id = StringBuilder::new();
        let mut ts_cols: [TimestampMillisecondBuilder; 4] = Default::default();
        let mut ints: [Int64Builder; 13] = Default::default();
        let mut hll: [BinaryBuilder; 2] = Default::default();
        for s in chunk {
            id.append_value(&s.stream_id);
            ts_cols[0].append_option(s.scheduled_start);
            ts_cols[1].append_option(s.live_at);
            ts_cols[2].append_value(s.first_event);
            ts_cols[3].append_value(s.last_event);
            let values = [
                s.start_delay_ms,
                Some(s.sessions),
                s.peak_displayed,
                Some(s.peak_roster),
                Some(s.peak_connected),
                Some(s.listeners_joined),
                Some(s.listeners_connected),
                Some(s.listeners_connected_60s),
                Some(s.failed_joins),
                Some(s.abandoned_before_audio),
                Some(s.ghost_sessions),
                s.ttfa_ms_p50,
                s.ttfa_ms_p90,
            ];
            for (b, v) in ints.iter_mut().zip(values) {
                b.append_option(v);
            }
            hll[0].append_value(&s.joined_hll);
            hll[1].append_value(&s.connected_hll);
        }
        let [sched, live, first, last] = &mut ts_cols;
        let mut ints: Vec<ArrayRef> = ints
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        let rest = ints.split_off(1);
        let mut cols: Vec<ArrayRef> = vec![Arc::new(id.finish()), utc(sched), utc(live)];
        cols.extend(ints);
        cols.extend([utc(first), utc(last)]);
        cols.extend(rest);
        cols.extend([
            Arc::new(hll[0].finish()) as ArrayRef,
            Arc::new(hll[1].finish()),
        ]);
        t.write(cols)?;
    }
    t.finish()?;

    write_buckets(dir, "buckets", &snap.buckets)?;
    write_buckets(dir, "rollups", &snap.rollups)
}

fn write_sessions(dir: &Path, snap: &Snapshot) -> Result<(), StoreError> {
    let mut t = TableFile::create(dir, "sessions", "sessions.parquet".into())?;
    for chunk in snap.sessions.chunks(BATCH_ROWS) {
        let mut strs: [StringBuilder; 3] = Default::default();
        let mut times: [TimestampMillisecondBuilder; 3] = Default::default();
        let mut end_type = StringBuilder::new();
        let mut end_reason = StringBuilder::new();
        let mut listened = Int64Builder::new();
        let mut heartbeats = Int64Builder::new();
        let mut client = StringBuilder::new();
        let mut region = StringBuilder::new();
        for s in chunk {
            strs[0].append_value(&s.stream_id);
            strs[1].append_value(&s.session_id);
            strs[2].append_value(s.listener_key.to_hex());
            times[0].append_value(s.join_ts);
            times[1].append_option(s.connect_ts);
            times[2].append_option(s.end_ts);
            end_type.append_option(s.end_type.map(|e| e.as_str()));
            end_reason.append_option(s.end_reason.as_deref());
            listened.append_value(s.listened_ms);
            heartbeats.append_value(i64::try_from(s.heartbeats).unwrap_or(i64::MAX));
            client.append_option(s.client.as_deref());
            region.append_option(s.region.as_deref());
        }
        let [join, connect, end] = &mut times;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(strs[0].finish()),
            Arc::new(strs[1].finish()),
            Arc::new(strs[2].finish()),
            utc(join),
            utc(connect),
            utc(end),
            Arc::new(end_type.finish()),
            Arc::new(end_reason.finish()),
            Arc::new(listened.finish()),
            Arc::new(heartbeats.finish()),
            Arc::new(client.finish()),
            Arc::new(region.finish()),
        ];
        t.write(cols)?;
    }
    t.finish()
}

/// `buckets` or `rollups`: the same columns, rows sorted by stream, width and start.
fn write_buckets(dir: &Path, table: &'static str, rows: &[BucketRow]) -> Result<(), StoreError> {
    let mut t = TableFile::create(dir, table, format!("{table}.parquet"))?;
    for chunk in rows.chunks(BATCH_ROWS) {
        let mut id = StringBuilder::new();
        let mut start = TimestampMillisecondBuilder::new();
        let mut ints: [Int64Builder; 10] = Default::default();
        let mut hll: [BinaryBuilder; 2] = Default::default();
        let mut fin = BooleanBuilder::new();
        let mut estimates: [Int64Builder; 2] = Default::default();
        for b in chunk {
            id.append_value(&b.stream_id);
            start.append_value(b.bucket_start);
            let values = [
                Some(b.width_ms),
                b.displayed_start,
                Some(b.roster_start),
                Some(b.roster_peak),
                Some(b.connected_start),
                Some(b.connected_peak),
                Some(b.joins),
                Some(b.connects),
                Some(b.leaves),
                Some(b.drops),
            ];
            for (col, v) in ints.iter_mut().zip(values) {
                col.append_option(v);
            }
            hll[0].append_value(&b.present_hll);
            hll[1].append_value(&b.connected_hll);
            fin.append_value(b.is_final);
            estimates[0].append_value(b.present_listeners);
            estimates[1].append_value(b.connected_listeners);
        }
        let mut cols: Vec<ArrayRef> = vec![Arc::new(id.finish()), utc(&mut start)];
        cols.extend(ints.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        cols.push(Arc::new(hll[0].finish()));
        cols.push(Arc::new(hll[1].finish()));
        cols.push(Arc::new(fin.finish()));
        cols.extend(
            estimates
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        t.write(cols)?;
    }
    t.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_in_a_writer_message_is_a_full_disk() {
        let e = ParquetError::General(
            "fail to get inner writer: \"No space left on device (os error 28)\"".into(),
        );
        let err = parquet_err("rejects", Path::new("/d/x.parquet"))(e);
        assert!(
            err.to_string()
                .contains("the disk holding the data directory is full"),
            "{err}"
        );
        let other = parquet_err("rejects", Path::new("/d/x.parquet"))(ParquetError::General(
            "schema mismatch".into(),
        ));
        assert!(!other.to_string().contains("disk"), "{other}");
    }

    #[test]
    fn hex_and_decimal_match_the_formatter() {
        let key: [u8; 16] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xa5);
        let expected: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&key, &mut [0; 32]), expected);
        for n in [0, 7, 10, 99, 100, 12_345, u64::MAX] {
            assert_eq!(decimal(n, &mut [0; 20]), n.to_string());
        }
    }
}
