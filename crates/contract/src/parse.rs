//! One message in, one [`Event`] or one [`Reject`] out.
//!
//! The whole message is read by serde_json with a visitor that records every key and the JSON kind
//! of every known field's value, so the JSON grammar is always checked first (a truncated line is
//! `truncated_json` whatever its fields say). Then the fields are judged in a fixed order — `v`,
//! `type`, `event_id`, `ts`, `stream_id`, then the fields the type needs — and the first problem is
//! the reason. Fields a type does not use are ignored, whatever they hold.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::error::Category;

use crate::{
    CONTRACT_VERSION, Event, EventType, MAX_MESSAGE_BYTES, Pseudonymizer, Reject, RejectCode,
    StreamState, Text, parse_rfc3339_ms,
};

/// Longest `event_id`, `stream_id`, `listener_id`, `session_id`, in bytes.
const MAX_ID_BYTES: usize = 128;
/// Longest `reason`, in bytes.
const MAX_REASON_BYTES: usize = 64;

/// Parses and validates one message, replacing `listener_id` by its pseudonym.
pub fn parse_event(bytes: &[u8], pseudonyms: &Pseudonymizer) -> Result<Event, Reject> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(Reject::new(
            RejectCode::TooLarge,
            format!(
                "message is {} bytes, over the {MAX_MESSAGE_BYTES}-byte limit",
                bytes.len()
            ),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Reject::new(
            RejectCode::NotUtf8,
            format!(
                "message is not UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    if text
        .trim_matches(|c: char| c.is_ascii_whitespace())
        .is_empty()
    {
        return Err(Reject::new(RejectCode::Empty, "empty message"));
    }
    match scan_plain(text) {
        Some(raw) => raw.validate(pseudonyms),
        None => read_json(text)?.validate(pseudonyms),
    }
}

/// The fields of any message, read by serde_json: the JSON grammar is checked first.
fn read_json(text: &str) -> Result<RawEvent<'_>, Reject> {
    let mut de = serde_json::Deserializer::from_str(text);
    match de::Deserialize::deserialize(&mut de).and_then(|r: Parsed<'_>| {
        de.end()?;
        Ok(r)
    }) {
        Ok(Parsed::Object(raw)) => Ok(raw),
        Ok(Parsed::NotObject(kind)) => Err(Reject::new(
            RejectCode::NotObject,
            format!("message is a JSON {kind}, not an object"),
        )),
        Err(e) => {
            let code = if e.classify() == Category::Eof {
                RejectCode::TruncatedJson
            } else {
                RejectCode::NotJson
            };
            let what = if code == RejectCode::TruncatedJson {
                "JSON ends too early"
            } else {
                "not valid JSON"
            };
            Err(Reject::new(code, format!("{what}: {e}")))
        }
    }
}

/// The fields of a message in the shape producers write almost always, read without serde: one
/// flat object, no whitespace, keys and strings without escapes or control characters, values
/// that are strings or integers that fit 64 bits, no key twice. Anything else (`null`, a
/// float, a nested value, an escape, a repeated key, a grammar error) gives `None`, and the
/// message goes through serde_json, which decides it exactly as before. What this returns is
/// what the serde path would have recorded for the same message (a test holds the two equal on
/// mutated and random messages), so both are judged by the same [`RawEvent::validate`].
fn scan_plain(text: &str) -> Option<RawEvent<'_>> {
    let b = text.as_bytes();
    if b.first() != Some(&b'{') || b.last() != Some(&b'}') || b.len() < 2 {
        return None;
    }
    let mut raw = RawEvent::default();
    let mut unknown: [&str; 8] = [""; 8];
    let mut unknowns = 0;
    let mut i = 1;
    if b[i] == b'}' {
        return (i + 1 == b.len()).then_some(raw);
    }
    loop {
        let key = plain_string(text, &mut i)?;
        if b.get(i) != Some(&b':') {
            return None;
        }
        i += 1;
        let val = match *b.get(i)? {
            b'"' => Val::Str(Cow::Borrowed(plain_string(text, &mut i)?)),
            b'-' | b'0'..=b'9' => Val::Int(plain_integer(b, &mut i)?),
            _ => return None,
        };
        match field_index(key) {
            Some(f) if raw.fields[f].is_none() => raw.fields[f] = Some(val),
            Some(_) => return None,
            None => {
                if unknowns == unknown.len() || unknown[..unknowns].contains(&key) {
                    return None;
                }
                unknown[unknowns] = key;
                unknowns += 1;
            }
        }
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') if i + 1 == b.len() => return Some(raw),
            _ => return None,
        }
    }
}

