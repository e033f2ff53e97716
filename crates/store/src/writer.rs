//! Writing tables as Parquet: event and reject parts streamed as rows arrive, the derived tables
//! whole. Where the files go and when they become visible is [`crate::generation`]'s business.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::thread;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Int64Array, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use earshot_contract::{Event, Millis};
use earshot_core::{BucketRow, SessionRow, Snapshot};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::schema::sessions_part_schema;
use crate::{StoreError, table_schema};

pub(crate) const BATCH_ROWS: usize = 64 * 1024;
/// How much of a rejected payload is kept.
pub const REJECT_PAYLOAD_BYTES: usize = 4 * 1024;

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
/// run on a thread of their own, so the thread that counts only hands rows over: batches go to the
/// encoder through a short queue, and [`TableFile::finish`] waits for the file to be complete and
/// on disk. `T` is what goes through the queue: Arrow columns, or rows whose columns the encoder
/// thread builds itself ([`EventRows`]).
pub(crate) struct TableFile<T = Vec<ArrayRef>> {
    table: &'static str,
    /// The file's name in its directory.
    pub(crate) name: String,
    batches: Option<mpsc::SyncSender<T>>,
    /// Emptied batches the encoder hands back, to be filled again without fresh allocations.
    emptied: Option<mpsc::Receiver<T>>,
    encoder: Option<thread::JoinHandle<Result<(), StoreError>>>,
}

impl TableFile {
    pub(crate) fn create(
        dir: &Path,
        table: &'static str,
        name: String,
    ) -> Result<TableFile, StoreError> {
        let schema = table_schema(table).ok_or_else(|| no_schema(table))?;
        TableFile::create_with(dir, table, name, schema)
    }

    /// A file of `table` with columns `schema` (a part's, when it has more than the table).
    pub(crate) fn create_with(
        dir: &Path,
        table: &'static str,
        name: String,
        schema: SchemaRef,
    ) -> Result<TableFile, StoreError> {
        TableFile::spawn(dir, table, name, schema, false, move |schema, columns| {
            RecordBatch::try_new(schema.clone(), std::mem::take(columns))
                .map_err(|e| encode_err(table)(e.to_string()))
        })
    }
}

impl TableFile<EventRows> {
    /// A part of `events`, whose Arrow columns are built on the encoder thread from the rows.
    pub(crate) fn create_events(dir: &Path, name: String) -> Result<Self, StoreError> {
        let schema = table_schema("events").ok_or_else(|| no_schema("events"))?;
        let mut columns = EventColumns::default();
        TableFile::spawn(
            dir,
            "events",
            name,
            schema,
            true,
            move |schema, rows: &mut EventRows| {
                let mut runs = rows.sources.iter().peekable();
                let mut source = "";
                for (i, (event, late, position)) in rows.rows.iter().enumerate() {
                    if let Some((_, s)) = runs.next_if(|(start, _)| *start == i) {
                        source = s;
                    }
                    columns.push(event, *late, source, *position);
                }
                rows.clear();
                RecordBatch::try_new(schema.clone(), columns.finish())
                    .map_err(|e| encode_err("events")(e.to_string()))
            },
        )
    }
}

fn no_schema(table: &'static str) -> StoreError {
    StoreError::Encode {
        table,
        message: "no schema".into(),
    }
}

