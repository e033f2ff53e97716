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

use earshot_contract::{Pseudonymizer, RejectCode, redact_continued};
use earshot_core::{Engine, Outcome, Settings, TimeGate, Verdict};
use earshot_store::{Generation, Manifest, ManifestInput, StoreError};

pub mod kafka;
mod read;

use read::read_input;
pub use read::read_line_capped;

/// One NDJSON source.
pub struct Input {
    /// How rows name it: `file:PATH` or `stdin`.
    pub source: String,
    pub reader: Box<dyn BufRead + Send>,
    /// SHA-256 of every byte read, for the manifest (provenance an auditor can re-check).
    digest: Arc<Mutex<Sha256>>,
    /// How many bytes it holds, when that is known up front (a file): sizes the de-duplication
    /// set once, from the first lines' average length, instead of growing it by doubling.
    len: Option<u64>,
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
    /// Any reader, named `source` in the tables. What it holds is recognised by its first bytes,
    /// not by a name: gzip and zstd are decompressed as they are read (the manifest's SHA-256 is
    /// of the bytes as they came), and a UTF-8 byte-order mark before the first line is skipped.
    pub fn from_reader<R: io::Read + Send + 'static>(
        source: impl Into<String>,
        reader: R,
    ) -> Input {
        let digest = Arc::new(Mutex::new(Sha256::new()));
        let raw = io::BufReader::with_capacity(
            1 << 20,
            Hashing {
                inner: reader,
                digest: digest.clone(),
            },
        );
        Input {
            source: source.into(),
            reader: without_bom(decompressed(raw)),
            digest,
            len: None,
        }
    }

    pub fn file(path: &Path) -> Result<Input, IngestError> {
        let f = std::fs::File::open(path).map_err(|e| IngestError::Input {
            source_name: path.display().to_string(),
            error: e,
        })?;
        let len = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
        Ok(Input {
            len,
            ..Input::from_reader(format!("file:{}", path.display()), f)
        })
    }

    pub fn stdin() -> Input {
        Input::from_reader("stdin", io::stdin())
    }
}

/// The first bytes of gzip and zstd streams.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// `raw` decompressed if it starts as a gzip (any number of members) or zstd stream.
fn decompressed<R: BufRead + Send + 'static>(mut raw: R) -> Box<dyn BufRead + Send> {
    let head = raw.fill_buf().map(|b| b.to_vec()).unwrap_or_default();
    if head.starts_with(&GZIP_MAGIC) {
        return Box::new(io::BufReader::with_capacity(
            1 << 20,
            flate2::bufread::MultiGzDecoder::new(raw),
        ));
    }
    if head.starts_with(&ZSTD_MAGIC) {
        return match zstd::stream::read::Decoder::with_buffer(raw) {
            Ok(decoder) => Box::new(io::BufReader::with_capacity(1 << 20, decoder)),
            Err(e) => Box::new(io::BufReader::new(Failing(Some(e)))),
        };
    }
    Box::new(raw)
}

/// A reader whose first read fails with the error it holds.
struct Failing(Option<io::Error>);

impl io::Read for Failing {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(self
            .0
            .take()
            .unwrap_or_else(|| io::Error::other("cannot decompress")))
    }
}

/// `reader` past a UTF-8 byte-order mark, if it starts with one.
fn without_bom(mut reader: Box<dyn BufRead + Send>) -> Box<dyn BufRead + Send> {
    if reader
        .fill_buf()
        .is_ok_and(|b| b.starts_with(&[0xef, 0xbb, 0xbf]))
    {
        reader.consume(3);
    }
    reader
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
    /// Object storage (`--data s3://…`) refused.
    #[error(transparent)]
    Remote(#[from] earshot_remote::RemoteError),
    /// Nearly every line of the input was rejected (or it had none): publishing it would replace
    /// the current tables with empty ones.
    #[error(
        "nothing published: {rejected} of {lines} lines of the input were rejected ({reasons}); the current tables are left as they were\n  hint: {hint}; if an input of rejects is what you mean to publish, pass --allow-empty"
    )]
    MostlyRejected {
        lines: u64,
        rejected: u64,
        reasons: String,
        hint: &'static str,
    },
    /// The counting threads could not start or did not finish (an earshot bug).
    #[error("counting threads: {0}")]
    Threads(String),
}

