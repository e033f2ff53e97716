//! The event contract (v1) as code: wire JSON in, validated and pseudonymised [`Event`]s out.
//!
//! This crate is the ingest edge's only knowledge of the wire format. [`parse_event`] turns one
//! message (a Kafka payload or an NDJSON line) into either an [`Event`] or a [`Reject`] carrying a
//! stable [`RejectCode`]; it never panics and never fails in any other way. The design choice: one
//! hand-written serde visitor that sees every key, so duplicate keys and exact JSON types (`1.0` is
//! not an integer, `"1"` is not a number) are judged here rather than coerced. The raw `listener_id`
//! is replaced by a keyed [`Pseudonymizer`] before an `Event` exists, so nothing downstream can leak
//! it. This crate does no I/O.

mod parse;
mod pseudonym;
mod redact;
pub mod time;

pub use parse::parse_event;
pub use pseudonym::{ListenerKey, PSEUDONYM_KEY_ENV, Pseudonymizer};
pub use redact::{redact_continued, redact_listener_ids};
pub use time::{Millis, format_rfc3339_ms, parse_rfc3339_ms};

/// Largest message the contract accepts, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Contract version this crate implements.
pub const CONTRACT_VERSION: i64 = 1;

/// The `type` of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    Join,
    Connect,
    Heartbeat,
    Leave,
    Drop,
    Display,
    StreamState,
}

impl EventType {
    pub const ALL: [EventType; 7] = [
        EventType::Join,
        EventType::Connect,
        EventType::Heartbeat,
        EventType::Leave,
        EventType::Drop,
        EventType::Display,
        EventType::StreamState,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Join => "join",
            EventType::Connect => "connect",
            EventType::Heartbeat => "heartbeat",
            EventType::Leave => "leave",
            EventType::Drop => "drop",
            EventType::Display => "display",
            EventType::StreamState => "stream_state",
        }
    }

    pub fn from_wire(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Whether the type belongs to a listener session (needs `listener_id` and `session_id`).
    pub fn is_session(self) -> bool {
        matches!(
            self,
            EventType::Join
                | EventType::Connect
                | EventType::Heartbeat
                | EventType::Leave
                | EventType::Drop
        )
    }
}

/// The host-side state carried by `stream_state` events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamState {
    Scheduled,
    Live,
    Ended,
}

impl StreamState {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Scheduled => "scheduled",
            StreamState::Live => "live",
            StreamState::Ended => "ended",
        }
    }

    pub fn from_wire(s: &str) -> Option<StreamState> {
        match s {
            "scheduled" => Some(StreamState::Scheduled),
            "live" => Some(StreamState::Live),
            "ended" => Some(StreamState::Ended),
            _ => None,
        }
    }
}

/// The text fields of an [`Event`]: up to 23 bytes are kept inline (ids and labels usually
/// are), so parsing an event allocates nothing and dropping it on another thread frees nothing.
pub type Text = smol_str::SmolStr;

/// A valid event. Only the fields its type uses are set; `listener_key` is the pseudonym.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub event_id: Text,
    pub kind: EventType,
    pub ts: Millis,
    pub stream_id: Text,
    pub listener_key: Option<ListenerKey>,
    pub session_id: Option<Text>,
    pub reason: Option<Text>,
    pub displayed: Option<i64>,
    pub state: Option<StreamState>,
    pub scheduled_start: Option<Millis>,
    pub client: Option<Text>,
    pub region: Option<Text>,
    pub audio_ms: Option<i64>,
}

/// Why a message was rejected: a stable, short, machine-readable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectCode {
    /// The message is empty or only whitespace.
    Empty,
    /// The message is over [`MAX_MESSAGE_BYTES`].
    TooLarge,
    /// The bytes are not UTF-8.
    NotUtf8,
    /// Not JSON at all, or JSON followed by something else.
    NotJson,
    /// JSON that ends before it is complete.
    TruncatedJson,
    /// Valid JSON, but not an object.
    NotObject,
    /// The same key appears twice in the object.
    DuplicateKey,
    /// A field the event's type requires is absent or `null`.
    MissingField,
    /// A field has the wrong JSON type (`"1"` or `1.0` where an integer is required, ...).
    WrongType,
    /// A field has the right type but a value outside its range (empty or over-long string, negative).
    OutOfRange,
    /// `v` is not a contract version this build knows.
    UnknownVersion,
    /// `type` is not one of the contract's event types.
    UnknownType,
    /// `state` is not `scheduled`, `live` or `ended`.
    UnknownState,
    /// `ts` or `scheduled_start` is not an RFC 3339 date-time with an offset.
    BadTimestamp,
    /// A valid event whose `ts` jumped far ahead of its partition's time, and that no later event
    /// confirmed (contract §4, v1.1: no single event moves time). Decided after parsing.
    TsUncorroborated,
    /// A valid event that would stretch its stream over the span limit (a wrong clock). Decided
    /// after parsing.
    SpanTooLong,
}