impl<T: Send + 'static> TableFile<T> {
    /// Starts the encoder thread of a file of `table`: `to_batch` turns each queued item into a
    /// batch of `schema`; with `reuse`, the item it leaves (emptied) goes back to the sender.
    fn spawn(
        dir: &Path,
        table: &'static str,
        name: String,
        schema: SchemaRef,
        reuse: bool,
        mut to_batch: impl FnMut(&SchemaRef, &mut T) -> Result<RecordBatch, StoreError> + Send + 'static,
    ) -> Result<TableFile<T>, StoreError> {
        let path = dir.join(&name);
        let file = File::create(&path).map_err(|e| StoreError::io("create", &path, e))?;
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_created_by(format!("earshot {}", env!("CARGO_PKG_VERSION")));
        for column in UNIQUE_COLUMNS {
            props = props.set_column_dictionary_enabled(ColumnPath::from(column), false);
            if table == "events" {
                // Nor min/max statistics: in arrival order these values span their whole range
                // in every page, so they never prune one, and comparing every value cost 5 % of
                // the encoder. (`sessions` is sorted by id: there they do prune.)
                let path = ColumnPath::from(column);
                props = props.set_column_statistics_enabled(path, EnabledStatistics::None);
            }
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
        let (batches, queue) = mpsc::sync_channel::<T>(2);
        let (give_back, emptied) = mpsc::sync_channel::<T>(2);
        let encoder = thread::Builder::new()
            .name(format!("earshot-{table}-writer"))
            .spawn(move || {
                for mut item in queue {
                    let batch = to_batch(&schema, &mut item)?;
                    if reuse {
                        // Full (the sender has spares) or gone: the item is dropped here.
                        let _ = give_back.try_send(item);
                    }
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
            batches: Some(batches),
            emptied: Some(emptied),
            encoder: Some(encoder),
        })
    }

    /// An emptied item handed back by the encoder, if one is waiting.
    pub(crate) fn reusable(&self) -> Option<T> {
        self.emptied.as_ref().and_then(|r| r.try_recv().ok())
    }

    pub(crate) fn write(&mut self, item: T) -> Result<(), StoreError> {
        let sent = match &self.batches {
            Some(queue) => queue.send(item).is_ok(),
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

    /// Ends the file's input: the encoder writes what it has, closes and syncs the file on its
    /// own, and [`Closing::finish`] waits for that.
    pub(crate) fn close(self) -> Closing {
        Closing {
            table: self.table,
            name: self.name,
            encoder: self.encoder,
        }
    }

    /// Ends the file and waits until it is written and synced.
    pub(crate) fn finish(self) -> Result<(), StoreError> {
        self.close().finish()
    }

    fn join(&mut self) -> Result<(), StoreError> {
        join_encoder(self.table, self.encoder.take())
    }
}

/// A file whose input has ended, being finished by its encoder thread.
pub(crate) struct Closing {
    table: &'static str,
    pub(crate) name: String,
    encoder: Option<thread::JoinHandle<Result<(), StoreError>>>,
}

impl Closing {
    /// Waits until the file is written and synced.
    pub(crate) fn finish(self) -> Result<(), StoreError> {
        join_encoder(self.table, self.encoder)
    }
}

fn join_encoder(
    table: &'static str,
    encoder: Option<thread::JoinHandle<Result<(), StoreError>>>,
) -> Result<(), StoreError> {
    match encoder {
        Some(handle) => handle
            .join()
            .unwrap_or_else(|_| Err(encode_err(table)("the Parquet encoder panicked".into()))),
        None => Err(closed(table)),
    }
}

/// Rows of `events` on their way to the encoder thread, which builds their Arrow columns (the
/// counting thread only moves each event in).
#[derive(Default)]
pub(crate) struct EventRows {
    /// Each event with whether it is late and its position in its source.
    rows: Vec<(Event, bool, u64)>,
    /// Where each run of rows of one source starts, and that source (`file:PATH:`, ...).
    sources: Vec<(usize, String)>,
}

impl EventRows {
    pub(crate) fn push(&mut self, e: Event, late: bool, source: &str, position: u64) {
        if self.rows.capacity() == 0 {
            // A batch's worth at once: growing by doubling would copy every row again.
            self.rows.reserve_exact(BATCH_ROWS);
        }
        if self.sources.last().is_none_or(|(_, s)| s != source) {
            self.sources.push((self.rows.len(), source.to_owned()));
        }
        self.rows.push((e, late, position));
    }

    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    fn clear(&mut self) {
        self.rows.clear();
        self.sources.clear();
    }
}

#[derive(Default)]
pub(crate) struct EventColumns {
    pub(crate) rows: usize,
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
    pub(crate) fn push(&mut self, e: &Event, late: bool, source: &str, position: u64) {
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

    pub(crate) fn finish(&mut self) -> Vec<ArrayRef> {
        let rows = std::mem::take(&mut self.rows);
        let columns = self.take_columns();
        // The next batch is sized like this one: builders that grow by doubling copy every value
        // again at each step, onto fresh pages (a tenth of the counting thread's time at 20k).
        let strings = |i: usize| {
            let bytes = arrow::array::AsArray::as_string_opt::<i32>(columns[i].as_ref())
                .map_or(0, |a| a.value_data().len());
            StringBuilder::with_capacity(rows, bytes)
        };
        *self = EventColumns {
            rows: 0,
            event_id: strings(0),
            kind: strings(1),
            ts: TimestampMillisecondBuilder::with_capacity(rows),
            stream_id: strings(3),
            listener_key: strings(4),
            session_id: strings(5),
            reason: strings(6),
            displayed: Int64Builder::with_capacity(rows),
            state: strings(8),
            scheduled_start: TimestampMillisecondBuilder::with_capacity(rows),
            client: strings(10),
            region: strings(11),
            audio_ms: Int64Builder::with_capacity(rows),
            late: BooleanBuilder::with_capacity(rows),
            source: strings(14),
        };
        columns
    }

    fn take_columns(&mut self) -> Vec<ArrayRef> {
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
pub(crate) struct RejectColumns {
    pub(crate) rows: usize,
    source: StringBuilder,
    received_at: TimestampMillisecondBuilder,
    reason_code: StringBuilder,
    reason: StringBuilder,
    payload: BinaryBuilder,
    payload_text: StringBuilder,
}

impl RejectColumns {
    /// One rejected message (`kept`: the part of its payload that is kept).
    pub(crate) fn push(
        &mut self,
        source: &str,
        received_at: Millis,
        code: &str,
        reason: &str,
        kept: &[u8],
    ) {
        self.rows += 1;
        self.source.append_value(source);
        self.received_at.append_value(received_at);
        self.reason_code.append_value(code);
        self.reason.append_value(reason);
        self.payload.append_value(kept);
        self.payload_text
            .append_value(String::from_utf8_lossy(kept));
    }

    pub(crate) fn finish(&mut self) -> Vec<ArrayRef> {
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

pub(crate) fn closed(table: &'static str) -> StoreError {
    StoreError::Encode {
        table,
        message: "table already closed".into(),
    }
}

/// `streams` (`buckets` and `rollups` are parts: [`crate::figure_parts`]).
pub(crate) fn write_streams(dir: &Path, snap: &Snapshot) -> Result<(), StoreError> {
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
    t.finish()
}

/// A part of `sessions`, `name` in `dir`, whose rows all carry `version`.
pub(crate) fn write_sessions(
    dir: &Path,
    name: &str,
    rows: &[SessionRow],
    version: i64,
) -> Result<(), StoreError> {
    let mut t = TableFile::create_with(dir, "sessions", name.to_owned(), sessions_part_schema())?;
    for chunk in rows.chunks(BATCH_ROWS) {
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
            Arc::new(Int64Array::from_value(version, chunk.len())),
        ];
        t.write(cols)?;
    }
    t.finish()
}

/// A part of `buckets` or `rollups` named `name` in `dir`: the same columns, rows sorted by
/// stream, width and start.
pub(crate) fn write_buckets<'a>(
    dir: &Path,
    table: &'static str,
    name: &str,
    rows: impl Iterator<Item = &'a BucketRow>,
) -> Result<(), StoreError> {
    let mut t = TableFile::create(dir, table, name.to_owned())?;
    let mut rows = rows.peekable();
    while rows.peek().is_some() {
        let mut id = StringBuilder::new();
        let mut start = TimestampMillisecondBuilder::new();
        let mut ints: [Int64Builder; 10] = Default::default();
        let mut hll: [BinaryBuilder; 2] = Default::default();
        let mut fin = BooleanBuilder::new();
        let mut estimates: [Int64Builder; 2] = Default::default();
        for b in rows.by_ref().take(BATCH_ROWS) {
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
