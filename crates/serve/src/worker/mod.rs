//! The process boundary around user SQL.
//!
//! A user's SQL text — `POST /v1/query`, every Postgres connection, `earshot sql` — is parsed,
//! planned and executed in a worker process that the serving process (the *front*) starts and
//! supervises. The front (HTTP, the Postgres listener, the dashboard API's own canned queries, the
//! Kafka consumer of `earshot run`) never parses or plans a user's text. So no query can take the
//! front down: a stack overflow, an allocation failure, a panic or a kill ends one worker, whose
//! client gets a clear error, and the worker is replaced.
//!
//! The one design choice: a boundary instead of a list. The shape guard (`earshot_sql::guard`)
//! still refuses the shapes known to be dangerous, inside the worker, but nothing relies on it being
//! complete: whatever a query does in any phase, it does in a process that can be killed.
//!
//! - [`sql`]: a pool of workers answering one request at a time over a pipe (`POST /v1/query`, the
//!   CLI). Results come back already rendered (JSON, CSV, Arrow IPC, a table), in frames.
//! - The Postgres endpoint hands each connection's socket to a worker of its own, as Postgres's
//!   postmaster forks a backend per connection (`crate::pg_front`). A control socket carries turns,
//!   cancel requests and login failures between the two.
//! - [`limits`]: what holds each worker to its limits — an address-space cap it sets on itself once
//!   it is ready, the front's kill one second after the deadline, and a kill for a worker that burns
//!   CPU with no query running.
//!
//! What a worker must never do: write anything but frames or control lines to its standard output.

pub mod control;
pub mod frames;
pub mod limits;
pub mod process;
pub mod sql;

use std::path::PathBuf;
use std::time::Duration;

use earshot_sql::{Limits, SqlError};
use serde::{Deserialize, Serialize};

/// The environment variable that carries a worker's [`WorkerConfig`] (as JSON): not the command
/// line, which every user of the machine can read.
pub const CONFIG_ENV: &str = "EARSHOT_WORKER";

/// Where coreutils' `nice` may be; it starts the worker in its own place (same process id).
const NICE: [&str; 2] = ["/usr/bin/nice", "/bin/nice"];
/// How much less CPU priority a worker has than the front.
const WORKER_NICENESS: &str = "5";

/// How to start a worker: the program (the `earshot` binary, run as `earshot worker`), the data
/// directory and each worker's limits.
#[derive(Clone, Debug)]
pub struct Spawner {
    pub program: PathBuf,
    pub data: PathBuf,
    /// One worker's limits: its deadline, and the memory of one running query.
    pub limits: Limits,
}

impl Spawner {
    /// The current executable, run as `earshot worker`.
    pub fn this_program(data: PathBuf, limits: Limits) -> std::io::Result<Spawner> {
        Ok(Spawner {
            program: std::env::current_exe()?,
            data,
            limits,
        })
    }

    pub(crate) fn config(&self, pg: Option<PgWorker>) -> WorkerConfig {
        WorkerConfig {
            data: self.data.clone(),
            time_ms: self.limits.time.as_millis() as u64,
            memory: self.limits.memory,
            pg,
        }
    }

    /// The command that starts a worker; the caller sets its standard input and output, and
    /// [`process::Process::spawn`] its standard error.
    pub(crate) fn command(&self, config: &WorkerConfig) -> std::process::Command {
        // Workers run at a lower CPU priority than the front: on a busy machine the serving
        // threads, the dashboard API and the Kafka consumer come first, a user's query after.
        let mut cmd = match NICE.iter().find(|p| std::path::Path::new(p).exists()) {
            Some(nice) => {
                let mut c = std::process::Command::new(nice);
                c.args(["-n", WORKER_NICENESS]).arg(&self.program);
                c
            }
            None => std::process::Command::new(&self.program),
        };
        cmd.arg("worker")
            .env(
                CONFIG_ENV,
                serde_json::to_string(config).unwrap_or_default(),
            )
            // mimalloc reserves 1 GiB of address space up front by default; a worker's address
            // space is capped (see `limits`), so it reserves in smaller steps.
            .env("MIMALLOC_ARENA_RESERVE", "64MiB");
        cmd
    }
}

/// What a worker is told at start.
#[derive(Serialize, Deserialize, Debug)]
pub struct WorkerConfig {
    pub data: PathBuf,
    pub time_ms: u64,
    /// The worker's query memory pool; its address space is capped at this plus
    /// [`limits::OVERHEAD`] above what it had mapped when it became ready.
    pub memory: usize,
    /// Set for a Postgres connection's worker, whose standard input is the client's socket.
    pub pg: Option<PgWorker>,
}

impl WorkerConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            time: Duration::from_millis(self.time_ms),
            memory: self.memory,
            // A worker runs one query at a time; the front decides whose turn it is.
            running: 1,
            ..Limits::default()
        }
    }
}

/// A Postgres connection's worker: who the client is and how it may log in.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct PgWorker {
    pub peer: std::net::SocketAddr,
    /// `None`: trust (loopback only).
    pub user: Option<String>,
    pub password: Option<String>,
    /// The server's SCRAM salt, the same for every connection.
    pub salt: Vec<u8>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// This address failed to log in too often: refuse it for this many more seconds.
    pub refused_for_secs: Option<u64>,
}

/// Why a user's query did not give an answer, as the front reports it. The kinds are
/// [`SqlError`]'s, plus what only the front can see: the worker died.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    Query,
    Refused,
    TimeLimit,
    MemoryLimit,
    Param,
    TooComplex,
    Busy,
    Store,
    /// The worker died of something that is not one of the above: a bug, said so.
    Crashed,
}

/// A failed query: its kind and the message for the person who sent it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl From<&SqlError> for Failure {
    fn from(e: &SqlError) -> Failure {
        let kind = match e {
            SqlError::Query(_) => FailureKind::Query,
            SqlError::Refused(_) => FailureKind::Refused,
            SqlError::TimeLimit(_) => FailureKind::TimeLimit,
            SqlError::MemoryLimit { .. } => FailureKind::MemoryLimit,
            SqlError::Param(_) => FailureKind::Param,
            SqlError::TooComplex(_) => FailureKind::TooComplex,
            SqlError::Busy { .. } => FailureKind::Busy,
            SqlError::Store(_) => FailureKind::Store,
        };
        Failure {
            kind,
            message: e.to_string(),
        }
    }
}

impl Failure {
    /// The Postgres SQLSTATE for this failure.
    pub fn sqlstate(&self) -> &'static str {
        match self.kind {
            FailureKind::Refused => "25006",
            FailureKind::TimeLimit => "57014",
            FailureKind::MemoryLimit => "53200",
            FailureKind::Busy => "53300",
            FailureKind::Param => "22023",
            FailureKind::Query => crate::pg_compat::sqlstate_of(&self.message).unwrap_or("42601"),
            FailureKind::TooComplex => "54001",
            FailureKind::Store => "58030",
            FailureKind::Crashed => "XX000",
        }
    }
}
