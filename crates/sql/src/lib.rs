//! The one place a DataFusion `SessionContext` is built, and the one place a query is let through.
//!
//! [`context`] registers the five tables of the current generation of a data directory and the sketch
//! functions `hll_merge` (aggregate) and `hll_count` (scalar), under a bounded memory pool. Every entry
//! point — `earshot sql`, the Postgres endpoint, the HTTP API and the audit report — goes through it,
//! so they cannot disagree about a figure.
//!
//! [`guard`] decides what may run: queries only. [`run`] plans a statement, refuses anything that is
//! not read-only, binds named parameters (`$stream`), and executes under the [`Limits`]. [`queries`]
//! holds the canned analyses of `queries/*.sql`. This crate computes no figure itself.

mod amplify;
pub mod exec;
mod functions;
pub mod guard;
pub mod output;
pub mod params;
pub mod queries;

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{ParquetReadOptions, SessionConfig};
use earshot_store::{StoreError, TABLES, current_generation};

pub use datafusion::prelude::SessionContext;
pub use functions::{hll_count_udf, hll_merge_udaf};
pub use params::Params;

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The query is wrong: the user must change it.
    #[error("query failed: {0}")]
    Query(String),
    /// The statement is not a query; earshot is read-only.
    #[error("{0}")]
    Refused(String),
    /// The query ran longer than the time limit and was cancelled.
    #[error(
        "query cancelled: it ran longer than the time limit of {} (raise it with --query-timeout)",
        human_duration(*.0)
    )]
    TimeLimit(Duration),
    /// The query needed more memory than the limit allows.
    #[error(
        "query cancelled: it needed more memory than the limit of {} (raise it with --memory-limit): {detail}",
        human_bytes(*limit)
    )]
    MemoryLimit { limit: usize, detail: String },
    /// A parameter is missing, unknown or not of the right type.
    #[error("{0}")]
    Param(String),
    /// The statement is too long or too deeply built to plan safely (see [`guard::check_shape`]).
    #[error("{0}")]
    TooComplex(String),
    /// As many queries as may run at once are running, and none ended while this one waited.
    #[error(
        "the server is busy: it runs {running} {} at once and none finished within {} (try again shortly, or raise --max-queries)",
        if *running == 1 { "query" } else { "queries" },
        human_duration(*waited)
    )]
    Busy { running: usize, waited: Duration },
    /// The data directory is missing or unreadable.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How long one query may run, how much memory all running queries may hold together, and how
/// many queries a server runs at once (the rest wait up to `queue`, then are refused as busy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub time: Duration,
    pub memory: usize,
    pub running: usize,
    pub queue: Duration,
}

impl Default for Limits {
    /// 30 s and 2 GiB: generous for the dashboard and audit queries (milliseconds, megabytes), small
    /// enough that a runaway query is stopped long before it hurts anyone else. As many queries at
    /// once as there are cores, and a 5 s wait for a turn.
    fn default() -> Self {
        Limits {
            time: Duration::from_secs(30),
            memory: 2 << 30,
            running: cores(),
            queue: Duration::from_secs(5),
        }
    }
}

/// The cores this process may use (at least 1).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The session configuration every entry point shares.
pub fn config() -> SessionConfig {
    let mut config = SessionConfig::new()
        .with_information_schema(true)
        .with_default_catalog_and_schema("earshot", "public");
    // Keep Utf8/Binary as written (not the view types) so sketches and strings reach clients as-is.
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    config
}

/// Registers earshot's functions on a context.
pub fn register_functions(ctx: &SessionContext) {
    ctx.register_udf(hll_count_udf());
    ctx.register_udaf(hll_merge_udaf());
    ctx.register_udf(functions::version_udf());
    ctx.register_udf(functions::to_regtype_udf());
}

/// A context over the current generation of `data_dir` with the default [`Limits`].
pub async fn context(data_dir: &Path) -> Result<SessionContext, SqlError> {
    Ok(Tables::open(data_dir, Limits::default()).await?.ctx)
}

/// A context over a data directory that can follow new generations (a re-ingest, or `earshot run`
/// publishing fresh tables) while clients keep using the same `SessionContext`.
pub struct Tables {
    pub ctx: SessionContext,
    pub limits: Limits,
    /// Where user queries run, apart from the threads that serve and consume.
    pub threads: exec::QueryThreads,
    /// How many user queries run at once.
    pub admission: exec::Admission,
    data_dir: PathBuf,
    generation: Mutex<PathBuf>,
}

