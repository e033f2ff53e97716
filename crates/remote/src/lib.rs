//! Tables in object storage: `--data s3://bucket/prefix`.
//!
//! earshot's writers and readers work on local data directories (see `earshot-store`); with a
//! bucket, each process keeps a local copy of what it works on and this crate moves generations
//! between that copy and the bucket.
//!
//! - **Layout.** A data directory `D` (the prefix itself, or `partitions/<p>` under it) has one
//!   small object, `D/current.json`, naming its current generation and listing that generation's
//!   files, each as the key of an object in the bucket. A file is uploaded once, under the
//!   generation that first had it (`D/gen-000007-<writer>/events/part-00000001.parquet`); later
//!   generations that keep it (parts are immutable, and the store hard-links them from one
//!   generation to the next) list the same key again. So a checkpoint uploads what it wrote and
//!   one pointer, never the whole event again.
//! - **The fence** is a compare-and-swap on the pointer: it is replaced only if its ETag is still
//!   the one this writer read or wrote last (`If-Match`; the first with `If-None-Match`). A worker
//!   that takes a partition over rewrites the pointer (its *claim*), so the previous owner's next
//!   replacement fails and it drops the partition, whatever it believes about the group. Files
//!   are uploaded under a name holding the writer's random token, so a fenced writer's uploads
//!   never land on its successor's keys.
//! - **Reading** is a pull: the files of the current generation are downloaded into a local
//!   directory (a file already pulled or pushed by this process under the same key is
//!   hard-linked, not downloaded again) and `current` is switched to it, so every local reader
//!   works unchanged.
//!
//! - **Clearing up.** The objects a replaced pointer listed and its replacement does not (a
//!   generation's own tables and manifest, an old engine state) are deleted by the same writer at
//!   its next replacement, so a reader still pulling the previous generation finds it whole. Parts
//!   of `events` and `rejects` are never dropped, and the union never deletes what it lists from
//!   the partitions.
//!
//!   A push that loses its compare-and-swap deletes what it uploaded.
//!
//! Not yet: what a writer uploaded or meant to delete when it stopped (or crashed) stays in the
//! bucket.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

/// The pointer object of a data directory in the bucket.
const POINTER: &str = "current.json";

/// How many files move at once.
const IN_FLIGHT: usize = 8;

/// Whether `--data` names object storage rather than a local directory.
pub fn is_remote(data: &Path) -> bool {
    data.to_str().is_some_and(|s| s.starts_with("s3://"))
}

/// Why object storage could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(
        "{url} is not a bucket location earshot can use: {why}\n  hint: write s3://BUCKET or s3://BUCKET/PREFIX"
    )]
    Url { url: String, why: String },
    #[error(
        "object storage refused to {action} {url}: {detail}\n  hint: check the bucket exists and the AWS settings in the environment (AWS_ENDPOINT for a server other than AWS, AWS_ALLOW_HTTP=true for one without TLS, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION)"
    )]
    Store {
        action: &'static str,
        url: String,
        detail: String,
    },
    #[error("the generation {url} in the bucket is not whole: {detail}")]
    NotWhole { url: String, detail: String },
    #[error(
        "cannot {action} {path}: {cause}\n  hint: check the local copy's directory is writable and has free space"
    )]
    Local {
        action: &'static str,
        path: String,
        cause: std::io::Error,
    },
    #[error(
        "{url} holds a pointer earshot cannot read ({detail})\n  hint: it was not written by earshot, or by a newer version"
    )]
    Pointer { url: String, detail: String },
}

/// What a data directory's pointer says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct PointerBody {
    /// The current generation's name; `None` for a claim made before any checkpoint.
    generation: Option<String>,
    /// The generation's files: path inside it → key under the prefix.
    files: BTreeMap<String, String>,
    /// Who wrote this pointer, and its how-manyth write: every pointer differs, so its ETag does.
    writer: String,
    write: u64,
}

/// A data directory's pointer as this process last read or wrote it.
#[derive(Debug, Clone)]
pub struct Current {
    body: PointerBody,
    version: UpdateVersion,
}

impl Current {
    /// The current generation's name, if a checkpoint was ever published.
    pub fn generation(&self) -> Option<&str> {
        self.body.generation.as_deref()
    }

