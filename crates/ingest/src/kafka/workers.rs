//! A group of workers (`--assign group`): each partition the group coordinator hands this worker
//! is a data directory of its own, `DATA/partitions/<p>/`, and its state moves with it.
//!
//! - **Taking a partition over** is the restart path: the worker opens the directory (its
//!   writer lock, then the saved state plus a replay of the events after it, as `resume` does)
//!   and reads on from the offset stored there. Until it holds the lock the partition stays
//!   assigned but paused, so nothing is read that could not be stored.
//! - **The fence** is that lock (an advisory lock, held by the writer for as long as it has the
//!   directory open, released by the kernel when it dies). A worker that lost a partition —
//!   stopped, cut off from the group, its session expired — still holds it, so the new owner
//!   waits and never writes over it; when the old owner comes back it checkpoints what it had
//!   read and lets go, and the new owner reads on from that checkpoint. Nothing is counted twice
//!   and nothing is lost. (The lock holds on one machine's file system. In a bucket the fence is
//!   a compare-and-swap on the partition's pointer instead, and the new owner does not wait: see
//!   `bucket`.)
//! - **Handing a partition over**: on revocation the worker checkpoints it at once and keeps it
//!   open until the group's next assignment (so an eager rebalance that gives it straight back
//!   costs nothing), or 15 s.

use super::bucket::remote_dir;
use super::consume::{ALL, Final, KafkaIngest, Part};
use super::resume::{fetch_and_claim, resume};
use super::union::partition_dir;
use super::*;

/// How long a revoked partition is kept open waiting for the next assignment, in case none comes
/// (the group's next assignment decides sooner). Longer than a rebalance takes: tansu hands out
/// the next assignment 3 s after a revocation, and a partition let go a moment before it is given
/// straight back would be opened again (its state loaded) for nothing.
const PARKED_FOR: Duration = Duration::from_secs(15);

/// How often a pending partition's directory is tried again.
const RETRY_EVERY: Duration = Duration::from_millis(200);

impl KafkaIngest<'_> {
    /// After each poll: checkpoints and lets go of revoked partitions, and opens the pending
    /// ones whose previous owner has let go.
    pub(super) fn tend_partitions(
        &mut self,
        on_checkpoint: &mut dyn FnMut(&Checkpoint<'_>),
    ) -> Result<(), IngestError> {
        let (assigned, pending, assignments) = {
            let positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
            (
                positions.assigned.clone(),
                positions.pending.clone(),
                positions.assignments,
            )
        };
        let mut changed = false;
        let keys: Vec<i32> = self.parts.keys().copied().collect();
        for key in keys {
            let Some(part) = self.parts.get_mut(&key) else {
                continue;
            };
            if assigned.contains(&key) {
                part.parked = None;
                continue;
            }
            match part.parked {
                None => {
                    // Revoked: its next owner starts from what it has read so far.
                    let dirty = part.dirty;
                    part.parked = Some((assignments, Instant::now()));
                    if dirty {
                        self.checkpoint_part(key, Final::Live, on_checkpoint)?;
                        changed = true;
                    }
                    tracing::info!(partition = key, "partition revoked; checkpointed");
                }
                Some((at, since)) if assignments > at || since.elapsed() >= PARKED_FOR => {
                    self.let_go(key);
                }
                Some(_) => {}
            }
        }
        // A partition another worker claimed in the bucket (see `bucket`) is taken back only when
        // the group assigns it again, or if after a while the group still says it is this one's.
        let fenced: Vec<i32> = self
            .fenced
            .iter()
            .filter(|(_, since)| since.elapsed() >= PARKED_FOR)
            .map(|(&p, _)| p)
            .collect();
        for p in fenced {
            self.fenced.remove(&p);
            let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
            if assigned.contains(&p) && !positions.open.contains(&p) {
                positions.pending.insert(p);
            }
        }
        if !pending.is_empty() && self.clocks.pending_tried.elapsed() >= RETRY_EVERY {
            self.clocks.pending_tried = Instant::now();
            for p in pending {
                changed |= self.take_over(p, on_checkpoint)?;
            }
        }
        if changed {
            self.union_due(on_checkpoint)?;
        } else if self.clocks.union_owed && self.union_age() >= self.source.checkpoint_every {
            self.publish_union(on_checkpoint)?;
        }
        Ok(())
    }

    /// Closes a partition's directory (releasing its lock) and forgets where it stood.
    pub(super) fn let_go(&mut self, p: i32) {
        if let Some(part) = self.parts.remove(&p) {
            self.handed_over.add(&part.pipe.summary);
            tracing::info!(partition = p, "partition handed over");
        }
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        positions.open.remove(&p);
        positions.next.remove(&p);
        positions.unverified.remove(&p);
        self.eof.remove(&p);
    }

    /// Opens pending partition `p`'s directory if its previous owner has let go, then reads it
    /// from the stored offset. Returns whether it did.
    fn take_over(
        &mut self,
        p: i32,
        on_checkpoint: &mut dyn FnMut(&Checkpoint<'_>),
    ) -> Result<bool, IngestError> {
        debug_assert!(p != ALL);
        let dir = partition_dir(&self.data_dir, p);
        let pointer = match self.remote {
            Some(remote) => match fetch_and_claim(remote, &remote_dir(p), &dir)? {
                Some(claimed) => Some(claimed),
                None => {
                    tracing::debug!(partition = p, "claimed by another worker meanwhile");
                    return Ok(false);
                }
            },
            None => None,
        };
        let (pipe, position) = match resume(self.source, &dir, self.settings, self.pseudonyms) {
            Ok(opened) => opened,
            Err(IngestError::Store(StoreError::Busy { .. })) => {
                tracing::debug!(partition = p, "waiting for its previous owner to let go");
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let first = position.checkpoints == 0;
        let stored = position.next_offsets.get(&p).copied();
        let mut part = Part::new(
            pipe,
            position,
            self.source,
            &self.settings,
            self.pseudonyms,
            self.dead_letters.is_some(),
        );
        part.pointer = pointer;
        let start = {
            let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
            if !positions.pending.remove(&p) {
                // Revoked meanwhile: nothing to read.
                return Ok(false);
            }
            positions.open.insert(p);
            match stored {
                Some(n) => positions.next.insert(p, n),
                None => positions.next.remove(&p),
            };
            positions.start(p)
        };
        self.parts.insert(p, part);
        // A partition just taken over has not been read yet: the idle clock starts again, or a
        // worker idle before the handover would end at once and leave it unread.
        self.clocks.last_message = Instant::now();
        tracing::info!(partition = p, offset = ?stored, "partition taken over");
        if let Err(e) = self
            .consumer
            .seek(&self.source.topic, p, start, Duration::from_secs(10))
        {
            // It reads on from the offset it was assigned at (never after the stored one), and
            // messages below the stored offset are skipped.
            tracing::debug!(partition = p, %e, "seek before resuming failed");
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.source.topic, p);
        self.consumer
            .resume(&tpl)
            .map_err(|e| KafkaProblem::Fatal(format!("resuming partition {p} failed: {e}")))?;
        if first {
            self.checkpoint_part(p, Final::Nothing, on_checkpoint)?;
        }
        Ok(true)
    }
}
