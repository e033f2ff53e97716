//! The HTTP API (`/v1`), the live page (`/`), `/healthz` and `/metrics`.
//!
//! Every figure is read through `earshot_sql` (canned queries of `queries/`, the same guard and
//! limits as every other entry point). A generation's tables never change, so a response is cached
//! in memory under (generation, request) and carries a strong `ETag` of its bytes: a poller that sends
//! `If-None-Match` gets `304 Not Modified` without any query running, and an identical request is
//! answered from memory. A new generation empties the cache.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use earshot_sql::output::{self, Format};
use earshot_sql::queries::NamedQuery;
use earshot_sql::{Limits, Params, SqlError, Tables};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::ServeError;
use crate::timeline::timeline_keys;
pub use crate::timeline::{Window, timeline_source, timeline_window};
use crate::worker::sql::{Output, Request as SqlRequest, SqlWorkers};
use crate::worker::{Failure, FailureKind};

const PAGE: &str = include_str!("page.html");

/// Who may call the API, from where, and how long and how many connections they may hold.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Bearer token required on `/v1/*` and `/metrics`; required off loopback.
    pub token: Option<String>,
    /// The one origin allowed to read responses cross-origin (CORS); none when unset.
    pub cors_origin: Option<String>,
    /// How long a client may take to send a request's headers; an idle keep-alive connection is
    /// closed after it too.
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body.
    pub body_timeout: Duration,
    /// Most connections open at once; one past it is closed at once.
    pub max_connections: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            token: None,
            cors_origin: None,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

struct Cached {
    etag: String,
    content_type: &'static str,
    body: Bytes,
}

#[derive(Default)]
struct Cache {
    generation: String,
    entries: HashMap<String, Arc<Cached>>,
    bytes: usize,
    /// Each stream's buckets and rollups (`None`: no such stream), for this generation.
    spans: HashMap<String, Option<Span>>,
}

impl Cache {
    /// Empties the cache if `generation` is not the one it holds.
    fn for_generation(&mut self, generation: &str) {
        if self.generation != generation {
            self.entries.clear();
            self.spans.clear();
            self.bytes = 0;
            self.generation = generation.to_owned();
        }
    }
}

/// What a timeline of one stream can read: its bucket width, its first bucket's start, the end of
/// its last bucket, and the widths of its rollups.
#[derive(Clone, Debug)]
struct Span {
    width: i64,
    lo: i64,
    hi: i64,
    rollups: Vec<i64>,
}

const CACHE_ENTRIES: usize = 4096;
/// The cache holds at most this many bytes of bodies, and no body over a sixteenth of it: query
/// results beyond that are answered, not kept.
const CACHE_BYTES: usize = 64 << 20;
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    cache_hits: AtomicU64,
    not_modified: AtomicU64,
    /// Counts per latency bucket, then +Inf, with the sum in microseconds.
    query_latency: Mutex<([u64; 13], u64, u64)>,
}

struct App {
    tables: Arc<Tables>,
    /// Where users' queries run: never in this process.
    workers: Arc<SqlWorkers>,
    limits: Limits,
    options: HttpOptions,
    cache: Mutex<Cache>,
    metrics: Metrics,
}

/// An API error: a status and a message a caller can act on. Never a 500 for bad input.
struct ApiError(StatusCode, String);