/// A string starting at `b[*i]` (its opening quote), without escapes or control characters;
/// `*i` moves past the closing quote.
fn plain_string<'a>(text: &'a str, i: &mut usize) -> Option<&'a str> {
    let b = text.as_bytes();
    if b.get(*i) != Some(&b'"') {
        return None;
    }
    let start = *i + 1;
    let len = b
        .get(start..)?
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
    let end = start + len;
    if b[end] != b'"' {
        return None;
    }
    *i = end + 1;
    // Quotes are ASCII, so both ends are character boundaries of the (UTF-8) text.
    text.get(start..end)
}

/// A JSON integer starting at `b[*i]` that fits `i64` (negative) or `u64`, as serde_json reads
/// it; `None` for a fraction, an exponent, a leading zero, `-0` or anything larger (serde_json
/// reads those as floats or errors). `*i` moves past it.
fn plain_integer(b: &[u8], i: &mut usize) -> Option<i128> {
    let negative = b[*i] == b'-';
    let start = *i + usize::from(negative);
    let digits = b
        .get(start..)?
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .count();
    if digits == 0 || digits > 20 || (digits > 1 && b[start] == b'0') {
        return None;
    }
    let end = start + digits;
    if matches!(b.get(end), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    let mut n: i128 = 0;
    for &c in &b[start..end] {
        n = n * 10 + i128::from(c - b'0');
    }
    let n = if negative { -n } else { n };
    let fits = if negative {
        // serde_json reads `-0` as the float -0.0.
        n < 0 && n >= i128::from(i64::MIN)
    } else {
        n <= i128::from(u64::MAX)
    };
    *i = end;
    fits.then_some(n)
}

/// The JSON kind of a known field's value, kept just long enough to judge it.
#[derive(Debug, PartialEq)]
enum Val<'a> {
    Null,
    Bool,
    Int(i128),
    Float,
    Str(Cow<'a, str>),
    Array,
    Object,
}

impl Val<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Val::Null => "null",
            Val::Bool => "a boolean",
            Val::Int(_) => "an integer",
            Val::Float => "a non-integer number",
            Val::Str(_) => "a string",
            Val::Array => "an array",
            Val::Object => "an object",
        }
    }
}

const FIELDS: [&str; 14] = [
    "v",
    "event_id",
    "type",
    "ts",
    "stream_id",
    "listener_id",
    "session_id",
    "reason",
    "displayed",
    "state",
    "scheduled_start",
    "client",
    "region",
    "audio_ms",
];

/// The index of a known field in [`FIELDS`].
fn field_index(key: &str) -> Option<usize> {
    Some(match key {
        "v" => 0,
        "event_id" => 1,
        "type" => 2,
        "ts" => 3,
        "stream_id" => 4,
        "listener_id" => 5,
        "session_id" => 6,
        "reason" => 7,
        "displayed" => 8,
        "state" => 9,
        "scheduled_start" => 10,
        "client" => 11,
        "region" => 12,
        "audio_ms" => 13,
        _ => return None,
    })
}

#[derive(Default, Debug, PartialEq)]
struct RawEvent<'a> {
    fields: [Option<Val<'a>>; 14],
    duplicate: Option<String>,
}

