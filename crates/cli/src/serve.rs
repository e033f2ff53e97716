//! `earshot serve`: the data directory to SQL clients over the Postgres wire protocol, and to
//! dashboards over HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use earshot_serve::worker::sql::SqlWorkers;
use earshot_serve::{Auth, HttpOptions, HttpServer, PgServer, Spawner};

use crate::sql::LimitArgs;

/// Shortest Postgres password accepted: failed logins are throttled, but a short password still
/// falls to a patient guesser.
const MIN_PASSWORD_CHARS: usize = 12;

/// The environment variable holding the Postgres password.
pub const PASSWORD_ENV: &str = "EARSHOT_PG_PASSWORD";
/// The environment variable holding the HTTP bearer token.
pub const TOKEN_ENV: &str = "EARSHOT_HTTP_TOKEN";

#[derive(Args)]
pub struct ServeArgs {
    /// Data directory written by `earshot ingest`; a newer generation is picked up while serving.
    #[arg(long, short)]
    pub data: PathBuf,
    /// Address for the Postgres wire protocol, e.g. 127.0.0.1:5433 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", required_unless_present = "http")]
    pg: Option<SocketAddr>,
    /// Address for HTTP: the /v1 JSON API, the live page at /, /healthz and /metrics.
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// A file holding the HTTP bearer token (first line). Or set EARSHOT_HTTP_TOKEN. Required to
    /// serve HTTP on anything but loopback.
    #[arg(long, value_name = "FILE")]
    http_token_file: Option<PathBuf>,
    /// Allow this origin to read the API from a browser (CORS). Off by default.
    #[arg(long, value_name = "ORIGIN")]
    cors_origin: Option<String>,
    /// How long an HTTP client may take to send a request's headers; idle keep-alive connections
    /// are closed after it too.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration_ms)]
    http_header_timeout: i64,
    /// How long an HTTP client may take to send a request's body.
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration_ms)]
    http_body_timeout: i64,
    /// Most HTTP connections open at once; one more is closed at once.
    #[arg(long, default_value_t = 1024)]
    http_max_connections: usize,
    /// The user clients log in as when a password is set.
    #[arg(long, default_value = "earshot")]
    pg_user: String,
    /// A file holding the password (its first line). Or set EARSHOT_PG_PASSWORD. Required to listen
    /// on anything but loopback; clients then authenticate with SCRAM-SHA-256.
    #[arg(long, value_name = "FILE")]
    pg_password_file: Option<PathBuf>,
    /// A PEM certificate chain for the Postgres endpoint. With --pg-tls-key, every Postgres client
    /// must use TLS (sslmode=require or stricter).
    #[arg(long, value_name = "FILE", requires = "pg_tls_key")]
    pg_tls_cert: Option<PathBuf>,
    /// The PEM private key of --pg-tls-cert.
    #[arg(long, value_name = "FILE", requires = "pg_tls_cert")]
    pg_tls_key: Option<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
    /// Most user queries (HTTP /v1/query, Postgres) running at once; the default is one per core.
    /// The dashboard API's own queries do not wait for a turn.
    #[arg(long, value_name = "N")]
    max_queries: Option<usize>,
    /// How long a query waits for a turn before it is refused as busy (HTTP 503, Postgres 53300).
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration_ms)]
    queue_timeout: i64,
    /// Most Postgres connections open at once (each has a worker process of its own); one more is
    /// refused with SQLSTATE 53300.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pg_max_connections: usize,
}

/// A secret from a file's first line, or else from an environment variable.
fn secret(file: Option<&PathBuf>, env: &str, what: &str) -> anyhow::Result<Option<String>> {
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the {what} file {}", file.display()))?;
        let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
        if line.is_empty() {
            bail!("the {what} file {} is empty", file.display());
        }
        return Ok(Some(line.to_string()));
    }
    match std::env::var(env) {
        Ok(p) if !p.is_empty() => Ok(Some(p)),
        _ => Ok(None),
    }
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    serve(a, std::future::pending())
}