impl From<SqlError> for ApiError {
    fn from(e: SqlError) -> Self {
        let status = match &e {
            SqlError::Refused(_) => StatusCode::FORBIDDEN,
            SqlError::Query(_) | SqlError::Param(_) | SqlError::TooComplex(_) => {
                StatusCode::BAD_REQUEST
            }
            SqlError::TimeLimit(_) | SqlError::MemoryLimit { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            SqlError::Busy { .. } | SqlError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

impl From<Failure> for ApiError {
    fn from(f: Failure) -> Self {
        let status = match f.kind {
            FailureKind::Refused => StatusCode::FORBIDDEN,
            FailureKind::Query | FailureKind::Param | FailureKind::TooComplex => {
                StatusCode::BAD_REQUEST
            }
            FailureKind::TimeLimit | FailureKind::MemoryLimit => StatusCode::UNPROCESSABLE_ENTITY,
            FailureKind::Busy | FailureKind::Store => StatusCode::SERVICE_UNAVAILABLE,
            FailureKind::Crashed => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, f.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.1, "status": self.0.as_u16() }).to_string();
        let mut response = (
            self.0,
            [(header::CONTENT_TYPE, "application/json")],
            format!("{body}\n"),
        )
            .into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            // Busy or between generations: both pass within seconds.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// A bound HTTP listener, ready to serve.
pub struct HttpServer {
    listener: TcpListener,
    router: Router,
    options: HttpOptions,
}

impl HttpServer {
    /// `workers` run the users' queries (`POST /v1/query`); the dashboard API's own queries run here.
    pub async fn bind(
        tables: Arc<Tables>,
        addr: SocketAddr,
        options: HttpOptions,
        limits: Limits,
        workers: Arc<SqlWorkers>,
    ) -> Result<HttpServer, ServeError> {
        if options.token.is_none() && !addr.ip().is_loopback() {
            return Err(ServeError::NoToken(addr));
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let app = Arc::new(App {
            tables,
            workers,
            limits,
            options: options.clone(),
            cache: Mutex::new(Cache::default()),
            metrics: Metrics::default(),
        });
        let router = Router::new()
            .route("/", get(page))
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .route("/v1/streams", get(streams))
            .route("/v1/streams/{id}", get(stream))
            .route("/v1/streams/{id}/timeline", get(timeline))
            .route("/v1/query", post(query))
            .fallback(not_found)
            .layer(middleware::from_fn_with_state(app.clone(), guard))
            .with_state(app);
        Ok(HttpServer {
            listener,
            router,
            options,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves connections until the task is dropped, within [`HttpOptions`]' timeouts and
    /// connection cap, so slow or idle clients cannot hold the server's resources.
    pub async fn run(self) -> std::io::Result<()> {
        let (max, header_timeout) = (self.options.max_connections, self.options.header_timeout);
        let open = Arc::new(tokio::sync::Semaphore::new(max));
        loop {
            let (socket, peer) = match self.listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot accept an HTTP connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "HTTP connection refused: {max} are open");
                drop(socket);
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(self.router.clone());
            tokio::spawn(async move {
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(%peer, "HTTP connection ended: {e}");
                }
                drop(permit);
            });
        }
    }
}

/// Token check, CORS, and the request counter, around every route.
async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let protected = req.uri().path().starts_with("/v1/") || req.uri().path() == "/metrics";
    let mut response = if req.method() == Method::OPTIONS && app.options.cors_origin.is_some() {
        StatusCode::NO_CONTENT.into_response()
    } else if protected && !authorized(&app, req.headers()) {
        let mut r = ApiError(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required: send Authorization: Bearer <token> (the token set with EARSHOT_HTTP_TOKEN)".into(),
        )
        .into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    } else {
        next.run(req).await
    };
    if let Some(origin) = &app.options.cors_origin
        && let Ok(v) = HeaderValue::from_str(origin)
    {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, if-none-match"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("etag"),
        );
    }
    let status = response.status().as_u16();
    *app.metrics
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry((route, status))
        .or_default() += 1;
    response
}

fn authorized(app: &App, headers: &HeaderMap) -> bool {
    let Some(token) = &app.options.token else {
        return true;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| {
            given.len() == token.len()
                && given
                    .bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
}

async fn not_found() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "no such endpoint: see /v1/streams, /v1/streams/{id}, /v1/streams/{id}/timeline, POST /v1/query, /healthz, /metrics".into(),
    )
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

impl App {
    fn generation(&self) -> String {
        self.tables
            .generation()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    async fn run(
        &self,
        sql: &str,
        params: &Params,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), ApiError> {
        let started = Instant::now();
        let out = earshot_sql::run_with(&self.tables.ctx, sql, params, &self.limits).await;
        self.observe(started);
        Ok(out?)
    }

    /// Counts a query's latency in `/metrics`.
    fn observe(&self, started: Instant) {
        let secs = started.elapsed().as_secs_f64();
        let mut h = self
            .metrics
            .query_latency
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        h.0[i] += 1;
        h.1 += (secs * 1e6) as u64;
        h.2 += 1;
    }

    /// Runs the canned query `name` (a file of `queries/`) with `params`.
    async fn canned_batches(
        &self,
        name: &str,
        params: &[String],
    ) -> Result<(SchemaRef, Vec<RecordBatch>), ApiError> {
        let q = NamedQuery::embedded(name).ok_or_else(|| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("query {name} missing"),
            )
        })?;
        self.run(&q.sql, &Params::from_pairs(params)?).await
    }

    async fn canned(&self, name: &str, params: &[String]) -> Result<Vec<Value>, ApiError> {
        let (schema, batches) = self.canned_batches(name, params).await?;
        json_rows(&schema, &batches)
    }

    /// The stream's [`Span`], from the cache or three small queries once per generation.
    async fn span(&self, id: &str) -> Result<Option<Span>, ApiError> {
        let generation = self.generation();
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.for_generation(&generation);
            if let Some(span) = cache.spans.get(id) {
                return Ok(span.clone());
            }
        }
        let span = if self.stream_exists(id).await? {
            let stream = Params::from_pairs([format!("stream={id}")])?;
            let (schema, batches) = self
                .run(
                    "SELECT min(width_ms) AS w, CAST(min(bucket_start) AS BIGINT) AS lo, \
                     CAST(max(bucket_start) AS BIGINT) AS hi FROM buckets WHERE stream_id = $stream",
                    &stream,
                )
                .await?;
            let row = json_rows(&schema, &batches)?
                .first()
                .cloned()
                .unwrap_or(Value::Null);
            let width = row["w"].as_i64().unwrap_or(10_000);
            let (schema, batches) = self
                .run(
                    "SELECT DISTINCT width_ms AS w FROM rollups WHERE stream_id = $stream",
                    &stream,
                )
                .await?;
            let rollups = json_rows(&schema, &batches)?
                .iter()
                .filter_map(|r| r["w"].as_i64())
                .collect();
            Some(Span {
                width,
                lo: row["lo"].as_i64().unwrap_or(0),
                hi: row["hi"].as_i64().unwrap_or(0).saturating_add(width),
                rollups,
            })
        } else {
            None
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // Only streams that exist are kept (their number is the data's, not the clients'), and at
        // most CACHE_ENTRIES of them: a flood of made-up ids costs queries, never memory.
        if cache.generation == generation && span.is_some() {
            if cache.spans.len() >= CACHE_ENTRIES {
                cache.spans.clear();
            }
            cache.spans.insert(id.to_owned(), span.clone());
        }
        Ok(span)
    }

    async fn stream_exists(&self, id: &str) -> Result<bool, ApiError> {
        let rows = self
            .run(
                "SELECT count(*) AS n FROM streams WHERE stream_id = $stream",
                &Params::from_pairs([format!("stream={id}")])?,
            )
            .await?;
        Ok(json_rows(&rows.0, &rows.1)?
            .first()
            .and_then(|r| r["n"].as_i64())
            .unwrap_or(0)
            > 0)
    }
}

fn json_rows(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<Value>, ApiError> {
    let mut buf = Vec::new();
    output::write(&mut buf, schema, batches, Format::Json)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match serde_json::from_slice::<Value>(&buf) {
        Ok(Value::Array(rows)) => Ok(rows),
        _ => Ok(Vec::new()),
    }
}

/// Serves `key` from the cache, or computes it once per generation. Honours `If-None-Match`.
async fn cached<F, Fut>(app: &App, headers: &HeaderMap, key: String, make: F) -> Response
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(&'static str, Vec<u8>), ApiError>>,
{
    let generation = app.generation();
    let hit = {
        let mut cache = app.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.for_generation(&generation);
        cache.entries.get(&key).cloned()
    };
    let entry = match hit {
        Some(e) => {
            app.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
            e
        }
        None => match make().await {
            Ok((content_type, body)) => {
                let etag = format!(
                    "\"{}-{:016x}\"",
                    generation,
                    xxhash_rust::xxh3::xxh3_64(&body)
                );
                let e = Arc::new(Cached {
                    etag,
                    content_type,
                    body: Bytes::from(body),
                });
                let mut cache = app.cache.lock().unwrap_or_else(|p| p.into_inner());
                let size = e.body.len() + key.len();
                if cache.generation == generation && size <= CACHE_BYTES / 16 {
                    if cache.entries.len() >= CACHE_ENTRIES || cache.bytes + size > CACHE_BYTES {
                        cache.entries.clear();
                        cache.bytes = 0;
                    }
                    cache.bytes += size;
                    if let Some(old) = cache.entries.insert(key, e.clone()) {
                        cache.bytes -= old.body.len() + size - e.body.len();
                    }
                }
                e
            }
            Err(e) => return e.into_response(),
        },
    };
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == entry.etag || t.trim() == "*")
        });
    let etag = HeaderValue::from_str(&entry.etag).unwrap_or(HeaderValue::from_static("\"\""));
    if matches {
        app.metrics.not_modified.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
        )
            .into_response();
    }
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, entry.content_type)
        .header(header::ETAG, etag)
        // Revalidate every time (a new generation may replace the tables); a match costs no query.
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from(entry.body.clone()))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn json_body(v: &Value) -> Result<(&'static str, Vec<u8>), ApiError> {
    let mut body = serde_json::to_vec(v)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    body.push(b'\n');
    Ok(("application/json", body))
}

fn manifest(app: &App) -> Value {
    std::fs::read_to_string(app.tables.generation().join("manifest.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null)
}

async fn streams(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let a = app.clone();
    cached(&app, &headers, "streams".into(), || async move {
        let rows = a.canned("streams", &[]).await?;
        let m = manifest(&a);
        json_body(&json!({
            "generation": a.generation(),
            "ingest": {
                "events": m["events"], "counted": m["counted"], "late": m["late"],
                "duplicates": m["duplicates"], "rejected": m["rejected"],
                "rejected_by_reason": m["rejected_by_reason"],
            },
            "streams": rows,
        }))
    })
    .await
}

async fn stream(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let a = app.clone();
    cached(&app, &headers, format!("stream/{id}"), || async move {
        let rows = a.canned("audit_figures", &[format!("stream={id}")]).await?;
        match rows.into_iter().next() {
            Some(row) => json_body(&row),
            None => Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no stream {id:?}: GET /v1/streams lists them"),
            )),
        }
    })
    .await
}

async fn timeline(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = timeline_keys(&q) {
        return bad(e).into_response();
    }
    let mut keys: Vec<_> = q.iter().collect();
    keys.sort();
    let key = format!("timeline/{id}?{keys:?}");
    let a = app.clone();
    cached(&app, &headers, key, || async move {
        let Some(span) = a.span(&id).await? else {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no stream {id:?}: GET /v1/streams lists them"),
            ));
        };
        let Window { from, to, step } =
            timeline_window(&q, span.width, span.lo, span.hi).map_err(bad)?;
        let width = timeline_source(span.width, &span.rollups, step);
        let mut params = vec![
            format!("stream={id}"),
            format!("width={width}"),
            format!("from={}", earshot_contract::format_rfc3339_ms(from)),
            format!("to={}", earshot_contract::format_rfc3339_ms(to)),
        ];
        // One stored row per point: its stored estimates, no sketch read. Else merge the rows.
        let name = if step == width {
            "timeline_points"
        } else {
            params.push(format!("step_ms={step}"));
            "timeline_step"
        };
        let (schema, batches) = a.canned_batches(name, &params).await?;
        // The points are the query's rows as they are, written once: no second pass over them.
        let mut body = serde_json::to_vec(&json!({ "stream_id": id, "step_ms": step }))
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        body.pop();
        body.extend_from_slice(b",\"points\":");
        output::write(&mut body, &schema, &batches, Format::Json)
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        body.extend_from_slice(b"}\n");
        Ok(("application/json", body))
    })
    .await
}