impl RejectCode {
    pub const ALL: [RejectCode; 16] = [
        RejectCode::Empty,
        RejectCode::TooLarge,
        RejectCode::NotUtf8,
        RejectCode::NotJson,
        RejectCode::TruncatedJson,
        RejectCode::NotObject,
        RejectCode::DuplicateKey,
        RejectCode::MissingField,
        RejectCode::WrongType,
        RejectCode::OutOfRange,
        RejectCode::UnknownVersion,
        RejectCode::UnknownType,
        RejectCode::UnknownState,
        RejectCode::BadTimestamp,
        RejectCode::TsUncorroborated,
        RejectCode::SpanTooLong,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::Empty => "empty",
            RejectCode::TooLarge => "too_large",
            RejectCode::NotUtf8 => "not_utf8",
            RejectCode::NotJson => "not_json",
            RejectCode::TruncatedJson => "truncated_json",
            RejectCode::NotObject => "not_object",
            RejectCode::DuplicateKey => "duplicate_key",
            RejectCode::MissingField => "missing_field",
            RejectCode::WrongType => "wrong_type",
            RejectCode::OutOfRange => "out_of_range",
            RejectCode::UnknownVersion => "unknown_version",
            RejectCode::UnknownType => "unknown_type",
            RejectCode::UnknownState => "unknown_state",
            RejectCode::BadTimestamp => "bad_timestamp",
            RejectCode::TsUncorroborated => "ts_uncorroborated",
            RejectCode::SpanTooLong => "span_too_long",
        }
    }

    /// Whether [`parse_event`] gives this code (the others are decided about valid events, by the
    /// time rules of contract §4).
    pub fn from_parser(self) -> bool {
        !matches!(self, RejectCode::TsUncorroborated | RejectCode::SpanTooLong)
    }
}

impl Event {
    /// The event as wire-like JSON, with `listener_key` (the pseudonym) where the wire had
    /// `listener_id`: what a reject decided after parsing keeps as its payload.
    pub fn to_json(&self) -> String {
        let mut o = serde_json::Map::new();
        let mut put = |k: &str, v: serde_json::Value| {
            o.insert(k.to_owned(), v);
        };
        put("v", CONTRACT_VERSION.into());
        put("event_id", self.event_id.as_str().into());
        put("type", self.kind.as_str().into());
        put("ts", format_rfc3339_ms(self.ts).into());
        put("stream_id", self.stream_id.as_str().into());
        if let Some(k) = self.listener_key {
            put("listener_key", k.to_hex().into());
        }
        let text = |v: &Option<Text>| v.as_deref().map(serde_json::Value::from);
        for (k, v) in [
            ("session_id", text(&self.session_id)),
            ("reason", text(&self.reason)),
            ("displayed", self.displayed.map(Into::into)),
            ("state", self.state.map(|s| s.as_str().into())),
            (
                "scheduled_start",
                self.scheduled_start.map(|t| format_rfc3339_ms(t).into()),
            ),
            ("client", text(&self.client)),
            ("region", text(&self.region)),
            ("audio_ms", self.audio_ms.map(Into::into)),
        ] {
            if let Some(v) = v {
                put(k, v);
            }
        }
        serde_json::Value::Object(o).to_string()
    }
}

/// A rejected message: the code, and a sentence for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub code: RejectCode,
    pub message: String,
}

impl Reject {
    pub fn new(code: RejectCode, message: impl Into<String>) -> Reject {
        Reject {
            code,
            message: message.into(),
        }
    }

    /// `code: message`, the form the `rejects.reason` column holds.
    pub fn reason(&self) -> String {
        format!("{}: {}", self.code.as_str(), self.message)
    }
}
