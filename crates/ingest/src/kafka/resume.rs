//! Resuming: the engine rebuilt by replaying the stored events, and where each partition goes on;
//! with a bucket, the data directory first pulled from it (see `bucket`).

use earshot_remote::{Current, Remote};

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
    let mut generation = Generation::resume(data_dir)?;
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
    let (mut engine, replayed) = rebuild(
        data_dir,
        &current,
        &manifest,
        settings,
        &source.topic,
        Rebuild::ToContinue,
    )?;
    if replayed.state_refused {
        // Not carried on: the next checkpoint saves a sound one.
        generation.forget_engine_state();
    }
    // A loaded live engine marks the sessions the replay changes; their rows are stored already
    // (a checkpoint writes its events and its sessions in one generation).
    engine.forget_changed_sessions();
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
        events = replayed.from_state + replayed.rows,
        from_state = replayed.from_state,
        replayed = replayed.rows,
        generation = %current.display(),
        load_ms = replayed.load.as_millis() as u64,
        replay_ms = replayed.replay.as_millis() as u64,
        "resumed from checkpoint"
    );
    Ok((pipe, position))
}

/// What an engine is rebuilt for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rebuild {
    /// To count on: complete, with its de-duplication set.
    ToContinue,
    /// Only to be merged into a union and snapshotted: its de-duplication set is not built (the
    /// stored events replayed after the state are distinct already).
    ToMerge,
}

/// How [`rebuild`] got its engine.
pub(super) struct Replayed {
    /// Events counted by the saved state, and replayed after it.
    pub from_state: u64,
    pub rows: u64,
    /// A saved state was there but could not be used (every event was replayed instead).
    pub state_refused: bool,
    pub load: Duration,
    pub replay: Duration,
}

/// The engine of the checkpoint `current` (a generation of `data_dir`, whose manifest is
/// `manifest`), consuming `topic`: its saved state, when there is a sound one, counts the first
/// parts of `events`; the parts after it are replayed: the same events in the same order rebuild
/// the same state, and must come out with the same late flags. Without a state (or with one that
/// does not load), every stored event is replayed. Reads only: no lock is taken.
pub(super) fn rebuild(
    data_dir: &Path,
    current: &Path,
    manifest: &Manifest,
    settings: Settings,
    topic: &str,
    what_for: Rebuild,
) -> Result<(Engine, Replayed), IngestError> {
    let dir = data_dir.display().to_string();
    let started = Instant::now();
    let mut state_refused = false;
    let (mut engine, first_part) = match load_state(current, manifest, settings, what_for) {
        Ok(Some(loaded)) => loaded,
        Ok(None) => (Engine::new(settings), 0),
        Err(why) => {
            tracing::warn!(
                "the saved engine state was not loaded ({why}); replaying every stored event instead"
            );
            state_refused = true;
            (Engine::new(settings), 0)
        }
    };
    let load = started.elapsed();
    let from_state = engine.tally().counted + engine.tally().late;
    let replay = Instant::now();
    let prefix = format!("kafka:{topic}/");
    let mut rows = 0u64;
    stored_events_from(current, first_part, |row| {
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
            data_dir: dir.clone(),
            detail: message,
        }),
        other => other.into(),
    })?;
    if engine.tally().counted + engine.tally().late != manifest.events {
        return Err(KafkaProblem::Inconsistent {
            data_dir: dir,
            detail: format!(
                "{} events stored ({from_state} in the saved state, {rows} replayed), the manifest says {}",
                from_state + rows,
                manifest.events
            ),
        }
        .into());
    }
    Ok((
        engine,
        Replayed {
            from_state,
            rows,
            state_refused,
            load,
            replay: replay.elapsed(),
        },
    ))
}

/// The engine saved with `generation` (or with one before it) and the number of `events` parts
/// it counts; `None` without one. An error says why a state that is there cannot be used.
fn load_state(
    generation: &Path,
    manifest: &Manifest,
    settings: Settings,
    what_for: Rebuild,
) -> Result<Option<(Engine, usize)>, String> {
    let Some(info) = &manifest.engine_state else {
        return Ok(None);
    };
    let path = generation.join(&info.file);
    let said = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let bytes = std::fs::read(&path).map_err(|e| said(&e))?;
    let engine = match what_for {
        Rebuild::ToContinue => Engine::load_state(&bytes, settings),
        Rebuild::ToMerge => Engine::load_state_for_merge(&bytes, settings),
    }
    .map_err(|e| said(&e))?;
    let stored = engine.tally().counted + engine.tally().late;
    if stored != info.events {
        return Err(said(&format!(
            "it counts {stored} events, the manifest says {}",
            info.events
        )));
    }
    let parts = usize::try_from(info.event_parts).map_err(|e| said(&e))?;
    Ok(Some((engine, parts)))
}

/// Replaces `local` with the bucket's current generation of `dir` (this process's copy may be
/// older), then claims `dir`. `None` when another writer claimed it in between.
pub(super) fn fetch_and_claim(
    remote: &Remote,
    dir: &str,
    local: &Path,
) -> Result<Option<Current>, IngestError> {
    // The previous owner, still writing, may delete what its older generation listed while it
    // is pulled (see `earshot-remote`): the pointer is read again.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match fetch(remote, dir, local) {
            Ok(seen) => return Ok(remote.claim(dir, seen.as_ref())?.ok()),
            Err(IngestError::Remote(e)) if attempts < 3 => {
                tracing::debug!(dir, "pulling again: {e}");
            }
            Err(e) => return Err(e),
        }
    }
}

/// One try of [`fetch_and_claim`]'s pull; returns the pointer it pulled.
fn fetch(remote: &Remote, dir: &str, local: &Path) -> Result<Option<Current>, IngestError> {
    let seen = remote.current(dir)?;
    let clear = |action, e| StoreError::Io {
        action,
        path: local.display().to_string(),
        cause: e,
    };
    match std::fs::remove_dir_all(local) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(clear("clear", e).into()),
    }
    std::fs::create_dir_all(local).map_err(|e| clear("create", e))?;
    if let Some(c) = &seen {
        remote.pull(c, local)?;
    }
    Ok(seen)
}
