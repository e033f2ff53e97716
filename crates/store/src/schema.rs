//! The Arrow schemas of the six tables (`../shared/design/tables.md`). Names and units are public.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// The tables every generation holds, in the order they are written.
pub const TABLES: [&str; 6] = [
    "streams", "buckets", "rollups", "sessions", "events", "rejects",
];

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn f(name: &str, dt: DataType, nullable: bool) -> Field {
    Field::new(name, dt, nullable)
}

/// The schema of one table; `None` for an unknown name.
pub fn table_schema(table: &str) -> Option<SchemaRef> {
    use DataType::{Binary, Boolean, Int64, Utf8};
    let fields = match table {
        "streams" => vec![
            f("stream_id", Utf8, false),
            f("scheduled_start", ts(), true),
            f("live_at", ts(), true),
            f("start_delay_ms", Int64, true),
            f("first_event", ts(), false),
            f("last_event", ts(), false),
            f("sessions", Int64, false),
            f("peak_displayed", Int64, true),
            f("peak_roster", Int64, false),
            f("peak_connected", Int64, false),
            f("listeners_joined", Int64, false),
            f("listeners_connected", Int64, false),
            f("listeners_connected_60s", Int64, false),
            f("failed_joins", Int64, false),
            f("abandoned_before_audio", Int64, false),
            f("ghost_sessions", Int64, false),
            f("ttfa_ms_p50", Int64, true),
            f("ttfa_ms_p90", Int64, true),
            f("joined_hll", Binary, false),
            f("connected_hll", Binary, false),
        ],
        // `rollups` holds the buckets and their roll-ups to 30 s … 1 h, in the same columns.
        "buckets" | "rollups" => vec![
            f("stream_id", Utf8, false),
            f("bucket_start", ts(), false),
            f("width_ms", Int64, false),
            f("displayed_start", Int64, true),
            f("roster_start", Int64, false),
            f("roster_peak", Int64, false),
            f("connected_start", Int64, false),
            f("connected_peak", Int64, false),
            f("joins", Int64, false),
            f("connects", Int64, false),
            f("leaves", Int64, false),
            f("drops", Int64, false),
            f("present_hll", Binary, false),
            f("connected_hll", Binary, false),
            f("final", Boolean, false),
            // Estimates of the two sketches; null in generations written before they were stored.
            f("present_listeners", Int64, true),
            f("connected_listeners", Int64, true),
        ],
        "sessions" => vec![
            f("stream_id", Utf8, false),
            f("session_id", Utf8, false),
            f("listener_key", Utf8, false),
            f("join_ts", ts(), false),
            f("connect_ts", ts(), true),
            f("end_ts", ts(), true),
            f("end_type", Utf8, true),
            f("end_reason", Utf8, true),
            f("listened_ms", Int64, false),
            f("heartbeats", Int64, false),
            f("client", Utf8, true),
            f("region", Utf8, true),
        ],
        "events" => vec![
            f("event_id", Utf8, false),
            f("type", Utf8, false),
            f("ts", ts(), false),
            f("stream_id", Utf8, false),
            f("listener_key", Utf8, true),
            f("session_id", Utf8, true),
            f("reason", Utf8, true),
            f("displayed", Int64, true),
            f("state", Utf8, true),
            f("scheduled_start", ts(), true),
            f("client", Utf8, true),
            f("region", Utf8, true),
            f("audio_ms", Int64, true),
            f("late", Boolean, false),
            f("source", Utf8, false),
        ],
        "rejects" => vec![
            f("source", Utf8, false),
            f("received_at", ts(), false),
            f("reason_code", Utf8, false),
            f("reason", Utf8, false),
            f("payload", Binary, false),
            f("payload_text", Utf8, false),
        ],
        _ => return None,
    };
    Some(Arc::new(Schema::new(fields)))
}

/// The column that orders the parts of `sessions` (see [`sessions_part_schema`]).
pub const SESSION_VERSION: &str = "version";

/// The schema of one part of `sessions`: the table's columns and [`SESSION_VERSION`], the number of
/// the part. A session can be in several parts; its row is the one in the part with the largest
/// version (the table `earshot sql` shows is that view).
pub fn sessions_part_schema() -> SchemaRef {
    let mut fields: Vec<Field> = table_schema("sessions")
        .map(|s| s.fields().iter().map(|f| f.as_ref().clone()).collect())
        .unwrap_or_default();
    fields.push(f(SESSION_VERSION, DataType::Int64, false));
    Arc::new(Schema::new(fields))
}