pub use earshot_core::MAX_BUCKETS_PER_STREAM;

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
    /// Adds the counts of another data directory's summary (a group of workers' partitions).
    pub fn add(&mut self, other: &Summary) {
        self.messages += other.messages;
        self.resumed_messages += other.resumed_messages;
        self.bytes += other.bytes;
        self.events += other.events;
        self.counted += other.counted;
        self.late += other.late;
        self.duplicates += other.duplicates;
        self.rejected += other.rejected;
        for (code, n) in &other.rejected_by_reason {
            *self.rejected_by_reason.entry(*code).or_default() += n;
        }
        self.streams = self.streams.max(other.streams);
        self.sessions += other.sessions;
    }

    pub fn messages_per_second(&self) -> f64 {
        (self.messages - self.resumed_messages) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The share of rejected lines (blank lines aside) from which an input is refused: at least 90 %.
const REFUSED_REJECT_SHARE: (u64, u64) = (9, 10);

/// Refuses an input with no lines, or whose lines were nearly all rejected (see
/// [`IngestError::MostlyRejected`]), with a hint from its most common reason.
fn mostly_rejected(summary: &Summary) -> Result<(), IngestError> {
    let blank = summary
        .rejected_by_reason
        .get(&RejectCode::Empty)
        .copied()
        .unwrap_or(0);
    let lines = summary.messages.saturating_sub(blank);
    let rejected = summary.rejected.saturating_sub(blank);
    let (num, den) = REFUSED_REJECT_SHARE;
    if lines > 0 && rejected * den < lines * num {
        return Ok(());
    }
    let mut reasons: Vec<(RejectCode, u64)> = summary
        .rejected_by_reason
        .iter()
        .filter(|(code, _)| **code != RejectCode::Empty)
        .map(|(code, n)| (*code, *n))
        .collect();
    reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
    let hint = match reasons.first().map(|r| r.0) {
        None => "the input has no lines with anything on them",
        Some(RejectCode::NotUtf8) => {
            "the input is not UTF-8 text: is it compressed other than with gzip or zstd (which earshot reads by their content), an archive, or text in another encoding such as UTF-16?"
        }
        Some(RejectCode::NotJson | RejectCode::NotObject | RejectCode::TruncatedJson) => {
            "the lines are not JSON objects: earshot reads NDJSON, one event as a JSON object per line (schemas/event.v1.schema.json)"
        }
        Some(_) => {
            "the lines are JSON but not events of the contract: see schemas/event.v1.schema.json, and the reasons above"
        }
    };
    Err(IngestError::MostlyRejected {
        lines,
        rejected,
        reasons: if reasons.is_empty() {
            "the input is empty".into()
        } else {
            reasons
                .iter()
                .take(3)
                .map(|(code, n)| format!("{}: {n}", code.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        },
        hint,
    })
}

/// Reads every input to its end, counts, and commits one generation to `data_dir`.
/// `counting_threads` above 1 counts sessions on that many threads (see `earshot_core::Shard`);
/// the tables are the same for any number. `progress` is called now and then with the bytes read
/// so far from the current input. Unless `allow_empty`, an input with no lines, or whose lines
/// were nearly all rejected, publishes nothing ([`IngestError::MostlyRejected`]).
pub fn ingest(
    inputs: Vec<Input>,
    data_dir: &Path,
    settings: Settings,
    pseudonyms: &Pseudonymizer,
    counting_threads: usize,
    allow_empty: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<Summary, IngestError> {
    let started = Instant::now();
    // A file ingest replaces the tables; a Kafka consumer's checkpoint is not for replacing.
    if let Ok(current) = earshot_store::resolve_current(data_dir)
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
    let mut pipe = Pipeline::new(
        Engine::new(settings),
        Generation::begin(data_dir)?,
        pseudonyms.clone(),
    );
    let mut manifest = new_manifest(&settings, pseudonyms);
    let threads = counting_threads.max(1);
    // With more than one counting thread, this thread keeps the decisions that depend on the
    // order of every event (the gate, duplicates, lateness, arrival numbers) and the `events`
    // rows, and each counted event is counted by the thread of its session's shard.
    std::thread::scope(|counting| -> Result<(), IngestError> {
        let mut counters = Vec::new();
        if threads > 1 {
            pipe.engine.count_in_shards();
            let mut senders = Vec::new();
            for k in 0..threads {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Routed>(4);
                senders.push(tx);
                let counter = std::thread::Builder::new()
                    .name(format!("earshot-count-{k}"))
                    .spawn_scoped(counting, move || {
                        let mut shard = earshot_core::Shard::new(settings);
                        for batch in rx {
                            for (event, arrival) in batch {
                                shard.apply(&event, arrival);
                            }
                        }
                        shard
                    })
                    .map_err(|error| IngestError::Threads(error.to_string()))?;
                counters.push(counter);
            }
            pipe.router = Some(Router {
                arrival: 0,
                batches: (0..threads).map(|_| Vec::new()).collect(),
                senders,
            });
        }
        let read_all = || -> Result<(), IngestError> {
            for (partition, input) in inputs.into_iter().enumerate() {
                let partition = partition as u32;
                let Input {
                    source,
                    reader,
                    digest,
                    len,
                } = input;
                pipe.name_partition(partition, format!("{source}:"));
                let (line_no, bytes) = read_input(
                    &mut pipe,
                    partition,
                    (reader, len),
                    &source,
                    threads,
                    progress,
                )?;
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
            Ok(())
        };
        let read = read_all();
        // Whatever happened, the counting threads' input ends here, so that they finish (after an
        // error too: the scope waits for them).
        let mut numbered = None;
        if let Some(mut router) = pipe.router.take()
            && read.is_ok()
        {
            router.flush();
            numbered = Some(router.arrival);
        }
        read?;
        // The router numbers counted events itself; it must agree with the engine, which counted
        // them (a fresh engine numbers them 1, 2, 3…), or first-to-arrive ties would differ.
        if let Some(n) = numbered
            && n != pipe.engine.tally().counted
        {
            return Err(IngestError::Threads(format!(
                "{n} events routed, the engine counted {}",
                pipe.engine.tally().counted
            )));
        }
        for counter in counters {
            let shard = counter
                .join()
                .map_err(|_| IngestError::Threads("a counting thread panicked".into()))?;
            pipe.engine.absorb(shard).map_err(IngestError::Threads)?;
        }
        Ok(())
    })?;
    if !allow_empty {
        mostly_rejected(&pipe.summary)?;
    }
    // The last rows go to their encoders now: they are encoded while the snapshot is computed.
    pipe.generation.flush_rows()?;
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

/// Where a message was in its partition (line number or offset), and its size.
#[derive(Clone, Copy, Debug)]
pub(crate) struct At {
    pub position: u64,
    pub bytes: u64,
}

/// A reject on its way to a dead-letter topic: exactly what the rejects table keeps, with the
/// raw `listener_id` values already pseudonymised or masked.
pub(crate) struct DeadLetter {
    pub source: String,
    pub code: RejectCode,
    pub reason: String,
    pub payload: Vec<u8>,
}

/// The counting side every ingest shares: each message becomes exactly one of an event row, a
/// duplicate, or a reject row. Valid events pass the [`TimeGate`] first, so a message's fate may be
/// decided when a later message of its partition arrives; its row is written then.
struct Pipeline {
    engine: Engine,
    gate: TimeGate<At>,
    generation: Generation,
    summary: Summary,
    pseudonyms: Pseudonymizer,
    /// Indexed by partition, how its rows' `source` starts (`file:PATH:`, `kafka:TOPIC/P@`); the
    /// message's position follows.
    prefixes: Vec<String>,
    /// Indexed by partition: whether its last message ended on a `listener_id` key whose value
    /// may open the next one (see [`redact_continued`]).
    after_key: Vec<bool>,
    /// With a dead-letter topic: the rejects not yet sent there.
    dead_letters: Option<Vec<DeadLetter>>,
    /// When counting runs in shards ([`Engine::count_in_shards`]): where counted events go.
    router: Option<Router>,
}

/// Events per message to a counting thread: enough that the channel costs little per event.
const ROUTE_BATCH: usize = 1024;

/// A batch of counted events with their arrival numbers, for one counting thread.
type Routed = Vec<(earshot_contract::Event, u64)>;

/// Sends each counted event, with its arrival number, to the thread counting its shard. The
/// numbers are counted here: the engine numbers counted events 1, 2, 3… in the order it decides
/// them, which is the order they reach [`Router::route`].
struct Router {
    arrival: u64,
    batches: Vec<Routed>,
    senders: Vec<std::sync::mpsc::SyncSender<Routed>>,
}

impl Router {
    fn route(&mut self, event: earshot_contract::Event) {
        self.arrival += 1;
        let k = earshot_core::shard_of(&event, self.senders.len());
        self.batches[k].push((event, self.arrival));
        if self.batches[k].len() >= ROUTE_BATCH {
            self.send(k);
        }
    }

    fn send(&mut self, k: usize) {
        let batch = std::mem::replace(&mut self.batches[k], Vec::with_capacity(ROUTE_BATCH));
        // A closed channel means that counting thread panicked; joining it reports that.
        let _ = self.senders[k].send(batch);
    }

    /// Sends what is left; dropping the router then ends the counting threads' input.
    fn flush(&mut self) {
        for k in 0..self.senders.len() {
            self.send(k);
        }
    }
}

impl Pipeline {
    fn new(engine: Engine, generation: Generation, pseudonyms: Pseudonymizer) -> Pipeline {
        Pipeline {
            engine,
            gate: TimeGate::new(),
            generation,
            summary: Summary::default(),
            pseudonyms,
            prefixes: Vec::new(),
            after_key: Vec::new(),
            dead_letters: None,
            router: None,
        }
    }

    fn name_partition(&mut self, partition: u32, prefix: String) {
        let slot = partition as usize;
        if self.prefixes.len() <= slot {
            self.prefixes.resize(slot + 1, String::new());
        }
        self.prefixes[slot] = prefix;
    }

    /// Counts one message of `partition` at `at` (a line number, an offset); `payload` is the
    /// message as received (read only when it is rejected).
    fn take(
        &mut self,
        partition: u32,
        parsed: Result<earshot_contract::Event, earshot_contract::Reject>,
        payload: &[u8],
        at: At,
    ) -> Result<(), StoreError> {
        self.summary.messages += 1;
        let position = at.position;
        let slot = partition as usize;
        if self.after_key.len() <= slot {
            self.after_key.resize(slot + 1, false);
        }
        let after_key = std::mem::take(&mut self.after_key[slot]);
        match parsed {
            Ok(event) => self.through_gate(partition, Some((event, at))),
            Err(reject) => {
                let (payload, dangling) = redact_continued(payload, &self.pseudonyms, after_key);
                self.after_key[slot] = dangling;
                let prefix = self
                    .prefixes
                    .get(partition as usize)
                    .map_or("", String::as_str);
                write_reject(
                    &mut self.generation,
                    &mut self.summary,
                    &mut self.dead_letters,
                    format!("{prefix}{position}"),
                    &reject,
                    payload,
                )
            }
        }
    }

    /// The end of a partition's input: decides every event still waiting in the gate.
    fn finish_partition(&mut self, partition: u32) -> Result<(), StoreError> {
        self.through_gate(partition, None)
    }

    /// Offers an event to the gate (or, with `None`, ends the partition's input) and writes the
    /// row of every event whose fate that decides.
    fn through_gate(
        &mut self,
        partition: u32,
        event: Option<(earshot_contract::Event, At)>,
    ) -> Result<(), StoreError> {
        let mut failed = None;
        let Pipeline {
            engine,
            gate,
            generation,
            summary,
            prefixes,
            dead_letters,
            router,
            ..
        } = self;
        let prefix = prefixes.get(partition as usize).map_or("", String::as_str);
        let mut write = |e: earshot_contract::Event, at: At, verdict: Verdict| {
            if verdict == Verdict::Offered(Outcome::Counted)
                && let Some(r) = router.as_mut()
            {
                r.route(e.clone());
            }
            let written = decided(
                generation,
                summary,
                dead_letters,
                prefix,
                e,
                at.position,
                verdict,
            );
            if let Err(err) = written {
                failed.get_or_insert(err);
            }
        };
        match event {
            Some((e, position)) => gate.offer(engine, partition, e, position, &mut write),
            None => gate.finish(engine, partition, &mut write),
        }
        failed.map_or(Ok(()), Err)
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

/// Writes the row of a valid event whose fate the gate (and the engine) decided.
fn decided(
    generation: &mut Generation,
    summary: &mut Summary,
    dead_letters: &mut Option<Vec<DeadLetter>>,
    prefix: &str,
    event: earshot_contract::Event,
    position: u64,
    verdict: Verdict,
) -> Result<(), StoreError> {
    let code = match verdict {
        Verdict::Offered(Outcome::Duplicate) => {
            summary.duplicates += 1;
            return Ok(());
        }
        Verdict::Offered(outcome @ (Outcome::Counted | Outcome::Late)) => {
            return generation.push_event(event, outcome == Outcome::Late, prefix, position);
        }
        Verdict::Offered(Outcome::OutOfSpan) => RejectCode::SpanTooLong,
        Verdict::Uncorroborated => RejectCode::TsUncorroborated,
    };
    let ts = earshot_contract::format_rfc3339_ms(event.ts);
    let message = if code == RejectCode::SpanTooLong {
        format!(
            "counting it would stretch stream {:?} over {MAX_BUCKETS_PER_STREAM} buckets: ts {ts} is far from the stream's other events (a wrong clock)",
            event.stream_id
        )
    } else {
        format!(
            "ts {ts} jumps more than --max-jump from its partition's time (or disagrees with the partition's other early events), and no later event of the partition confirmed it (a wrong clock)"
        )
    };
    let reject = earshot_contract::Reject::new(code, message);
    // The payload is the event as parsed: its listener is already the pseudonym.
    write_reject(
        generation,
        summary,
        dead_letters,
        format!("{prefix}{position}"),
        &reject,
        event.to_json().into_bytes(),
    )
}

/// Writes a rejects row (and queues its dead letter); `payload` holds no raw listener id.
fn write_reject(
    generation: &mut Generation,
    summary: &mut Summary,
    dead_letters: &mut Option<Vec<DeadLetter>>,
    source: String,
    reject: &earshot_contract::Reject,
    payload: Vec<u8>,
) -> Result<(), StoreError> {
    summary.rejected += 1;
    *summary.rejected_by_reason.entry(reject.code).or_default() += 1;
    let reason = reject.reason();
    generation.push_reject(&source, now_ms(), reject.code.as_str(), &reason, &payload)?;
    if let Some(queue) = dead_letters {
        queue.push(DeadLetter {
            source,
            code: reject.code,
            reason,
            payload,
        });
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