async fn query(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // Read the body under a deadline: a client that trickles it cannot hold the connection.
    const MAX_BODY: usize = 2 << 20;
    let within = app.options.body_timeout;
    let body = match tokio::time::timeout(within, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over {} MiB", MAX_BODY >> 20),
            )
            .into_response();
        }
        Err(_) => {
            return ApiError(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    within.as_secs_f64()
                ),
            )
            .into_response();
        }
    };
    let sql = match std::str::from_utf8(&body) {
        Ok(s) if !s.trim().is_empty() => s.to_string(),
        Ok(_) => return bad("the request body must be one SQL query").into_response(),
        Err(_) => return bad("the request body is not UTF-8").into_response(),
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_ascii_lowercase();
    let kind = if accept.contains("text/csv") {
        "csv"
    } else if accept.contains("application/vnd.apache.arrow.stream") {
        "arrow"
    } else if accept.contains("application/json") || accept.contains("*/*") || accept.is_empty() {
        "json"
    } else {
        return ApiError(
            StatusCode::NOT_ACCEPTABLE,
            "Accept must be application/json, text/csv or application/vnd.apache.arrow.stream"
                .into(),
        )
        .into_response();
    };
    let key = format!("query/{kind}/{sql}");
    let a = app.clone();
    cached(&app, &headers, key, || async move {
        // A user's query: it waits for a turn here, then runs in a worker process, which renders
        // the body within its memory limit; this process only copies the bytes.
        let _turn = a.tables.admission.turn().await?;
        let (output, content_type) = match kind {
            "csv" => (Output::Csv, "text/csv; charset=utf-8"),
            "arrow" => (Output::Arrow, "application/vnd.apache.arrow.stream"),
            _ => (Output::Json, "application/json"),
        };
        let request = SqlRequest {
            sql,
            params: Vec::new(),
            allow_unused: false,
            output,
        };
        let started = Instant::now();
        let mut body = Vec::new();
        let rows = a
            .workers
            .run(&request, |data| body.extend_from_slice(data))
            .await;
        a.observe(started);
        rows?;
        Ok((content_type, body))
    })
    .await
}

