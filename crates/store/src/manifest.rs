//! What a generation says about itself: `manifest.json`.

use std::collections::{BTreeMap, BTreeSet};

use earshot_core::Settings;
use serde::{Deserialize, Serialize};

/// What produced a generation: written as `manifest.json` beside the tables.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Manifest {
    pub earshot_version: String,
    pub contract_version: u32,
    pub settings: ManifestSettings,
    /// `development` when the built-in pseudonym key was used, `operator` otherwise.
    pub pseudonym_key: String,
    /// The pseudonym of a fixed, made-up id under the key used: equal across runs iff the key is.
    pub key_check: String,
    pub inputs: Vec<ManifestInput>,
    pub messages: u64,
    pub events: u64,
    pub counted: u64,
    pub late: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// For a Kafka ingest: where each partition was read up to (the checkpoint's offsets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaPosition>,
    /// The engine's saved state this generation carries, if any. Set by the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_state: Option<EngineState>,
}

/// A saved engine state ([`earshot_core::Engine::save_state`]) in a generation's directory. It
/// counts exactly the events of the first `event_parts` parts of `events`, so a restart loads it
/// and replays only the parts after those. It is written at some checkpoints and linked into the
/// generations after, like the parts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct EngineState {
    /// The file's name in the generation directory.
    pub file: String,
    pub event_parts: u64,
    /// Rows of `events` (counted and late) in those parts.
    pub events: u64,
    pub bytes: u64,
}

/// The consumed position of a Kafka ingest, stored with the tables it produced.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct KafkaPosition {
    pub topic: String,
    pub group: String,
    /// Per partition: the next offset to read (every message before it is in these tables).
    pub next_offsets: BTreeMap<i32, i64>,
    /// Per partition: messages read (each exactly once).
    pub messages: BTreeMap<i32, u64>,
    /// Payload bytes read.
    pub bytes: u64,
    /// Rejected messages sent to the dead-letter topic (at least once; see the README).
    pub dead_lettered: u64,
    /// Number of checkpoints written so far.
    pub checkpoints: u64,
    /// Per partition: its watermark when the checkpoint was written (partitions with two events
    /// or more). With `at_end` and `finished`, what a union of workers needs to decide which
    /// buckets are final, as one consumer would have.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub watermarks: BTreeMap<i32, i64>,
    /// Partitions that were at their end (nothing more to deliver) at the checkpoint.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub at_end: BTreeSet<i32>,
    /// The run ended on an idle topic: every bucket was final at this checkpoint.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub finished: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ManifestSettings {
    pub liveness_ms: i64,
    pub bucket_ms: i64,
    pub lateness_ms: i64,
    pub min_listen_ms: i64,
    /// Written since v1.1 of the contract (no single event moves time); absent in older manifests.
    pub max_jump_ms: i64,
}

impl From<&Settings> for ManifestSettings {
    fn from(s: &Settings) -> Self {
        ManifestSettings {
            liveness_ms: s.liveness_ms,
            bucket_ms: s.bucket_ms,
            lateness_ms: s.lateness_ms,
            min_listen_ms: s.min_listen_ms,
            max_jump_ms: s.max_jump_ms,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
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
