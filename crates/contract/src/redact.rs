//! Rejected payloads without raw listener ids (contract §5).
//!
//! A rejected message is kept (in `rejects`, and in the dead-letter topic) so that people can see
//! what went wrong, but it may carry the personal data the contract forbids storing. Before any of
//! it is stored or sent on, [`redact_listener_ids`] rewrites every `listener_id` value in it:
//! - a complete string value becomes its pseudonym (the same 32 hex digits as `listener_key`, so a
//!   reject can still be matched with its listener's sessions);
//! - anything else — a number, an object, a string cut short by truncation, a value after `=` in
//!   text that is not JSON — becomes `"[masked]"`.
//!
//! The design choice: one lenient scanner for every payload, JSON or not, that decodes keys the way
//! a JSON parser would (so `"listener\u005fid"` is caught), looks at keys at any depth, and also
//! catches bare `listener_id: …` / `listener_id=…` spans in text. Everything else in the payload is
//! left byte for byte. It never fails and never panics, whatever the bytes.

use crate::Pseudonymizer;

const MASK: &[u8] = b"\"[masked]\"";

/// Returns `payload` with every `listener_id` value pseudonymised or masked (see the module docs).
pub fn redact_listener_ids(payload: &[u8], pseudonyms: &Pseudonymizer) -> Vec<u8> {
    redact_continued(payload, pseudonyms, false).0
}

/// [`redact_listener_ids`] for one message of a sequence (the lines of a file, the messages of a
/// partition): when the message before ended on a `listener_id` key with its value still to come
/// (`after_key`), this one's first value is that value and is masked too. Returns the redacted
/// bytes and whether this message ends the same way.
pub fn redact_continued(
    payload: &[u8],
    pseudonyms: &Pseudonymizer,
    after_key: bool,
) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(payload.len() + 16);
    let mut i = 0;
    let mut copied = 0;
    if after_key {
        let start = skip_space(payload, 0);
        let start = match payload.get(start) {
            Some(b':' | b'=') => skip_space(payload, start + 1),
            _ => start,
        };
        if start >= payload.len() {
            return (payload.to_vec(), true);
        }
        let (end, replacement) = value_replacement(payload, start, pseudonyms);
        out.extend_from_slice(&payload[..start]);
        out.extend_from_slice(&replacement);
        copied = end;
        i = end.max(start + 1);
    }
    while i < payload.len() {
        let b = payload[i];
        // A key is a JSON string (decoded, so escapes cannot hide it) or a bare word.
        let (key_end, quoted) = if b == b'"' || b == b'\'' {
            let (end, decoded) = scan_string(payload, i);
            if !decoded.as_deref().is_some_and(is_field) {
                // Not the key: a string that holds such a span itself (JSON inside JSON) is
                // redacted as text and written back as a string.
                if contains_field(&payload[i..end]) {
                    out.extend_from_slice(&payload[copied..i]);
                    out.extend_from_slice(&redact_inside_string(decoded, pseudonyms));
                    copied = end;
                }
                i = end;
                continue;
            }
            (end, true)
        } else if is_word_start(payload, i) {
            let end = i + payload[i..]
                .iter()
                .take_while(|&&c| is_word_byte(c))
                .count();
            if !std::str::from_utf8(&payload[i..end]).is_ok_and(is_field) {
                i = end;
                continue;
            }
            (end, false)
        } else {
            i += 1;
            continue;
        };
        // A separator after the key, then the value. A quoted key followed straight by a value
        // (no separator: not JSON, but a reader would take it as one) counts too.
        let sep = skip_space(payload, key_end);
        let start = match payload.get(sep) {
            // The key ends the message: its value may come in the next one.
            None => return (finish(out, payload, copied), true),
            Some(b':' | b'=') => skip_space(payload, sep + 1),
            Some(&c) if quoted && (c == b'"' || c == b'\'' || is_word_byte(c)) => sep,
            Some(_) => {
                i = key_end;
                continue;
            }
        };
        if start >= payload.len() {
            return (finish(out, payload, copied), true);
        }
        let (end, replacement) = value_replacement(payload, start, pseudonyms);
        out.extend_from_slice(&payload[copied..start]);
        out.extend_from_slice(&replacement);
        copied = end;
        i = end.max(start + 1);
    }
    (finish(out, payload, copied), false)
}

fn finish(mut out: Vec<u8>, payload: &[u8], copied: usize) -> Vec<u8> {
    out.extend_from_slice(&payload[copied.min(payload.len())..]);
    out
}

