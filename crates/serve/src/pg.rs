//! The Postgres endpoint: `datafusion-postgres`'s session service behind earshot's guard and limits.
//!
//! - Every statement is checked by [`earshot_sql::guard`] before it reaches DataFusion: in the simple
//!   protocol the whole query string is parsed and each statement checked; in the extended protocol
//!   the check runs at `Parse`, so a refused statement never gets a portal.
//! - Every query runs under [`Limits`]: planning and the row stream share one deadline, and a memory
//!   error from the shared pool is reported as the memory limit, with the flag that raises it.
//! - [`Auth::Trust`] is only accepted on loopback; otherwise SCRAM-SHA-256 with one user.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::{DfSessionService, Parser};
use earshot_sql::{Limits, SqlError, Tables, guard};
use futures::{Sink, Stream, StreamExt};
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password};
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionManager, ErrorHandler, PgWireServerHandlers,
    PidSecretKeyGenerator, RandomPidSecretKeyGenerator, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::data::DataRow;
use pgwire::messages::startup::SecretKey;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::sync::watch;

use crate::ServeError;
use crate::worker::control::{Control, RemoteTurn};
use crate::worker::{PgWorker, WorkerConfig};

/// The database name clients connect to.
pub const DATABASE: &str = "earshot";

/// Who may log in.
#[derive(Clone)]
pub enum Auth {
    /// No password: only allowed when listening on loopback.
    Trust,
    /// SCRAM-SHA-256 for one user.
    Password { user: String, password: String },
}

impl Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Trust => write!(f, "Trust"),
            Auth::Password { user, .. } => write!(f, "Password {{ user: {user:?} }}"),
        }
    }
}

/// TLS for the Postgres endpoint: a certificate chain and its private key, in PEM files. With it,
/// every client must connect with TLS (`sslmode=require` or stricter); a plaintext login is refused.
#[derive(Clone)]
pub struct PgTls {
    acceptor: pgwire::tokio::TlsAcceptor,
    /// The files, for the connections' workers, which load them again.
    pub(crate) cert: std::path::PathBuf,
    pub(crate) key: std::path::PathBuf,
}

impl Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgTls")
    }
}

impl PgTls {
    pub fn from_pem(cert: &std::path::Path, key: &std::path::Path) -> Result<PgTls, ServeError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use tokio_rustls::rustls;
        let named = |path: &std::path::Path, e: &dyn std::fmt::Display| {
            ServeError::Tls(format!("{}: {e}", path.display()))
        };
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| named(cert, &e))?;
        if certs.is_empty() {
            return Err(named(cert, &"no certificate in the file"));
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| named(key, &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ServeError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key_der)
            .map_err(|e| ServeError::Tls(format!("the key does not fit the certificate: {e}")))?;
        // Direct TLS (Postgres 17's sslnegotiation=direct) asks for this protocol name.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(PgTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        })
    }
}

