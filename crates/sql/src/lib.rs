//! The one place a DataFusion `SessionContext` is built.
//!
//! [`context`] registers the five tables of the current generation of a data directory and the sketch
//! functions `hll_merge` (aggregate) and `hll_count` (scalar). Every entry point — `earshot sql`, and
//! later the Postgres endpoint, the HTTP API and the audit report — goes through it, so they cannot
//! disagree about a figure. [`run`] executes one statement read-only: DDL, DML and session-changing
//! statements are refused before planning reaches any file. This crate computes no figure itself.

mod functions;

use std::path::Path;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{ParquetReadOptions, SessionConfig};
use earshot_store::{StoreError, TABLES, current_generation};

pub use datafusion::prelude::SessionContext;
pub use functions::{hll_count_udf, hll_merge_udaf};

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The query is wrong or not allowed: the user must change it.
    #[error("query failed: {0}")]
    Query(String),
    /// The data directory is missing or unreadable.
    #[error(transparent)]
    Store(#[from] StoreError),
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
}

/// A context over the current generation of `data_dir`, with the tables and functions registered.
pub async fn context(data_dir: &Path) -> Result<SessionContext, SqlError> {
    let generation = current_generation(data_dir)?;
    let ctx = SessionContext::new_with_config(config());
    register_functions(&ctx);
    for table in TABLES {
        let path = generation.join(format!("{table}.parquet"));
        let path = path.to_str().ok_or_else(|| {
            SqlError::Query(format!("data path {} is not valid UTF-8", path.display()))
        })?;
        ctx.register_parquet(table, path, ParquetReadOptions::default())
            .await
            .map_err(|e| SqlError::Query(format!("cannot open table {table}: {e}")))?;
    }
    Ok(ctx)
}

/// What a statement may do: read, nothing else.
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Runs one read-only statement and collects its result.
pub async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, SqlError> {
    let df = ctx
        .sql_with_options(sql, read_only())
        .await
        .map_err(|e| SqlError::Query(tidy(e)))?;
    df.collect().await.map_err(|e| SqlError::Query(tidy(e)))
}

fn tidy(e: datafusion::error::DataFusionError) -> String {
    let s = e.to_string();
    if s.contains("not supported")
        && (s.contains("DDL") || s.contains("DML") || s.contains("Statement"))
    {
        format!("{s}\n  hint: earshot's SQL is read-only; only SELECT-style queries run")
    } else {
        s
    }
}