/// Serves until a signal arrives or `until` completes.
pub fn serve(a: ServeArgs, until: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let mut limits = a.limits.limits()?;
    if a.max_queries == Some(0) {
        anyhow::bail!("--max-queries must be at least 1");
    }
    limits.running = a.max_queries.unwrap_or(limits.running);
    limits.queue = std::time::Duration::from_millis(a.queue_timeout.max(0).unsigned_abs());
    let tls = match (&a.pg_tls_cert, &a.pg_tls_key) {
        (Some(cert), Some(key)) => Some(earshot_serve::PgTls::from_pem(cert, key)?),
        _ => None,
    };
    let auth = match secret(a.pg_password_file.as_ref(), PASSWORD_ENV, "password")? {
        Some(password) if password.chars().count() < MIN_PASSWORD_CHARS => bail!(
            "the Postgres password is {} characters long; use at least {MIN_PASSWORD_CHARS}\n  hint: \
             a long random one, e.g. `openssl rand -base64 18`, in {PASSWORD_ENV} or --pg-password-file",
            password.chars().count()
        ),
        Some(password) => Auth::Password {
            user: a.pg_user.clone(),
            password,
        },
        None => Auth::Trust,
    };
    let rt = crate::runtime()?;
    let http_options = HttpOptions {
        token: secret(a.http_token_file.as_ref(), TOKEN_ENV, "token")?,
        cors_origin: a.cors_origin.clone(),
        header_timeout: Duration::from_millis(a.http_header_timeout.max(1) as u64),
        body_timeout: Duration::from_millis(a.http_body_timeout.max(1) as u64),
        max_connections: a.http_max_connections.max(1),
    };
    // A bucket is served from a local copy that follows it.
    let place = Arc::new(crate::place::Place::for_reading(&a.data)?);
    let stop_following = Arc::new(std::sync::atomic::AtomicBool::new(false));
    place.follow(Duration::from_secs(1), stop_following.clone());
    let data = place.local.clone();
    if a.pg_max_connections == 0 {
        anyhow::bail!("--pg-max-connections must be at least 1");
    }
    // Users' SQL runs in worker processes, each with an equal share of the query memory: the
    // memory limit holds for all running queries together, as the turns do.
    let spawner = Spawner::this_program(
        data.clone(),
        earshot_sql::Limits {
            memory: limits.memory / limits.running.max(1),
            running: 1,
            ..limits
        },
    )
    .context("cannot find this program to start query workers")?;
    let served = rt.block_on(async {
        let tables = Arc::new(earshot_sql::Tables::open(&data, limits).await?);
        let pg = match a.pg {
            Some(addr) => Some(
                PgServer::bind(
                    tables.clone(),
                    addr,
                    auth.clone(),
                    tls.clone(),
                    spawner.clone(),
                    a.pg_max_connections,
                )
                .await?,
            ),
            None => None,
        };
        let http = match a.http {
            Some(addr) => {
                let workers = SqlWorkers::new(spawner.clone(), 1);
                workers.refill();
                Some(
                    HttpServer::bind(tables.clone(), addr, http_options.clone(), limits, workers)
                        .await?,
                )
            }
            None => None,
        };
        let _follow = earshot_serve::follow_generations(tables, Duration::from_millis(100));
        // The addresses go to standard output; a server must not die because whoever started it
        // stopped reading (a closed pipe makes `println!` panic), so write errors are ignored.
        let mut banner = String::new();
        if let Some(server) = &pg {
            let addr = server.local_addr()?;
            let mut login = match &auth {
                Auth::Trust => "no password (loopback only)".to_string(),
                Auth::Password { user, .. } => format!("user {user}, SCRAM-SHA-256"),
            };
            if tls.is_some() {
                login += ", TLS required";
            }
            banner += &format!(
                "postgres: listening on {addr} ({login}); database earshot\n  psql -h {} -p {} -U {} earshot\n",
                addr.ip(),
                addr.port(),
                a.pg_user
            );
        }
        if let Some(server) = &http {
            let addr = server.local_addr()?;
            let access = if http_options.token.is_some() {
                "bearer token required on /v1 and /metrics"
            } else {
                "no token (loopback only)"
            };
            banner +=
                &format!("http: listening on {addr} ({access}); live page at http://{addr}/\n");
        }
        banner += &format!(
            "  limits: {} per query, {} of query memory, {} queries at once, each in a worker process\n",
            earshot_sql::human_duration(limits.time),
            earshot_sql::human_bytes(limits.memory),
            limits.running
        );
        use std::io::Write;
        let mut stdout = std::io::stdout();
        let _ = stdout.write_all(banner.as_bytes());
        let _ = stdout.flush();
        let pg_task = async {
            match pg {
                Some(s) => s.run().await,
                None => std::future::pending().await,
            }
        };
        let http_task = async {
            match http {
                Some(s) => s.run().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = pg_task => {}
            r = http_task => r.context("the HTTP server stopped")?,
            _ = shutdown() => eprintln!("stopping"),
            _ = until => {}
        }
        Ok(())
    });
    stop_following.store(true, std::sync::atomic::Ordering::Relaxed);
    served
}

pub async fn shutdown() {
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