impl Tables {
    /// Opens the current generation. The memory pool is shared by every query on this context.
    pub async fn open(data_dir: &Path, limits: Limits) -> Result<Tables, SqlError> {
        let generation = current_generation(data_dir)?;
        let pool = TrackConsumersPool::new(
            GreedyMemoryPool::new(limits.memory),
            NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN),
        );
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(pool))
            .build_arc()
            .map_err(|e| SqlError::Query(e.to_string()))?;
        let state = SessionStateBuilder::new()
            .with_config(config())
            .with_runtime_env(runtime)
            .with_default_features()
            .with_query_planner(Arc::new(exec::DeadlinePlanner { time: limits.time }))
            .build();
        let ctx = SessionContext::new_with_state(state);
        register_functions(&ctx);
        amplify::bound_amplifying_functions(&ctx);
        register_tables(&ctx, &generation).await?;
        Ok(Tables {
            ctx,
            limits,
            // One core fewer than the machine has (at least one): the serving and consuming threads keep
            // a core however busy the queries are.
            threads: exec::QueryThreads::new(cores().saturating_sub(1).max(1)),
            admission: exec::Admission::new(limits.running, limits.queue),
            data_dir: data_dir.to_path_buf(),
            generation: Mutex::new(generation),
        })
    }

    /// Runs one user query: waits for a turn ([`Limits::running`]), then plans and executes it on
    /// the query threads under the limits, and collects the result within the memory limit.
    pub async fn query(&self, sql: &str, params: &Params) -> Result<exec::Answer, SqlError> {
        let _turn = self.admission.turn().await?;
        let (ctx, sql, params, limits) = (
            self.ctx.clone(),
            sql.to_owned(),
            params.clone(),
            self.limits,
        );
        let work = async move { answer(&ctx, &sql, &params, &limits).await };
        match self.threads.run(work).await? {
            Err(SqlError::Query(m)) => Err(SqlError::Query(match self.storage_cause(&m) {
                Some(cause) => format!("{m}\n  {cause}"),
                None => m,
            })),
            other => other,
        }
    }

    /// For an error that reading a file can cause (a Parquet error, a file gone): which file, from
    /// every byte of the served generation against its file list. `None` for other errors.
    pub fn storage_cause(&self, message: &str) -> Option<String> {
        // Words of the errors reading a file gives, not any mention of Parquet (a user's query
        // naming a column `parquet` must not cost a hash of every file).
        let about_files = [
            "Parquet error",
            "ParquetError",
            "Object at location",
            "No such file",
        ];
        if !about_files.iter().any(|w| message.contains(w)) {
            return None;
        }
        let generation = self.generation();
        Some(
            match earshot_store::FileList::verify(&generation, earshot_store::Depth::Full) {
                Err(e) => format!("cause: {e}"),
                Ok(_) => format!(
                    "(every file of {} matches its file list)",
                    generation.display()
                ),
            },
        )
    }

    /// The generation being served (its directory), e.g. `DATA/gen-000003`.
    pub fn generation(&self) -> PathBuf {
        self.generation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the generation being served is still whole: every listed file present, its size,
    /// not modified since it was written ([`earshot_store::Depth::Sizes`]).
    pub fn check_whole(&self) -> Result<(), SqlError> {
        earshot_store::FileList::verify(&self.generation(), earshot_store::Depth::Sizes)?;
        Ok(())
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Re-registers the tables if the data directory's `current` generation changed. Returns whether
    /// it did. Queries already planned keep reading the generation they started on (the store keeps
    /// the previous generation on disk).
    pub async fn refresh(&self) -> Result<bool, SqlError> {
        let now = earshot_store::resolve_current(&self.data_dir)?;
        {
            let seen = self.generation.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Ok(false);
            }
        }
        let now = current_generation(&self.data_dir)?;
        register_tables(&self.ctx, &now).await?;
        *self.generation.lock().unwrap_or_else(|p| p.into_inner()) = now;
        Ok(true)
    }
}

/// Registers each table over exactly the files the generation's list names (never a directory
/// listing, which DataFusion would make again at each query: a part deleted under a running
/// server would read as fewer rows). A listed file gone at query time is an error naming it.
async fn register_tables(ctx: &SessionContext, generation: &Path) -> Result<(), SqlError> {
    let list = earshot_store::FileList::read(generation)?;
    for table in TABLES {
        let open_err =
            |e: DataFusionError| SqlError::Query(format!("cannot open table {table}: {e}"));
        let prefix = format!("{table}/");
        let single = format!("{table}.parquet");
        let files: Vec<(PathBuf, u64)> = list
            .files
            .iter()
            .filter(|(rel, _)| {
                (rel.starts_with(&prefix) && rel.ends_with(".parquet")) || **rel == single
            })
            .map(|(rel, entry)| (generation.join(rel), entry.bytes))
            .collect();
        let schema = earshot_store::table_schema(table)
            .ok_or_else(|| SqlError::Query(format!("no schema for table {table}")))?;
        let read_schema = if table == "sessions" {
            earshot_store::sessions_part_schema()
        } else {
            schema.clone()
        };
        let parts = listed_parquet(ctx, &files, &read_schema)
            .await
            .map_err(open_err)?;
        let _ = ctx.deregister_table(table);
        let provider = if table == "sessions" {
            sessions_view(ctx, parts, files.len(), &schema)
                .await
                .map_err(open_err)?
        } else {
            parts
        };
        ctx.register_table(table, provider).map_err(open_err)?;
    }
    Ok(())
}

