//! Workers that answer one SQL request at a time over a pipe: `POST /v1/query` and `earshot sql`.
//!
//! A request is one JSON line on the worker's standard input ([`Request`]); the answer comes back
//! in [`frames`] on its standard output, already rendered in the format asked for, so the front only
//! copies bytes. [`SqlWorkers`] keeps idle workers ready (a request costs a pipe round trip, not a
//! process start), gives each request a deadline one [`GRACE`] past the query's own, and never
//! reuses a worker that stopped a query for its time or memory limit, died, or was killed.

use std::sync::{Arc, Mutex};

use earshot_sql::output::Format;
use earshot_sql::{Params, SqlError, Tables};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::frames;
use super::limits::{self, GRACE, Killed};
use super::process::{Process, StderrTail};
use super::{Failure, FailureKind, Spawner, WorkerConfig};
use crate::ServeError;

/// How a result is rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    Table,
    Csv,
    Json,
    Ndjson,
    /// An Arrow IPC stream.
    Arrow,
}

impl From<Format> for Output {
    fn from(f: Format) -> Output {
        match f {
            Format::Table => Output::Table,
            Format::Csv => Output::Csv,
            Format::Json => Output::Json,
            Format::Ndjson => Output::Ndjson,
        }
    }
}

/// One query for a worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub sql: String,
    /// Named parameters as `name=value`.
    pub params: Vec<String>,
    /// Parameters the query does not use are not an error (the prompt's `-p` apply to all).
    pub allow_unused: bool,
    pub output: Output,
}

/// The worker's side: answers requests until its standard input (a socket to the front, which the
/// answers go back on too) closes.
pub async fn serve_requests(config: WorkerConfig) -> Result<(), ServeError> {
    use std::os::fd::AsFd;
    let io = |e: std::io::Error| ServeError::Worker(format!("cannot answer the front: {e}"));
    let front = std::io::stdin().as_fd().try_clone_to_owned().map_err(io)?;
    let front = std::os::unix::net::UnixStream::from(front);
    front.set_nonblocking(true).map_err(io)?;
    let (input, mut out) = UnixStream::from_std(front).map_err(io)?.into_split();
    let limits = config.limits();
    let mut tables = Tables::open(&config.data, limits).await;
    if let Ok(t) = &tables {
        warm_and_cap(t, config.memory).await;
    }
    let mut input = BufReader::new(input);
    loop {
        let mut line = String::new();
        if input.read_line(&mut line).await.map_err(io)? == 0 {
            return Ok(());
        }
        if tables.is_err() {
            // The data directory may have appeared since (a first ingest while serving).
            tables = Tables::open(&config.data, limits).await;
            if let Ok(t) = &tables {
                warm_and_cap(t, config.memory).await;
            }
        }
        let started = std::time::Instant::now();
        let reply = match (&tables, serde_json::from_str::<Request>(&line)) {
            (Err(e), _) => Err(Failure::from(e)),
            (_, Err(e)) => Err(Failure {
                kind: FailureKind::Crashed,
                message: format!("a worker could not read its request: {e} (a bug in earshot)"),
            }),
            (Ok(tables), Ok(request)) => answer(tables, &request).await,
        };
        match reply {
            Ok((body, rows)) => {
                // How long the worker itself took, sending aside: what a request costs beyond it
                // is the hop.
                let ms = started.elapsed().as_secs_f64() * 1e3;
                frames::write_data(&mut out, &body).await.map_err(io)?;
                let end = serde_json::json!({ "rows": rows, "ms": ms }).to_string();
                frames::write(&mut out, frames::END, end.as_bytes())
                    .await
                    .map_err(io)?;
            }
            Err(f) => {
                let f = serde_json::to_vec(&f).unwrap_or_default();
                frames::write(&mut out, frames::ERROR, &f)
                    .await
                    .map_err(io)?;
            }
        }
        out.flush().await.map_err(io)?;
    }
}

/// Runs a first query (so the query threads and the planner's lazily built parts exist), then caps
/// the address space.
pub(crate) async fn warm_and_cap(tables: &Tables, memory: usize) {
    if let Err(e) = tables.query("SELECT 1", &Params::default()).await {
        tracing::warn!("a worker's first query failed: {e}");
    }
    if let Err(e) = limits::cap_address_space(memory) {
        tracing::warn!("cannot cap the worker's memory: {e}");
    }
}

async fn answer(tables: &Tables, request: &Request) -> Result<(Vec<u8>, usize), Failure> {
    let failed = |e: SqlError| Failure::from(&e);
    if let Err(e) = tables.refresh().await {
        return Err(failed(e));
    }
    let mut params = Params::from_pairs(&request.params).map_err(failed)?;
    if request.allow_unused {
        params = params.allowing_unused();
    }
    let mut answer = tables.query(&request.sql, &params).await.map_err(failed)?;
    let rows = answer.rows();
    let body = match request.output {
        Output::Arrow => answer.render_arrow(),
        Output::Table => answer.render(Format::Table),
        Output::Csv => answer.render(Format::Csv),
        Output::Json => answer.render(Format::Json),
        Output::Ndjson => answer.render(Format::Ndjson),
    }
    .map_err(failed)?;
    Ok((body, rows))
}

