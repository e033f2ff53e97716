//! Writing one generation: events and rejects streamed as they arrive, the derived tables at commit.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use earshot_contract::{Event, Millis};
use earshot_core::{Settings, Snapshot};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::Serialize;

use crate::{CURRENT, StoreError, table_schema};

const BATCH_ROWS: usize = 64 * 1024;
/// How much of a rejected payload is kept.
pub const REJECT_PAYLOAD_BYTES: usize = 4 * 1024;

/// What produced a generation: written as `manifest.json` beside the tables.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Manifest {
    pub earshot_version: String,
    pub contract_version: u32,
    pub settings: ManifestSettings,
    /// `development` when the built-in pseudonym key was used, `operator` otherwise.
    pub pseudonym_key: String,
    pub inputs: Vec<ManifestInput>,
    pub messages: u64,
    pub events: u64,
    pub counted: u64,
    pub late: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ManifestSettings {
    pub liveness_ms: i64,
    pub bucket_ms: i64,
    pub lateness_ms: i64,
    pub min_listen_ms: i64,
}

impl From<&Settings> for ManifestSettings {
    fn from(s: &Settings) -> Self {
        ManifestSettings {
            liveness_ms: s.liveness_ms,
            bucket_ms: s.bucket_ms,
            lateness_ms: s.lateness_ms,
            min_listen_ms: s.min_listen_ms,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
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

/// A Parquet file being written under the temporary generation directory.
struct TableFile {
    table: &'static str,
    schema: SchemaRef,
    writer: ArrowWriter<File>,
}

impl TableFile {
    fn create(dir: &Path, table: &'static str) -> Result<TableFile, StoreError> {
        let path = dir.join(format!("{table}.parquet"));
        let file = File::create(&path).map_err(|e| StoreError::io("create", &path, e))?;
        let schema = table_schema(table).ok_or_else(|| StoreError::Encode {
            table,
            message: "no schema".into(),
        })?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_created_by(format!("earshot {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| encode_err(table)(e.to_string()))?;
        Ok(TableFile {
            table,
            schema,
            writer,
        })
    }

    fn write(&mut self, columns: Vec<ArrayRef>) -> Result<(), StoreError> {
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| encode_err(self.table)(e.to_string()))?;
        self.writer
            .write(&batch)
            .map_err(|e| encode_err(self.table)(e.to_string()))
    }

    fn finish(self) -> Result<(), StoreError> {
        let file = self
            .writer
            .into_inner()
            .map_err(|e| encode_err(self.table)(e.to_string()))?;
        file.sync_all()
            .map_err(|e| StoreError::io("sync", Path::new(self.table), e))
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
            Some(k) => {
                for b in k.0 {
                    let _ = write!(self.listener_key, "{b:02x}");
                }
                self.listener_key.append_value("");
            }
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
        let _ = write!(self.source, "{source}:{position}");
        self.source.append_value("");
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

/// A generation being written. Nothing is visible to readers until [`Generation::commit`].
pub struct Generation {
    data_dir: PathBuf,
    tmp_dir: PathBuf,
    events: Option<TableFile>,
    event_rows: EventColumns,
    rejects: Option<TableFile>,
    reject_rows: RejectColumns,
}

impl Generation {
    /// Starts a new generation in `data_dir` (created if missing).
    pub fn begin(data_dir: &Path) -> Result<Generation, StoreError> {
        fs::create_dir_all(data_dir).map_err(|e| StoreError::io("create", data_dir, e))?;
        // Debris of an ingest that was killed: never visible to readers, safe to remove. (One
        // writer per data directory at a time.)
        for entry in fs::read_dir(data_dir).map_err(|e| StoreError::io("read", data_dir, e))? {
            let entry = entry.map_err(|e| StoreError::io("read", data_dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".gen-tmp-") {
                fs::remove_dir_all(entry.path())
                    .map_err(|e| StoreError::io("clear", &entry.path(), e))?;
            } else if name.starts_with(".current-tmp-") {
                fs::remove_file(entry.path())
                    .map_err(|e| StoreError::io("clear", &entry.path(), e))?;
            }
        }
        let tmp_dir = data_dir.join(format!(".gen-tmp-{}", std::process::id()));
        fs::create_dir(&tmp_dir).map_err(|e| StoreError::io("create", &tmp_dir, e))?;
        Ok(Generation {
            data_dir: data_dir.to_owned(),
            events: Some(TableFile::create(&tmp_dir, "events")?),
            rejects: Some(TableFile::create(&tmp_dir, "rejects")?),
            tmp_dir,
            event_rows: EventColumns::default(),
            reject_rows: RejectColumns::default(),
        })
    }

    fn events(&mut self) -> Result<&mut TableFile, StoreError> {
        self.events.as_mut().ok_or_else(|| closed("events"))
    }

    fn rejects(&mut self) -> Result<&mut TableFile, StoreError> {
        self.rejects.as_mut().ok_or_else(|| closed("rejects"))
    }

    /// Appends one valid, de-duplicated event (late or not) to the `events` table; its `source` is
    /// written as `SOURCE:POSITION` (a line number, or a Kafka offset).
    pub fn push_event(
        &mut self,
        e: &Event,
        late: bool,
        source: &str,
        position: u64,
    ) -> Result<(), StoreError> {
        self.event_rows.push(e, late, source, position);
        if self.event_rows.rows >= BATCH_ROWS {
            let cols = self.event_rows.finish();
            self.events()?.write(cols)?;
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
            let cols = r.finish();
            self.rejects()?.write(cols)?;
        }
        Ok(())
    }

    /// Writes the derived tables and the manifest, then makes the generation current.
    pub fn commit(
        mut self,
        snapshot: &Snapshot,
        manifest: &Manifest,
    ) -> Result<PathBuf, StoreError> {
        let cols = self.event_rows.finish();
        let mut events = self.events.take().ok_or_else(|| closed("events"))?;
        events.write(cols)?;
        events.finish()?;
        let cols = self.reject_rows.finish();
        let mut rejects = self.rejects.take().ok_or_else(|| closed("rejects"))?;
        rejects.write(cols)?;
        rejects.finish()?;
        write_derived(&self.tmp_dir, snapshot)?;

        let manifest_path = self.tmp_dir.join("manifest.json");
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| StoreError::Encode {
            table: "manifest",
            message: e.to_string(),
        })?;
        fs::write(&manifest_path, json).map_err(|e| StoreError::io("write", &manifest_path, e))?;
        sync_dir(&self.tmp_dir)?;

        let number = next_generation_number(&self.data_dir)?;
        let name = format!("gen-{number:06}");
        let final_dir = self.data_dir.join(&name);
        fs::rename(&self.tmp_dir, &final_dir)
            .map_err(|e| StoreError::io("rename", &final_dir, e))?;
        let tmp_link = self
            .data_dir
            .join(format!(".current-tmp-{}", std::process::id()));
        let _ = fs::remove_file(&tmp_link);
        std::os::unix::fs::symlink(&name, &tmp_link)
            .map_err(|e| StoreError::io("link", &tmp_link, e))?;
        let current = self.data_dir.join(CURRENT);
        fs::rename(&tmp_link, &current).map_err(|e| StoreError::io("rename", &current, e))?;
        sync_dir(&self.data_dir)?;
        remove_old_generations(&self.data_dir, number)?;
        Ok(final_dir)
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        // An abandoned generation leaves nothing behind (after commit the directory is renamed).
        let _ = fs::remove_dir_all(&self.tmp_dir);
    }
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

fn write_derived(dir: &Path, snap: &Snapshot) -> Result<(), StoreError> {
    let mut t = TableFile::create(dir, "streams")?;
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

    let mut t = TableFile::create(dir, "buckets")?;
    for chunk in snap.buckets.chunks(BATCH_ROWS) {
        let mut id = StringBuilder::new();
        let mut start = TimestampMillisecondBuilder::new();
        let mut ints: [Int64Builder; 10] = Default::default();
        let mut hll: [BinaryBuilder; 2] = Default::default();
        let mut fin = BooleanBuilder::new();
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
        }
        let mut cols: Vec<ArrayRef> = vec![Arc::new(id.finish()), utc(&mut start)];
        cols.extend(ints.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        cols.push(Arc::new(hll[0].finish()));
        cols.push(Arc::new(hll[1].finish()));
        cols.push(Arc::new(fin.finish()));
        t.write(cols)?;
    }
    t.finish()?;

    let mut t = TableFile::create(dir, "sessions")?;
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