/// Serves the one Postgres connection whose socket is this worker's standard input, with the
/// front at the other end of the control socket on its standard output.
pub async fn serve_connection(config: WorkerConfig, pg: PgWorker) -> Result<(), ServeError> {
    use std::os::fd::AsFd;
    let io = |what: &str, e: std::io::Error| ServeError::Worker(format!("{what}: {e}"));
    let socket = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| io("no client socket", e))?;
    let socket = std::net::TcpStream::from(socket);
    let limits = config.limits();
    let tables = match Tables::open(&config.data, limits).await {
        Ok(tables) => Arc::new(tables),
        Err(e) => {
            // Said to the client as Postgres says it (a FATAL error at login), not as a dropped
            // connection: the tables not being whole names the file.
            refuse_login(socket, &e.to_string());
            // On one line: the front passes a dead worker's last line of output on to the
            // client, and it must name the file too (whichever message reaches the client).
            return Err(ServeError::Worker(e.to_string().replace("\n ", ";")));
        }
    };
    socket
        .set_nonblocking(true)
        .map_err(|e| io("client socket", e))?;
    let socket = tokio::net::TcpStream::from_std(socket).map_err(|e| io("client socket", e))?;
    let control = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| io("no control socket", e))?;
    let control = std::os::unix::net::UnixStream::from(control);
    control
        .set_nonblocking(true)
        .map_err(|e| io("control socket", e))?;
    let control = Control::start(
        tokio::net::UnixStream::from_std(control).map_err(|e| io("control socket", e))?,
    );
    setup_pg_catalog(&tables.ctx, DATABASE, EmptyContextProvider)
        .map_err(|e| ServeError::Catalog(e.to_string()))?;
    crate::pg_compat::install(&tables.ctx, DATABASE)
        .map_err(|e| ServeError::Catalog(e.to_string()))?;
    let _follow = crate::follow_generations(tables.clone(), Duration::from_millis(100));
    let tls = match (&pg.tls_cert, &pg.tls_key) {
        (Some(cert), Some(key)) => Some(PgTls::from_pem(cert, key)?),
        _ => None,
    };
    let auth = match (&pg.user, &pg.password) {
        (Some(user), Some(password)) => Auth::Password {
            user: user.clone(),
            password: password.clone(),
        },
        _ => Auth::Trust,
    };
    let ctx = Arc::new(tables.ctx.clone());
    let service = Arc::new(DfSessionService::new(ctx));
    let connections = Arc::new(ConnectionManager::new());
    let guarded = Arc::new(Guarded {
        parser: Arc::new(GuardedParser {
            inner: service.query_parser(),
            tables: tables.clone(),
            control: control.clone(),
        }),
        inner: service,
        tables,
        limits,
        control: control.clone(),
    });
    let handlers = Arc::new(Handlers {
        tls_required: tls.is_some(),
        guarded,
        auth,
        salt: pg.salt.clone(),
        cancel: Arc::new(ForwardedCancel(control.clone())),
        keys: Arc::new(ReportedKeys(control.clone())),
        connections,
        refused_for: pg.refused_for_secs.map(Duration::from_secs),
        control: control.clone(),
    });
    crate::worker::sql::warm_and_cap(&handlers.guarded.tables, config.memory).await;
    control.send("ready");
    if let Err(e) = pgwire::tokio::process_socket(socket, tls.map(|t| t.acceptor), handlers).await {
        tracing::debug!("connection from {} ended: {e}", pg.peer);
    }
    Ok(())
}