/// A running worker, idle or answering.
struct Worker {
    process: Process,
    to: OwnedWriteHalf,
    from: BufReader<OwnedReadHalf>,
    tail: StderrTail,
    tail_done: tokio::task::JoinHandle<()>,
}

/// The front's side: a pool of workers. Each request takes an idle worker (or starts one), and a
/// worker that answered well goes back for the next.
pub struct SqlWorkers {
    spawner: Spawner,
    idle: Mutex<Vec<Worker>>,
    /// How many idle workers to keep ready.
    keep: usize,
}

/// How an exchange with a worker ended, short of an answer.
enum Broken {
    /// The worker answered with an error.
    Failed(Failure),
    /// The worker's pipes broke or it sent nonsense: it died, or is dying.
    Died,
}

impl SqlWorkers {
    pub fn new(spawner: Spawner, keep: usize) -> Arc<SqlWorkers> {
        Arc::new(SqlWorkers {
            spawner,
            idle: Mutex::new(Vec::new()),
            keep,
        })
    }

    /// Starts workers in the background until `keep` are idle.
    pub fn refill(self: &Arc<Self>) {
        let pool = self.clone();
        tokio::spawn(async move {
            loop {
                let idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner()).len();
                if idle >= pool.keep {
                    return;
                }
                match pool.start() {
                    Ok(w) => pool.idle.lock().unwrap_or_else(|p| p.into_inner()).push(w),
                    Err(e) => {
                        tracing::warn!("cannot start a query worker: {e}");
                        return;
                    }
                }
            }
        });
    }

    fn start(&self) -> std::io::Result<Worker> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let mut cmd = self.spawner.command(&self.spawner.config(None));
        // Its standard output is not a channel: nothing it prints by accident can break a frame.
        cmd.stdin(std::os::fd::OwnedFd::from(theirs))
            .stdout(std::process::Stdio::null());
        let (process, tail, tail_done) = Process::spawn(cmd)?;
        ours.set_nonblocking(true)?;
        let (from, to) = UnixStream::from_std(ours)?.into_split();
        Ok(Worker {
            process,
            to,
            from: BufReader::new(from),
            tail,
            tail_done,
        })
    }

    /// Runs `request` in a worker, passing the rendered result to `on_data` as it arrives. Returns
    /// the number of rows.
    pub async fn run(
        self: &Arc<Self>,
        request: &Request,
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<u64, Failure> {
        // A ready worker that died while idle (killed from outside) is not handed a query.
        let popped = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|w| !w.process.has_exited());
            idle.pop()
        };
        let mut worker = match popped {
            Some(w) => w,
            None => self.start().map_err(|e| Failure {
                kind: FailureKind::Crashed,
                message: format!("cannot start a query worker process: {e}"),
            })?,
        };
        let limits = self.spawner.limits;
        let deadline = tokio::time::Instant::now() + limits.time + GRACE;
        let outcome =
            tokio::time::timeout_at(deadline, exchange(&mut worker, request, &mut on_data)).await;
        let result = match outcome {
            Ok(Ok(rows)) => {
                self.idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(worker);
                return Ok(rows);
            }
            Ok(Err(Broken::Failed(f))) => {
                let spent = matches!(f.kind, FailureKind::TimeLimit | FailureKind::MemoryLimit);
                if !spent {
                    self.idle
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(worker);
                    return Err(f);
                }
                // A query stopped at a limit may leave work running on the worker's threads: the
                // worker goes with it.
                worker.process.kill();
                Err(f)
            }
            Ok(Err(Broken::Died)) => {
                let status = match tokio::time::timeout(GRACE, worker.process.wait()).await {
                    Ok(s) => s,
                    Err(_) => worker.process.kill_and_wait().await,
                };
                let _ = tokio::time::timeout(GRACE, &mut worker.tail_done).await;
                Err(limits::death(status, &worker.tail, None, &limits))
            }
            Err(_) => {
                let status = worker.process.kill_and_wait().await;
                Err(limits::death(
                    status,
                    &worker.tail,
                    Some(Killed::Deadline),
                    &limits,
                ))
            }
        };
        self.refill();
        result
    }
}

/// Sends `request` and reads the answer's frames.
async fn exchange(
    worker: &mut Worker,
    request: &Request,
    on_data: &mut impl FnMut(&[u8]),
) -> Result<u64, Broken> {
    let mut line = serde_json::to_vec(request).map_err(|_| Broken::Died)?;
    line.push(b'\n');
    if worker.to.write_all(&line).await.is_err() {
        return Err(Broken::Died);
    }
    loop {
        match frames::read(&mut worker.from).await {
            Ok(Some((frames::DATA, data))) => on_data(&data),
            Ok(Some((frames::END, end))) => {
                let rows = serde_json::from_slice::<serde_json::Value>(&end)
                    .ok()
                    .and_then(|v| v["rows"].as_u64())
                    .unwrap_or(0);
                return Ok(rows);
            }
            Ok(Some((_, error))) => {
                return Err(match serde_json::from_slice::<Failure>(&error) {
                    Ok(f) => Broken::Failed(f),
                    Err(_) => Broken::Died,
                });
            }
            Ok(None) | Err(_) => return Err(Broken::Died),
        }
    }
}
