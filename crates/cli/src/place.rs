//! Where `--data` points: a local directory, or object storage (`s3://bucket/prefix`), which a
//! process reads and writes through a local copy of its own (see `earshot-remote`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use earshot_remote::Remote;

/// Where a command's tables are, and the bucket behind them if any.
pub struct Place {
    /// The local data directory the command works on.
    pub local: PathBuf,
    pub remote: Option<Remote>,
    /// The local copy of a bucket, removed when the command ends.
    _copy: Option<tempfile::TempDir>,
}

impl Place {
    /// For a writer: a bucket gets an empty local copy, which the writer fills from the bucket.
    pub fn for_writing(data: &Path) -> anyhow::Result<Place> {
        if !earshot_remote::is_remote(data) {
            return Ok(Place {
                local: data.to_owned(),
                remote: None,
                _copy: None,
            });
        }
        let url = data.to_string_lossy();
        let remote = Remote::open(&url)?;
        // Under $EARSHOT_COPY_DIR if set (a disk with room for the event), else the temp dir.
        let mut copy = tempfile::Builder::new();
        copy.prefix("earshot-copy-");
        let copy = match std::env::var_os("EARSHOT_COPY_DIR") {
            Some(dir) => copy.tempdir_in(dir),
            None => copy.tempdir(),
        }
        .context("cannot create the local copy of the bucket's tables")?;
        Ok(Place {
            local: copy.path().to_owned(),
            remote: Some(remote),
            _copy: Some(copy),
        })
    }

    /// For a reader: a bucket's current tables, pulled into the local copy.
    pub fn for_reading(data: &Path) -> anyhow::Result<Place> {
        let place = Place::for_writing(data)?;
        if !place.refresh()? && place.remote.is_some() {
            return Err(earshot_store::StoreError::NoData {
                path: data.display().to_string(),
            }
            .into());
        }
        Ok(place)
    }

    /// For a writer that replaces the tables (a file ingest): the bucket's current tables are
    /// pulled first (so that the usual checks see them), and the pointer seen is returned, for
    /// [`Place::publish`].
    pub fn start_replacing(&self) -> anyhow::Result<Option<earshot_remote::Current>> {
        let Some(remote) = &self.remote else {
            return Ok(None);
        };
        let current = remote.current("")?;
        if let Some(c) = &current {
            remote.pull(c, &self.local)?;
        }
        Ok(current)
    }

    /// Uploads the local copy's current generation and makes it the bucket's, if no other
    /// process replaced the tables since `expected` was seen.
    pub fn publish(&self, expected: Option<earshot_remote::Current>) -> anyhow::Result<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let generation = earshot_store::current_generation(&self.local)?;
        if remote.push("", &generation, expected.as_ref())?.is_err() {
            anyhow::bail!(
                "another earshot process replaced the tables at {} during this ingest; this one's were not published\n  hint: one writer per --data location at a time",
                remote.url()
            );
        }
        Ok(())
    }

    /// Pulls the bucket's current generation into the local copy if it is not there yet.
    /// Returns whether the copy holds tables.
    pub fn refresh(&self) -> anyhow::Result<bool> {
        let Some(remote) = &self.remote else {
            return Ok(true);
        };
        // A writer deletes an object one replacement after its generation stopped listing it: a
        // pull that lost that race reads the pointer again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let Some(current) = remote.current("")? else {
                return Ok(false);
            };
            match remote.pull(&current, &self.local) {
                Ok(pulled) => return Ok(pulled.is_some()),
                Err(e) if attempts < 3 => tracing::debug!("pulling the tables again: {e}"),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Keeps the local copy up to date with the bucket, every `every`, on a thread of its own,
    /// until `stop` (for `serve`, whose tables follow `current`).
    pub fn follow(self: &Arc<Place>, every: Duration, stop: Arc<AtomicBool>) {
        if self.remote.is_none() {
            return;
        }
        let place = self.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(every);
                if let Err(e) = place.refresh() {
                    tracing::warn!("cannot follow the bucket's tables: {e:#}");
                }
            }
        });
    }
}
