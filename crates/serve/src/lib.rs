//! Serving a data directory to clients: the Postgres wire protocol (psql, DBeaver, Grafana, drivers),
//! and HTTP (the `/v1` JSON API, the live page, `/metrics`).
//!
//! Everything served goes through the one `SessionContext` of [`earshot_sql::Tables`], with the same
//! read-only guard and the same limits as `earshot sql`. A user's SQL text runs only in [`worker`]
//! processes, never in the serving process: [`pg_front`] hands each Postgres connection to a worker
//! of its own, and `POST /v1/query` goes to a pool of them. [`pg`] is what runs in a connection's
//! worker: `datafusion-postgres`'s session service, every statement checked before it reaches
//! DataFusion, every query under the time limit, logins checked by [`Auth`].

pub mod http;
pub mod pg;
pub mod pg_compat;
pub mod pg_front;
pub mod timeline;
pub mod worker;
pub mod worker_main;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use earshot_sql::Tables;

pub use http::{HttpOptions, HttpServer};
pub use pg::{Auth, PgTls};
pub use pg_front::PgServer;
pub use worker::Spawner;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to serve Postgres on {0} without a password: only a loopback address (127.0.0.1, ::1) \
may be served without one. Set EARSHOT_PG_PASSWORD or --pg-password-file, or bind to 127.0.0.1"
    )]
    NoPassword(SocketAddr),
    #[error(
        "refusing to serve HTTP on {0} without a token: only a loopback address may be served without \
one. Set EARSHOT_HTTP_TOKEN or --http-token-file, or bind to 127.0.0.1"
    )]
    NoToken(SocketAddr),
    #[error("cannot listen on {addr}: {source} (is another server using the port?)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot use the TLS certificate or key: {0}")]
    Tls(String),
    #[error("cannot set up the Postgres catalog: {0}")]
    Catalog(String),
    #[error("query worker: {0}")]
    Worker(String),
}

/// Keeps `tables` on the data directory's newest generation, checking every `every`.
pub fn follow_generations(tables: Arc<Tables>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match tables.refresh().await {
                Ok(true) => tracing::debug!("serving a new generation of the tables"),
                Ok(false) => {}
                Err(e) => tracing::warn!("cannot follow the data directory: {e}"),
            }
        }
    })
}