// Lives on the stack for one parse; boxing the big variant would allocate per message.
#[allow(clippy::large_enum_variant)]
enum Parsed<'a> {
    Object(RawEvent<'a>),
    NotObject(&'static str),
}

impl<'de> de::Deserialize<'de> for Parsed<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopVisitor)
    }
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Parsed<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Parsed::NotObject("boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Parsed::NotObject("number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Parsed::NotObject("number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Parsed::NotObject("number"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Parsed::NotObject("string"))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Parsed::NotObject("null"))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Parsed::NotObject("array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = RawEvent::default();
        let mut unknown_keys: Vec<Cow<'de, str>> = Vec::new();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match field_index(&key) {
                Some(i) => {
                    let val = map.next_value_seed(ValSeed)?;
                    if raw.fields[i].is_some() {
                        raw.duplicate.get_or_insert_with(|| key.into_owned());
                    } else {
                        raw.fields[i] = Some(val);
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                    if unknown_keys.contains(&key) {
                        raw.duplicate.get_or_insert_with(|| key.into_owned());
                    } else {
                        unknown_keys.push(key);
                    }
                }
            }
        }
        Ok(Parsed::Object(raw))
    }
}

struct ValSeed;

impl<'de> DeserializeSeed<'de> for ValSeed {
    type Value = Val<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Val<'de>, D::Error> {
        d.deserialize_any(ValVisitor)
    }
}

struct ValVisitor;

impl<'de> Visitor<'de> for ValVisitor {
    type Value = Val<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Val<'de>, E> {
        Ok(Val::Bool)
    }
    fn visit_i64<E>(self, v: i64) -> Result<Val<'de>, E> {
        Ok(Val::Int(i128::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Val<'de>, E> {
        Ok(Val::Int(i128::from(v)))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Val<'de>, E> {
        Ok(Val::Float)
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Val<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Val::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Val::Object)
    }
}

const V: usize = 0;
const EVENT_ID: usize = 1;
const TYPE: usize = 2;
const TS: usize = 3;
const STREAM_ID: usize = 4;
const LISTENER_ID: usize = 5;
const SESSION_ID: usize = 6;
const REASON: usize = 7;
const DISPLAYED: usize = 8;
const STATE: usize = 9;
const SCHEDULED_START: usize = 10;
const CLIENT: usize = 11;
const REGION: usize = 12;
const AUDIO_MS: usize = 13;

fn missing(i: usize, kind: Option<EventType>) -> Reject {
    let msg = match kind {
        Some(k) => format!("`{}` is required on `{}` events", FIELDS[i], k.as_str()),
        None => format!("`{}` is required", FIELDS[i]),
    };
    Reject::new(RejectCode::MissingField, msg)
}

fn wrong_type(i: usize, expected: &str, got: &Val<'_>) -> Reject {
    Reject::new(
        RejectCode::WrongType,
        format!("`{}` must be {expected}, got {}", FIELDS[i], got.kind()),
    )
}