/// Whether a key could name the field, read generously: its ASCII letters and digits alone, in any
/// case (`listener_id`, `Listener_Id`, `listener-id`, `listenerId`, `" listener id "`,
/// `listener.id`). A key with other letters in it is someone else's; in doubt, mask.
fn is_field(key: &str) -> bool {
    let mut letters = key
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase());
    b"listenerid"
        .iter()
        .all(|&c| letters.next() == Some(char::from(c)))
        && letters.next().is_none()
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// Whether `listener_id` could appear in these bytes (any case, any separators: see [`is_field`]).
fn contains_field(bytes: &[u8]) -> bool {
    let letters: Vec<u8> = bytes
        .iter()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(u8::to_ascii_lowercase)
        .collect();
    letters.windows(10).any(|w| w == b"listenerid")
}

/// A string token that mentions the field: its decoded text redacted and encoded again as a JSON
/// string; when it does not decode (cut short), simply masked.
fn redact_inside_string(decoded: Option<String>, pseudonyms: &Pseudonymizer) -> Vec<u8> {
    match decoded {
        Some(text) => {
            let inner = redact_listener_ids(text.as_bytes(), pseudonyms);
            let inner = String::from_utf8_lossy(&inner);
            serde_json::to_vec(&*inner).unwrap_or_else(|_| MASK.to_vec())
        }
        None => MASK.to_vec(),
    }
}

/// The end of the value starting at `start` and what to write instead of it.
fn value_replacement(payload: &[u8], start: usize, pseudonyms: &Pseudonymizer) -> (usize, Vec<u8>) {
    if start >= payload.len() {
        return (start, Vec::new());
    }
    match payload[start] {
        b'"' => {
            let (end, decoded) = scan_string(payload, start);
            match decoded {
                // Complete: the same pseudonym the tables use.
                Some(id) if end <= payload.len() && payload[end - 1] == b'"' && end > start + 1 => {
                    let mut r = Vec::with_capacity(34);
                    r.push(b'"');
                    r.extend_from_slice(pseudonyms.pseudonym(&id).to_hex().as_bytes());
                    r.push(b'"');
                    (end, r)
                }
                _ => (end, MASK.to_vec()),
            }
        }
        b'{' | b'[' => (skip_nested(payload, start), MASK.to_vec()),
        _ => {
            let end = start
                + payload[start..]
                    .iter()
                    .take_while(|&&c| {
                        !matches!(c, b',' | b'}' | b']' | b'\n' | b'\r' | b'&' | b';')
                    })
                    .count();
            let word = payload[start..end].trim_ascii_end();
            let end = start + word.len();
            if word == b"null" || word.is_empty() {
                (end, word.to_vec())
            } else {
                (end, MASK.to_vec())
            }
        }
    }
}

/// Reads a string starting at the quote at `start` (`"` as JSON has it, or `'`). Returns the index
/// after its closing quote (or the payload's end when it is cut short) and its decoded text when it
/// is complete and decodes (JSON escapes, UTF-8).
fn scan_string(payload: &[u8], start: usize) -> (usize, Option<String>) {
    let quote = payload[start];
    let mut bytes = Vec::new();
    let mut ok = true;
    let mut i = start + 1;
    while i < payload.len() {
        match payload[i] {
            c if c == quote => {
                let text = if ok {
                    String::from_utf8(bytes).ok()
                } else {
                    None
                };
                return (i + 1, text);
            }
            b'\\' => {
                let Some(&e) = payload.get(i + 1) else {
                    return (payload.len(), None);
                };
                i += 2;
                match e {
                    b'"' | b'\\' | b'/' | b'\'' => bytes.push(e),
                    b'b' => bytes.push(8),
                    b'f' => bytes.push(12),
                    b'n' => bytes.push(b'\n'),
                    b'r' => bytes.push(b'\r'),
                    b't' => bytes.push(b'\t'),
                    b'u' => match payload
                        .get(i..i + 4)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u32::from_str_radix(h, 16).ok())
                    {
                        Some(code) => {
                            i += 4;
                            match char::from_u32(code) {
                                Some(c) => {
                                    bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes())
                                }
                                // A surrogate half: not something `listener_id` is spelt with.
                                None => ok = false,
                            }
                        }
                        None => ok = false,
                    },
                    _ => ok = false,
                }
            }
            c => {
                bytes.push(c);
                i += 1;
            }
        }
    }
    (payload.len(), None)
}

