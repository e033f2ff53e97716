//! Several workers, one set of tables. With `--assign group` each Kafka partition is a data
//! directory of its own, `DATA/partitions/<p>/`, written only by the worker that holds it (its
//! writer lock is the fence: see `consume`). The tables users read are the **union**, published
//! as ordinary generations of `DATA` itself, so `earshot sql`, `serve` and `audit` read it as they
//! read any data directory:
//! - the engines of every partition's checkpoint are rebuilt (saved state plus replay) and merged
//!   ([`Engine::merge`]: whole sessions move in, change points sum, sketches and listener sets
//!   unite), and the merged engine's snapshot gives `streams`, `buckets`, `rollups` and
//!   `sessions` — exactly the figures one consumer of every partition would give;
//! - the partitions' `events` and `rejects` parts are hard-linked in, never copied;
//! - the manifest adds the partitions' counts and offsets.
//!
//! Any worker publishes the union after its own checkpoints. Only one at a time can (the union's
//! writer lock); a worker that finds it taken goes on, and the holder looks at the partitions
//! again after releasing it, so the newest checkpoint of every partition always reaches the union.

use earshot_store::{PART_TABLES, part_files};

use super::resume::{Rebuild, rebuild};
use super::*;

/// Where the partitions' data directories live, under the union's.
pub const PARTITIONS: &str = "partitions";

/// The data directory of partition `p` of a group of workers writing `data_dir`.
pub fn partition_dir(data_dir: &Path, p: i32) -> std::path::PathBuf {
    data_dir.join(PARTITIONS).join(p.to_string())
}

/// The next offset of partition `p` that its data directory's checkpoint stores, if any.
pub(super) fn stored_offset(data_dir: &Path, p: i32) -> Option<i64> {
    let current = current_generation(&partition_dir(data_dir, p)).ok()?;
    read_manifest(&current)
        .ok()?
        .kafka?
        .next_offsets
        .get(&p)
        .copied()
}

/// How long ago the union was last published (by any worker); `MAX` when it never was.
pub(super) fn union_age(data_dir: &Path) -> Duration {
    std::fs::symlink_metadata(data_dir.join(earshot_store::CURRENT))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or(Duration::MAX)
}

/// Every partition's current generation, by partition (partitions not checkpointed yet are left
/// out).
fn partition_generations(data_dir: &Path) -> Result<Vec<(i32, std::path::PathBuf)>, StoreError> {
    let dir = data_dir.join(PARTITIONS);
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(StoreError::Io {
                action: "read",
                path: dir.display().to_string(),
                cause: e,
            });
        }
    };
    for entry in entries.flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // A partition with no checkpoint yet is left out; one whose tables are not whole stops
        // the union (read as empty, it would drop that partition's listeners).
        if let Some(current) = earshot_store::current_generation_if_any(&entry.path())? {
            out.push((p, current));
        }
    }
    out.sort();
    Ok(out)
}

/// Publishes the union of the partitions' newest checkpoints as a generation of `data_dir`.
/// Returns `None` when another worker was publishing it (that worker then publishes this one's
/// checkpoint too). A generation that its writer replaced while it was read is read again.
pub(super) fn publish_union(
    data_dir: &Path,
    settings: Settings,
    pseudonyms: &Pseudonymizer,
    topic: &str,
) -> Result<Option<std::path::PathBuf>, IngestError> {
    let mut published = None;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (dir, merged) = match union_once(data_dir, settings, pseudonyms, topic) {
            Ok(Some(done)) => done,
            Ok(None) => return Ok(published),
            // A partition's writer removed the generation being read (it keeps two): read again.
            Err(IngestError::Store(StoreError::Io { .. })) if attempts < 5 => continue,
            Err(e) => return Err(e),
        };
        published = Some(dir);
        // The lock is released: a worker that checkpointed meanwhile may have found it taken.
        if partition_generations(data_dir)? == merged || attempts >= 5 {
            return Ok(published);
        }
    }
}