/// Answers a new connection's first messages with a FATAL error carrying `message` (SQLSTATE
/// 58030): an SSL or GSS encryption request is declined first, then the startup message is read
/// and refused. Best effort, within a few seconds; the connection is closed after.
fn refuse_login(mut socket: std::net::TcpStream, message: &str) {
    use std::io::{Read, Write};
    let _ = socket.set_read_timeout(Some(Duration::from_secs(5)));
    for _ in 0..3 {
        let mut head = [0u8; 8];
        if socket.read_exact(&mut head).is_err() {
            return;
        }
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        // SSLRequest, GSSENCRequest: no encryption here; the client goes on in plaintext.
        if len == 8 && (code == 80_877_103 || code == 80_877_104) {
            if socket.write_all(b"N").is_err() {
                return;
            }
            continue;
        }
        let mut rest = vec![0u8; len.saturating_sub(8).min(10_000)];
        let _ = socket.read_exact(&mut rest);
        break;
    }
    let mut fields = Vec::new();
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "58030"),
        (b'M', message),
    ] {
        fields.push(tag);
        fields.extend_from_slice(value.replace('\0', " ").as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut reply = vec![b'E'];
    reply.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
    reply.extend_from_slice(&fields);
    let _ = socket.write_all(&reply);
}

struct Handlers {
    tls_required: bool,
    guarded: Arc<Guarded>,
    auth: Auth,
    salt: Vec<u8>,
    cancel: Arc<ForwardedCancel>,
    connections: Arc<ConnectionManager>,
    keys: Arc<ReportedKeys>,
    /// This client's address failed to log in too often: refused for this long.
    refused_for: Option<Duration>,
    control: Arc<Control>,
}

/// A cancel request that reached this worker (a client that negotiated TLS or encryption first sends
/// it on a connection of its own, which the front handed to a new worker): it goes to the front,
/// which knows which worker gave out the key.
struct ForwardedCancel(Arc<Control>);

#[async_trait]
impl CancelHandler for ForwardedCancel {
    async fn on_cancel_request(&self, cancel: CancelRequest) {
        let hex: String = cancel
            .secret_key
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.0.send(format!("cancel-request {} {hex}", cancel.pid));
    }
}

/// Cancel keys whose process id is this worker's, each reported to the front, which receives
/// the clients' cancel requests.
struct ReportedKeys(Arc<Control>);

impl PidSecretKeyGenerator for ReportedKeys {
    fn generate(&self, client: &dyn ClientInfo) -> (i32, SecretKey) {
        let (_, key) = RandomPidSecretKeyGenerator::default().generate(client);
        let pid = std::process::id() as i32;
        let hex: String = key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        self.0.send(format!("key {pid} {hex}"));
        (pid, key)
    }
}

/// Failed password logins per client address: each is logged, and an address with
/// [`FailedLogins::LIMIT`] failures within [`FailedLogins::WINDOW`] is refused until the window
/// has passed since its latest failure, so passwords cannot be guessed at network speed.
#[derive(Default)]
pub struct FailedLogins(
    std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, Vec<std::time::Instant>>>,
);

impl FailedLogins {
    pub const LIMIT: usize = 5;
    pub const WINDOW: Duration = Duration::from_secs(60);
    /// Addresses remembered at most (oldest dropped first), so a flood cannot grow memory.
    const ADDRESSES: usize = 10_000;

    /// How long `ip` must still wait, if it is refused now.
    pub(crate) fn refused_for(&self, ip: std::net::IpAddr) -> Option<Duration> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let failures = map.get(&ip)?;
        let recent = failures
            .iter()
            .filter(|t| t.elapsed() < Self::WINDOW)
            .count();
        let latest = failures.last()?;
        (recent >= Self::LIMIT).then(|| Self::WINDOW.saturating_sub(latest.elapsed()))
    }

    pub(crate) fn failed(&self, ip: std::net::IpAddr) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, f| f.last().is_some_and(|t| t.elapsed() < Self::WINDOW));
        if map.len() >= Self::ADDRESSES
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, f)| f.last().copied())
                .map(|(ip, _)| *ip)
        {
            map.remove(&oldest);
        }
        let f = map.entry(ip).or_default();
        f.retain(|t| t.elapsed() < Self::WINDOW);
        f.push(std::time::Instant::now());
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.guarded.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.guarded.clone()
    }

    /// One per connection: the SASL handler keeps the exchange's state.
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        let inner = match &self.auth {
            Auth::Trust => Login::Trust(Trust {
                connections: self.connections.clone(),
                keys: self.keys.clone(),
            }),
            Auth::Password { user, password } => {
                let source = Arc::new(OneUser {
                    user: user.clone(),
                    salted: gen_salted_password(
                        password,
                        &self.salt,
                        pgwire::api::auth::sasl::scram::SCRAM_ITERATIONS,
                    ),
                    salt: self.salt.clone(),
                });
                Login::Scram(Box::new(
                    SASLAuthStartupHandler::new(
                        Arc::new(DefaultServerParameterProvider::default()),
                    )
                    .with_scram(ScramAuth::new(source))
                    .with_pid_secret_key_generator(self.keys.clone())
                    .with_connection_manager(self.connections.clone()),
                ))
            }
        };
        Arc::new(CheckDatabase {
            inner,
            refused_for: self.refused_for,
            control: self.control.clone(),
            tls_required: self.tls_required,
        })
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(LogErrors)
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}

struct LogErrors;

impl ErrorHandler for LogErrors {
    fn on_error<C>(&self, _client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        tracing::debug!("sending error: {error}");
    }
}

struct Trust {
    connections: Arc<ConnectionManager>,
    keys: Arc<ReportedKeys>,
}

#[async_trait]
impl NoopStartupHandler for Trust {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(self.connections.clone())
    }

    fn pid_secret_key_generator(&self) -> &dyn PidSecretKeyGenerator {
        &*self.keys
    }
}

enum Login {
    Trust(Trust),
    Scram(Box<SASLAuthStartupHandler<DefaultServerParameterProvider>>),
}

