//! Reading events back, in the order they were written (arrival order), for recomputation under
//! other definitions (the audit's sensitivity analysis).

use std::fs::File;
use std::path::Path;

use arrow::array::{
    Array, AsArray, BooleanArray, Int64Array, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{Int64Type, TimestampMillisecondType};
use earshot_contract::{Event, EventType, ListenerKey, StreamState};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::{Manifest, StoreError, part_files};

fn bad(message: String) -> StoreError {
    StoreError::Encode {
        table: "events",
        message,
    }
}

fn text<'a>(
    batch: &'a arrow::record_batch::RecordBatch,
    name: &str,
) -> Result<&'a StringArray, StoreError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| bad(format!("column {name} missing or not text")))
}

fn opt(a: &StringArray, i: usize) -> Option<&str> {
    (!a.is_null(i)).then(|| a.value(i))
}

fn key(hex: &str) -> Option<ListenerKey> {
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(ListenerKey(out))
}

/// One row of the `events` table, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub event: Event,
    pub late: bool,
    /// Where it came from: `file:PATH:LINE` or `kafka:TOPIC/PARTITION@OFFSET`.
    pub source: String,
}

/// The manifest of a generation.
pub fn read_manifest(generation: &Path) -> Result<Manifest, StoreError> {
    let path = generation.join("manifest.json");
    let bytes = std::fs::read(&path).map_err(|e| StoreError::io("read", &path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::Encode {
        table: "manifest",
        message: format!("{}: {e}", path.display()),
    })
}

/// Calls `each` with every stored event of `generation` in arrival order (part by part, row by
/// row), stopping at the first error it returns. Memory stays at one batch.
pub fn stored_events(
    generation: &Path,
    each: impl FnMut(StoredEvent) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    stored_events_from(generation, 0, each)
}

/// [`stored_events`] from part number `first_part` (counting from 0) on: the events a saved engine
/// state ([`crate::EngineState`]) does not count yet.
pub fn stored_events_from(
    generation: &Path,
    first_part: usize,
    mut each: impl FnMut(StoredEvent) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for path in part_files(generation, "events")?
        .into_iter()
        .skip(first_part)
    {
        let file = File::open(&path).map_err(|e| StoreError::io("open", &path, e))?;
        let named = |e: &dyn std::fmt::Display| bad(format!("{}: {e}", path.display()));
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.with_batch_size(64 * 1024).build())
            .map_err(|e| named(&e))?;
        for batch in reader {
            let batch = batch.map_err(|e| named(&e))?;
            read_batch(&batch, &mut each).map_err(|e| match e {
                StoreError::Encode { message, .. } => named(&message),
                e => e,
            })?;
        }
    }
    Ok(())
}

fn read_batch(
    batch: &arrow::record_batch::RecordBatch,
    each: &mut impl FnMut(StoredEvent) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let late: &BooleanArray = batch
        .column_by_name("late")
        .and_then(|c| c.as_boolean_opt())
        .ok_or_else(|| bad("column late missing".into()))?;
    let time = |name: &str| -> Result<&TimestampMillisecondArray, StoreError> {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>())
            .ok_or_else(|| bad(format!("column {name} missing")))
    };
    let int = |name: &str| -> Result<&Int64Array, StoreError> {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| bad(format!("column {name} missing")))
    };
    let (ts, sched) = (time("ts")?, time("scheduled_start")?);
    let (displayed, audio) = (int("displayed")?, int("audio_ms")?);
    let (id, kind, stream, listener, session, reason, state, client, region, source) = (
        text(batch, "event_id")?,
        text(batch, "type")?,
        text(batch, "stream_id")?,
        text(batch, "listener_key")?,
        text(batch, "session_id")?,
        text(batch, "reason")?,
        text(batch, "state")?,
        text(batch, "client")?,
        text(batch, "region")?,
        text(batch, "source")?,
    );
    for i in 0..batch.num_rows() {
        let kind = EventType::ALL
            .into_iter()
            .find(|k| k.as_str() == kind.value(i))
            .ok_or_else(|| bad(format!("unknown type {}", kind.value(i))))?;
        let state = match opt(state, i) {
            None => None,
            Some("scheduled") => Some(StreamState::Scheduled),
            Some("live") => Some(StreamState::Live),
            Some("ended") => Some(StreamState::Ended),
            Some(other) => return Err(bad(format!("unknown state {other}"))),
        };
        let listener_key = match opt(listener, i) {
            None => None,
            Some(hex) => Some(key(hex).ok_or_else(|| bad(format!("bad listener_key {hex}")))?),
        };
        each(StoredEvent {
            event: Event {
                event_id: id.value(i).into(),
                kind,
                ts: ts.value(i),
                stream_id: stream.value(i).into(),
                listener_key,
                session_id: opt(session, i).map(Into::into),
                reason: opt(reason, i).map(Into::into),
                displayed: (!displayed.is_null(i)).then(|| displayed.value(i)),
                state,
                scheduled_start: (!sched.is_null(i)).then(|| sched.value(i)),
                client: opt(client, i).map(Into::into),
                region: opt(region, i).map(Into::into),
                audio_ms: (!audio.is_null(i)).then(|| audio.value(i)),
            },
            late: late.value(i),
            source: source.value(i).to_string(),
        })?;
    }
    Ok(())
}
