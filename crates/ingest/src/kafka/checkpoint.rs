//! A checkpoint: the tables and the offsets they stop at, published as one generation.

use super::*;

use earshot_remote::Lost;

use super::bucket::remote_dir;
use super::consume::{Final, KafkaIngest, live_final_through};

impl KafkaIngest<'_> {
    /// Checkpoints every data directory with new messages (at the end of a run, every one), and
    /// in a group of workers then publishes the union.
    pub(super) fn checkpoint(
        &mut self,
        fin: Final,
        on_checkpoint: &mut dyn FnMut(&Checkpoint<'_>),
    ) -> Result<(), IngestError> {
        let t = Instant::now();
        self.flush_dead_letters()?;
        let keys: Vec<i32> = self
            .parts
            .iter()
            .filter(|(_, part)| part.dirty || self.closing || matches!(fin, Final::Nothing))
            .map(|(&k, _)| k)
            .collect();
        for key in &keys {
            self.checkpoint_part(*key, fin, on_checkpoint)?;
        }
        if self.workers && !keys.is_empty() {
            self.union_due(on_checkpoint)?;
        }
        self.published(true, t.elapsed());
        Ok(())
    }

    /// Dead letters first: a checkpoint never names a reject whose copy is still in flight.
    fn flush_dead_letters(&mut self) -> Result<(), IngestError> {
        if let Some((_, producer)) = &self.dead_letters {
            producer
                .flush(Duration::from_secs(30))
                .map_err(|e| KafkaProblem::Produce {
                    topic: "the dead-letter topic".into(),
                    detail: e.to_string(),
                })?;
            let failed = producer.context().failed.load(Ordering::Relaxed);
            if failed > 0 {
                tracing::warn!(
                    failed,
                    last = ?producer.context().last_error.take(),
                    "dead-letter deliveries failed (the rejects table still has every reject)"
                );
            }
        }
        Ok(())
    }

    /// Publishes every table of one data directory with the offsets they stop at, as one
    /// generation; then tells the group (monitoring only) and the caller.
    pub(super) fn checkpoint_part(
        &mut self,
        key: i32,
        fin: Final,
        on_checkpoint: &mut dyn FnMut(&Checkpoint<'_>),
    ) -> Result<(), IngestError> {
        let t = Instant::now();
        let Some(part) = self.parts.get_mut(&key) else {
            return Ok(());
        };
        let final_through = match fin {
            Final::Nothing => Some(i64::MIN),
            Final::All => None,
            Final::Live => live_final_through(&part.pipe.engine, &self.positions, &self.eof),
        };
        let pipe = &mut part.pipe;
        let manifest = &mut part.manifest;
        let position = &mut part.position;
        let snapshot = pipe.engine.publish(final_through);
        // `sessions` gets a part with the rows of the sessions that changed since the last
        // checkpoint, or now and then every row as one part (see `Generation::sessions_rewrite_due`).
        let rewrite = pipe.generation.sessions_rewrite_due(
            pipe.engine.changed_session_count(),
            pipe.engine.session_count(),
        );
        let rows = if rewrite {
            pipe.engine.forget_changed_sessions();
            pipe.engine.session_rows()
        } else {
            pipe.engine.take_changed_session_rows()
        };
        let sessions = if rewrite {
            SessionRows::All(&rows)
        } else {
            SessionRows::Changed(&rows)
        };
        pipe.fill(manifest, &snapshot);
        // This directory's partitions: all of them, or a worker's one.
        let mut next: BTreeMap<i32, i64> = self
            .positions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next
            .iter()
            .filter(|(p, _)| key == super::consume::ALL || **p == key)
            .map(|(&p, &n)| (p, n))
            .collect();
        // Events still waiting in the gate are not in the tables: the checkpoint stops before the
        // first of them, and a restart reads them again (so they are not counted as read yet).
        let mut stored_position = position.clone();
        for (p, n) in next.iter_mut() {
            let waiting: Vec<At> = pipe.gate.waiting(*p as u32).copied().collect();
            if let Some(first) = waiting.first() {
                *n = (*n).min(first.position as i64);
            }
            for w in &waiting {
                manifest.messages -= 1;
                stored_position.bytes -= w.bytes;
                if let Some(m) = stored_position.messages.get_mut(p) {
                    *m -= 1;
                }
            }
        }
        position.next_offsets = next.clone();
        pipe.summary.bytes = position.bytes;
        position.checkpoints += 1;
        stored_position.next_offsets = next.clone();
        stored_position.checkpoints = position.checkpoints;
        stored_position.watermarks = next
            .keys()
            .filter_map(|&p| pipe.engine.watermark(p as u32).map(|w| (p, w)))
            .collect();
        stored_position.at_end = next
            .keys()
            .filter(|p| self.eof.contains(p))
            .copied()
            .collect();
        stored_position.finished = final_through.is_none();
        manifest.kafka = Some(stored_position);
        // The engine's state now and then, so that a restart replays only the events after it.
        let unsaved = manifest.events
            - pipe
                .generation
                .engine_state()
                .map_or(0, |state| state.events.min(manifest.events));
        // A worker saves it at every checkpoint: the union rebuilds each partition's engine from
        // its state, and a replay of the events after it would cost every publish of the union.
        let save_state = if self.closing || self.workers {
            unsaved > 0
        } else {
            unsaved >= self.source.state_every
        };
        let with = CheckpointWith {
            sessions,
            state: save_state.then_some(&pipe.engine),
        };
        let generation = pipe.generation.checkpoint_with(&snapshot, manifest, with)?;
        // `--data s3://…`: the generation goes up, unless another writer has claimed the
        // directory since this one did (it then lets go: see `bucket`).
        if let Some(remote) = self.remote {
            match remote.push(&remote_dir(key), &generation, part.pointer.as_ref())? {
                Ok(pointer) => part.pointer = Some(pointer),
                Err(Lost) => return self.fenced_out(key),
            }
        }
        // Only now tell the group, for lag monitoring; a failure here loses nothing.
        let assigned = self
            .positions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .assigned
            .clone();
        let mut tpl = TopicPartitionList::new();
        for p in assigned {
            if let Some(&n) = next.get(&p) {
                // (Only this directory's partitions are in `next`.)
                let _ = tpl.add_partition_offset(&position.topic, p, Offset::Offset(n));
            }
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::debug!(%e, "offset commit failed (monitoring only)");
        }
        if save_state {
            tracing::debug!(
                events = manifest.events,
                bytes = pipe.generation.engine_state().map_or(0, |s| s.bytes),
                total_ms = t.elapsed().as_secs_f64() * 1e3,
                "saved the engine state with the checkpoint"
            );
        }
        part.dirty = false;
        if !self.workers {
            // A worker tells the caller about the union instead (`publish_union`).
            on_checkpoint(&Checkpoint {
                summary: &pipe.summary,
                position,
                generation: &generation,
                took: t.elapsed(),
            });
        }
        Ok(())
    }

    /// A group of workers: this worker checkpointed, so the union owes its partitions' news. It is
    /// published now if the last union (by any worker) is at least a checkpoint interval old, or
    /// the run is ending; otherwise the run loop publishes it once it is (`union_owed`). So N
    /// workers publish it about once per interval between them, not N times, and every
    /// checkpoint reaches it within about two intervals.
    pub(super) fn union_due(
        &mut self,
        on_checkpoint: &mut dyn FnMut(&Checkpoint<'_>),
    ) -> Result<(), IngestError> {
        self.clocks.union_owed = true;
        if !self.closing && self.union_age() < self.source.checkpoint_every {
            return Ok(());
        }
        self.publish_union(on_checkpoint)
    }

    /// A group of workers: the union of every partition's newest checkpoint, as the tables of
    /// the data directory (see `union`); the caller hears of it as a checkpoint.
    pub(super) fn publish_union(
        &mut self,
        on_checkpoint: &mut dyn FnMut(&Checkpoint<'_>),
    ) -> Result<(), IngestError> {
        let t = Instant::now();
        // Published now, or being published by another worker, which then looks at the
        // partitions again after it finishes: either way this worker's checkpoints get in.
        self.clocks.union_owed = false;
        let published = match self.remote {
            Some(remote) => self.publish_union_remote(remote),
            None => super::union::publish_union(
                &self.data_dir,
                self.settings,
                self.pseudonyms,
                &self.source.topic,
            ),
        };
        let generation = match published {
            Ok(Some(generation)) => generation,
            Ok(None) => return Ok(()),
            Err(e) => {
                // The partitions' own checkpoints are safe and go on; only the union stays at its
                // last generation until what stopped it is fixed (a session produced to two
                // partitions, workers with other settings or keys).
                tracing::error!("the union of the partitions was not published: {e}");
                return Ok(());
            }
        };
        let manifest = read_manifest(&generation)?;
        let mut summary = Summary {
            messages: manifest.messages,
            events: manifest.events,
            counted: manifest.counted,
            late: manifest.late,
            duplicates: manifest.duplicates,
            rejected: manifest.rejected,
            ..Summary::default()
        };
        let position = manifest.kafka.unwrap_or_default();
        summary.bytes = position.bytes;
        tracing::debug!(
            generation = %generation.display(),
            total_ms = t.elapsed().as_secs_f64() * 1e3,
            "published the union of the partitions"
        );
        on_checkpoint(&Checkpoint {
            summary: &summary,
            position: &position,
            generation: &generation,
            took: t.elapsed(),
        });
        Ok(())
    }

    /// Between checkpoints: `streams`, `buckets` and `rollups` from the engine's live figures,
    /// over the last checkpoint's other tables (see [`Generation::publish_figures`]).
    pub(super) fn publish_figures(&mut self) -> Result<(), IngestError> {
        let t = Instant::now();
        let Some(part) = self.parts.get_mut(&super::consume::ALL) else {
            return Ok(());
        };
        let final_through = live_final_through(&part.pipe.engine, &self.positions, &self.eof);
        let pipe = &mut part.pipe;
        let snapshot = pipe.engine.publish(final_through);
        let figures = t.elapsed();
        let generation = pipe.generation.publish_figures(&snapshot)?;
        if let Some(remote) = self.remote {
            match remote.push("", &generation, part.pointer.as_ref())? {
                Ok(pointer) => part.pointer = Some(pointer),
                Err(Lost) => return self.fenced_out(super::consume::ALL),
            }
        }
        let stats = pipe.engine.live_stats();
        tracing::debug!(
            generation = %generation.display(),
            full_rebuilds = stats.full_rebuilds,
            refilled_buckets = stats.refilled_buckets,
            figures_ms = figures.as_secs_f64() * 1e3,
            total_ms = t.elapsed().as_secs_f64() * 1e3,
            "published the figures"
        );
        self.published(false, t.elapsed());
        Ok(())
    }
}
