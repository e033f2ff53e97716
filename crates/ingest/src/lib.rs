//! The ingest edge: NDJSON bytes in, a committed generation of tables out.
//!
//! Each input (a file, or standard input) is one source partition. Every line becomes exactly one
//! of: an `events` row (counted or late), a duplicate (counted in the summary only), or a `rejects`
//! row with its reason — nothing is dropped silently and no bad line stops the run. Lines are read
//! with a cap, so a multi-gigabyte line without a newline costs 64 KiB of memory, not gigabytes. The
//! design choice: this crate owns the loop and the bookkeeping, while parsing belongs to
//! `earshot-contract`, counting to `earshot-core` and files to `earshot-store`.

use std::collections::BTreeMap;
use std::io::{self, BufRead};
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use earshot_contract::{MAX_MESSAGE_BYTES, Pseudonymizer, RejectCode, parse_event};
use earshot_core::{Engine, Outcome, Settings};
use earshot_store::{Generation, Manifest, ManifestInput, StoreError};

pub mod kafka;

/// One NDJSON source.
pub struct Input {
    /// How rows name it: `file:PATH` or `stdin`.
    pub source: String,
    pub reader: Box<dyn BufRead + Send>,
    /// SHA-256 of every byte read, for the manifest (provenance an auditor can re-check).
    digest: Arc<Mutex<Sha256>>,
}

/// Hashes what passes through it.
struct Hashing<R> {
    inner: R,
    digest: Arc<Mutex<Sha256>>,
}

impl<R: io::Read> io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .update(&buf[..n]);
        Ok(n)
    }
}

impl Input {
    /// Any reader, named `source` in the tables.
    pub fn from_reader<R: io::Read + Send + 'static>(
        source: impl Into<String>,
        reader: R,
    ) -> Input {
        let digest = Arc::new(Mutex::new(Sha256::new()));
        Input {
            source: source.into(),
            reader: Box::new(io::BufReader::with_capacity(
                1 << 20,
                Hashing {
                    inner: reader,
                    digest: digest.clone(),
                },
            )),
            digest,
        }
    }

    pub fn file(path: &Path) -> Result<Input, IngestError> {
        let f = std::fs::File::open(path).map_err(|e| IngestError::Input {
            source_name: path.display().to_string(),
            error: e,
        })?;
        Ok(Input::from_reader(format!("file:{}", path.display()), f))
    }

    pub fn stdin() -> Input {
        Input::from_reader("stdin", io::stdin())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Reading an input failed (missing file, permissions, a broken pipe).
    #[error(
        "cannot read {source_name}: {error}\n  hint: check the path and that the file is readable"
    )]
    Input {
        source_name: String,
        error: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaProblem),
    /// A stream's events span so long a time that its buckets would not fit in memory: almost always
    /// a client or host with a wrong clock. Nothing was written.
    #[error(
        "stream {stream:?} spans {buckets} buckets from its first to its last event (the limit is {MAX_BUCKETS_PER_STREAM}); nothing was written\n  hint: look for this stream's events whose ts is far from the others (a wrong clock), fix or remove them, and ingest again"
    )]
    SpanTooLong { stream: String, buckets: i64 },
}

/// Most buckets one stream may have (about 115 days at 10 s): beyond this an ingest refuses rather
/// than exhaust memory.
pub const MAX_BUCKETS_PER_STREAM: i64 = 1_000_000;

/// What an ingest did, for the summary line and `manifest.json`.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub messages: u64,
    /// Of `messages`, those already in the checkpoint a Kafka ingest resumed from.
    pub resumed_messages: u64,
    pub bytes: u64,
    /// Valid, de-duplicated events (the `events` table's rows).
    pub events: u64,
    pub counted: u64,
    pub late: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<RejectCode, u64>,
    pub streams: usize,
    pub sessions: usize,
    /// Heap held by session state and the de-duplication set when the summary was taken.
    pub memory: earshot_core::MemoryUse,
    pub elapsed: Duration,
}

