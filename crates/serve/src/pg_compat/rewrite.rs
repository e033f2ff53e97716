//! The SQL forms clients' queries use that DataFusion lacks, rewritten into ones it takes that mean
//! the same (`LIKE … ESCAPE '/'`, `generate_subscripts`, correlated catalog subqueries in CASE).

use std::borrow::Cow;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    self, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments,
    Ident, ObjectName, ObjectNamePart, Value, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

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
            // `TO_TIMESTAMP(text, 'YYYY-MM-DD HH24:MI:SS.US')`, `TO_CHAR(t, …)`, `TO_DATE`
            // (Superset's time filters): Postgres's template as the chrono format DataFusion's
            // functions take. A format with `%` in it is DataFusion's already, and left alone.
            Expr::Function(f)
                if matches!(
                    function_name(f).as_str(),
                    "to_timestamp" | "to_char" | "to_date"
                ) =>
            {
                if let FunctionArguments::List(list) = &mut f.args
                    && let [
                        _,
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v))),
                    ] = list.args.as_mut_slice()
                    && let Value::SingleQuotedString(template) = &v.value
                    && !template.contains('%')
                {
                    v.value = Value::SingleQuotedString(super::template::to_chrono(template));
                    self.changed = true;
                }
            }
            // `INTERVAL '5 minutes' * FLOOR(…)` (Superset's 5/10/15/30-minute and 5/30-second
            // grains): DataFusion does not multiply an interval by a number, so the interval is
            // made from the product's text, `CAST(CAST(5 * (…) AS VARCHAR) || ' minutes' AS
            // INTERVAL)`: the same length, a fraction included.
            Expr::BinaryOp {
                left,
                op: ast::BinaryOperator::Multiply,
                right,
            } if self.all => {
                let (interval, factor) = match (left.as_ref(), right.as_ref()) {
                    (Expr::Interval(i), e) | (e, Expr::Interval(i)) => (i, e),
                    _ => return ControlFlow::Continue(()),
                };
                if let Some((count, unit)) = interval_count_and_unit(interval) {
                    let product = Expr::BinaryOp {
                        left: Box::new(Expr::value(Value::Number(count, false))),
                        op: ast::BinaryOperator::Multiply,
                        right: Box::new(Expr::Nested(Box::new(factor.clone()))),
                    };
                    let product_text = Expr::Cast {
                        kind: ast::CastKind::Cast,
                        expr: Box::new(product),
                        data_type: ast::DataType::Varchar(None),
                        array: false,
                        format: None,
                    };
                    let interval_text = Expr::BinaryOp {
                        left: Box::new(product_text),
                        op: ast::BinaryOperator::StringConcat,
                        right: Box::new(text(&format!(" {unit}"))),
                    };
                    *expr = Expr::Cast {
                        kind: ast::CastKind::Cast,
                        expr: Box::new(interval_text),
                        data_type: ast::DataType::Interval {
                            fields: None,
                            precision: None,
                        },
                        array: false,
                        format: None,
                    };
                    self.changed = true;
                }
            }
            // `typinput = 'pg_catalog.array_in'::regproc` (pgjdbc's type cache): the catalog holds
            // pg_type's function columns as the functions' names, so the name is compared.
            Expr::BinaryOp {
                left,
                op: ast::BinaryOperator::Eq | ast::BinaryOperator::NotEq,
                right,
            } if is_proc_name_column(left) || is_proc_name_column(right) => {
                for side in [left, right] {
                    if let Some(name) = regproc_literal(side) {
                        **side = text(&name);
                        self.changed = true;
                    }
                }
            }
            // `information_schema._pg_expandarray(a)`, Postgres's set of `(x, n)` per element:
            // the same rows as `unnest` of the elements with their positions.
            Expr::Function(f) if self.all && function_name(f) == "_pg_expandarray" => {
                if let Some(args) = plain_args(f)
                    && let [array] = args.as_slice()
                {
                    *expr = call("unnest", vec![call(EXPAND_ARRAY, vec![array.clone()])]);
                    self.changed = true;
                }
            }
            // `(i.keys).n` (pgjdbc's keys and indexes): a field of a composite value, which
            // DataFusion reads with `get_field(i.keys, 'n')`.
            Expr::CompoundFieldAccess { root, access_chain }
                if self.all
                    && access_chain
                        .iter()
                        .all(|a| matches!(a, ast::AccessExpr::Dot(Expr::Identifier(_)))) =>
            {
                let mut value = (**root).clone();
                for access in access_chain.iter() {
                    if let ast::AccessExpr::Dot(Expr::Identifier(field)) = access {
                        value = call("get_field", vec![value, text(&field.value)]);
                    }
                }
                *expr = value;
                self.changed = true;
            }
            // `ix.indisprimary = 'f'` (Superset's index list): Postgres reads the quoted literal
            // as a boolean, DataFusion does not; for the catalog's boolean columns it is written
            // as one.
            Expr::BinaryOp {
                left,
                op: ast::BinaryOperator::Eq | ast::BinaryOperator::NotEq,
                right,
            } if self.all && (is_boolean_column(left) || is_boolean_column(right)) => {
                for side in [left, right] {
                    if let Some(b) = boolean_literal(side) {
                        **side = Expr::value(Value::Boolean(b));
                        self.changed = true;
                    }
                }
            }
            // `t::regtype::text` (pgcli's function list): the type's name, as Postgres prints it,
            // which `format_type` gives; the cast alone would give the number.
            Expr::Cast {
                expr: inner,
                data_type: ast::DataType::Text | ast::DataType::Varchar(_),
                ..
            } if matches!(inner.as_ref(), Expr::Cast { data_type: ast::DataType::Custom(name, _), .. }
                if name.0.last().and_then(ObjectNamePart::as_ident)
                    .is_some_and(|i| i.value.eq_ignore_ascii_case("regtype"))) =>
            {
                if let Expr::Cast { expr: oid, .. } = inner.as_ref() {
                    *expr = call(
                        "format_type",
                        vec![(**oid).clone(), Expr::value(Value::Null)],
                    );
                    self.changed = true;
                }
            }
            // `generate_subscripts(a, d)` beside `unnest(a)`: the positions 1..n, unnested in step,
            // for the only dimension the catalog's arrays have (none for another `d`). `d` stays in
            // the text: it may be a parameter, and the client sends a value for each.
            Expr::Function(f) if function_name(f) == "generate_subscripts" => {
                if let Some(args) = plain_args(f)
                    && let [array, dimension] = args.as_slice()
                {
                    let n = Expr::Cast {
                        kind: ast::CastKind::Cast,
                        expr: Box::new(call("cardinality", vec![array.clone()])),
                        data_type: ast::DataType::BigInt(None),
                        array: false,
                        format: None,
                    };
                    let one = || Expr::value(ast::Value::Number("1".into(), false));
                    let stop = Expr::Case {
                        case_token: ast::helpers::attached_token::AttachedToken::empty(),
                        end_token: ast::helpers::attached_token::AttachedToken::empty(),
                        operand: None,
                        conditions: vec![ast::CaseWhen {
                            condition: Expr::BinaryOp {
                                left: Box::new(Expr::Nested(Box::new(dimension.clone()))),
                                op: ast::BinaryOperator::Eq,
                                right: Box::new(one()),
                            },
                            result: Expr::BinaryOp {
                                left: Box::new(n),
                                op: ast::BinaryOperator::Plus,
                                right: Box::new(one()),
                            },
                        }],
                        else_result: Some(Box::new(one())),
                    };
                    let range = call("range", vec![one(), stop]);
                    *expr = call("unnest", vec![range]);
                    self.changed = true;
                }
            }
            // `ARRAY(SELECT x FROM <catalog> …)` (pgcli's `\du`): the same rows aggregated,
            // `(SELECT array_agg(x ORDER BY …) FROM …)`, which DataFusion plans correlated too.
            Expr::Function(f) if self.all && function_name(f) == "array" => {
                if let FunctionArguments::Subquery(query) = &f.args
                    && let Some(aggregated) = aggregated_into_array(query)
                {
                    *expr = Expr::Subquery(Box::new(aggregated));
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

    /// A subquery in the select list of a query over the catalog that reads a derived table of
    /// the outer row (pgcli's foreign keys: `unnest((SELECT array_agg(…) FROM (SELECT
    /// unnest(confkey) …) x JOIN pg_attribute …))`), which DataFusion cannot run, becomes
    /// [`UNSUPPORTED`]: an error as soon as the outer query has a row, so the answer is either
    /// exact (no rows: Postgres gives none either) or an error, never a guess.
    fn post_visit_select(&mut self, select: &mut ast::Select) -> ControlFlow<()> {
        if self.all {
            self.changed |= alias_repeated_columns(select);
        }
        if !self.all || select.from.is_empty() || !select.from.iter().all(catalog_only) {
            return ControlFlow::Continue(());
        }
        for item in &mut select.projection {
            let (ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. }) =
                item
            else {
                continue;
            };
            let mut replace = ReplaceUnrunnable { changed: false };
            let _ = e.visit(&mut replace);
            self.changed |= replace.changed;
        }
        ControlFlow::Continue(())
    }
}