/// Refuses a database other than `earshot` before authenticating, like Postgres does.
struct CheckDatabase {
    inner: Login,
    refused_for: Option<Duration>,
    control: Arc<Control>,
    tls_required: bool,
}

#[async_trait]
impl StartupHandler for CheckDatabase {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let PgWireFrontendMessage::Startup(startup) = &message {
            if self.tls_required && !client.is_secure() {
                tracing::warn!(peer = %client.socket_addr(), "Postgres login refused: no TLS");
                return Err(user_error(
                    "FATAL",
                    "28000",
                    "this server requires TLS: connect with sslmode=require (or verify-full)"
                        .into(),
                ));
            }
            let db = startup
                .parameters
                .get("database")
                .or_else(|| startup.parameters.get("user"));
            if let Some(db) = db
                && db != DATABASE
            {
                return Err(user_error(
                    "FATAL",
                    "3D000",
                    format!(
                        "database \"{db}\" does not exist: earshot serves one database, \"{DATABASE}\" (e.g. psql -d {DATABASE})"
                    ),
                ));
            }
        }
        match &self.inner {
            Login::Trust(t) => t.on_startup(client, message).await,
            Login::Scram(s) => {
                let peer = client.socket_addr();
                if let Some(wait) = self.refused_for {
                    tracing::warn!(%peer, "Postgres login refused: too many failed logins");
                    return Err(user_error(
                        "FATAL",
                        "28P01",
                        format!(
                            "too many failed logins from {}: try again in {} s",
                            peer.ip(),
                            wait.as_secs().max(1)
                        ),
                    ));
                }
                let result = s.on_startup(client, message).await;
                if let Err(PgWireError::InvalidPassword(user)) = &result {
                    tracing::warn!(%peer, user, "Postgres login failed: wrong password");
                    self.control.send("login-failed");
                }
                result
            }
        }
    }
}

/// The one configured user, with the SCRAM verifier derived from its password at start.
struct OneUser {
    user: String,
    salt: Vec<u8>,
    salted: Vec<u8>,
}

impl Debug for OneUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OneUser({:?})", self.user)
    }
}

#[async_trait]
impl AuthSource for OneUser {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        if login.user() == Some(self.user.as_str()) {
            Ok(Password::new(Some(self.salt.clone()), self.salted.clone()))
        } else {
            Err(user_error(
                "FATAL",
                "28P01",
                format!(
                    "password authentication failed for user \"{}\"",
                    login.user().unwrap_or("")
                ),
            ))
        }
    }
}

fn user_error(severity: &str, code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        severity.to_string(),
        code.to_string(),
        message,
    )))
}

/// SQLSTATE for each of earshot's SQL errors.
fn sql_error(e: SqlError) -> PgWireError {
    let f = crate::worker::Failure::from(&e);
    user_error("ERROR", f.sqlstate(), f.message)
}

/// What Postgres answers to a query its client cancelled.
fn cancelled() -> PgWireError {
    user_error(
        "ERROR",
        "57014",
        "canceling statement due to user request".into(),
    )
}

/// The session service behind the guard and the limits.
struct Guarded {
    inner: Arc<DfSessionService>,
    parser: Arc<GuardedParser>,
    tables: Arc<Tables>,
    limits: Limits,
    control: Arc<Control>,
}

impl Guarded {
    /// The statements of `text`, each passed by the guard.
    async fn checked(&self, text: &str) -> Result<Vec<Statement>, SqlError> {
        let statements = PostgresCompatibilityParser::new()
            .parse(text)
            .map_err(|e| SqlError::Query(e.to_string()))?;
        let state = self.tables.ctx.state();
        for statement in &statements {
            guard::check_statement(&state, statement).await?;
        }
        Ok(statements)
    }

