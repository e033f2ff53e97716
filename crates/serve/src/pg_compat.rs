//! What Postgres clients' metadata code needs beyond `datafusion-postgres`'s catalog: the catalog's
//! array columns as arrays, the `*_is_visible` and `pg_get_*def` functions, the SQL forms their
//! queries use that DataFusion lacks (`LIKE … ESCAPE '/'`, `generate_subscripts`),
//! and Postgres's SQLSTATE codes for DataFusion's errors.
//!
//! earshot's tables are read-only: they have no keys, indexes, sequences or defaults, and the
//! catalog says so the way Postgres would, with empty results.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    self, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments,
    Ident, ObjectName, ObjectNamePart, Value, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// A function of any arguments that always answers the same: what a read-only database with one
/// schema answers to "is it visible" (true) and "what is its definition" (none).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Constant {
    name: &'static str,
    signature: Signature,
    value: ScalarValue,
}

impl ScalarUDFImpl for Constant {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.value.data_type())
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value.clone()))
    }
}

fn constant(name: &'static str, value: ScalarValue) -> ScalarUDF {
    ScalarUDF::new_from_impl(Constant {
        name,
        signature: Signature::variadic_any(Volatility::Immutable),
        value,
    })
}

/// `json_build_object(key, value, …)`: a JSON object as text (SQLAlchemy reads identity options
/// with it; here there are none, so it only has to plan and answer sensibly).
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: Signature,
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use datafusion::arrow::array::{Array, StringBuilder};
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let mut out = StringBuilder::new();
        for row in 0..rows {
            let mut object = serde_json::Map::new();
            for pair in arrays.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?.to_string();
                let value = match pair.get(1) {
                    Some(a) if !a.is_null(row) => {
                        serde_json::Value::String(ScalarValue::try_from_array(a, row)?.to_string())
                    }
                    _ => serde_json::Value::Null,
                };
                object.insert(key, value);
            }
            out.append_value(serde_json::Value::Object(object).to_string());
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

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
    ("pg_proc", "proargmodes", "VARCHAR"),
    ("pg_proc", "proargnames", "VARCHAR"),
];

/// Columns Postgres has that the catalog lacks, always NULL here, with their type.
const MISSING_COLUMNS: &[(&str, &str, &str)] = &[
    ("pg_class", "reloptions", "VARCHAR[]"),
    ("pg_class", "relacl", "VARCHAR[]"),
];

/// Adds the functions and replaces the catalog tables above (see the module docs). Called once
/// per context, after `setup_pg_catalog`.
pub fn install(ctx: &SessionContext, catalog: &str) -> Result<()> {
    for name in [
        "pg_type_is_visible",
        "pg_function_is_visible",
        "pg_collation_is_visible",
        "pg_opclass_is_visible",
        "pg_operator_is_visible",
        "pg_conversion_is_visible",
    ] {
        ctx.register_udf(constant(name, ScalarValue::Boolean(Some(true))));
    }
    for name in [
        "pg_get_serial_sequence",
        "pg_get_indexdef",
        "pg_get_triggerdef",
        "pg_get_viewdef",
        "pg_get_ruledef",
        "pg_get_function_identity_arguments",
    ] {
        ctx.register_udf(constant(name, ScalarValue::Utf8(None)));
    }
    ctx.register_udf(ScalarUDF::new_from_impl(JsonBuildObject {
        signature: Signature::variadic_any(Volatility::Immutable),
    }));
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
    catalog.register_schema("pg_catalog", Arc::new(Overlay { inner, tables }))?;
    Ok(())
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

/// Rewrites the forms DataFusion does not take into ones it does, meaning the same; the text is
/// returned unchanged when nothing applies (or it does not parse: the real parser will say why).
/// Every rule: for a text that DataFusion could not plan as written.
pub fn rewrite(sql: &str) -> Cow<'_, str> {
    rewrite_with(sql, true)
}