impl<'a> RawEvent<'a> {
    /// The value of field `i`, `None` when absent or `null`.
    fn get(&self, i: usize) -> Option<&Val<'a>> {
        match &self.fields[i] {
            None | Some(Val::Null) => None,
            Some(v) => Some(v),
        }
    }

    fn string(&self, i: usize, min: usize, max: usize) -> Result<Option<&str>, Reject> {
        match self.get(i) {
            None => Ok(None),
            Some(Val::Str(s)) => {
                if s.len() < min || s.len() > max {
                    Err(Reject::new(
                        RejectCode::OutOfRange,
                        format!(
                            "`{}` must be {min} to {max} bytes long, got {}",
                            FIELDS[i],
                            s.len()
                        ),
                    ))
                } else {
                    Ok(Some(s))
                }
            }
            Some(other) => Err(wrong_type(i, "a string", other)),
        }
    }

    fn required_string(
        &self,
        i: usize,
        kind: Option<EventType>,
        min: usize,
        max: usize,
    ) -> Result<&str, Reject> {
        self.string(i, min, max)?.ok_or_else(|| missing(i, kind))
    }

    fn non_negative(&self, i: usize) -> Result<Option<i64>, Reject> {
        match self.get(i) {
            None => Ok(None),
            Some(Val::Int(n)) => match i64::try_from(*n) {
                Ok(n) if n >= 0 => Ok(Some(n)),
                _ => Err(Reject::new(
                    RejectCode::OutOfRange,
                    format!(
                        "`{}` must be an integer from 0 to {}, got {n}",
                        FIELDS[i],
                        i64::MAX
                    ),
                )),
            },
            Some(other) => Err(wrong_type(i, "an integer", other)),
        }
    }

    fn timestamp(&self, i: usize) -> Result<Option<i64>, Reject> {
        match self.string(i, 0, usize::MAX)? {
            None => Ok(None),
            Some(s) => parse_rfc3339_ms(s).map(Some).ok_or_else(|| {
                Reject::new(
                    RejectCode::BadTimestamp,
                    format!(
                        "`{}` is not an RFC 3339 date-time with an offset (like 2024-08-12T23:59:58.123Z): {:?}",
                        FIELDS[i],
                        truncate(s, 64)
                    ),
                )
            }),
        }
    }

    fn validate(self, pseudonyms: &Pseudonymizer) -> Result<Event, Reject> {
        if let Some(key) = &self.duplicate {
            return Err(Reject::new(
                RejectCode::DuplicateKey,
                format!("key `{}` appears more than once", truncate(key, 64)),
            ));
        }
        match self.get(V) {
            None => return Err(missing(V, None)),
            Some(Val::Int(v)) if *v == i128::from(CONTRACT_VERSION) => {}
            Some(Val::Int(v)) => {
                return Err(Reject::new(
                    RejectCode::UnknownVersion,
                    format!("contract version {v} is not supported (this build reads v1)"),
                ));
            }
            Some(other) => return Err(wrong_type(V, "an integer", other)),
        }
        let kind_str = self.required_string(TYPE, None, 0, usize::MAX)?;
        let kind = EventType::from_wire(kind_str).ok_or_else(|| {
            Reject::new(
                RejectCode::UnknownType,
                format!(
                    "unknown event type {:?} (expected join, connect, heartbeat, leave, drop, display or stream_state)",
                    truncate(kind_str, 64)
                ),
            )
        })?;
        let event_id = self.required_string(EVENT_ID, None, 1, MAX_ID_BYTES)?;
        let ts = self.timestamp(TS)?.ok_or_else(|| missing(TS, None))?;
        let stream_id = self.required_string(STREAM_ID, None, 1, MAX_ID_BYTES)?;

        let mut event = Event {
            event_id: event_id.into(),
            kind,
            ts,
            stream_id: stream_id.into(),
            listener_key: None,
            session_id: None,
            reason: None,
            displayed: None,
            state: None,
            scheduled_start: None,
            client: None,
            region: None,
            audio_ms: None,
        };
        if kind.is_session() {
            let listener = self.required_string(LISTENER_ID, Some(kind), 1, MAX_ID_BYTES)?;
            let session = self.required_string(SESSION_ID, Some(kind), 1, MAX_ID_BYTES)?;
            event.listener_key = Some(pseudonyms.pseudonym(listener));
            event.session_id = Some(session.into());
        }
        match kind {
            EventType::Drop => {
                let reason = self.required_string(REASON, Some(kind), 0, MAX_REASON_BYTES)?;
                event.reason = Some(reason.into());
            }
            EventType::Heartbeat => event.audio_ms = self.non_negative(AUDIO_MS)?,
            EventType::Display => {
                event.displayed = Some(
                    self.non_negative(DISPLAYED)?
                        .ok_or_else(|| missing(DISPLAYED, Some(kind)))?,
                );
            }
            EventType::StreamState => {
                let state = self.required_string(STATE, Some(kind), 0, usize::MAX)?;
                event.state = Some(StreamState::from_wire(state).ok_or_else(|| {
                    Reject::new(
                        RejectCode::UnknownState,
                        format!(
                            "unknown stream state {:?} (expected scheduled, live or ended)",
                            truncate(state, 64)
                        ),
                    )
                })?);
                event.scheduled_start = self.timestamp(SCHEDULED_START)?;
            }
            _ => {}
        }
        event.client = self.string(CLIENT, 0, usize::MAX)?.map(Text::from);
        event.region = self.string(REGION, 0, usize::MAX)?.map(Text::from);
        Ok(event)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Event, Reject> {
        parse_event(s.as_bytes(), &Pseudonymizer::new(b"test"))
    }

    fn code(s: &str) -> RejectCode {
        match parse(s) {
            Ok(e) => panic!("accepted {s}: {e:?}"),
            Err(r) => r.code,
        }
    }

    const JOIN: &str = r#"{"v":1,"event_id":"e1","type":"join","ts":"2024-08-12T23:59:58.123Z","stream_id":"s","listener_id":"alice","session_id":"x"}"#;

    #[test]
    fn accepts_a_join_and_hides_the_listener() {
        let e = parse(JOIN).unwrap();
        assert_eq!(e.kind, EventType::Join);
        assert_eq!(e.ts, 1_723_507_198_123);
        assert_eq!(e.session_id.as_deref(), Some("x"));
        assert_eq!(
            e.listener_key,
            Some(Pseudonymizer::new(b"test").pseudonym("alice"))
        );
        assert!(!format!("{e:?}").contains("alice"));
    }

    #[test]
    fn every_reject_code_has_a_trigger() {
        use RejectCode::*;
        let cases: &[(&str, RejectCode)] = &[
            ("", Empty),
            ("   ", Empty),
            ("hello", NotJson),
            ("{\"v\":1,", TruncatedJson),
            ("[1,2]", NotObject),
            ("\"join\"", NotObject),
            (r#"{"v":1,"v":1}"#, DuplicateKey),
            (r#"{"x":1,"x":2,"v":1}"#, DuplicateKey),
            (r#"{"type":"join"}"#, MissingField),
            (r#"{"v":"1","type":"join"}"#, WrongType),
            (r#"{"v":1.0,"type":"join"}"#, WrongType),
            (r#"{"v":2,"type":"join"}"#, UnknownVersion),
            (r#"{"v":1,"type":"jump"}"#, UnknownType),
            (
                r#"{"v":1,"event_id":5,"type":"join","ts":"2024-08-12T23:59:58Z","stream_id":"s","listener_id":"a","session_id":"x"}"#,
                WrongType,
            ),
            (
                r#"{"v":1,"event_id":"e","type":"join","ts":"yesterday","stream_id":"s","listener_id":"a","session_id":"x"}"#,
                BadTimestamp,
            ),
            (
                r#"{"v":1,"event_id":"e","type":"join","stream_id":"s","listener_id":"a","session_id":"x"}"#,
                MissingField,
            ),
            (
                r#"{"v":1,"event_id":"e","type":"join","ts":"2024-08-12T23:59:58Z","stream_id":"s","listener_id":"a"}"#,
                MissingField,
            ),
            (
                r#"{"v":1,"event_id":"e","type":"display","ts":"2024-08-12T23:59:58Z","stream_id":"s","displayed":-1}"#,
                OutOfRange,
            ),
            (
                r#"{"v":1,"event_id":"","type":"display","ts":"2024-08-12T23:59:58Z","stream_id":"s","displayed":1}"#,
                OutOfRange,
            ),
            (
                r#"{"v":1,"event_id":"e","type":"stream_state","ts":"2024-08-12T23:59:58Z","stream_id":"s","state":"paused"}"#,
                UnknownState,
            ),
        ];
        for (line, want) in cases {
            assert_eq!(code(line), *want, "{line}");
        }
        assert_eq!(
            parse_event(b"{\"v\":1,\xff}", &Pseudonymizer::development())
                .unwrap_err()
                .code,
            NotUtf8
        );
        let big = format!(
            "{}{}",
            &JOIN[..JOIN.len() - 1],
            format_args!(",\"pad\":\"{}\"}}", "x".repeat(70_000))
        );
        assert_eq!(code(&big), TooLarge);
    }

    /// The plain scanner is a shortcut, never a second judge: whatever it reads, serde_json
    /// reads the same. Valid lines are mutated (bytes cut, inserted, swapped; keys repeated;
    /// values replaced by edge cases of the JSON grammar), and every mutant the scanner accepts
    /// must give serde's fields exactly; the valid lines themselves must take the shortcut.
    #[test]
    fn the_plain_scanner_reads_what_serde_reads() {
        let lines = [
            JOIN,
            r#"{"v":1,"event_id":"town-hall-main-402714","type":"heartbeat","ts":"2024-08-12T23:50:00.567Z","stream_id":"town-hall-main","listener_id":"user-8345","session_id":"town-hall-main-s12430","audio_ms":10000}"#,
            r#"{"v":1,"event_id":"e9","type":"display","ts":"2024-08-12T23:50:00.000Z","stream_id":"s","displayed":1100000,"extra":"x","more":-3}"#,
            r#"{"v":1,"event_id":"é-ü","type":"drop","ts":"2024-08-12T23:50:01Z","stream_id":"s","listener_id":"a","session_id":"b","reason":"net","client":"web","region":"eu"}"#,
            r#"{"v":1,"event_id":"s0","type":"stream_state","ts":"2024-08-12T23:30:00.000Z","stream_id":"s","state":"scheduled","scheduled_start":"2024-08-13T00:00:00.000Z"}"#,
        ];
        for line in lines {
            assert!(scan_plain(line).is_some(), "{line}");
            assert_eq!(scan_plain(line).unwrap(), read_json(line).unwrap());
        }
        let pieces: &[&str] = &[
            "\"",
            "\\",
            ",",
            ":",
            "{",
            "}",
            "[",
            "]",
            "-",
            "0",
            "1",
            "9",
            ".",
            "e",
            "E",
            "+",
            " ",
            "\t",
            "\u{1}",
            "\u{7f}",
            "é",
            "null",
            "true",
            "-0",
            "00",
            "1.0",
            "1e3",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999999",
            "\"v\":1",
            "\"x\":2",
            "\"event_id\":\"e\"",
            "\\u0041",
            "\\\"",
        ];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let (mut took, mut tried) = (0, 0);
        for round in 0..60_000 {
            let mut text = lines[round % lines.len()].to_string();
            for _ in 0..1 + next(3) {
                let mut at = next(text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                match next(4) {
                    0 => text.insert_str(at, pieces[next(pieces.len())]),
                    1 => {
                        let mut end = (at + 1 + next(4)).min(text.len());
                        while !text.is_char_boundary(end) {
                            end += 1;
                        }
                        text.replace_range(at..end, "");
                    }
                    2 => text.replace_range(at..at, &format!("{},", pieces[next(pieces.len())])),
                    _ => {
                        // A known key again, or a value swapped for an edge case.
                        let key = FIELDS[next(FIELDS.len())];
                        let value = pieces[next(pieces.len())];
                        let mut one = 1.min(text.len());
                        while !text.is_char_boundary(one) {
                            one += 1;
                        }
                        text.insert_str(one, &format!("\"{key}\":{value},"));
                    }
                }
            }
            tried += 1;
            if let Some(fast) = scan_plain(&text) {
                took += 1;
                match read_json(&text) {
                    Ok(slow) => assert_eq!(fast, slow, "{text}"),
                    Err(r) => panic!("the scanner read {text} but serde rejects it: {r:?}"),
                }
            }
        }
        // Both sides of the shortcut are exercised.
        assert!(
            took > tried / 10 && took < tried,
            "{took} of {tried} mutants scanned"
        );
    }

    #[test]
    fn ignores_unknown_fields_and_fields_the_type_does_not_use() {
        let line = r#"{"v":1,"event_id":"e","type":"display","ts":"2024-08-12T23:59:58Z","stream_id":"s","displayed":7,"listener_id":5,"session_id":null,"audio_ms":"x","extra":{"a":[1]}}"#;
        let e = parse(line).unwrap();
        assert_eq!(e.displayed, Some(7));
        assert_eq!(e.listener_key, None);
        let with_null_client = r#"{"v":1,"event_id":"e","type":"heartbeat","ts":"2024-08-12T23:59:58Z","stream_id":"s","listener_id":"a","session_id":"x","client":null,"audio_ms":null}"#;
        let e = parse(with_null_client).unwrap();
        assert_eq!(e.client, None);
        assert_eq!(e.audio_ms, None);
    }
}
