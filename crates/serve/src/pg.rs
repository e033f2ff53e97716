//! The Postgres endpoint: `datafusion-postgres`'s session service behind earshot's guard and limits.
//!
//! - Every statement is checked by [`earshot_sql::guard`] before it reaches DataFusion: in the simple
//!   protocol the whole query string is parsed and each statement checked; in the extended protocol
//!   the check runs at `Parse`, so a refused statement never gets a portal.
//! - Every query runs under [`Limits`]: planning and the row stream share one deadline, and a memory
//!   error from the shared pool is reported as the memory limit, with the flag that raises it.
//! - [`Auth::Trust`] is only accepted on loopback; otherwise SCRAM-SHA-256 with one user.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::{DfSessionService, Parser};
use earshot_sql::exec::Turn;
use earshot_sql::{Limits, SqlError, Tables, guard};
use futures::{Sink, Stream, StreamExt};
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password};
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionManager, ErrorHandler, PgWireServerHandlers, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::net::TcpListener;

use crate::ServeError;

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
pub struct PgTls(pgwire::tokio::TlsAcceptor);

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
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| named(key, &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ServeError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| ServeError::Tls(format!("the key does not fit the certificate: {e}")))?;
        // Direct TLS (Postgres 17's sslnegotiation=direct) asks for this protocol name.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(PgTls(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }
}

/// A bound Postgres listener, ready to serve.
pub struct PgServer {
    listener: TcpListener,
    tls: Option<PgTls>,
    handlers: Arc<Handlers>,
}

