//! `earshot serve`: the data directory to SQL clients over the Postgres wire protocol.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use earshot_serve::{Auth, PgServer};

use crate::sql::LimitArgs;

/// The environment variable holding the Postgres password.
pub const PASSWORD_ENV: &str = "EARSHOT_PG_PASSWORD";

#[derive(Args)]
pub struct ServeArgs {
    /// Data directory written by `earshot ingest`; a newer generation is picked up while serving.
    #[arg(long, short)]
    data: PathBuf,
    /// Address for the Postgres wire protocol, e.g. 127.0.0.1:5433 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pg: SocketAddr,
    /// The user clients log in as when a password is set.
    #[arg(long, default_value = "earshot")]
    pg_user: String,
    /// A file holding the password (its first line). Or set EARSHOT_PG_PASSWORD. Required to listen
    /// on anything but loopback; clients then authenticate with SCRAM-SHA-256.
    #[arg(long, value_name = "FILE")]
    pg_password_file: Option<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
}

fn password(a: &ServeArgs) -> anyhow::Result<Option<String>> {
    if let Some(file) = &a.pg_password_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the password file {}", file.display()))?;
        let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
        if line.is_empty() {
            bail!("the password file {} is empty", file.display());
        }
        return Ok(Some(line.to_string()));
    }
    match std::env::var(PASSWORD_ENV) {
        Ok(p) if !p.is_empty() => Ok(Some(p)),
        _ => Ok(None),
    }
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let limits = a.limits.limits()?;
    let auth = match password(&a)? {
        Some(password) => Auth::Password {
            user: a.pg_user.clone(),
            password,
        },
        None => Auth::Trust,
    };
    let rt = crate::runtime()?;
    rt.block_on(async {
        let tables = Arc::new(earshot_sql::Tables::open(&a.data, limits).await?);
        let server = PgServer::bind(tables.clone(), a.pg, auth.clone(), limits).await?;
        let addr = server.local_addr()?;
        let _follow = earshot_serve::follow_generations(tables, Duration::from_millis(500));
        let login = match &auth {
            Auth::Trust => "no password (loopback only)".to_string(),
            Auth::Password { user, .. } => format!("user {user}, SCRAM-SHA-256"),
        };
        println!("postgres: listening on {addr} ({login}); database earshot");
        println!(
            "  psql -h {} -p {} -U {} earshot",
            addr.ip(),
            addr.port(),
            a.pg_user
        );
        println!(
            "  limits: {} per query, {} of query memory",
            earshot_sql::human_duration(limits.time),
            earshot_sql::human_bytes(limits.memory)
        );
        use std::io::Write;
        std::io::stdout().flush()?;
        tokio::select! {
            _ = server.run() => {}
            _ = shutdown() => eprintln!("stopping"),
        }
        Ok(())
    })
}

async fn shutdown() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