/// A Parquet table over exactly `files`, read with `schema`.
async fn listed_parquet(
    ctx: &SessionContext,
    files: &[(PathBuf, u64)],
    schema: &SchemaRef,
) -> Result<Arc<dyn datafusion::catalog::TableProvider>, DataFusionError> {
    use datafusion::datasource::file_format::options::ReadOptions;
    use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
    let urls = files
        .iter()
        .map(|(f, _)| {
            let path = f.to_str().ok_or_else(|| {
                DataFusionError::Plan(format!("data path {} is not valid UTF-8", f.display()))
            })?;
            ListingTableUrl::parse(path)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let options = ParquetReadOptions::default()
        .schema(schema)
        .to_listing_options(&ctx.copied_config(), ctx.copied_table_options());
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(schema.clone());
    Ok(Arc::new(ListedFiles {
        inner: Arc::new(ListingTable::try_new(config)?),
        files: files.to_vec(),
    }))
}

/// A table over listed files that checks, at every scan, that each is still there: DataFusion
/// lists a file's path as a prefix when it scans, so a file deleted under a running server would
/// otherwise read as no rows.
#[derive(Debug)]
struct ListedFiles {
    inner: Arc<dyn datafusion::catalog::TableProvider>,
    /// Each file with its listed size.
    files: Vec<(PathBuf, u64)>,
}

#[async_trait::async_trait]
impl datafusion::catalog::TableProvider for ListedFiles {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
    fn table_type(&self) -> datafusion::logical_expr::TableType {
        self.inner.table_type()
    }
    fn supports_filters_pushdown(
        &self,
        filters: &[&datafusion::prelude::Expr],
    ) -> datafusion::error::Result<Vec<datafusion::logical_expr::TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }
    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::prelude::Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        for (file, bytes) in &self.files {
            match std::fs::metadata(file) {
                Ok(m) if m.len() == *bytes => {}
                Ok(m) => {
                    return Err(DataFusionError::Execution(format!(
                        "No such file as listed: {} has {} bytes where its generation's files.json says {bytes}",
                        file.display(),
                        m.len()
                    )));
                }
                Err(_) => {
                    return Err(DataFusionError::Execution(format!(
                        "No such file: {} (listed in its generation's files.json)",
                        file.display()
                    )));
                }
            }
        }
        self.inner.scan(state, projection, filters, limit).await
    }
}

/// `sessions` from its parts (`earshot_store::sessions_part_schema`): per (stream, session), the
/// row of the part with the largest `version`. One part (a file ingest, or just after the parts
/// were rewritten as one) is read as it is; more cost a query a hash aggregate and a join over them.
async fn sessions_view(
    ctx: &SessionContext,
    parts: Arc<dyn datafusion::catalog::TableProvider>,
    files: usize,
    schema: &SchemaRef,
) -> Result<Arc<dyn datafusion::catalog::TableProvider>, DataFusionError> {
    use datafusion::functions_aggregate::expr_fn::max;
    use datafusion::prelude::{JoinType, col};
    let version = earshot_store::SESSION_VERSION;
    let parts = ctx.read_table(parts)?;
    let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let view = if files <= 1 {
        parts.select_columns(&columns)?
    } else {
        let latest = parts
            .clone()
            .aggregate(
                vec![col("stream_id"), col("session_id")],
                vec![max(col(version)).alias("latest_version")],
            )?
            .select(vec![
                col("stream_id").alias("latest_stream_id"),
                col("session_id").alias("latest_session_id"),
                col("latest_version"),
            ])?;
        parts
            .join(
                latest,
                JoinType::Inner,
                &["stream_id", "session_id", version],
                &["latest_stream_id", "latest_session_id", "latest_version"],
                None,
            )?
            .select_columns(&columns)?
    };
    Ok(Arc::new(TableView(datafusion::datasource::ViewTable::new(
        view.into_unoptimized_plan(),
        None,
    ))))
}

/// A view that catalogs list as a table: to its users `sessions` is a table (psql's `\d`, JDBC's
/// `getTables`, SQLAlchemy's inspector), however its parts are read.
#[derive(Debug)]
struct TableView(datafusion::datasource::ViewTable);

