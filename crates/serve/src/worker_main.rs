//! `earshot worker`'s entry point: it reads the worker's configuration and becomes either a
//! request worker ([`crate::worker::sql`]) or one Postgres connection's backend ([`crate::pg`]).
//! It sits above both, so that neither needs the other.

use crate::ServeError;
use crate::worker::{CONFIG_ENV, WorkerConfig};

/// `earshot worker`: reads its [`WorkerConfig`] from [`CONFIG_ENV`] and serves SQL requests on
/// standard input, or, for a Postgres connection, the socket that is its standard input.
pub fn run() -> Result<(), ServeError> {
    let text = std::env::var(CONFIG_ENV).map_err(|_| {
        ServeError::Worker(format!(
            "`earshot worker` is started by `earshot serve`, `run` and `sql`, with {CONFIG_ENV} set; \
             it is not a command to run by hand"
        ))
    })?;
    let config: WorkerConfig = serde_json::from_str(&text)
        .map_err(|e| ServeError::Worker(format!("bad {CONFIG_ENV}: {e}")))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ServeError::Worker(format!("cannot start the async runtime: {e}")))?;
    match config.pg.clone() {
        Some(pg) => rt.block_on(crate::pg::serve_connection(config, pg)),
        None => rt.block_on(crate::worker::sql::serve_requests(config)),
    }
}
