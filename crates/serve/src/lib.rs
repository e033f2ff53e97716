//! Serving a data directory to clients: the Postgres wire protocol (psql, DBeaver, Grafana, drivers).
//!
//! Everything served goes through the one `SessionContext` of [`earshot_sql::Tables`], with the same
//! read-only guard and the same limits as `earshot sql`. [`pg`] wraps `datafusion-postgres`'s session
//! service: every statement is checked before it reaches DataFusion, every query runs under the time
//! limit, and logins are checked by [`Auth`].

pub mod pg;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use earshot_sql::Tables;

pub use pg::{Auth, PgServer};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to serve Postgres on {0} without a password: only a loopback address (127.0.0.1, ::1) \
may be served without one. Set EARSHOT_PG_PASSWORD or --pg-password-file, or bind to 127.0.0.1"
    )]
    NoPassword(SocketAddr),
    #[error("cannot listen on {addr}: {source} (is another server using the port?)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up the Postgres catalog: {0}")]
    Catalog(String),
}

/// Keeps `tables` on the data directory's newest generation, checking every `every`.
pub fn follow_generations(tables: Arc<Tables>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match tables.refresh().await {
                Ok(true) => tracing::info!("serving a new generation of the tables"),
                Ok(false) => {}
                Err(e) => tracing::warn!("cannot follow the data directory: {e}"),
            }
        }
    })
}
