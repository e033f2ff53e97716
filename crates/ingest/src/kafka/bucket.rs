//! `--data s3://…`: the data directories a consumer writes are local copies; each checkpoint's
//! generation then goes up to the bucket, and the bucket's pointer, replaced only by
//! compare-and-swap, is the fence (see `earshot-remote`).
//!
//! - Opening a directory (a worker taking a partition over, or a single consumer starting) pulls
//!   the bucket's current generation into a fresh local copy, then *claims* the pointer. The
//!   previous owner's next checkpoint then fails its compare-and-swap, whatever it believes about
//!   the group, and it drops the partition with everything read since its last checkpoint; the
//!   new owner reads those messages again from the offset stored in the bucket. Nothing is
//!   counted twice and nothing is lost.
//! - The union is built as in a shared directory (see `union`), from the partitions' generations
//!   pulled from the bucket, and published only if no other worker published one since it was
//!   begun (compare-and-swap again; otherwise it is built again).

use std::time::SystemTime;

use earshot_remote::{Lost, Remote};

use super::consume::{ALL, KafkaIngest};
use super::union::{PARTITIONS, partition_dir};
use super::*;

/// The bucket directory of part `key`: the prefix itself for a single consumer.
pub(super) fn remote_dir(key: i32) -> String {
    if key == ALL {
        String::new()
    } else {
        format!("{PARTITIONS}/{key}")
    }
}

impl KafkaIngest<'_> {
    /// Part `key`'s bucket directory was claimed by another writer: a worker lets the partition
    /// go (paused, until the group assigns it again); a single consumer stops.
    pub(super) fn fenced_out(&mut self, key: i32) -> Result<(), IngestError> {
        if key == ALL {
            return Err(KafkaProblem::Fenced {
                url: self.remote.map(|r| r.url().to_owned()).unwrap_or_default(),
            }
            .into());
        }
        tracing::warn!(
            partition = key,
            "another worker took this partition over in the bucket; what was read since its last checkpoint is dropped (the new owner reads it again)"
        );
        self.let_go(key);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.source.topic, key);
        let _ = self.consumer.pause(&tpl);
        self.fenced.insert(key, Instant::now());
        Ok(())
    }

    /// How long ago the union was last published: by this worker (its local copy), or by any
    /// (the bucket's pointer, asked only when this worker's is old enough to matter).
    pub(super) fn union_age(&self) -> Duration {
        let local = super::union::union_age(&self.data_dir);
        let Some(remote) = self.remote else {
            return local;
        };
        if local < self.source.checkpoint_every {
            return local;
        }
        match remote.modified("") {
            Ok(Some(t)) => local.min(SystemTime::now().duration_since(t).unwrap_or_default()),
            Ok(None) => Duration::MAX,
            Err(e) => {
                tracing::debug!(%e, "cannot tell the union's age from the bucket");
                local
            }
        }
    }

    /// Publishes the union to the bucket: built from every partition's generation there, and
    /// made current only if no other worker's union replaced the one seen first (else it is
    /// built again, up to five times; then the run loop tries again later).
    pub(super) fn publish_union_remote(
        &mut self,
        remote: &Remote,
    ) -> Result<Option<std::path::PathBuf>, IngestError> {
        for _ in 0..5 {
            let top = remote.current("")?;
            self.pull_partitions(remote)?;
            let Some((dir, _)) = super::union::union_once(
                &self.data_dir,
                self.settings,
                self.pseudonyms,
                &self.source.topic,
            )?
            else {
                return Ok(None);
            };
            match remote.push("", &dir, top.as_ref())? {
                Ok(_) => return Ok(Some(dir)),
                Err(Lost) => tracing::debug!("another worker published the union first; again"),
            }
        }
        self.clocks.union_owed = true;
        Ok(None)
    }

    /// Brings the local copies of the partitions this worker does not hold up to the bucket's.
    /// A partition it holds whose pointer another writer replaced was taken over: it lets go.
    fn pull_partitions(&mut self, remote: &Remote) -> Result<(), IngestError> {
        for name in remote.children(PARTITIONS)? {
            let Ok(p) = name.parse::<i32>() else {
                continue;
            };
            let Some(current) = remote.current(&remote_dir(p))? else {
                continue;
            };
            if let Some(part) = self.parts.get(&p) {
                if part
                    .pointer
                    .as_ref()
                    .is_some_and(|ours| ours.same(&current))
                {
                    continue;
                }
                self.fenced_out(p)?;
            }
            let Some(generation) = current.generation() else {
                continue;
            };
            let local = partition_dir(&self.data_dir, p);
            let have = std::fs::read_link(local.join(earshot_store::CURRENT)).ok();
            if have.as_deref() != Some(Path::new(generation)) {
                std::fs::create_dir_all(&local).map_err(|e| StoreError::Io {
                    action: "create",
                    path: local.display().to_string(),
                    cause: e,
                })?;
                remote.pull(&current, &local)?;
            }
        }
        Ok(())
    }
}
