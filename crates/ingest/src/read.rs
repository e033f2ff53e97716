//! Reading an input: lines with a cap, parsed on one helper thread or dealt to several, and
//! handed to the [`Pipeline`] in the input's order.

use std::io::{self, BufRead};

use earshot_contract::{MAX_MESSAGE_BYTES, Pseudonymizer, RejectCode, parse_event};

use crate::{At, IngestError, Pipeline};

/// One line, read and judged.
struct Line {
    line_no: u64,
    len: usize,
    /// The event, or the reject with the first 4 KiB of the line as received.
    parsed: Result<earshot_contract::Event, (earshot_contract::Reject, Vec<u8>)>,
}

const LINES_PER_BATCH: usize = 4096;

/// Fewer bytes than any valid event's line (the shortest, a `display` with one-byte ids, is about
/// 95): bounds how many events a file can hold when sizing the de-duplication set.
const MIN_EVENT_BYTES: u64 = 64;

/// Reads, parses and counts one input (one partition) to its end; the last line number and the
/// bytes read.
///
/// With one thread, a helper reads and parses (the contract check and the pseudonym hash) while
/// this thread decides and writes, strictly in arrival order. With more, the helper only reads
/// lines and deals batches of them round-robin to `threads` parsing threads; this thread takes
/// their results back in the same round-robin order, so the order is the input's.
pub(crate) fn read_input(
    pipe: &mut Pipeline,
    partition: u32,
    (reader, len): (Box<dyn BufRead + Send>, Option<u64>),
    source: &str,
    threads: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<(u64, u64), IngestError> {
    let pseudonyms = &pipe.pseudonyms.clone();
    std::thread::scope(|scope| -> Result<(u64, u64), IngestError> {
        let (reader_thread, batches): (_, Box<dyn Iterator<Item = Vec<Line>>>) = if threads > 1 {
            let mut to_parsers = Vec::new();
            let mut from_parsers = Vec::new();
            for _ in 0..threads {
                let (raw_tx, raw_rx) = std::sync::mpsc::sync_channel::<RawLines>(2);
                let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Line>>(2);
                scope.spawn(move || {
                    for raw in raw_rx {
                        if tx.send(raw.parse(pseudonyms)).is_err() {
                            return;
                        }
                    }
                });
                to_parsers.push(raw_tx);
                from_parsers.push(rx);
            }
            let reader_thread = scope.spawn(move || read_lines(reader, source, to_parsers));
            (reader_thread, Box::new(RoundRobin::new(from_parsers)))
        } else {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Line>>(8);
            let reader_thread = scope.spawn(move || read_and_parse(reader, source, pseudonyms, tx));
            (reader_thread, Box::new(rx.into_iter()))
        };
        let mut consumed = (0u64, 0u64);
        let mut sized = len.is_none();
        for batch in batches {
            for l in batch {
                // Bytes of the line and its newline (the last line may have none: off by one).
                consumed = (l.line_no, consumed.1 + l.len as u64 + 1);
                let (parsed, payload) = match l.parsed {
                    Ok(event) => (Ok(event), Vec::new()),
                    Err((reject, payload)) => (Err(reject), payload),
                };
                let at = At {
                    position: l.line_no,
                    bytes: l.len as u64,
                };
                pipe.take(partition, parsed, &payload, at)?;
            }
            if !sized && consumed.1 > 0 {
                // As many more events as the first batch's valid lines per byte say the rest of
                // the input holds, and never more than a line of `MIN_EVENT_BYTES` each could be:
                // the de-duplication set is sized once, instead of growing by doubling (each step
                // rehashes it onto fresh pages). Only a hint: a wrong guess costs speed, not data.
                sized = true;
                let rest = len.unwrap_or(0).saturating_sub(consumed.1);
                let valid = consumed.0.saturating_sub(pipe.summary.rejected);
                let more = (u128::from(rest) * u128::from(valid) / u128::from(consumed.1))
                    .min(u128::from(rest / MIN_EVENT_BYTES));
                pipe.engine
                    .expect_events(usize::try_from(more).unwrap_or(usize::MAX));
            }
            progress(consumed.1);
        }
        match reader_thread.join() {
            Ok(result) => result?,
            Err(_) => return Err(IngestError::Threads("the reading thread panicked".into())),
        }
        // The input's end: events still waiting for their time to be confirmed are decided.
        pipe.finish_partition(partition)?;
        Ok(consumed)
    })
}

/// Takes one batch from each receiver in turn, until the one whose turn it is has no more.
struct RoundRobin<T> {
    receivers: Vec<std::sync::mpsc::Receiver<T>>,
    next: usize,
}

impl<T> RoundRobin<T> {
    fn new(receivers: Vec<std::sync::mpsc::Receiver<T>>) -> RoundRobin<T> {
        RoundRobin { receivers, next: 0 }
    }
}

impl<T> Iterator for RoundRobin<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        let got = self.receivers.get(self.next)?.recv().ok()?;
        self.next = (self.next + 1) % self.receivers.len();
        Some(got)
    }
}