impl Summary {
    pub fn messages_per_second(&self) -> f64 {
        (self.messages - self.resumed_messages) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Reads every input to its end, counts, and commits one generation to `data_dir`.
/// `progress` is called now and then with the bytes read so far from the current input.
pub fn ingest(
    inputs: Vec<Input>,
    data_dir: &Path,
    settings: Settings,
    pseudonyms: &Pseudonymizer,
    progress: &mut dyn FnMut(u64),
) -> Result<Summary, IngestError> {
    let started = Instant::now();
    // A file ingest replaces the tables; a Kafka consumer's checkpoint is not for replacing.
    if let Ok(current) = earshot_store::current_generation(data_dir)
        && let Ok(m) = earshot_store::read_manifest(&current)
        && let Some(k) = m.kafka
    {
        return Err(kafka::KafkaProblem::OtherSource {
            data_dir: data_dir.display().to_string(),
            what: format!("Kafka topic {:?} (a consumer's checkpoint)", k.topic),
            wanted: "files".into(),
        }
        .into());
    }
    let mut pipe = Pipeline::new(Engine::new(settings), Generation::begin(data_dir)?);
    let mut manifest = new_manifest(&settings, pseudonyms);
    for (partition, input) in inputs.into_iter().enumerate() {
        let partition = partition as u32;
        let Input {
            source,
            reader,
            digest,
        } = input;
        let row_source = format!("{source}:");
        // Two stages on two cores: this thread's helper reads and parses (the contract check and
        // the pseudonym hash), while this thread counts and writes, strictly in arrival order.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Line>>(8);
        let (line_no, bytes) = std::thread::scope(|scope| -> Result<(u64, u64), IngestError> {
            let reader_source = source.clone();
            let parser =
                scope.spawn(move || read_and_parse(reader, &reader_source, pseudonyms, tx));
            let mut consumed = (0u64, 0u64);
            for batch in rx {
                for l in batch {
                    // Bytes of the line and its newline (the last line may have none: off by one).
                    consumed = (l.line_no, consumed.1 + l.len as u64 + 1);
                    let (parsed, payload) = match l.parsed {
                        Ok(event) => (Ok(event), Vec::new()),
                        Err((reject, payload)) => (Err(reject), payload),
                    };
                    pipe.take(partition, parsed, &payload, &row_source, l.line_no, || {
                        format!("{source}:{}", l.line_no)
                    })?;
                }
                progress(consumed.1);
            }
            match parser.join() {
                Ok(result) => result?,
                Err(_) => unreachable!("the parser thread does not panic"),
            }
            Ok(consumed)
        })?;
        progress(bytes);
        pipe.summary.bytes += bytes;
        let sha256 = std::mem::take(&mut *digest.lock().unwrap_or_else(|p| p.into_inner()))
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        manifest.inputs.push(ManifestInput {
            source,
            partition,
            bytes,
            messages: line_no,
            sha256,
        });
    }
    pipe.check_spans()?;
    let snapshot = pipe.engine.snapshot(None);
    pipe.fill(&mut manifest, &snapshot);
    // Once, at the end: it walks every session (a checkpoint need not pay for it).
    let engine_memory = pipe.engine.memory();
    let Pipeline {
        generation,
        mut summary,
        ..
    } = pipe;
    generation.commit(&snapshot, &manifest)?;
    summary.memory = engine_memory;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// A manifest with what every ingest records: versions, settings, and which pseudonym key.
fn new_manifest(settings: &Settings, pseudonyms: &Pseudonymizer) -> Manifest {
    Manifest {
        earshot_version: env!("CARGO_PKG_VERSION").into(),
        contract_version: 1,
        settings: settings.into(),
        pseudonym_key: if pseudonyms.is_development() {
            "development"
        } else {
            "operator"
        }
        .into(),
        key_check: key_check(pseudonyms),
        ..Manifest::default()
    }
}

/// The pseudonym of a fixed, made-up id: tells whether two runs used the same key without
/// revealing anything about real listeners.
fn key_check(pseudonyms: &Pseudonymizer) -> String {
    pseudonyms.pseudonym("earshot key check").to_hex()
}

/// What happened to one message.
enum Taken {
    Event,
    Duplicate,
    Rejected(earshot_contract::Reject),
}

/// The counting side every ingest shares: each message becomes exactly one of an event row, a
/// duplicate, or a reject row.
struct Pipeline {
    engine: Engine,
    generation: Generation,
    summary: Summary,
}

impl Pipeline {
    fn new(engine: Engine, generation: Generation) -> Pipeline {
        Pipeline {
            engine,
            generation,
            summary: Summary::default(),
        }
    }

    /// Counts one message of `partition`. An event row's source is `event_source` followed by
    /// `position`; a reject's is `reject_source()`.
    fn take(
        &mut self,
        partition: u32,
        parsed: Result<earshot_contract::Event, earshot_contract::Reject>,
        payload: &[u8],
        event_source: &str,
        position: u64,
        reject_source: impl FnOnce() -> String,
    ) -> Result<Taken, StoreError> {
        self.summary.messages += 1;
        match parsed {
            Ok(event) => match self.engine.offer(partition, &event) {
                Outcome::Duplicate => {
                    self.summary.duplicates += 1;
                    Ok(Taken::Duplicate)
                }
                outcome => {
                    self.generation.push_event(
                        &event,
                        outcome == Outcome::Late,
                        event_source,
                        position,
                    )?;
                    Ok(Taken::Event)
                }
            },
            Err(reject) => {
                self.summary.rejected += 1;
                *self
                    .summary
                    .rejected_by_reason
                    .entry(reject.code)
                    .or_default() += 1;
                self.generation.push_reject(
                    &reject_source(),
                    now_ms(),
                    reject.code.as_str(),
                    &reject.reason(),
                    payload,
                )?;
                Ok(Taken::Rejected(reject))
            }
        }
    }

    /// Refuses a stream whose buckets would not fit in memory (a wrong clock, not a livestream).
    fn check_spans(&self) -> Result<(), IngestError> {
        if let Some((stream, buckets)) = self.engine.bucket_spans().first()
            && *buckets > MAX_BUCKETS_PER_STREAM
        {
            return Err(IngestError::SpanTooLong {
                stream: (*stream).to_owned(),
                buckets: *buckets,
            });
        }
        Ok(())
    }

    /// Brings the summary's engine-side counts up to date and copies the counts into `manifest`.
    fn fill(&mut self, manifest: &mut Manifest, snapshot: &earshot_core::Snapshot) {
        let tally = self.engine.tally();
        let summary = &mut self.summary;
        summary.counted = tally.counted;
        summary.late = tally.late;
        summary.events = tally.counted + tally.late;
        summary.sessions = self.engine.session_count();
        summary.streams = snapshot.streams.len();
        manifest.messages = summary.messages;
        manifest.events = summary.events;
        manifest.counted = summary.counted;
        manifest.late = summary.late;
        manifest.duplicates = summary.duplicates;
        manifest.rejected = summary.rejected;
        manifest.rejected_by_reason = summary
            .rejected_by_reason
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), *v))
            .collect();
    }
}