#[async_trait::async_trait]
impl datafusion::catalog::TableProvider for TableView {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> datafusion::logical_expr::TableType {
        datafusion::logical_expr::TableType::Base
    }

    fn get_logical_plan(&self) -> Option<std::borrow::Cow<'_, LogicalPlan>> {
        self.0.get_logical_plan()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&datafusion::logical_expr::Expr],
    ) -> Result<Vec<datafusion::logical_expr::TableProviderFilterPushDown>, DataFusionError> {
        self.0.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::logical_expr::Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>, DataFusionError> {
        self.0.scan(state, projection, filters, limit).await
    }
}

/// Plans one statement: parse, refuse anything but a query, bind named parameters.
pub async fn plan(
    ctx: &SessionContext,
    sql: &str,
    params: &Params,
) -> Result<LogicalPlan, SqlError> {
    let state = ctx.state();
    let statement = guard::parse_one(sql)?;
    let what = guard::first_words(&statement.to_string(), 2);
    let plan = state.statement_to_plan(statement).await.map_err(|e| {
        if guard::is_write_keyword(&what) {
            SqlError::Refused(format!("{what} is refused: {}", guard::READ_ONLY))
        } else {
            SqlError::Query(tidy(e))
        }
    })?;
    guard::check_plan(&plan, &what)?;
    params.bind(plan)
}

/// Runs one read-only statement under the limits and collects its result, its memory reserved.
pub async fn answer(
    ctx: &SessionContext,
    sql: &str,
    params: &Params,
    limits: &Limits,
) -> Result<exec::Answer, SqlError> {
    let work = async {
        let plan = plan(ctx, sql, params).await?;
        let schema = Arc::new(plan.schema().as_arrow().clone());
        let df = ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| classify(e, limits))?;
        let stream = df.execute_stream().await.map_err(|e| classify(e, limits))?;
        exec::Answer::collect(schema, stream, exec::result_memory(ctx), limits).await
    };
    match tokio::time::timeout(limits.time, work).await {
        Ok(answer) => answer,
        Err(_) => Err(SqlError::TimeLimit(limits.time)),
    }
}

/// Runs one read-only statement under the limits and collects its result.
pub async fn run_with(
    ctx: &SessionContext,
    sql: &str,
    params: &Params,
    limits: &Limits,
) -> Result<(SchemaRef, Vec<RecordBatch>), SqlError> {
    Ok(answer(ctx, sql, params, limits).await?.into_parts())
}

/// Runs one read-only statement without parameters under the default limits.
pub async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, SqlError> {
    Ok(run_with(ctx, sql, &Params::default(), &Limits::default())
        .await?
        .1)
}

/// Turns a DataFusion error into the error a user can act on.
pub fn classify(e: DataFusionError, limits: &Limits) -> SqlError {
    if exec::is_deadline(&e) {
        return SqlError::TimeLimit(limits.time);
    }
    if is_resources_exhausted(&e) {
        return SqlError::MemoryLimit {
            limit: limits.memory,
            detail: e.find_root().to_string(),
        };
    }
    SqlError::Query(tidy(e))
}

fn is_resources_exhausted(e: &DataFusionError) -> bool {
    matches!(e.find_root(), DataFusionError::ResourcesExhausted(_))
        || e.to_string().contains("Resources exhausted")
}

fn tidy(e: DataFusionError) -> String {
    let s = e.to_string();
    if s.contains("No space left on device") {
        // Where the query spilled: DataFusion's disk manager writes under the temporary directory.
        return format!(
            "{s}\n  hint: the query spilled to {}, which is full: free space there, or set TMPDIR to a directory on a disk with room",
            std::env::temp_dir().display()
        );
    }
    if s.contains("not supported")
        && (s.contains("DDL") || s.contains("DML") || s.contains("Statement"))
    {
        format!("{s}\n  hint: earshot's SQL is read-only; only SELECT-style queries run")
    } else {
        s
    }
}

/// `1.5 s`, `30 s`, `2 min`.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms.is_multiple_of(60_000) {
        format!("{} min", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{} s", ms / 1_000)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// `512 MiB`, `2 GiB`.
pub fn human_bytes(n: usize) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Parses `512MiB`, `2GiB`, `100MB`, `1g` or a bare number of bytes.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (use e.g. 512MiB, 2GiB)"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("unknown unit in {s:?} (use KiB, MiB or GiB)")),
    };
    n.checked_mul(scale)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("{s:?} is not a usable size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_and_print() {
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2g"), Ok(2 << 30));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("lots").is_err());
        assert_eq!(human_bytes(2 << 30), "2 GiB");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(human_duration(Duration::from_secs(30)), "30 s");
        assert_eq!(human_duration(Duration::from_millis(250)), "250 ms");
        assert_eq!(human_duration(Duration::from_secs(120)), "2 min");
    }
}