    /// `portal` over the compatible form of its text, when `error` says DataFusion could not plan
    /// the text and the compatible form differs, parses and passes the guard.
    async fn compatible_portal<C>(
        &self,
        client: &C,
        portal: &Portal<DfStatement>,
        error: &PgWireError,
    ) -> Option<Portal<DfStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        if !crate::pg_compat::unplannable(&error.to_string()) {
            return None;
        }
        let stored = &portal.statement;
        let std::borrow::Cow::Owned(text) = crate::pg_compat::rewrite(&stored.statement.0) else {
            return None;
        };
        let client_text = &stored.statement.0;
        let parsed = self
            .parser
            .plan(client, &text, client_text, &stored.parameter_types)
            .await
            .ok()??;
        let mut compatible = Portal::default();
        compatible.name = portal.name.clone();
        compatible.statement = Arc::new(pgwire::api::stmt::StoredStatement::new(
            stored.id.clone(),
            parsed,
            stored.parameter_types.clone(),
        ));
        compatible.parameter_format = portal.parameter_format.clone();
        compatible.parameters = portal.parameters.clone();
        compatible.result_column_format = portal.result_column_format.clone();
        Some(compatible)
    }

    /// Wraps a response's rows so the query stops at the deadline and memory errors name the limit.
    /// The rows are computed on the query threads, and the turn is held until the last row is sent
    /// or the deadline, whichever comes first (see [`TurnUntil`]).
    fn limit(
        &self,
        response: Response,
        deadline: tokio::time::Instant,
        turn: Arc<TurnUntil>,
        cancels: watch::Receiver<u64>,
    ) -> Response {
        match response {
            Response::Query(q) => {
                let QueryResponse {
                    command_tag,
                    row_schema,
                    data_rows,
                    ..
                } = q;
                let rows = self.tables.threads.forward(data_rows, 64);
                let rows = bounded(rows, deadline, self.tables.clone(), cancels).map(move |row| {
                    let _held = &turn;
                    row
                });
                let mut limited = QueryResponse::new(row_schema, rows);
                limited.command_tag = command_tag;
                Response::Query(limited)
            }
            other => other,
        }
    }

    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.limits.time
    }
}

/// A query's turn, given back when its responses are dropped or at its deadline, whichever comes
/// first: a client that stops reading its rows holds its connection, not a turn others wait for.
struct TurnUntil {
    _done: tokio::sync::oneshot::Sender<()>,
}

impl TurnUntil {
    fn new(turn: RemoteTurn, deadline: tokio::time::Instant) -> Arc<TurnUntil> {
        let (done, dropped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _turn = turn;
            tokio::select! {
                _ = dropped => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        });
        Arc::new(TurnUntil { _done: done })
    }
}

/// Ends `rows` with the time-limit error at `deadline`, or the cancel error when the client
/// cancels; rewrites a memory error into the limit's.
fn bounded(
    rows: std::pin::Pin<Box<dyn Stream<Item = PgWireResult<DataRow>> + Send>>,
    deadline: tokio::time::Instant,
    tables: Arc<Tables>,
    cancels: watch::Receiver<u64>,
) -> impl Stream<Item = PgWireResult<DataRow>> + Send {
    let limits = tables.limits;
    let sleep = Box::pin(tokio::time::sleep_until(deadline));
    futures::stream::unfold(Some((rows, sleep, cancels)), move |state| {
        let tables = tables.clone();
        async move {
            let (mut rows, mut sleep, mut cancels) = state?;
            tokio::select! {
                biased;
                _ = &mut sleep => Some((Err(sql_error(SqlError::TimeLimit(limits.time))), None)),
                Ok(()) = cancels.changed() => Some((Err(cancelled()), None)),
                item = rows.next() => match item {
                    None => None,
                    Some(Err(e)) => Some((Err(memory_or(e, &tables)), None)),
                    Some(Ok(row)) => Some((Ok(row), Some((rows, sleep, cancels)))),
                },
            }
        }
    })
}

