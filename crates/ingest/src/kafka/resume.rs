//! Resuming: the engine rebuilt by replaying the stored events, and where each partition goes on.

use super::*;

/// Reads the data directory's checkpoint (or starts empty) and rebuilds the engine from it.
pub(super) fn resume(
    source: &KafkaSource,
    data_dir: &Path,
    settings: Settings,
    pseudonyms: &Pseudonymizer,
) -> Result<(Pipeline, KafkaPosition), IngestError> {
    let fresh = KafkaPosition {
        topic: source.topic.clone(),
        group: source.group.clone(),
        ..KafkaPosition::default()
    };
    let current = match current_generation(data_dir) {
        Ok(c) => c,
        Err(StoreError::NoData { .. }) => {
            // Also takes the writer lock and checks the directory is writable.
            let generation = Generation::begin(data_dir)?;
            return Ok((
                Pipeline::new(Engine::new(settings), generation, pseudonyms.clone()),
                fresh,
            ));
        }
        Err(e) => return Err(e.into()),
    };
    // Lock first: nobody else may move `current` while it is read.
    let generation = Generation::resume(data_dir)?;
    let current = current_generation(data_dir).unwrap_or(current);
    let manifest = read_manifest(&current)?;
    let dir = data_dir.display().to_string();
    let Some(position) = manifest.kafka.clone() else {
        let what = match manifest.inputs.first() {
            Some(i) => format!("a file ingest ({})", i.source),
            None => "a file ingest".to_owned(),
        };
        return Err(KafkaProblem::OtherSource {
            data_dir: dir,
            what,
            wanted: format!("Kafka topic {:?}", source.topic),
        }
        .into());
    };
    if position.topic != source.topic {
        return Err(KafkaProblem::OtherSource {
            data_dir: dir,
            what: format!("Kafka topic {:?}", position.topic),
            wanted: format!("Kafka topic {:?}", source.topic),
        }
        .into());
    }
    let now: ManifestSettings = (&settings).into();
    let was = &manifest.settings;
    for (field, a, b) in [
        ("liveness", was.liveness_ms, now.liveness_ms),
        ("bucket", was.bucket_ms, now.bucket_ms),
        ("lateness", was.lateness_ms, now.lateness_ms),
        ("min-listen", was.min_listen_ms, now.min_listen_ms),
        ("max-jump", was.max_jump_ms, now.max_jump_ms),
    ] {
        if a != b {
            return Err(KafkaProblem::SettingsChanged {
                data_dir: dir,
                field,
                was: format!("{a} ms"),
                now: format!("{b} ms"),
            }
            .into());
        }
    }
    if manifest.key_check != key_check(pseudonyms) {
        return Err(KafkaProblem::SettingsChanged {
            data_dir: dir,
            field: "the pseudonym key",
            was: manifest.pseudonym_key.clone(),
            now: "a different key".into(),
        }
        .into());
    }
    // Replay: the same events in the same order rebuild the same state, and must come out with
    // the same late flags.
    let replay = Instant::now();
    let mut engine = Engine::new(settings);
    let prefix = format!("kafka:{}/", source.topic);
    let mut rows = 0u64;
    stored_events(&current, |row| {
        rows += 1;
        let inconsistent = |detail: String| StoreError::Encode {
            table: "events",
            message: detail,
        };
        let partition = row
            .source
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split_once('@'))
            .and_then(|(p, _)| p.parse::<u32>().ok())
            .ok_or_else(|| inconsistent(format!("row {rows} has source {:?}", row.source)))?;
        let outcome = engine.offer(partition, &row.event);
        let late = outcome == earshot_core::Outcome::Late;
        let stored = matches!(
            outcome,
            earshot_core::Outcome::Counted | earshot_core::Outcome::Late
        );
        if !stored || late != row.late {
            return Err(inconsistent(format!(
                "row {rows} ({}) replays as {outcome:?}",
                row.source
            )));
        }
        Ok(())
    })
    .map_err(|e| match e {
        StoreError::Encode { message, .. } => IngestError::Kafka(KafkaProblem::Inconsistent {
            data_dir: data_dir.display().to_string(),
            detail: message,
        }),
        other => other.into(),
    })?;
    if engine.tally().counted + engine.tally().late != manifest.events {
        return Err(KafkaProblem::Inconsistent {
            data_dir: dir,
            detail: format!(
                "{} events stored, the manifest says {}",
                rows, manifest.events
            ),
        }
        .into());
    }
    let mut pipe = Pipeline::new(engine, generation, pseudonyms.clone());
    let s = &mut pipe.summary;
    s.resumed_messages = manifest.messages;
    s.bytes = position.bytes;
    s.messages = manifest.messages;
    s.duplicates = manifest.duplicates;
    s.rejected = manifest.rejected;
    for (code, n) in &manifest.rejected_by_reason {
        if let Some(code) = earshot_contract::RejectCode::ALL
            .into_iter()
            .find(|c| c.as_str() == code)
        {
            s.rejected_by_reason.insert(code, *n);
        }
    }
    tracing::info!(
        events = rows,
        generation = %current.display(),
        replay_ms = replay.elapsed().as_millis() as u64,
        "resumed from checkpoint"
    );
    Ok((pipe, position))
}