    /// Whether `other` is this very write of the pointer (not just the same generation: a claim
    /// keeps the generation and changes the writer).
    pub fn same(&self, other: &Current) -> bool {
        self.body == other.body
    }
}

/// A replacement of the pointer lost to another writer's: the fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost;

/// One bucket prefix and the files this process moved to and from it.
pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: Key,
    rt: tokio::runtime::Runtime,
    writer: String,
    writes: AtomicU64,
    /// Local files known to be objects: key → a local path holding the same bytes. A path is
    /// trusted only while it still exists and is the same file (device and inode).
    known: Mutex<Known>,
    /// Per data directory: objects its last replaced pointer listed and the new one does not,
    /// deleted at this writer's next replacement.
    retired: Mutex<HashMap<String, Vec<String>>>,
}

#[derive(Default)]
struct Known {
    by_key: HashMap<String, PathBuf>,
    by_file: HashMap<(u64, u64), (String, PathBuf)>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

impl Remote {
    /// Connects to `s3://bucket[/prefix]` with the usual AWS settings from the environment
    /// (`AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `AWS_ACCESS_KEY_ID`, …).
    pub fn open(url: &str) -> Result<Remote, RemoteError> {
        Remote::open_with(url, std::env::vars())
    }

    /// [`Remote::open`] with the `AWS_*` settings among `vars` instead of the environment's.
    pub fn open_with(
        url: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Remote, RemoteError> {
        let bad = |why: &str| RemoteError::Url {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("only s3:// is supported"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the bucket name is missing"));
        }
        let prefix = prefix.trim_matches('/');
        let prefix = Key::parse(prefix).map_err(|e| bad(&e.to_string()))?;
        let mut builder = AmazonS3Builder::new();
        for (key, value) in vars {
            if key.starts_with("AWS_")
                && let Ok(config) = key.to_ascii_lowercase().parse()
            {
                builder = builder.with_config(config, value);
            }
        }
        let store = builder
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RemoteError::Local {
                action: "start a runtime for",
                path: url.to_owned(),
                cause: e,
            })?;
        let mut token = [0u8; 6];
        getrandom::fill(&mut token).map_err(|e| bad(&format!("no randomness: {e}")))?;
        Ok(Remote {
            url: url.trim_end_matches('/').to_owned(),
            store: Arc::new(store),
            prefix,
            rt,
            writer: token.iter().map(|b| format!("{b:02x}")).collect(),
            writes: AtomicU64::new(0),
            known: Mutex::new(Known::default()),
            retired: Mutex::new(HashMap::new()),
        })
    }

    /// The location as given, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// This process's writer token (in the names of the generations it uploads).
    pub fn writer(&self) -> &str {
        &self.writer
    }

    fn key(&self, rel: &str) -> Key {
        let mut key = self.prefix.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            key = key.clone().join(part);
        }
        key
    }

    fn err(&self, action: &'static str, rel: &str, e: impl std::fmt::Display) -> RemoteError {
        RemoteError::Store {
            action,
            url: format!("{}/{rel}", self.url),
            detail: e.to_string(),
        }
    }