/// The catalog's boolean columns, learnt when the catalog is installed.
static BOOLEAN_COLUMNS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

pub(super) fn know_boolean_columns(names: Vec<String>) {
    let _ = BOOLEAN_COLUMNS.set(names);
}

fn last_name(e: &Expr) -> Option<&str> {
    match e {
        Expr::Identifier(i) => Some(&i.value),
        Expr::CompoundIdentifier(parts) => parts.last().map(|i| i.value.as_str()),
        _ => None,
    }
}

fn is_boolean_column(e: &Expr) -> bool {
    last_name(e).is_some_and(|n| {
        BOOLEAN_COLUMNS
            .get()
            .is_some_and(|names| names.iter().any(|b| b.eq_ignore_ascii_case(n)))
    })
}

/// A quoted literal Postgres reads as a boolean (`'f'`, `'true'`, `'0'`, …).
fn boolean_literal(e: &Expr) -> Option<bool> {
    let Expr::Value(v) = e else { return None };
    let Value::SingleQuotedString(s) = &v.value else {
        return None;
    };
    match s.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// pg_type's columns that name a function (regproc in Postgres), held as names in this catalog.
fn is_proc_name_column(e: &Expr) -> bool {
    let Some(name) = last_name(e) else {
        return false;
    };
    [
        "typinput",
        "typoutput",
        "typreceive",
        "typsend",
        "typmodin",
        "typmodout",
        "typanalyze",
    ]
    .contains(&name.to_ascii_lowercase().as_str())
}

/// `'pg_catalog.array_in'::regproc` as `array_in`.
fn regproc_literal(e: &Expr) -> Option<String> {
    let Expr::Cast {
        expr,
        data_type: ast::DataType::Custom(ty, _),
        ..
    } = e
    else {
        return None;
    };
    let is_regproc =
        ty.0.last()
            .and_then(ObjectNamePart::as_ident)
            .is_some_and(|i| i.value.eq_ignore_ascii_case("regproc"));
    match expr.as_ref() {
        Expr::Value(v) if is_regproc => match &v.value {
            Value::SingleQuotedString(s) => {
                Some(s.strip_prefix("pg_catalog.").unwrap_or(s).to_owned())
            }
            _ => None,
        },
        _ => None,
    }
}

/// `INTERVAL '5 minutes'` as `("5", "minutes")`: one count and one unit, nothing else.
fn interval_count_and_unit(interval: &ast::Interval) -> Option<(String, String)> {
    if interval.leading_field.is_some() || interval.last_field.is_some() {
        return None;
    }
    let Expr::Value(v) = interval.value.as_ref() else {
        return None;
    };
    let Value::SingleQuotedString(s) = &v.value else {
        return None;
    };
    let mut words = s.split_whitespace();
    let (count, unit) = (words.next()?, words.next()?);
    let numeric = count.parse::<f64>().is_ok_and(f64::is_finite);
    let unit_ok = !unit.is_empty() && unit.chars().all(|c| c.is_ascii_alphabetic());
    (words.next().is_none() && numeric && unit_ok).then(|| (count.to_owned(), unit.to_owned()))
}

/// `SELECT NULL, NULL, …` (pgjdbc's procedure list): Postgres allows two columns of one name,
/// DataFusion does not, so an unnamed column whose text repeats an earlier one is named after its
/// position (`?column?` for a literal, as Postgres names it, then `:N`). Whether any changed.
fn alias_repeated_columns(select: &mut ast::Select) -> bool {
    let mut seen = std::collections::HashSet::new();
    let mut changed = false;
    for (position, item) in select.projection.iter_mut().enumerate() {
        let ast::SelectItem::UnnamedExpr(e) = item else {
            continue;
        };
        let name = match &*e {
            Expr::Value(_) => "?column?".to_owned(),
            other => other.to_string(),
        };
        if !seen.insert(e.to_string()) {
            *item = ast::SelectItem::ExprWithAlias {
                expr: e.clone(),
                alias: Ident::with_quote('"', format!("{name}:{}", position + 1)),
            };
            changed = true;
        }
    }
    changed
}

/// The elements of an array with their positions (see `functions::ExpandArray`).
pub(super) const EXPAND_ARRAY: &str = "earshot_expandarray";

/// The function that stands for a subquery DataFusion cannot run: it fails on any row.
pub(super) const UNSUPPORTED: &str = "earshot_unsupported_subquery";

struct ReplaceUnrunnable {
    changed: bool,
}

impl VisitorMut for ReplaceUnrunnable {
    type Break = ();
    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::Subquery(query) = expr
            && let ast::SetExpr::Select(select) = query.body.as_ref()
            && !select.from.iter().all(catalog_only)
        {
            *expr = call(UNSUPPORTED, vec![]);
            self.changed = true;
        }
        ControlFlow::Continue(())
    }
}