/// A query's error as the client should get it: the limit it hit, the file it could not read, or
/// Postgres's SQLSTATE for DataFusion's message.
fn memory_or(e: PgWireError, tables: &Tables) -> PgWireError {
    let limits = &tables.limits;
    let text = e.to_string();
    if text.contains(earshot_sql::exec::DEADLINE_WORDS) {
        sql_error(SqlError::TimeLimit(limits.time))
    } else if text.contains("Resources exhausted") {
        sql_error(SqlError::MemoryLimit {
            limit: limits.memory,
            detail: text,
        })
    } else {
        match e {
            // DataFusion's errors reach the client as internal errors (XX000): Postgres's code
            // where one fits, so that drivers raise the exception class tools catch.
            PgWireError::UserError(mut info) if info.code == "XX000" => {
                if let Some(code) = crate::pg_compat::sqlstate_of(&info.message) {
                    info.code = code.into();
                }
                if let Some(cause) = tables.storage_cause(&info.message) {
                    info.code = "58030".into(); // io_error
                    info.message = format!("{}\n  {cause}", info.message);
                }
                PgWireError::UserError(info)
            }
            // An error raised while rows are computed (division by zero) comes as an API error,
            // which pgwire sends as XX000 too: the same mapping.
            PgWireError::ApiError(error) => {
                let message = error.to_string();
                let info = ErrorInfo::new("ERROR".to_owned(), "XX000".to_owned(), message);
                memory_or(PgWireError::UserError(Box::new(info)), tables)
            }
            e => e,
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for Guarded {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // Everything from here on — parsing, planning, running — is inside a turn, which the front
        // watches: a turn held past the deadline plus a grace gets this worker killed.
        let turn = self.control.turn().await.map_err(sql_error)?;
        let deadline = self.deadline();
        let mut cancels = self.control.cancels();
        guard::check_parse(query).map_err(sql_error)?;
        let upfront = crate::pg_compat::rewrite_upfront(query);
        // The guard plans each statement, so a text DataFusion cannot plan fails here first: then
        // the compatible form, if it passes.
        let (query, statements) = match self.checked(&upfront).await {
            Ok(statements) => (upfront, statements),
            Err(e) if crate::pg_compat::unplannable(&e.to_string()) => {
                match crate::pg_compat::rewrite(query) {
                    std::borrow::Cow::Owned(r) => {
                        let statements = self.checked(&r).await.map_err(|_| sql_error(e))?;
                        (std::borrow::Cow::Owned(r), statements)
                    }
                    std::borrow::Cow::Borrowed(_) => return Err(sql_error(e)),
                }
            }
            Err(e) => return Err(sql_error(e)),
        };
        let query = &*query;
        // Savepoints (SQLAlchemy and psycopg open one around their first queries) are no-ops, as
        // BEGIN and COMMIT are: nothing here changes the data.
        if !statements.is_empty() && statements.iter().all(|s| savepoint_tag(s).is_some()) {
            return Ok(statements
                .iter()
                .filter_map(savepoint_tag)
                .map(|tag| Response::Execution(Tag::new(tag)))
                .collect());
        }
        let turn = TurnUntil::new(turn, deadline);
        // The text as the client wrote it first (datafusion-postgres recognises psql's catalog
        // queries by their text); only if DataFusion cannot plan it, the compatible form.
        let work = tokio::time::timeout_at(
            deadline,
            self.tables.threads.enter(async {
                let error = match SimpleQueryHandler::do_query(&*self.inner, client, query).await {
                    Ok(responses) => return Ok(responses),
                    Err(e) => e,
                };
                let rewritten = match crate::pg_compat::rewrite(query) {
                    std::borrow::Cow::Owned(r)
                        if crate::pg_compat::unplannable(&error.to_string()) =>
                    {
                        r
                    }
                    _ => return Err(error),
                };
                SimpleQueryHandler::do_query(&*self.inner, client, &rewritten)
                    .await
                    .map_err(|_| error)
            }),
        );
        let responses = tokio::select! {
            r = work => r,
            Ok(()) = cancels.changed() => return Err(cancelled()),
        }
        .map_err(|_| sql_error(SqlError::TimeLimit(self.limits.time)))?
        .map_err(|e| memory_or(e, &self.tables))?;
        Ok(responses
            .into_iter()
            .map(|r| self.limit(r, deadline, turn.clone(), cancels.clone()))
            .collect())
    }
}

/// The command tag of a savepoint statement, which the endpoint answers itself.
fn savepoint_tag(statement: &Statement) -> Option<&'static str> {
    match statement {
        Statement::Savepoint { .. } => Some("SAVEPOINT"),
        Statement::ReleaseSavepoint { .. } => Some("RELEASE"),
        Statement::Rollback {
            savepoint: Some(_), ..
        } => Some("ROLLBACK"),
        _ => None,
    }
}

type DfStatement = (String, Option<(Statement, LogicalPlan)>);

#[async_trait]
impl ExtendedQueryHandler for Guarded {
    type Statement = DfStatement;
    type QueryParser = GuardedParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let turn = self.control.turn().await.map_err(sql_error)?;
        let deadline = self.deadline();
        let mut cancels = self.control.cancels();
        let turn = TurnUntil::new(turn, deadline);
        // As in the simple protocol: the text as the client wrote it first; only if DataFusion
        // cannot run it (a correlated subquery inside CASE fails only here, once parameters have
        // values), the compatible form with the same parameters. Nothing was sent yet.
        let work = tokio::time::timeout_at(
            deadline,
            self.tables.threads.enter(async {
                let error =
                    match ExtendedQueryHandler::do_query(&*self.inner, client, portal, max_rows)
                        .await
                    {
                        Ok(response) => return Ok(response),
                        Err(e) => e,
                    };
                let Some(compatible) = self.compatible_portal(client, portal, &error).await else {
                    return Err(error);
                };
                ExtendedQueryHandler::do_query(&*self.inner, client, &compatible, max_rows)
                    .await
                    .map_err(|_| error)
            }),
        );
        let response = tokio::select! {
            r = work => r,
            Ok(()) = cancels.changed() => return Err(cancelled()),
        }
        .map_err(|_| sql_error(SqlError::TimeLimit(self.limits.time)))?
        .map_err(|e| memory_or(e, &self.tables))?;
        Ok(self.limit(response, deadline, turn, cancels))
    }
}