/// Whether the served tables are whole (every listed file present, its size, not modified since):
/// a few `stat` calls, made at each health check and scrape, so a file lost under a running
/// server is reported within one check.
fn tables_whole(app: &App) -> Result<(), String> {
    app.tables.check_whole().map_err(|e| e.to_string())
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    let (status, body) = match tables_whole(&app) {
        Ok(()) => (
            StatusCode::OK,
            json!({ "status": "ok", "generation": app.generation() }),
        ),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "tables not whole", "generation": app.generation(), "error": error }),
        ),
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut o = String::new();
    let whole = u8::from(tables_whole(&app).is_ok());
    o.push_str(&format!(
        "# HELP earshot_tables_whole 1 when every file of the served generation matches its file list (see /healthz).\n# TYPE earshot_tables_whole gauge\nearshot_tables_whole {whole}\n"
    ));
    let m = manifest(&app);
    let counter = |o: &mut String, name: &str, help: &str, v: &Value| {
        o.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
            v.as_u64().unwrap_or(0)
        ));
    };
    counter(
        &mut o,
        "earshot_events_total",
        "Valid events in the served generation.",
        &m["events"],
    );
    counter(
        &mut o,
        "earshot_late_events_total",
        "Events that arrived behind their partition's watermark.",
        &m["late"],
    );
    counter(
        &mut o,
        "earshot_duplicate_events_total",
        "Events ignored as duplicates.",
        &m["duplicates"],
    );
    o.push_str("# HELP earshot_rejects_total Lines that were not valid events, by reason.\n# TYPE earshot_rejects_total counter\n");
    if let Some(by) = m["rejected_by_reason"].as_object() {
        for (reason, n) in by {
            o.push_str(&format!(
                "earshot_rejects_total{{reason=\"{reason}\"}} {}\n",
                n.as_u64().unwrap_or(0)
            ));
        }
    }
    if let Ok((s, b)) = app
        .run(
            "SELECT sum(CASE WHEN \"final\" THEN 1 ELSE 0 END) AS n FROM buckets",
            &Params::default(),
        )
        .await
        && let Ok(rows) = json_rows(&s, &b)
    {
        counter(
            &mut o,
            "earshot_buckets_finalized",
            "Buckets that are final in the served generation.",
            &rows.first().map(|r| r["n"].clone()).unwrap_or(Value::Null),
        );
    }
    let age = std::fs::metadata(app.tables.generation())
        .and_then(|md| md.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    o.push_str(&format!(
        "# HELP earshot_generation_age_seconds Seconds since the served tables were committed (checkpoint age).\n# TYPE earshot_generation_age_seconds gauge\nearshot_generation_age_seconds {age:.3}\n"
    ));
    o.push_str("# HELP earshot_http_requests_total HTTP requests by route and status.\n# TYPE earshot_http_requests_total counter\n");
    for ((route, status), n) in app
        .metrics
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        o.push_str(&format!(
            "earshot_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}\n"
        ));
    }
    counter(
        &mut o,
        "earshot_http_cache_hits_total",
        "Responses served from the cache without a query.",
        &json!(app.metrics.cache_hits.load(Ordering::Relaxed)),
    );
    counter(
        &mut o,
        "earshot_http_not_modified_total",
        "304 Not Modified responses.",
        &json!(app.metrics.not_modified.load(Ordering::Relaxed)),
    );
    let (counts, sum_us, count) = *app
        .metrics
        .query_latency
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    o.push_str("# HELP earshot_query_duration_seconds Time to run a query (cache misses only).\n# TYPE earshot_query_duration_seconds histogram\n");
    let mut cumulative = 0;
    for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += counts[i];
        o.push_str(&format!(
            "earshot_query_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}\n"
        ));
    }
    cumulative += counts[LATENCY_BUCKETS.len()];
    o.push_str(&format!(
        "earshot_query_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}\nearshot_query_duration_seconds_sum {:.6}\nearshot_query_duration_seconds_count {count}\n",
        sum_us as f64 / 1e6
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], o).into_response()
}