/// One union publish, holding the union's writer lock; `None` if another worker holds it.
/// Returns the generation and the partitions' generations it merged.
#[allow(clippy::type_complexity)]
pub(super) fn union_once(
    data_dir: &Path,
    settings: Settings,
    pseudonyms: &Pseudonymizer,
    topic: &str,
) -> Result<Option<(std::path::PathBuf, Vec<(i32, std::path::PathBuf)>)>, IngestError> {
    let mut generation = match Generation::begin(data_dir) {
        Ok(g) => g,
        Err(StoreError::Busy { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let sources = partition_generations(data_dir)?;
    let mut engine = Engine::new(settings);
    let mut manifest = new_manifest(&settings, pseudonyms);
    let mut position = KafkaPosition {
        topic: topic.to_owned(),
        finished: true,
        ..KafkaPosition::default()
    };
    for (p, current) in &sources {
        let part_dir = partition_dir(data_dir, *p);
        let m = read_manifest(current)?;
        if m.key_check != manifest.key_check || m.settings != manifest.settings {
            return Err(KafkaProblem::SettingsChanged {
                data_dir: part_dir.display().to_string(),
                field: "the settings or the pseudonym key",
                was: "those its worker used".into(),
                now: "this worker's".into(),
            }
            .into());
        }
        let (partition_engine, _) =
            rebuild(&part_dir, current, &m, settings, topic, Rebuild::ToMerge)?;
        engine
            .merge(partition_engine)
            .map_err(|detail| KafkaProblem::Inconsistent {
                data_dir: part_dir.display().to_string(),
                detail,
            })?;
        add_counts(&mut manifest, &m);
        let k = m.kafka.unwrap_or_default();
        position.group = k.group;
        position.next_offsets.extend(k.next_offsets);
        position.messages.extend(k.messages);
        position.watermarks.extend(k.watermarks);
        position.bytes += k.bytes;
        position.dead_lettered += k.dead_lettered;
        position.checkpoints += k.checkpoints;
        if k.finished {
            // Every partition of a finished worker was at its end.
            position.at_end.insert(*p);
        } else {
            position.finished = false;
        }
        position.at_end.extend(k.at_end);
        for table in PART_TABLES {
            for file in part_files(current, table)? {
                generation.adopt_part(table, &file)?;
            }
        }
    }
    position.finished = position.finished && !sources.is_empty();
    let final_through = union_final_through(&position);
    manifest.kafka = Some(position);
    let snapshot = engine.snapshot(final_through);
    let dir = generation.checkpoint(&snapshot, &manifest)?;
    Ok(Some((dir, sources)))
}

/// Which buckets of the union are final, as one consumer of every partition decides it: every
/// bucket when every worker finished; else up to the slowest watermark among partitions not at
/// their end (with all at their end, the newest).
fn union_final_through(position: &KafkaPosition) -> Option<earshot_contract::Millis> {
    if position.finished {
        return None;
    }
    let marks = &position.watermarks;
    let busy = marks
        .iter()
        .filter(|(p, _)| !position.at_end.contains(p))
        .map(|(_, &w)| w)
        .min();
    Some(
        busy.or_else(|| marks.values().copied().max())
            .unwrap_or(i64::MIN),
    )
}

fn add_counts(to: &mut Manifest, from: &Manifest) {
    to.messages += from.messages;
    to.events += from.events;
    to.counted += from.counted;
    to.late += from.late;
    to.duplicates += from.duplicates;
    to.rejected += from.rejected;
    for (code, n) in &from.rejected_by_reason {
        *to.rejected_by_reason.entry(code.clone()).or_default() += n;
    }
}

/// A data directory is written by one consumer of every partition, or by a group of workers
/// (`partitions/` beside the union): never both.
pub(super) fn check_layout(
    data_dir: &Path,
    workers: bool,
    remote: Option<&earshot_remote::Remote>,
) -> Result<(), IngestError> {
    if let Some(remote) = remote {
        return check_bucket_layout(remote, workers);
    }
    let partitioned = data_dir.join(PARTITIONS).is_dir();
    let single = !partitioned && earshot_store::resolve_current(data_dir).is_ok();
    let dir = data_dir.display().to_string();
    if workers && single {
        return Err(KafkaProblem::OtherSource {
            data_dir: dir,
            what: "one consumer of every partition (--assign direct)".into(),
            wanted: "a group of workers (--assign group)".into(),
        }
        .into());
    }
    if workers && !partitioned {
        // Before any union is published, so that a worker starting later never finds `current`
        // without `partitions/` (the single consumer's layout).
        let dir = data_dir.join(PARTITIONS);
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::Io {
            action: "create",
            path: dir.display().to_string(),
            cause: e,
        })?;
    }
    if !workers && partitioned {
        return Err(KafkaProblem::OtherSource {
            data_dir: dir,
            what: "a group of workers (--assign group)".into(),
            wanted: "one consumer of every partition (--assign direct)".into(),
        }
        .into());
    }
    Ok(())
}

/// What a group of workers leaves under `partitions/` in a bucket from its start (a bucket has no
/// directories to create).
const WORKERS_MARK: &str = "partitions/LAYOUT";

/// [`check_layout`] for a bucket prefix.
fn check_bucket_layout(remote: &earshot_remote::Remote, workers: bool) -> Result<(), IngestError> {
    let partitioned = remote.holds_anything(PARTITIONS)?;
    let single = !partitioned && remote.current("")?.is_some();
    let (one, group) = (
        "one consumer of every partition (--assign direct)",
        "a group of workers (--assign group)",
    );
    let refuse = |what: &str, wanted: &str| {
        Err(KafkaProblem::OtherSource {
            data_dir: remote.url().to_owned(),
            what: what.into(),
            wanted: wanted.into(),
        }
        .into())
    };
    match (workers, partitioned, single) {
        (true, _, true) => refuse(one, group),
        (false, true, _) => refuse(group, one),
        (true, false, false) => Ok(remote.mark(WORKERS_MARK, "a group of workers writes here\n")?),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(marks: &[(i32, i64)], at_end: &[i32], finished: bool) -> KafkaPosition {
        KafkaPosition {
            watermarks: marks.iter().copied().collect(),
            at_end: at_end.iter().copied().collect(),
            finished,
            ..KafkaPosition::default()
        }
    }

    #[test]
    fn the_union_is_final_as_one_consumer_of_every_partition_decides() {
        // Every worker finished: every bucket is final.
        assert_eq!(union_final_through(&position(&[(0, 5)], &[0], true)), None);
        // The slowest partition still delivering holds buckets back.
        let p = position(&[(0, 50), (1, 20), (2, 90)], &[2], false);
        assert_eq!(union_final_through(&p), Some(20));
        // With every partition at its end, up to the newest watermark.
        let p = position(&[(0, 50), (1, 20)], &[0, 1], false);
        assert_eq!(union_final_through(&p), Some(50));
        // No watermark anywhere yet: nothing is final.
        assert_eq!(
            union_final_through(&position(&[], &[], false)),
            Some(i64::MIN)
        );
    }

    #[test]
    fn a_directory_keeps_the_layout_it_was_started_with() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        // A new directory can become either; a worker marks it as a group's at once.
        assert!(check_layout(data, false, None).is_ok());
        assert!(!data.join(PARTITIONS).exists());
        assert!(check_layout(data, true, None).is_ok());
        assert!(data.join(PARTITIONS).is_dir());
        assert!(check_layout(data, true, None).is_ok());
        let err = check_layout(data, false, None).unwrap_err().to_string();
        assert!(err.contains("a group of workers"), "{err}");
        // No partition has a stored offset yet, and none is listed.
        assert_eq!(stored_offset(data, 0), None);
        assert!(partition_generations(data).unwrap().is_empty());
        assert_eq!(union_age(data), Duration::MAX);
    }
}