/// The session service's parser, with the guard run on each parsed statement.
pub struct GuardedParser {
    inner: Arc<Parser>,
    tables: Arc<Tables>,
    control: Arc<Control>,
}

impl GuardedParser {
    /// Plans `text`, a form of the client's `client_text`, and runs the guard on it. The statement
    /// keeps the client's text (datafusion-postgres keeps its own rewrite of it, used only in its
    /// logs), so that a retry in the compatible form starts from what the client sent; and every
    /// placeholder of that text is in the plan (see `pg_compat::params`).
    async fn plan<C>(
        &self,
        client: &C,
        text: &str,
        client_text: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<DfStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let Some((_, planned)) = self.inner.parse_sql(client, text, types).await? else {
            return Ok(None);
        };
        let Some((statement, plan)) = planned else {
            return Ok(Some((client_text.to_owned(), None)));
        };
        let plan = crate::pg_compat::keep_placeholders(client_text, plan)
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        guard::check_statement(&self.tables.ctx.state(), &statement)
            .await
            .map_err(sql_error)?;
        Ok(Some((client_text.to_owned(), Some((statement, plan)))))
    }
}

#[async_trait]
impl QueryParser for GuardedParser {
    type Statement = DfStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        // Parsing and planning happen here, inside a turn and under the deadline (see `do_query`).
        let _turn = self.control.turn().await.map_err(sql_error)?;
        let deadline = tokio::time::Instant::now() + self.tables.limits.time;
        let work = async {
            guard::check_parse(sql).map_err(sql_error)?;
            let upfront = crate::pg_compat::rewrite_upfront(sql);
            // As in the simple protocol: the compatible form only when the text does not plan.
            match self.plan(client, &upfront, sql, types).await {
                Err(e) if crate::pg_compat::unplannable(&e.to_string()) => {
                    match crate::pg_compat::rewrite(sql) {
                        std::borrow::Cow::Owned(rewritten) => self
                            .plan(client, &rewritten, sql, types)
                            .await
                            .map_err(|_| e),
                        std::borrow::Cow::Borrowed(_) => Err(e),
                    }
                }
                other => other,
            }
        };
        tokio::time::timeout_at(deadline, work)
            .await
            .map_err(|_| sql_error(SqlError::TimeLimit(self.tables.limits.time)))?
            .map_err(|e| memory_or(e, &self.tables))
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        self.inner.get_parameter_types(stmt)
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        self.inner.get_result_schema(stmt, column_format)
    }
}