/// The index after the object or array opening at `start` (strings inside are skipped whole), or
/// the payload's end when it is cut short.
fn skip_nested(payload: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < payload.len() {
        match payload[i] {
            b'"' => {
                i = scan_string(payload, i).0;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    payload.len()
}

/// Skips whitespace as generously as a reader's eye: ASCII whitespace with the vertical tab, and
/// any Unicode space or byte-order mark written in UTF-8 (a no-break space before a colon).
fn skip_space(payload: &[u8], mut i: usize) -> usize {
    while i < payload.len() {
        let c = payload[i];
        if c.is_ascii_whitespace() || c == 0x0b {
            i += 1;
            continue;
        }
        if c < 0x80 {
            break;
        }
        let len = match c {
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => break,
        };
        match payload
            .get(i..i + len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.chars().next())
        {
            Some(ch) if ch.is_whitespace() || ch == '\u{feff}' || ch == '\u{200b}' => i += len,
            _ => break,
        }
    }
    i
}

/// A bare word starts here: a letter or `_` not preceded by a word character.
fn is_word_start(payload: &[u8], i: usize) -> bool {
    let c = payload[i];
    (c.is_ascii_alphabetic() || c == b'_') && (i == 0 || !is_word_byte(payload[i - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(s: &str) -> String {
        let p = Pseudonymizer::new(b"test");
        String::from_utf8(redact_listener_ids(s.as_bytes(), &p)).unwrap()
    }

    fn hex(id: &str) -> String {
        Pseudonymizer::new(b"test").pseudonym(id).to_hex()
    }

    #[test]
    fn string_values_become_their_pseudonym_and_the_rest_stays() {
        let got = redact(r#"{"v":1,"type":"join","listener_id":"alice@example.com","ts":5}"#);
        assert_eq!(
            got,
            format!(
                r#"{{"v":1,"type":"join","listener_id":"{}","ts":5}}"#,
                hex("alice@example.com")
            )
        );
        let spaced = redact("{ \"listener_id\" :\t\"bob\" , \"x\": 1 }");
        assert_eq!(
            spaced,
            format!("{{ \"listener_id\" :\t\"{}\" , \"x\": 1 }}", hex("bob"))
        );
    }

    #[test]
    fn escaped_keys_and_values_are_decoded_first() {
        let got = redact(r#"{"listener\u005fid":"al\u0069ce"}"#);
        assert_eq!(got, format!(r#"{{"listener\u005fid":"{}"}}"#, hex("alice")));
        let quote = redact(r#"{"listener_id":"a\"b"}"#);
        assert_eq!(quote, format!(r#"{{"listener_id":"{}"}}"#, hex("a\"b")));
    }

    #[test]
    fn every_occurrence_at_any_depth_and_duplicates() {
        let got = redact(r#"{"listener_id":"a","x":{"listener_id":"b"},"listener_id":"c"}"#);
        for id in ["a", "b", "c"] {
            assert!(got.contains(&hex(id)), "{got}");
        }
        assert!(!got.contains(r#""a""#) && !got.contains(r#""b""#) && !got.contains(r#""c""#));
    }

    #[test]
    fn other_values_and_cut_strings_are_masked() {
        assert_eq!(
            redact(r#"{"listener_id":12345678}"#),
            r#"{"listener_id":"[masked]"}"#
        );
        assert_eq!(
            redact(r#"{"listener_id":{"email":"alice@x"},"y":2}"#),
            r#"{"listener_id":"[masked]","y":2}"#
        );
        assert_eq!(
            redact(r#"{"listener_id":["alice@x"]}"#),
            r#"{"listener_id":"[masked]"}"#
        );
        assert_eq!(redact(r#"{"listener_id":null}"#), r#"{"listener_id":null}"#);
        assert_eq!(
            redact(r#"{"type":"join","listener_id":"alice.secr"#),
            r#"{"type":"join","listener_id":"[masked]""#
        );
        assert_eq!(redact(r#"{"listener_id":"#), r#"{"listener_id":"#);
        assert_eq!(redact(r#"{"listener_id"  "#), r#"{"listener_id"  "#);
    }

    #[test]
    fn text_that_is_not_json_is_masked_too() {
        assert_eq!(
            redact("listener_id=alice@example.com&x=1"),
            r#"listener_id="[masked]"&x=1"#
        );
        assert_eq!(
            redact("oops LISTENER_ID: carol, more"),
            r#"oops LISTENER_ID: "[masked]", more"#
        );
        // Single quotes are not JSON: the value is masked, not pseudonymised.
        assert_eq!(
            redact("{'listener_id': 'dave', 'x': 1}"),
            r#"{'listener_id': "[masked]", 'x': 1}"#
        );
        // Only the field itself: a longer word is someone else's.
        assert_eq!(redact("my_listener_id_count: 3"), "my_listener_id_count: 3");
    }

    #[test]
    fn json_inside_a_string_is_redacted_as_text() {
        let got = redact(r#"{"note":"{\"listener_id\":\"erin\"}","x":1}"#);
        assert!(!got.contains("erin"), "{got}");
        assert!(got.contains(&hex("erin")), "{got}");
        assert!(got.ends_with(r#","x":1}"#), "{got}");
        assert_eq!(
            redact(r#"{"note":"listener_id=frank"#),
            r#"{"note":"[masked]""#
        );
        assert_eq!(
            redact(r#"{"note":"nothing here"}"#),
            r#"{"note":"nothing here"}"#
        );
    }

    #[test]
    fn keys_a_reader_would_take_for_the_field() {
        // A vertical tab or a no-break space before the colon, a key in other case or spelling, a
        // key with no colon: a JSON parser reads none of these, a person reads all of them.
        for line in [
            "{\"listener_id\"\u{b}:\"alice\"}",
            "{\"listener_id\"\u{a0}:\u{a0}\"alice\"}",
            "{\"listener_id\"\u{3000}:\"alice\"}",
            "{\"Listener_Id\":\"alice\"}",
            "{\"LISTENER-ID\":\"alice\"}",
            "{\"listenerId\":\"alice\"}",
            "{\" listener_id \":\"alice\"}",
            "{\"listener_id\" \"alice\"}",
            "listener-id=alice",
            // Found by the fuzz target (fuzz/regressions/redact-key-with-comma).
            "{\"liste,ner_id\":\n\"alice\"}",
            "{\"listener_id\":\n\"alice\"}",
        ] {
            let got = redact(line);
            assert!(!got.contains("alice"), "{line:?} -> {got:?}");
        }
        // Someone else's keys stay.
        for line in [
            r#"{"listener_ids_seen":"alice"}"#,
            r#"{"listener_idx":"alice"}"#,
            r#"{"field":"listener_id","x":"alice"}"#,
        ] {
            assert_eq!(redact(line), line);
        }
    }

    #[test]
    fn a_value_on_the_next_line_is_masked_there() {
        let p = Pseudonymizer::new(b"test");
        let (first, dangling) = redact_continued(br#"{"v":1,"listener_id":"#, &p, false);
        assert!(dangling);
        assert_eq!(first, br#"{"v":1,"listener_id":"#);
        let (second, dangling) = redact_continued(br#"  "alice","x":2}"#, &p, true);
        assert!(!dangling);
        let second = String::from_utf8(second).unwrap();
        assert!(
            !second.contains("alice") && second.contains(&hex("alice")),
            "{second}"
        );
        // A key alone at the end, its colon on the next line.
        let (_, dangling) = redact_continued(br#"{"listener_id""#, &p, false);
        assert!(dangling);
        let (next, _) = redact_continued(br#": bob}"#, &p, true);
        assert!(!String::from_utf8_lossy(&next).contains("bob"));
        // Nothing dangling: the next line is left as it is.
        let (plain, dangling) = redact_continued(br#""carol"}"#, &p, false);
        assert_eq!((plain.as_slice(), dangling), (&br#""carol"}"#[..], false));
    }

    #[test]
    fn never_panics_on_any_bytes() {
        let p = Pseudonymizer::new(b"test");
        let samples: [&[u8]; 8] = [
            b"",
            b"\"",
            b"\"\\",
            b"\"listener_id\":\"\\u12",
            b"listener_id",
            b"listener_id:",
            b"\xff\xfe\"listener_id\":\"\xff\"",
            b"{\"listener_id\":[[[[\"",
        ];
        for s in samples {
            let out = redact_listener_ids(s, &p);
            assert!(out.len() <= s.len() + 40);
        }
        // Every prefix of a real line.
        let line = br#"{"v":1,"event_id":"e","type":"join","listener_id":"alice.secret@example.com","session_id":"s"}"#;
        for n in 0..=line.len() {
            let out = redact_listener_ids(&line[..n], &p);
            let text = String::from_utf8_lossy(&out);
            assert!(!text.contains("alice.secret"), "{n}: {text}");
        }
    }
}