/// One line, read and judged.
struct Line {
    line_no: u64,
    len: usize,
    /// The event, or the reject with the first 4 KiB of the line as received.
    parsed: Result<earshot_contract::Event, (earshot_contract::Reject, Vec<u8>)>,
}

const LINES_PER_BATCH: usize = 4096;

/// Reads and parses every line of one input, sending batches in order. Stops early if the consumer
/// has gone (it failed and will report why).
fn read_and_parse(
    mut reader: Box<dyn BufRead + Send>,
    source: &str,
    pseudonyms: &Pseudonymizer,
    tx: std::sync::mpsc::SyncSender<Vec<Line>>,
) -> Result<(), IngestError> {
    let mut buf = Vec::with_capacity(4096);
    let mut batch = Vec::with_capacity(LINES_PER_BATCH);
    let mut line_no = 0u64;
    while let Some(len) =
        read_line_capped(&mut *reader, &mut buf, MAX_MESSAGE_BYTES + 1).map_err(|e| {
            IngestError::Input {
                source_name: source.to_owned(),
                error: e,
            }
        })?
    {
        line_no += 1;
        // Over-long lines were cut at the cap; say the real length.
        let parsed = if len > MAX_MESSAGE_BYTES {
            Err(earshot_contract::Reject::new(
                RejectCode::TooLarge,
                format!("message is {len} bytes, over the {MAX_MESSAGE_BYTES}-byte limit"),
            ))
        } else {
            parse_event(&buf, pseudonyms)
        };
        let parsed = parsed.map_err(|r| {
            let keep = buf.len().min(earshot_store::REJECT_PAYLOAD_BYTES);
            (r, buf[..keep].to_vec())
        });
        batch.push(Line {
            line_no,
            len,
            parsed,
        });
        if batch.len() == LINES_PER_BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(LINES_PER_BATCH));
            if tx.send(full).is_err() {
                return Ok(());
            }
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(batch);
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Reads one line (without its `\n`, and without a `\r` before it) into `buf`, keeping at most `cap`
/// bytes but consuming the whole line. Returns the line's full length, or `None` at end of input.
pub fn read_line_capped(
    reader: &mut dyn BufRead,
    buf: &mut Vec<u8>,
    cap: usize,
) -> io::Result<Option<usize>> {
    buf.clear();
    let mut total = 0usize;
    let mut saw_any = false;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        saw_any = true;
        let newline = chunk.iter().position(|&b| b == b'\n');
        let (piece, done) = match newline {
            Some(i) => (&chunk[..i], i + 1),
            None => (chunk, chunk.len()),
        };
        let room = cap.saturating_sub(buf.len());
        buf.extend_from_slice(&piece[..piece.len().min(room)]);
        total += piece.len();
        reader.consume(done);
        if newline.is_some() {
            if buf.last() == Some(&b'\r') && total <= cap {
                buf.pop();
                total -= 1;
            }
            return Ok(Some(total));
        }
    }
    if !saw_any {
        return Ok(None);
    }
    if buf.last() == Some(&b'\r') && total <= cap {
        buf.pop();
        total -= 1;
    }
    Ok(Some(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], cap: usize) -> Vec<(Vec<u8>, usize)> {
        let mut r = io::BufReader::with_capacity(3, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while let Some(n) = read_line_capped(&mut r, &mut buf, cap).unwrap() {
            out.push((buf.clone(), n));
        }
        out
    }

    #[test]
    fn splits_lines_strips_crlf_and_caps_long_ones() {
        let got = lines(b"ab\r\n\ncdefgh\nxy", 4);
        assert_eq!(
            got,
            vec![
                (b"ab".to_vec(), 2),
                (b"".to_vec(), 0),
                (b"cdef".to_vec(), 6),
                (b"xy".to_vec(), 2)
            ]
        );
        assert!(lines(b"", 4).is_empty());
        assert_eq!(lines(b"\n", 4), vec![(b"".to_vec(), 0)]);
    }
}