/// Only the rules for forms that fail when they run, not when they are planned (`LIKE … ESCAPE`,
/// `generate_subscripts`): applied to every text before it is planned. The other rules change
/// the text of queries that datafusion-postgres recognises by their text (psql's), so they wait
/// for a text that does not plan ([`rewrite`]).
pub fn rewrite_upfront(sql: &str) -> Cow<'_, str> {
    rewrite_with(sql, false)
}

fn rewrite_with(sql: &str, all: bool) -> Cow<'_, str> {
    // Within the guard's depth (the parser's time grows with depth: see `guard::MAX_PARSE_DEPTH`).
    let parsed = Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(earshot_sql::guard::MAX_PARSE_DEPTH)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements());
    let Ok(mut statements) = parsed else {
        return Cow::Borrowed(sql);
    };
    let mut rewriter = Rewriter {
        changed: false,
        all,
    };
    let _ = statements.visit(&mut rewriter);
    if !rewriter.changed {
        return Cow::Borrowed(sql);
    }
    Cow::Owned(
        statements
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    )
}

struct Rewriter {
    changed: bool,
    /// Whether the rules that wait for a text that does not plan apply too.
    all: bool,
}

fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName(vec![ObjectNamePart::Identifier(Ident::new(name))]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

fn text(s: &str) -> Expr {
    Expr::Value(Value::SingleQuotedString(s.to_owned()).into())
}

fn function_name(f: &Function) -> String {
    f.name
        .0
        .last()
        .and_then(ObjectNamePart::as_ident)
        .map(|i| i.value.to_ascii_lowercase())
        .unwrap_or_default()
}

fn plain_args(f: &Function) -> Option<Vec<Expr>> {
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    list.args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

impl VisitorMut for Rewriter {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        match expr {
            // `x LIKE p ESCAPE '/'`: DataFusion takes only the backslash, so the pattern is
            // translated: its backslashes doubled, then the escape character made a backslash.
            Expr::Like {
                pattern,
                escape_char: Some(esc),
                ..
            }
            | Expr::ILike {
                pattern,
                escape_char: Some(esc),
                ..
            } if !matches!(&esc.value, Value::SingleQuotedString(s) if s == "\\") => {
                if let Value::SingleQuotedString(c) = &esc.value {
                    let c = c.clone();
                    let doubled = call(
                        "replace",
                        vec![(**pattern).clone(), text("\\"), text("\\\\")],
                    );
                    **pattern = call("replace", vec![doubled, text(&c), text("\\")]);
                    esc.value = Value::SingleQuotedString("\\".into());
                    self.changed = true;
                }
            }
            // `generate_subscripts(a, 1)` beside `unnest(a)`: the positions 1..n, unnested in step.
            Expr::Function(f) if function_name(f) == "generate_subscripts" => {
                if let Some(args) = plain_args(f)
                    && let Some(array) = args.first()
                {
                    let n = Expr::Cast {
                        kind: ast::CastKind::Cast,
                        expr: Box::new(call("cardinality", vec![array.clone()])),
                        data_type: ast::DataType::BigInt(None),
                        array: false,
                        format: None,
                    };
                    let stop = Expr::BinaryOp {
                        left: Box::new(n),
                        op: ast::BinaryOperator::Plus,
                        right: Box::new(Expr::value(ast::Value::Number("1".into(), false))),
                    };
                    let range = call(
                        "range",
                        vec![Expr::value(ast::Value::Number("1".into(), false)), stop],
                    );
                    *expr = call("unnest", vec![range]);
                    self.changed = true;
                }
            }
            // A scalar subquery over the catalog (`(SELECT pg_get_expr(d.adbin, …) FROM
            // pg_attrdef d WHERE … = a.attrelid)`): DataFusion plans a correlated one inside
            // CASE only when it is aggregated, and one catalog row at most answers it, so its
            // value is taken with `max`. Only over catalog tables: a user's subquery that
            // returns two rows must stay an error.
            Expr::Subquery(query) if self.all => {
                if let ast::SetExpr::Select(select) = query.body.as_mut()
                    && select.projection.len() == 1
                    && matches!(&select.group_by, ast::GroupByExpr::Expressions(e, _) if e.is_empty())
                    && !select.from.is_empty()
                    && select.from.iter().all(catalog_only)
                {
                    let item = &mut select.projection[0];
                    let (ast::SelectItem::UnnamedExpr(e)
                    | ast::SelectItem::ExprWithAlias { expr: e, .. }) = item
                    else {
                        return ControlFlow::Continue(());
                    };
                    if !matches!(e, Expr::Function(f) if AGGREGATES.contains(&function_name(f).as_str()))
                    {
                        *e = call("max", vec![e.clone()]);
                        self.changed = true;
                    }
                }
            }
            // `CASE WHEN c THEN (catalog subquery) [ELSE NULL] END`: DataFusion cannot run a
            // correlated subquery inside CASE, and this is the subquery with `c` among its
            // conditions (no row when `c` is false: NULL, as the CASE gives).
            Expr::Case {
                operand: None,
                conditions,
                else_result,
                ..
            } if self.all
                && conditions.len() == 1
                && else_result
                    .as_deref()
                    .is_none_or(|e| matches!(e, Expr::Value(v) if v.value == Value::Null)) =>
            {
                let when = &conditions[0];
                if let Expr::Subquery(query) = &when.result
                    && let ast::SetExpr::Select(select) = query.body.as_ref()
                    && select.from.iter().all(catalog_only)
                    && !select.from.is_empty()
                {
                    let mut query = query.clone();
                    if let ast::SetExpr::Select(select) = query.body.as_mut() {
                        let condition = Expr::Nested(Box::new(when.condition.clone()));
                        select.selection = Some(match select.selection.take() {
                            Some(w) => Expr::BinaryOp {
                                left: Box::new(Expr::Nested(Box::new(w))),
                                op: ast::BinaryOperator::And,
                                right: Box::new(condition),
                            },
                            None => condition,
                        });
                    }
                    *expr = Expr::Subquery(query);
                    self.changed = true;
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// Whether an error says DataFusion could not plan the text (what [`rewrite`] may help with), as
/// opposed to a limit, a cancel or a failure while running.
pub fn unplannable(message: &str) -> bool {
    [
        "Error during planning",
        "Invalid function",
        "LIKE does not support",
        "non-executable",
        "not implemented",
        "does not support logical expression",
    ]
    .iter()
    .any(|w| message.contains(w))
}

/// Aggregates a catalog subquery may already use (then it is left as it is).
const AGGREGATES: &[&str] = &[
    "max",
    "min",
    "count",
    "sum",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
];

/// Whether a FROM item reads only catalog relations (`pg_catalog.*`, `information_schema.*`, or a
/// bare `pg_*` name), joins included.
fn catalog_only(t: &ast::TableWithJoins) -> bool {
    fn relation(f: &ast::TableFactor) -> bool {
        let ast::TableFactor::Table { name, .. } = f else {
            return false;
        };
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(ObjectNamePart::as_ident)
            .map(|i| i.value.to_ascii_lowercase())
            .collect();
        match parts.as_slice() {
            [schema, _] => schema == "pg_catalog" || schema == "information_schema",
            [table] => table.starts_with("pg_"),
            _ => false,
        }
    }
    relation(&t.relation) && t.joins.iter().all(|j| relation(&j.relation))
}

/// Postgres's SQLSTATE for a DataFusion error message, when one fits (drivers map codes to
/// exception classes that tools catch): `None` keeps the code it has.
pub fn sqlstate_of(message: &str) -> Option<&'static str> {
    let m = message;
    Some(
        if m.contains("Invalid function") || m.contains("No function matches") {
            "42883" // undefined_function
        } else if m.contains("table") && m.contains("not found") {
            "42P01" // undefined_table
        } else if m.contains("No field named") || m.contains("Schema error: No field") {
            "42703" // undefined_column
        } else if m.contains("ParserError") || m.contains("SQL error") {
            "42601" // syntax_error
        } else if m.contains("Divide by zero") || m.contains("division by zero") {
            "22012" // division_by_zero
        } else if m.contains("Cannot cast") || m.contains("Cast error") {
            "22P02" // invalid_text_representation
        } else if m.contains("Arrow error: Compute error") && m.contains("overflow") {
            "22003" // numeric_value_out_of_range
        } else {
            return None;
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_escape_becomes_the_backslash() {
        let got = rewrite("SELECT 1 WHERE x NOT LIKE $1 || '%' ESCAPE '/'");
        assert!(got.contains("ESCAPE '\\'"), "{got}");
        assert!(got.contains("replace(replace($1 || '%'"), "{got}");
        // The backslash itself, or no ESCAPE: left as written.
        for same in [
            "SELECT 1 WHERE x LIKE 'a\\_%' ESCAPE '\\'",
            "SELECT 1 WHERE x LIKE 'a%'",
        ] {
            assert!(matches!(rewrite(same), Cow::Borrowed(_)), "{same}");
        }
    }

    #[test]
    fn generate_subscripts_and_array_subqueries_left_alone() {
        let got = rewrite("SELECT unnest(k), generate_subscripts(k, 1) FROM t");
        assert!(
            got.contains("unnest(range(1, CAST(cardinality(k) AS BIGINT) + 1))"),
            "{got}"
        );
        // `ARRAY(SELECT …)` is left to datafusion-postgres, whose own rewrites of psql's
        // catalog queries must still see their text as psql wrote it.
        let same = "SELECT ARRAY(SELECT r.rolname FROM pg_roles r) AS m";
        assert!(matches!(rewrite(same), Cow::Borrowed(_)));
    }

    #[test]
    fn catalog_subqueries_in_case_become_conditions_of_the_subquery() {
        let got = rewrite(
            "SELECT CASE WHEN a.atthasdef THEN (SELECT pg_get_expr(d.adbin, d.adrelid) \
             FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid) ELSE NULL END \
             FROM pg_catalog.pg_attribute a",
        );
        assert!(
            got.contains("SELECT max(pg_get_expr(d.adbin, d.adrelid)) FROM pg_catalog.pg_attrdef")
                && got.contains("WHERE (d.adrelid = a.attrelid) AND (a.atthasdef)")
                && !got.contains("CASE"),
            "{got}"
        );
        // A user's subquery keeps its meaning (two rows stay an error), and so does a CASE
        // with another branch.
        for same in [
            "SELECT (SELECT stream_id FROM streams) AS s",
            "SELECT CASE WHEN x THEN (SELECT 1 FROM pg_class) ELSE 2 END FROM t",
        ] {
            let got = rewrite(same);
            assert!(
                !got.contains("CASE WHEN x THEN (SELECT max") || got.contains("ELSE 2"),
                "{got}"
            );
            assert!(!got.contains("max(stream_id)"), "{got}");
        }
    }

    #[test]
    fn text_that_does_not_parse_or_goes_too_deep_is_left_alone() {
        assert!(matches!(rewrite("SELEC 1"), Cow::Borrowed(_)));
        let deep = format!("SELECT {}1{}", "abs(".repeat(40), ")".repeat(40));
        assert!(matches!(rewrite(&deep), Cow::Borrowed(_)));
    }

    #[test]
    fn sqlstates() {
        assert_eq!(
            sqlstate_of("Error during planning: Invalid function 'x'"),
            Some("42883")
        );
        assert_eq!(
            sqlstate_of("Error during planning: table 'earshot.public.x' not found"),
            Some("42P01")
        );
        assert_eq!(
            sqlstate_of("Schema error: No field named y."),
            Some("42703")
        );
        assert_eq!(
            sqlstate_of("Arrow error: Divide by zero error"),
            Some("22012")
        );
        assert_eq!(sqlstate_of("something else"), None);
    }
}