    /// The pointer of data directory `dir` (`""` for the prefix itself), if it has one.
    pub fn current(&self, dir: &str) -> Result<Option<Current>, RemoteError> {
        let rel = join(dir, POINTER);
        let key = self.key(&rel);
        let got = self.rt.block_on(async {
            match self.store.get(&key).await {
                Ok(r) => {
                    let meta = r.meta.clone();
                    r.bytes().await.map(|b| Some((meta, b)))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        let Some((meta, bytes)) = got.map_err(|e| self.err("read", &rel, e))? else {
            return Ok(None);
        };
        let body: PointerBody =
            serde_json::from_slice(&bytes).map_err(|e| RemoteError::Pointer {
                url: format!("{}/{rel}", self.url),
                detail: e.to_string(),
            })?;
        Ok(Some(Current {
            body,
            version: UpdateVersion {
                e_tag: meta.e_tag,
                version: meta.version,
            },
        }))
    }

    /// When data directory `dir`'s pointer was last replaced, if it exists.
    pub fn modified(&self, dir: &str) -> Result<Option<std::time::SystemTime>, RemoteError> {
        let rel = join(dir, POINTER);
        let key = self.key(&rel);
        match self.rt.block_on(self.store.head(&key)) {
            Ok(meta) => Ok(Some(meta.last_modified.into())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("look at", &rel, e)),
        }
    }

    /// Whether anything at all is stored under `dir`.
    pub fn holds_anything(&self, dir: &str) -> Result<bool, RemoteError> {
        let key = self.key(dir);
        let listed = self
            .rt
            .block_on(self.store.list_with_delimiter(Some(&key)))
            .map_err(|e| self.err("list", dir, e))?;
        Ok(!listed.objects.is_empty() || !listed.common_prefixes.is_empty())
    }

    /// Stores a small object `rel` with `body` (overwriting): a marker.
    pub fn mark(&self, rel: &str, body: &str) -> Result<(), RemoteError> {
        self.rt
            .block_on(
                self.store
                    .put(&self.key(rel), PutPayload::from(body.as_bytes().to_vec())),
            )
            .map_err(|e| self.err("write", rel, e))?;
        Ok(())
    }

    /// The data directories under `dir` that have a pointer or anything else (their names).
    pub fn children(&self, dir: &str) -> Result<Vec<String>, RemoteError> {
        let key = self.key(dir);
        let listed = self
            .rt
            .block_on(self.store.list_with_delimiter(Some(&key)))
            .map_err(|e| self.err("list", dir, e))?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect())
    }

    /// Makes `local` (a data directory) hold `current`'s generation and point `current` at it,
    /// downloading only files this process does not have yet. Generations other than the new and
    /// the one it replaces are removed from `local`. Returns the generation's directory, or
    /// `None` for a pointer without one.
    pub fn pull(&self, current: &Current, local: &Path) -> Result<Option<PathBuf>, RemoteError> {
        let Some(name) = current.generation() else {
            return Ok(None);
        };
        let target = local.join(name);
        if !target.is_dir() {
            let tmp = local.join(format!(".pull-tmp-{name}"));
            let _ = std::fs::remove_dir_all(&tmp);
            mkdir(&tmp)?;
            let mut fetch = Vec::new();
            for (rel, key) in &current.body.files {
                let to = tmp.join(rel);
                if let Some(parent) = to.parent() {
                    mkdir(parent)?;
                }
                match self.local_copy(key) {
                    Some(from) if std::fs::hard_link(&from, &to).is_ok() => {}
                    _ => fetch.push((key.clone(), to)),
                }
            }
            self.rt.block_on(
                futures::stream::iter(fetch.iter().map(|(key, to)| self.download(key, to)))
                    .buffer_unordered(IN_FLIGHT)
                    .try_collect::<Vec<()>>(),
            )?;
            // Every byte against the generation's own file list: a file lost, cut short or
            // changed in the bucket (or on the way) is an error naming it, never fewer rows.
            let verified = earshot_store::FileList::verify(&tmp, earshot_store::Depth::Full)
                .and_then(|_| earshot_store::mark_verified(&tmp));
            if let Err(e) = verified {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(RemoteError::NotWhole {
                    url: join(&self.url, name),
                    detail: e.to_string(),
                });
            }
            std::fs::rename(&tmp, &target).map_err(|e| local_err("rename", &target, e))?;
            for (rel, key) in &current.body.files {
                self.remember(key, &target.join(rel));
            }
        }
        let previous = std::fs::read_link(local.join(earshot_store::CURRENT)).ok();
        point_current(local, name)?;
        if let Ok(entries) = std::fs::read_dir(local) {
            for entry in entries.flatten() {
                let file_name = entry.file_name();
                let keep = file_name == *name
                    || previous
                        .as_deref()
                        .is_some_and(|p| p == Path::new(&file_name));
                if !keep && file_name.to_string_lossy().starts_with("gen-") {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(Some(target))
    }

    async fn download(&self, key: &str, to: &Path) -> Result<(), RemoteError> {
        let bytes = async { self.store.get(&self.key(key)).await?.bytes().await }
            .await
            .map_err(|e| self.err("download", key, e))?;
        std::fs::write(to, &bytes).map_err(|e| local_err("write", to, e))
    }

    /// Uploads the files of local generation `generation` of data directory `dir` that the
    /// bucket does not have yet, then replaces `dir`'s pointer with one naming it, if the pointer
    /// is still `expected` (`None`: if there is none). Returns the new pointer, or [`Lost`] when
    /// another writer replaced it first (nothing of this generation is then current).
    pub fn push(
        &self,
        dir: &str,
        generation: &Path,
        expected: Option<&Current>,
    ) -> Result<Result<Current, Lost>, RemoteError> {
        let local_name = generation
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = format!("{local_name}-{}", self.writer);
        let mut files = BTreeMap::new();
        let mut upload = Vec::new();
        // A partition's pointer lists only its own objects (the union deletes its own, and may
        // list the partitions').
        let usable = |key: &String| dir.is_empty() || key.starts_with(&format!("{dir}/"));
        for (rel, path) in walk(generation)? {
            let key = match self.known_key(&path).filter(usable) {
                Some(key) => key,
                None => {
                    let key = join(dir, &format!("{name}/{rel}"));
                    upload.push((key.clone(), path.clone()));
                    key
                }
            };
            files.insert(rel, key);
        }
        self.rt.block_on(
            futures::stream::iter(upload.iter().map(|(key, path)| self.upload(key, path)))
                .buffer_unordered(IN_FLIGHT)
                .try_collect::<Vec<()>>(),
        )?;
        for (key, path) in &upload {
            self.remember(key, path);
        }
        let replaced = self.replace(dir, Some(name), files, expected)?;
        if replaced.is_err() {
            // No pointer lists what this push uploaded, and none ever will: a fenced writer
            // leaves nothing behind.
            let keys: Vec<String> = upload.into_iter().map(|(key, _)| key).collect();
            self.delete(dir, &keys);
        }
        Ok(replaced)
    }

    /// Rewrites `dir`'s pointer unchanged but as this writer's, if it is still `expected`
    /// (`None`: if there is none): a worker taking a partition over fences out its previous
    /// owner, whose next [`Remote::push`] then fails.
    pub fn claim(
        &self,
        dir: &str,
        expected: Option<&Current>,
    ) -> Result<Result<Current, Lost>, RemoteError> {
        let (generation, files) = match expected {
            Some(c) => (c.body.generation.clone(), c.body.files.clone()),
            None => (None, BTreeMap::new()),
        };
        self.replace(dir, generation, files, expected)
    }

    fn replace(
        &self,
        dir: &str,
        generation: Option<String>,
        files: BTreeMap<String, String>,
        expected: Option<&Current>,
    ) -> Result<Result<Current, Lost>, RemoteError> {
        let body = PointerBody {
            generation,
            files,
            writer: self.writer.clone(),
            write: self.writes.fetch_add(1, Ordering::Relaxed),
        };
        let json = serde_json::to_vec(&body).map_err(|e| RemoteError::Pointer {
            url: self.url.clone(),
            detail: e.to_string(),
        })?;
        let mode = match expected {
            Some(c) => PutMode::Update(c.version.clone()),
            None => PutMode::Create,
        };
        let rel = join(dir, POINTER);
        let put = self.rt.block_on(self.store.put_opts(
            &self.key(&rel),
            PutPayload::from(json),
            PutOptions {
                mode,
                ..PutOptions::default()
            },
        ));
        match put {
            Ok(done) => {
                self.retire(dir, expected, &body.files);
                Ok(Ok(Current {
                    body,
                    version: UpdateVersion {
                        e_tag: done.e_tag,
                        version: done.version,
                    },
                }))
            }
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::AlreadyExists { .. }) => Ok(Err(Lost)),
            Err(e) => Err(self.err("replace", &rel, e)),
        }
    }

    /// After `dir`'s pointer was replaced: what the replaced one listed and the new one does not
    /// waits for the next replacement; what waited since the last one is deleted now. Only
    /// objects of `dir` itself (the union does not delete the partitions'). A failed delete
    /// leaves an object behind and nothing else.
    fn retire(&self, dir: &str, replaced: Option<&Current>, now: &BTreeMap<String, String>) {
        let listed: std::collections::HashSet<&String> = now.values().collect();
        let own = |key: &String| {
            if dir.is_empty() {
                !key.starts_with("partitions/")
            } else {
                key.starts_with(&format!("{dir}/"))
            }
        };
        let dropped: Vec<String> = replaced
            .map(|c| {
                c.body
                    .files
                    .values()
                    .filter(|k| !listed.contains(k) && own(k))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let due = self
            .retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dir.to_owned(), dropped)
            .unwrap_or_default();
        let due: Vec<String> = due.into_iter().filter(|k| !listed.contains(k)).collect();
        self.delete(dir, &due);
    }

    /// Deletes objects no pointer lists (and forgets them). A failed delete leaves an object
    /// behind and nothing else.
    fn delete(&self, dir: &str, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        {
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            for key in keys {
                known.by_key.remove(key);
            }
            known.by_file.retain(|_, (key, _)| !keys.contains(key));
        }
        let failed = self.rt.block_on(
            futures::stream::iter(
                keys.iter()
                    .map(|key| async move { self.store.delete(&self.key(key)).await.err() }),
            )
            .buffer_unordered(IN_FLIGHT)
            .filter_map(|e| async move { e })
            .count(),
        );
        if failed > 0 {
            tracing::warn!(
                failed,
                of = keys.len(),
                dir,
                "objects no generation lists could not be deleted (they stay in the bucket)"
            );
        }
    }

    async fn upload(&self, key: &str, path: &Path) -> Result<(), RemoteError> {
        let bytes = std::fs::read(path).map_err(|e| local_err("read", path, e))?;
        self.store
            .put(&self.key(key), PutPayload::from(bytes))
            .await
            .map_err(|e| self.err("upload", key, e))?;
        Ok(())
    }

    fn remember(&self, key: &str, path: &Path) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.by_key.insert(key.to_owned(), path.to_owned());
        known
            .by_file
            .insert((meta.dev(), meta.ino()), (key.to_owned(), path.to_owned()));
    }

    /// The key of an object holding `path`'s bytes, if this process moved that very file.
    fn known_key(&self, path: &Path) -> Option<String> {
        let meta = std::fs::metadata(path).ok()?;
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let (key, seen) = known.by_file.get(&(meta.dev(), meta.ino()))?;
        // The path it was seen at must still be this file: an inode is reused once freed.
        same_file(seen, &meta).then(|| key.clone())
    }

    /// A local path holding object `key`'s bytes, if this process has one.
    fn local_copy(&self, key: &str) -> Option<PathBuf> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let path = known.by_key.get(key)?;
        path.is_file().then(|| path.clone())
    }
}

fn same_file(path: &Path, meta: &std::fs::Metadata) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
}

fn join(dir: &str, rel: &str) -> String {
    if dir.is_empty() {
        rel.to_owned()
    } else {
        format!("{}/{rel}", dir.trim_end_matches('/'))
    }
}

fn local_err(action: &'static str, path: &Path, cause: std::io::Error) -> RemoteError {
    RemoteError::Local {
        action,
        path: path.display().to_string(),
        cause,
    }
}

fn mkdir(dir: &Path) -> Result<(), RemoteError> {
    std::fs::create_dir_all(dir).map_err(|e| local_err("create", dir, e))
}

/// Every file under `root`, as (path relative to it with `/`, path).
fn walk(root: &Path) -> Result<Vec<(String, PathBuf)>, RemoteError> {
    earshot_store::files_under(root).map_err(|e| match e {
        earshot_store::StoreError::Io {
            action,
            path,
            cause,
        } => RemoteError::Local {
            action,
            path,
            cause,
        },
        other => RemoteError::NotWhole {
            url: root.display().to_string(),
            detail: other.to_string(),
        },
    })
}

/// Points `local`'s `current` symlink at generation `name` atomically.
fn point_current(local: &Path, name: &str) -> Result<(), RemoteError> {
    let tmp = local.join(format!(".current-pull-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp).map_err(|e| local_err("link", &tmp, e))?;
    let current = local.join(earshot_store::CURRENT);
    std::fs::rename(&tmp, &current).map_err(|e| local_err("rename", &current, e))
}
