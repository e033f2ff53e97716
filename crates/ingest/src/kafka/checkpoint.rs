//! A checkpoint: the tables and the offsets they stop at, published as one generation.

use super::*;

use super::consume::KafkaIngest;

impl KafkaIngest<'_> {
    /// Publishes every table with the offsets they stop at, as one generation; then tells the
    /// group (monitoring only) and the caller.
    pub(super) fn checkpoint(
        &mut self,
        final_through: Option<earshot_contract::Millis>,
        on_checkpoint: &mut dyn FnMut(&Checkpoint<'_>),
    ) -> Result<(), IngestError> {
        let t = Instant::now();
        // Dead letters first: a checkpoint never names a reject whose copy is still in flight.
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
        let pipe = &mut self.pipe;
        let manifest = &mut self.manifest;
        let position = &mut self.position;
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
        let mut next = self
            .positions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next
            .clone();
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
        manifest.kafka = Some(stored_position);
        // The engine's state now and then, so that a restart replays only the events after it.
        let unsaved = manifest.events
            - pipe
                .generation
                .engine_state()
                .map_or(0, |state| state.events.min(manifest.events));
        let save_state = if self.closing {
            unsaved > 0
        } else {
            unsaved >= self.source.state_every
        };
        let with = CheckpointWith {
            sessions,
            state: save_state.then_some(&pipe.engine),
        };
        let generation = pipe.generation.checkpoint_with(&snapshot, manifest, with)?;
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
        on_checkpoint(&Checkpoint {
            summary: &pipe.summary,
            position,
            generation: &generation,
            took: t.elapsed(),
        });
        self.published(true, t.elapsed());
        Ok(())
    }

    /// Between checkpoints: `streams`, `buckets` and `rollups` from the engine's live figures,
    /// over the last checkpoint's other tables (see [`Generation::publish_figures`]).
    pub(super) fn publish_figures(
        &mut self,
        final_through: Option<earshot_contract::Millis>,
    ) -> Result<(), IngestError> {
        let t = Instant::now();
        let pipe = &mut self.pipe;
        let snapshot = pipe.engine.publish(final_through);
        let figures = t.elapsed();
        let generation = pipe.generation.publish_figures(&snapshot)?;
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
