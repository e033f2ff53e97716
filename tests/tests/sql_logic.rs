//! The canned queries of `queries/` and the sketch functions, with their expected results checked in
//! as sqllogictest files (`tests/slt/`), as DataFusion tests its own SQL.
//!
//! Two data directories are built fresh: `example` from the contract's worked example (§6), whose
//! figures can be checked by hand against the contract's table, and `sim` from a small seeded
//! simulation. A record whose SQL is `@name key=value…` runs the embedded canned query `name` with
//! those parameters, exactly as `earshot sql -f name --param key=value` does.
//!
//! To regenerate expectations after a deliberate change: `EARSHOT_SLT_UPDATE=1 cargo test --test
//! sql_logic`, then review the diff line by line — the files are the reviewed truth, not a snapshot.

use std::path::{Path, PathBuf};

use earshot_contract::Pseudonymizer;
use earshot_core::Settings;
use earshot_ingest::{Input, ingest};
use earshot_sql::queries::NamedQuery;
use earshot_sql::{Limits, Params, SessionContext, SqlError};
use sqllogictest::{DBOutput, DefaultColumnType};

struct Earshot {
    ctx: SessionContext,
}

#[derive(Debug)]
struct Failed(String);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failed {}

impl From<SqlError> for Failed {
    fn from(e: SqlError) -> Self {
        Failed(e.to_string())
    }
}

/// `@reach stream=s` → the canned query's SQL and its parameters.
fn resolve(sql: &str) -> Result<(String, Params), Failed> {
    let Some(call) = sql.trim().strip_prefix('@') else {
        return Ok((sql.to_string(), Params::default()));
    };
    let mut words = call.split_whitespace();
    let name = words.next().unwrap_or("");
    let query =
        NamedQuery::embedded(name).ok_or_else(|| Failed(format!("no canned query {name}")))?;
    let params = Params::from_pairs(words)?;
    Ok((query.sql, params))
}

fn cell(col: &dyn arrow::array::Array, row: usize) -> String {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    if col.is_null(row) {
        return "NULL".to_string();
    }
    let opts = FormatOptions::default();
    let s = ArrayFormatter::try_new(col, &opts)
        .map(|f| f.value(row).to_string())
        .unwrap_or_else(|e| format!("<{e}>"));
    if s.is_empty() {
        "(empty)".to_string()
    } else {
        s
    }
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Earshot {
    type Error = Failed;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Failed> {
        let (sql, params) = resolve(sql)?;
        let (schema, batches) =
            earshot_sql::run_with(&self.ctx, &sql, &params, &Limits::default()).await?;
        let types = schema
            .fields()
            .iter()
            .map(|f| {
                if f.data_type().is_integer() {
                    DefaultColumnType::Integer
                } else if f.data_type().is_floating() {
                    DefaultColumnType::FloatingPoint
                } else {
                    DefaultColumnType::Text
                }
            })
            .collect();
        let mut rows = Vec::new();
        for b in &batches {
            for r in 0..b.num_rows() {
                rows.push(b.columns().iter().map(|c| cell(c.as_ref(), r)).collect());
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "earshot"
    }
}

fn ingest_text(dir: &Path, text: String) {
    let p = Pseudonymizer::new(b"slt-fixed-key");
    let input = Input::from_reader(
        "file:fixture.ndjson",
        std::io::Cursor::new(text.into_bytes()),
    );
    ingest(
        vec![input],
        dir,
        Settings::default(),
        &p,
        1,
        true,
        &mut |_| {},
    )
    .expect("ingest");
}

fn example_data(dir: &Path) {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/contract_example.ndjson"),
    )
    .expect("fixture");
    ingest_text(dir, text);
}

fn sim_data(dir: &Path) {
    let cfg = earshot_sim::SimConfig {
        seed: 2026,
        stream_id: "town-hall".into(),
        listeners: 400,
        ..earshot_sim::SimConfig::default()
    };
    let mut out = Vec::new();
    earshot_sim::simulate(&cfg, &mut out).expect("simulate");
    ingest_text(dir, String::from_utf8(out).expect("utf-8"));
}

fn slt_files(set: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("slt").join(set);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("slt dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    files
}

fn run_set(set: &str, build: fn(&Path)) {
    let data = tempfile::tempdir().expect("tempdir");
    build(data.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let update = std::env::var_os("EARSHOT_SLT_UPDATE").is_some();
    for file in slt_files(set) {
        rt.block_on(async {
            let dir = data.path().to_path_buf();
            let mut runner = sqllogictest::Runner::new(move || {
                let dir = dir.clone();
                async move {
                    let ctx = earshot_sql::context(&dir)
                        .await
                        .map_err(|e| Failed(e.to_string()))?;
                    Ok::<_, Failed>(Earshot { ctx })
                }
            });
            if update {
                runner
                    .update_test_file(
                        &file,
                        " ",
                        sqllogictest::default_validator,
                        sqllogictest::default_normalizer,
                        sqllogictest::strict_column_validator,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            } else {
                runner.with_column_validator(sqllogictest::strict_column_validator);
                if let Err(e) = runner.run_file_async(&file).await {
                    panic!("{}:\n{}", file.display(), e.display(true));
                }
            }
        });
    }
}

#[test]
fn canned_queries_on_the_contract_example() {
    run_set("example", example_data);
}

#[test]
fn canned_queries_on_a_simulated_event() {
    run_set("sim", sim_data);
}