/// Lines read but not yet parsed: their bytes end to end, and per line where it ends in `bytes`
/// and its length as read (over the cap, the line was cut there).
struct RawLines {
    first_line_no: u64,
    bytes: Vec<u8>,
    ends: Vec<(usize, usize)>,
}

impl RawLines {
    fn new(first_line_no: u64) -> RawLines {
        RawLines {
            first_line_no,
            bytes: Vec::new(),
            ends: Vec::with_capacity(LINES_PER_BATCH),
        }
    }

    fn parse(self, pseudonyms: &Pseudonymizer) -> Vec<Line> {
        let mut start = 0;
        let mut out = Vec::with_capacity(self.ends.len());
        for (line_no, &(end, len)) in (self.first_line_no..).zip(&self.ends) {
            out.push(Line {
                line_no,
                len,
                parsed: parse_line(&self.bytes[start..end], len, pseudonyms),
            });
            start = end;
        }
        out
    }
}

/// Reads lines and deals them, a batch at a time, to the parsing threads in turn.
fn read_lines(
    mut reader: Box<dyn BufRead + Send>,
    source: &str,
    parsers: Vec<std::sync::mpsc::SyncSender<RawLines>>,
) -> Result<(), IngestError> {
    let mut buf = Vec::with_capacity(4096);
    let mut raw = RawLines::new(1);
    let mut line_no = 0u64;
    let mut turn = 0;
    while let Some(len) = read_capped(&mut *reader, &mut buf, source)? {
        line_no += 1;
        raw.bytes.extend_from_slice(&buf);
        raw.ends.push((raw.bytes.len(), len));
        if raw.ends.len() == LINES_PER_BATCH {
            let full = std::mem::replace(&mut raw, RawLines::new(line_no + 1));
            if parsers[turn].send(full).is_err() {
                return Ok(());
            }
            turn = (turn + 1) % parsers.len();
        }
    }
    if !raw.ends.is_empty() {
        let _ = parsers[turn].send(raw);
    }
    Ok(())
}

/// The next line, capped (see [`read_line_capped`]), with a read error named by its source.
fn read_capped(
    reader: &mut dyn BufRead,
    buf: &mut Vec<u8>,
    source: &str,
) -> Result<Option<usize>, IngestError> {
    read_line_capped(reader, buf, MAX_MESSAGE_BYTES + 1).map_err(|e| IngestError::Input {
        source_name: source.to_owned(),
        error: e,
    })
}

/// One line's event, or its reject with the first bytes of the line as received; `len` is the
/// line's real length (a line over the cap was cut).
fn parse_line(
    line: &[u8],
    len: usize,
    pseudonyms: &Pseudonymizer,
) -> Result<earshot_contract::Event, (earshot_contract::Reject, Vec<u8>)> {
    let parsed = if len > MAX_MESSAGE_BYTES {
        Err(earshot_contract::Reject::new(
            RejectCode::TooLarge,
            format!("message is {len} bytes, over the {MAX_MESSAGE_BYTES}-byte limit"),
        ))
    } else {
        parse_event(line, pseudonyms)
    };
    parsed.map_err(|r| {
        let keep = line.len().min(earshot_store::REJECT_PAYLOAD_BYTES);
        (r, line[..keep].to_vec())
    })
}

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
    while let Some(len) = read_capped(&mut *reader, &mut buf, source)? {
        line_no += 1;
        batch.push(Line {
            line_no,
            len,
            parsed: parse_line(&buf, len, pseudonyms),
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
        let newline = memchr::memchr(b'\n', chunk);
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
