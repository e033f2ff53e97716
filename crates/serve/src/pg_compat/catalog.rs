//! The catalog tables whose columns Postgres types as arrays (and datafusion-postgres holds as
//! text), replaced by views that parse them, and the columns clients read that it lacks.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::{DataFusionError, Result};
use datafusion::prelude::SessionContext;

/// The catalog's columns that Postgres types as arrays and the catalog holds as text
/// (`[1, 2]`, `['v']`), with the array type Postgres gives them.
const ARRAY_COLUMNS: &[(&str, &str, &str)] = &[
    ("pg_index", "indkey", "SMALLINT"),
    ("pg_index", "indcollation", "INT"),
    ("pg_index", "indclass", "INT"),
    ("pg_index", "indoption", "SMALLINT"),
    ("pg_constraint", "conkey", "SMALLINT"),
    ("pg_constraint", "confkey", "SMALLINT"),
    ("pg_constraint", "conpfeqop", "INT"),
    ("pg_constraint", "conppeqop", "INT"),
    ("pg_constraint", "conffeqop", "INT"),
    ("pg_constraint", "conexclop", "INT"),
    ("pg_proc", "proallargtypes", "INT"),
    ("pg_proc", "proargtypes", "INT"),
    ("pg_proc", "proargmodes", "VARCHAR"),
    ("pg_proc", "proargnames", "VARCHAR"),
];

/// Columns Postgres has that the catalog lacks, always NULL here, with their type.
const MISSING_COLUMNS: &[(&str, &str, &str)] = &[
    ("pg_class", "reloptions", "VARCHAR[]"),
    ("pg_class", "relacl", "VARCHAR[]"),
];

/// Replaces the catalog tables above in `catalog`'s `pg_catalog`. Called once per context, after
/// `setup_pg_catalog`.
pub(super) fn overlay(ctx: &SessionContext, catalog: &str) -> Result<()> {
    let Some(catalog) = ctx.catalog(catalog) else {
        return Err(DataFusionError::Plan(format!("no catalog {catalog}")));
    };
    let Some(inner) = catalog.schema("pg_catalog") else {
        return Err(DataFusionError::Plan("no pg_catalog schema".into()));
    };
    let mut tables: HashMap<String, Arc<dyn TableProvider>> = HashMap::new();
    let mut names: Vec<&str> = ARRAY_COLUMNS.iter().map(|c| c.0).collect();
    names.extend(MISSING_COLUMNS.iter().map(|c| c.0));
    names.sort_unstable();
    names.dedup();
    for name in names {
        let table = futures::executor::block_on(inner.table(name))?
            .ok_or_else(|| DataFusionError::Plan(format!("no pg_catalog.{name}")))?;
        let mut exprs = Vec::new();
        for field in table.schema().fields() {
            let column = field.name();
            let array = ARRAY_COLUMNS
                .iter()
                .find(|(t, c, _)| *t == name && c == column);
            exprs.push(match array {
                // `[1, 2]`, `1 2` (an int2vector) and `['v']` as arrays; NULL and `[]` as NULL.
                Some((_, _, element)) => format!(
                    "CAST(string_to_array(nullif(regexp_replace(replace(btrim(\"{column}\", '[]{{}}'), '''', ''), '[ ,]+', ',', 'g'), ''), ',') AS {element}[]) AS \"{column}\""
                ),
                None => format!("\"{column}\""),
            });
        }
        for (_, column, ty) in MISSING_COLUMNS.iter().filter(|(t, ..)| *t == name) {
            exprs.push(format!("CAST(NULL AS {ty}) AS \"{column}\""));
        }
        let exprs: Vec<&str> = exprs.iter().map(String::as_str).collect();
        let view = ctx.read_table(table)?.select_exprs(&exprs)?.into_view();
        tables.insert(name.to_owned(), view);
    }
    tables.insert("pg_settings".into(), settings(ctx, inner.as_ref())?);
    super::rewrite::know_boolean_columns(boolean_columns(inner.as_ref())?);
    catalog.register_schema("pg_catalog", Arc::new(Overlay { inner, tables }))?;
    Ok(())
}

/// The names of the catalog's boolean columns that no other catalog column shares with another
/// type (`indisprimary`, `attnotnull`, …): a comparison of one with `'f'` compares booleans.
fn boolean_columns(inner: &dyn SchemaProvider) -> Result<Vec<String>> {
    use datafusion::arrow::datatypes::DataType;
    let mut boolean = std::collections::BTreeSet::new();
    let mut other = std::collections::BTreeSet::new();
    for name in inner.table_names() {
        let Some(table) = futures::executor::block_on(inner.table(&name))? else {
            continue;
        };
        for field in table.schema().fields() {
            if field.data_type() == &DataType::Boolean {
                boolean.insert(field.name().clone());
            } else {
                other.insert(field.name().clone());
            }
        }
    }
    Ok(boolean.difference(&other).cloned().collect())
}

/// `pg_settings` with a row for each setting `current_setting` answers that it lacks (pgjdbc reads
/// `max_index_keys` from it before it lists keys).
fn settings(ctx: &SessionContext, inner: &dyn SchemaProvider) -> Result<Arc<dyn TableProvider>> {
    use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, new_null_array};
    use datafusion::common::JoinType;
    let table = futures::executor::block_on(inner.table("pg_settings"))?
        .ok_or_else(|| DataFusionError::Plan("no pg_catalog.pg_settings".into()))?;
    let schema = table.schema();
    let rows = super::functions::SETTINGS;
    let column = |values: Vec<&str>| Arc::new(StringArray::from(values)) as ArrayRef;
    let columns = schema
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            "name" => column(rows.iter().map(|r| r.0).collect()),
            "setting" | "reset_val" => column(rows.iter().map(|r| r.1).collect()),
            "context" => column(vec!["internal"; rows.len()]),
            "vartype" => column(vec!["string"; rows.len()]),
            "source" => column(vec!["default"; rows.len()]),
            _ => new_null_array(f.data_type(), rows.len()),
        })
        .collect();
    let ours = ctx.read_batch(RecordBatch::try_new(schema, columns)?)?;
    let theirs = ctx.read_table(table)?;
    let missing = ours.join(
        theirs.clone(),
        JoinType::LeftAnti,
        &["name"],
        &["name"],
        None,
    )?;
    Ok(theirs.union(missing)?.into_view())
}

/// `pg_catalog` with some tables replaced.
#[derive(Debug)]
struct Overlay {
    inner: Arc<dyn SchemaProvider>,
    tables: HashMap<String, Arc<dyn TableProvider>>,
}

#[async_trait]
impl SchemaProvider for Overlay {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }
    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        match self.tables.get(name) {
            Some(t) => Ok(Some(t.clone())),
            None => self.inner.table(name).await,
        }
    }
    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}