impl PgServer {
    /// Binds `addr` (port 0 picks a free port) after checking that `auth` is allowed there.
    pub async fn bind(
        tables: Arc<Tables>,
        addr: SocketAddr,
        auth: Auth,
        tls: Option<PgTls>,
        limits: Limits,
    ) -> Result<PgServer, ServeError> {
        if matches!(auth, Auth::Trust) && !addr.ip().is_loopback() {
            return Err(ServeError::NoPassword(addr));
        }
        setup_pg_catalog(&tables.ctx, DATABASE, EmptyContextProvider)
            .map_err(|e| ServeError::Catalog(e.to_string()))?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let ctx = Arc::new(tables.ctx.clone());
        let service = Arc::new(DfSessionService::new(ctx));
        let salt = {
            let mut salt = [0u8; 16];
            getrandom::fill(&mut salt).map_err(|e| ServeError::Catalog(e.to_string()))?;
            salt.to_vec()
        };
        let connections = Arc::new(ConnectionManager::new());
        let guarded = Arc::new(Guarded {
            parser: Arc::new(GuardedParser {
                inner: service.query_parser(),
                tables: tables.clone(),
            }),
            inner: service,
            tables,
            limits,
        });
        Ok(PgServer {
            listener,
            handlers: Arc::new(Handlers {
                tls_required: tls.is_some(),
                guarded,
                auth,
                salt,
                cancel: Arc::new(DefaultCancelHandler::new(connections.clone())),
                connections,
                failed_logins: Arc::default(),
            }),
            tls,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until the task is dropped.
    pub async fn run(self) {
        loop {
            match self.listener.accept().await {
                Ok((socket, peer)) => {
                    let handlers = self.handlers.clone();
                    let tls = self.tls.as_ref().map(|t| t.0.clone());
                    tokio::spawn(async move {
                        if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                            tracing::debug!("connection from {peer} ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

struct Handlers {
    tls_required: bool,
    guarded: Arc<Guarded>,
    auth: Auth,
    salt: Vec<u8>,
    cancel: Arc<DefaultCancelHandler>,
    connections: Arc<ConnectionManager>,
    failed_logins: Arc<FailedLogins>,
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
    fn refused_for(&self, ip: std::net::IpAddr) -> Option<Duration> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let failures = map.get(&ip)?;
        let recent = failures
            .iter()
            .filter(|t| t.elapsed() < Self::WINDOW)
            .count();
        let latest = failures.last()?;
        (recent >= Self::LIMIT).then(|| Self::WINDOW.saturating_sub(latest.elapsed()))
    }

    fn failed(&self, ip: std::net::IpAddr) {
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
                    .with_connection_manager(self.connections.clone()),
                ))
            }
        };
        Arc::new(CheckDatabase {
            inner,
            failed_logins: self.failed_logins.clone(),
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
}

#[async_trait]
impl NoopStartupHandler for Trust {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(self.connections.clone())
    }
}

enum Login {
    Trust(Trust),
    Scram(Box<SASLAuthStartupHandler<DefaultServerParameterProvider>>),
}

/// Refuses a database other than `earshot` before authenticating, like Postgres does.
struct CheckDatabase {
    inner: Login,
    failed_logins: Arc<FailedLogins>,
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
                if let Some(wait) = self.failed_logins.refused_for(peer.ip()) {
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
                    self.failed_logins.failed(peer.ip());
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
    let code = match &e {
        SqlError::Refused(_) => "25006",
        SqlError::TimeLimit(_) => "57014",
        SqlError::MemoryLimit { .. } => "53200",
        SqlError::Busy { .. } => "53300",
        SqlError::Param(_) => "22023",
        SqlError::Query(_) => "42601",
        SqlError::TooComplex(_) => "54001",
        SqlError::Store(_) => "58030",
    };
    user_error("ERROR", code, e.to_string())
}

/// The session service behind the guard and the limits.
struct Guarded {
    inner: Arc<DfSessionService>,
    parser: Arc<GuardedParser>,
    tables: Arc<Tables>,
    limits: Limits,
}

impl Guarded {
    /// Wraps a response's rows so the query stops at the deadline and memory errors name the limit.
    /// The rows are computed on the query threads, and the turn is held until the last row is sent
    /// or the deadline, whichever comes first (see [`TurnUntil`]).
    fn limit(
        &self,
        response: Response,
        deadline: tokio::time::Instant,
        turn: Arc<TurnUntil>,
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
                let rows = bounded(rows, deadline, self.limits).map(move |row| {
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
    fn new(turn: Turn, deadline: tokio::time::Instant) -> Arc<TurnUntil> {
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

/// Ends `rows` with the time-limit error at `deadline`; rewrites a memory error into the limit's.
fn bounded(
    rows: std::pin::Pin<Box<dyn Stream<Item = PgWireResult<DataRow>> + Send>>,
    deadline: tokio::time::Instant,
    limits: Limits,
) -> impl Stream<Item = PgWireResult<DataRow>> + Send {
    let sleep = Box::pin(tokio::time::sleep_until(deadline));
    futures::stream::unfold(Some((rows, sleep)), move |state| async move {
        let (mut rows, mut sleep) = state?;
        tokio::select! {
            biased;
            _ = &mut sleep => Some((Err(sql_error(SqlError::TimeLimit(limits.time))), None)),
            item = rows.next() => match item {
                None => None,
                Some(Err(e)) => Some((Err(memory_or(e, &limits)), None)),
                Some(Ok(row)) => Some((Ok(row), Some((rows, sleep)))),
            },
        }
    })
}

fn memory_or(e: PgWireError, limits: &Limits) -> PgWireError {
    let text = e.to_string();
    if text.contains(earshot_sql::exec::DEADLINE_WORDS) {
        sql_error(SqlError::TimeLimit(limits.time))
    } else if text.contains("Resources exhausted") {
        sql_error(SqlError::MemoryLimit {
            limit: limits.memory,
            detail: text,
        })
    } else {
        e
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
        guard::check_parse(query).map_err(sql_error)?;
        let statements = PostgresCompatibilityParser::new()
            .parse(query)
            .map_err(|e| sql_error(SqlError::Query(e.to_string())))?;
        let state = self.tables.ctx.state();
        for statement in &statements {
            guard::check_statement(&state, statement)
                .await
                .map_err(sql_error)?;
        }
        // Savepoints (SQLAlchemy and psycopg open one around their first queries) are no-ops, as
        // BEGIN and COMMIT are: nothing here changes the data.
        if !statements.is_empty() && statements.iter().all(|s| savepoint_tag(s).is_some()) {
            return Ok(statements
                .iter()
                .filter_map(savepoint_tag)
                .map(|tag| Response::Execution(Tag::new(tag)))
                .collect());
        }
        let turn = self.tables.admission.turn().await.map_err(sql_error)?;
        let deadline = self.deadline();
        let turn = TurnUntil::new(turn, deadline);
        let responses = tokio::time::timeout_at(
            deadline,
            self.tables
                .threads
                .enter(SimpleQueryHandler::do_query(&*self.inner, client, query)),
        )
        .await
        .map_err(|_| sql_error(SqlError::TimeLimit(self.limits.time)))?
        .map_err(|e| memory_or(e, &self.limits))?;
        Ok(responses
            .into_iter()
            .map(|r| self.limit(r, deadline, turn.clone()))
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
        let turn = self.tables.admission.turn().await.map_err(sql_error)?;
        let deadline = self.deadline();
        let turn = TurnUntil::new(turn, deadline);
        let response = tokio::time::timeout_at(
            deadline,
            self.tables.threads.enter(ExtendedQueryHandler::do_query(
                &*self.inner,
                client,
                portal,
                max_rows,
            )),
        )
        .await
        .map_err(|_| sql_error(SqlError::TimeLimit(self.limits.time)))?
        .map_err(|e| memory_or(e, &self.limits))?;
        Ok(self.limit(response, deadline, turn))
    }
}

/// The session service's parser, with the guard run on each parsed statement.
pub struct GuardedParser {
    inner: Arc<Parser>,
    tables: Arc<Tables>,
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
        guard::check_parse(sql).map_err(sql_error)?;
        let parsed = self.inner.parse_sql(client, sql, types).await?;
        if let Some((_, Some((statement, _)))) = &parsed {
            let state = self.tables.ctx.state();
            guard::check_statement(&state, statement)
                .await
                .map_err(sql_error)?;
        }
        Ok(parsed)
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