/// `SELECT x FROM … [ORDER BY …]` as `SELECT array_agg(x ORDER BY …) FROM …`, for one plain
/// column over the catalog.
fn aggregated_into_array(query: &ast::Query) -> Option<ast::Query> {
    let mut query = query.clone();
    let ast::SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    if select.projection.len() != 1
        || select.from.is_empty()
        || !select.from.iter().all(catalog_only)
    {
        return None;
    }
    let (ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. }) =
        &mut select.projection[0]
    else {
        return None;
    };
    let mut clauses = vec![];
    if let Some(order) = query.order_by.take() {
        let ast::OrderByKind::Expressions(mut keys) = order.kind else {
            return None;
        };
        for key in &mut keys {
            // `ORDER BY 1` names the one column.
            if matches!(&key.expr, Expr::Value(v) if v.value == Value::Number("1".into(), false)) {
                key.expr = e.clone();
            }
        }
        clauses.push(ast::FunctionArgumentClause::OrderBy(keys));
    }
    let mut aggregate = call("array_agg", vec![e.clone()]);
    if let Expr::Function(f) = &mut aggregate
        && let FunctionArguments::List(list) = &mut f.args
    {
        list.clauses = clauses;
    }
    *e = aggregate;
    Some(query)
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
            got.contains(
                "unnest(range(1, CASE WHEN (1) = 1 THEN CAST(cardinality(k) AS BIGINT) + 1 ELSE 1 END))"
            ),
            "{got}"
        );
        // A parameter for the dimension stays: the client sends a value for every placeholder.
        let got = rewrite("SELECT unnest(k), generate_subscripts(k, $1::INTEGER), $2 FROM t");
        assert!(got.contains("WHEN ($1::INTEGER) = 1"), "{got}");
        // `ARRAY(SELECT …)` is left to datafusion-postgres, whose own rewrites of psql's
        // catalog queries must still see their text as psql wrote it.
        let same = "SELECT ARRAY(SELECT r.rolname FROM pg_roles r) AS m";
        assert!(matches!(rewrite_upfront(same), Cow::Borrowed(_)));
        // Only when the text does not plan: the same rows aggregated.
        let got = rewrite("SELECT ARRAY(SELECT r.rolname FROM pg_roles r ORDER BY 1) AS m");
        assert!(
            got.contains("(SELECT array_agg(r.rolname ORDER BY r.rolname) FROM pg_roles r)"),
            "{got}"
        );
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
    fn a_subquery_the_engine_cannot_run_fails_on_any_row() {
        let got = rewrite(
            "SELECT c.relname, unnest((SELECT array_agg(a.attname) FROM (SELECT unnest(k.conkey) \
             AS attnum) x JOIN pg_attribute a USING (attnum))) AS cols FROM pg_constraint k \
             JOIN pg_class c ON c.oid = k.conrelid",
        );
        assert!(
            got.contains("unnest(earshot_unsupported_subquery()) AS cols"),
            "{got}"
        );
        // Not over the catalog: left as written.
        let same = "SELECT (SELECT max(x) FROM (SELECT 1 AS x) y) FROM streams";
        assert!(matches!(rewrite(same), Cow::Borrowed(_)), "{same}");
    }

    #[test]
    fn postgres_templates_become_chrono_formats() {
        let got = rewrite_upfront(
            "SELECT x FROM t WHERE ts >= TO_TIMESTAMP('2024-08-12 00:00:00.000000', \
             'YYYY-MM-DD HH24:MI:SS.US') AND to_char(ts, 'FMDD Mon') = '%'",
        );
        assert!(
            got.contains("'%Y-%m-%d %H:%M:%S.%6f'") && got.contains("'%-d %b'"),
            "{got}"
        );
        let same = "SELECT to_char(ts, '%Y') FROM t";
        assert!(matches!(rewrite_upfront(same), Cow::Borrowed(_)));
    }

    #[test]
    fn an_interval_times_a_number_is_an_interval_of_the_product() {
        let got = rewrite(
            "SELECT DATE_TRUNC('hour', t) + INTERVAL '5 minutes' * FLOOR(EXTRACT(MINUTE FROM t) / 5) FROM x",
        );
        assert!(
            got.contains(
                "CAST(CAST(5 * (FLOOR(EXTRACT(MINUTE FROM t) / 5)) AS VARCHAR) || ' minutes' AS INTERVAL)"
            ),
            "{got}"
        );
        let same = "SELECT INTERVAL '1 day 2 hours' * 3";
        assert!(matches!(rewrite(same), Cow::Borrowed(_)), "{same}");
    }

    #[test]
    fn repeated_unnamed_columns_get_names_and_regproc_names_compare_as_names() {
        let got = rewrite("SELECT NULL AS a, NULL, NULL, x, x FROM t");
        assert!(
            got.contains(r#"NULL, NULL AS "?column?:3", x, x AS "x:5""#),
            "{got}"
        );
        let got = rewrite("SELECT (i.keys).n FROM t");
        assert!(got.contains("get_field((i.keys), 'n')"), "{got}");
        let got = rewrite_upfront("SELECT typinput = 'pg_catalog.array_in'::regproc FROM pg_type");
        assert!(got.contains("typinput = 'array_in'"), "{got}");
    }

    #[test]
    fn a_quoted_boolean_compared_with_a_boolean_catalog_column_is_a_boolean() {
        know_boolean_columns(vec!["indisprimary".into()]);
        let got = rewrite(
            "SELECT 1 FROM pg_index ix, pg_class t WHERE ix.indisprimary = 'f' AND t.relkind = 'f'",
        );
        assert!(
            got.contains("ix.indisprimary = false AND t.relkind = 'f'"),
            "{got}"
        );
    }

    #[test]
    fn a_type_named_as_text_is_its_name() {
        let got = rewrite_upfront("SELECT prorettype::regtype::text FROM pg_proc");
        assert!(got.contains("format_type(prorettype, NULL)"), "{got}");
    }

    #[test]
    fn text_that_does_not_parse_or_goes_too_deep_is_left_alone() {
        assert!(matches!(rewrite("SELEC 1"), Cow::Borrowed(_)));
        let deep = format!("SELECT {}1{}", "abs(".repeat(40), ")".repeat(40));
        assert!(matches!(rewrite(&deep), Cow::Borrowed(_)));
    }
}
