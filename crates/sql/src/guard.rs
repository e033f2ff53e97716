//! What may run: queries, and nothing that reaches files or changes the session for others.
//!
//! The rule is checked on the *plan*, not on the text: every statement is planned (planning executes
//! nothing) and the plan is refused if any node is DDL, DML, `COPY` or a session statement. This is
//! default-deny: a statement kind nobody thought of is refused unless it plans to a pure query.
//! The Postgres endpoint also answers a few statements itself (client-local `SET`, `SHOW`,
//! `BEGIN`/`COMMIT`, cursors); [`check_statement`] is the rule for those.

use datafusion::execution::context::{SQLOptions, SessionState};
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;

use crate::SqlError;

/// What the refusal says after naming the statement.
pub const READ_ONLY: &str = "earshot is read-only: only queries run (SELECT, WITH, VALUES, \
EXPLAIN, SHOW, DESCRIBE); the tables change only by ingesting events";

/// `SET` variables that only change how this one client sees results.
pub const CLIENT_SETTINGS: &[&str] = &[
    "statement_timeout",
    "datestyle",
    "bytea_output",
    "intervalstyle",
    "application_name",
    "extra_float_digits",
    "search_path",
    "client_encoding",
    "client_min_messages",
    "standard_conforming_strings",
];

/// The options every plan is verified against.
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Longest SQL text accepted, in bytes. Planning a 2 MB text took 1.65 GB.
pub const MAX_SQL_BYTES: usize = 256 * 1024;
/// Most operators (`+`, `AND`, `=`, `||`, unary `-`, `NOT`…) in one query text. Each nests the
/// expression tree one level deeper, and the parser, the planner and even dropping the tree recurse
/// on it: 2,000 `+` overflowed a server thread's stack.
pub const MAX_OPERATORS: usize = 500;
/// Deepest nesting of parentheses.
pub const MAX_PARENS: usize = 64;

/// Refuses, before anything parses it, a query text too long or too deeply built to plan without
/// exhausting the stack or memory. Reads the text as tokens, without recursion.
pub fn check_shape(sql: &str) -> Result<(), SqlError> {
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    if sql.len() > MAX_SQL_BYTES {
        return Err(SqlError::TooComplex(format!(
            "the query is {} bytes long; the limit is {} KiB\n  hint: a query this long is usually \
             generated; filter with a table or a shorter IN list instead",
            sql.len(),
            MAX_SQL_BYTES / 1024
        )));
    }
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| SqlError::Query(e.to_string()))?;
    let (mut operators, mut depth, mut deepest) = (0usize, 0usize, 0usize);
    for t in &tokens {
        match t {
            Token::LParen | Token::LBracket => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
            Token::Word(w) if matches!(w.keyword, Keyword::AND | Keyword::OR | Keyword::NOT) => {
                operators += 1
            }
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::Mod
            | Token::DuckIntDiv
            | Token::StringConcat
            | Token::Eq
            | Token::DoubleEq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Spaceship
            | Token::Ampersand
            | Token::Pipe
            | Token::Caret
            | Token::ShiftLeft
            | Token::ShiftRight
            | Token::Tilde
            | Token::TildeAsterisk
            | Token::ExclamationMarkTilde
            | Token::ExclamationMarkTildeAsterisk
            | Token::DoubleTilde
            | Token::DoubleTildeAsterisk
            | Token::ExclamationMarkDoubleTilde
            | Token::ExclamationMarkDoubleTildeAsterisk
            | Token::Arrow
            | Token::LongArrow
            | Token::DoubleColon
            | Token::Sharp
            | Token::AtSign => operators += 1,
            _ => {}
        }
    }
    if operators > MAX_OPERATORS {
        return Err(SqlError::TooComplex(format!(
            "the query has {operators} operators; the limit is {MAX_OPERATORS} per query (each one \
             nests the expression deeper, and very deep expressions cannot be planned safely)\n  \
             hint: use IN (…) instead of a chain of OR, or split the expression with a CTE"
        )));
    }
    if deepest > MAX_PARENS {
        return Err(SqlError::TooComplex(format!(
            "the query nests parentheses {deepest} deep; the limit is {MAX_PARENS}\n  hint: \
             flatten the expression, or split it with a CTE"
        )));
    }
    Ok(())
}

/// How deep the parser may recurse (expressions, function arguments, subqueries). The SQL parser
/// backtracks at each level when an alternative fails, so its time grows about twofold per level
/// of some nestings (`abs(abs(abs(…` or `SELECT (CAST(b * SELECT (CAST(…`, found by fuzzing): at
/// its default of 50 a 600-byte query kept a core busy for hours. At 16 the worst case measured is
/// about 20 ms, and every canned query parses with room to spare (they need 12).
pub const MAX_PARSE_DEPTH: usize = 16;

/// Parses `sql` (any number of statements) within [`MAX_PARSE_DEPTH`].
fn parse_bounded(sql: &str) -> Result<std::collections::VecDeque<DfStatement>, SqlError> {
    let parsed = DFParserBuilder::new(sql)
        .with_dialect(&PostgreSqlDialect {})
        .with_recursion_limit(MAX_PARSE_DEPTH)
        .build()
        .and_then(|mut parser| parser.parse_statements());
    parsed.map_err(|e| {
        let text = e.to_string();
        let too_deep = || {
            format!(
                "the query nests expressions, function calls or subqueries more than {MAX_PARSE_DEPTH} \
                 deep, the limit for parsing it safely\n  hint: flatten it, e.g. name the inner \
                 parts in a WITH clause"
            )
        };
        if text.contains("RecursionLimitExceeded") {
            SqlError::TooComplex(too_deep())
        } else if nesting(sql) >= DEEP_NESTING {
            // The parser tries alternatives and backtracks; when the limit stops one of them, the
            // error it reports can be another alternative's ("Expected: ), found: ELSE"). A text
            // nested this deep gets the limit's message, with the parser's beside it.
            SqlError::TooComplex(format!("{}\n  the parser stopped at: {text}", too_deep()))
        } else {
            SqlError::Query(text)
        }
    })
}

/// From this nesting ([`nesting`]) on, a parse that fails is reported as too deep: below it no
/// construct reaches [`MAX_PARSE_DEPTH`] (each level of nesting costs the parser at least two).
const DEEP_NESTING: usize = MAX_PARSE_DEPTH / 2;

/// How deeply the text nests, read from its tokens without recursion: open parentheses, brackets
/// and `CASE`s at once, plus the longest run of prefix operators (`NOT NOT …`, `- - …`).
fn nesting(sql: &str) -> usize {
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return 0;
    };
    let (mut open, mut deepest, mut run, mut longest_run) = (0usize, 0usize, 0usize, 0usize);
    let mut after_operand = false;
    for t in tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_))) {
        let prefix = match t {
            Token::Word(w) if w.keyword == Keyword::NOT => true,
            Token::Minus | Token::Plus | Token::Tilde => !after_operand,
            _ => false,
        };
        run = if prefix { run + 1 } else { 0 };
        longest_run = longest_run.max(run);
        match t {
            Token::LParen | Token::LBracket => open += 1,
            Token::Word(w) if w.keyword == Keyword::CASE => open += 1,
            Token::RParen | Token::RBracket => open = open.saturating_sub(1),
            Token::Word(w) if w.keyword == Keyword::END => open = open.saturating_sub(1),
            _ => {}
        }
        deepest = deepest.max(open);
        after_operand = matches!(
            t,
            Token::Number(..) | Token::SingleQuotedString(_) | Token::RParen | Token::RBracket
        ) || matches!(t, Token::Word(w) if w.keyword == Keyword::NoKeyword || w.keyword == Keyword::END);
    }
    deepest.max(longest_run)
}

/// The check made before another parser (the Postgres endpoint's) reads `sql`: its shape
/// ([`check_shape`]), then a parse within [`MAX_PARSE_DEPTH`]. Only a parse that goes too deep is
/// refused here; a parse that fails for another reason explored no deeper, so the other parser
/// costs as little to give its own error.
pub fn check_parse(sql: &str) -> Result<(), SqlError> {
    check_shape(sql)?;
    match parse_bounded(sql) {
        Err(e @ SqlError::TooComplex(_)) => Err(e),
        _ => Ok(()),
    }
}

/// Parses exactly one statement (a trailing `;` is fine), after [`check_shape`].
pub fn parse_one(sql: &str) -> Result<DfStatement, SqlError> {
    check_shape(sql)?;
    let mut statements = parse_bounded(sql)?;
    match statements.len() {
        0 => Err(SqlError::Query("the query is empty".into())),
        1 => Ok(statements.pop_front().expect("one statement")),
        n => Err(SqlError::Query(format!(
            "{n} statements given; run one statement at a time"
        ))),
    }
}

/// Refuses a plan that is anything but a query; `what` names the statement in the refusal.
pub fn check_plan(plan: &LogicalPlan, what: &str) -> Result<(), SqlError> {
    read_only()
        .verify_plan(plan)
        .map_err(|_| SqlError::Refused(format!("{what} is refused: {READ_ONLY}")))
}

/// The check for a statement the Postgres endpoint may answer without DataFusion. Plans anything it
/// does not know and verifies the plan.
pub async fn check_statement(state: &SessionState, statement: &Statement) -> Result<(), SqlError> {
    match statement {
        Statement::Set(set) => check_set(set),
        Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. } => Ok(()),
        Statement::Declare { stmts } => {
            for declare in stmts {
                if let Some(query) = &declare.for_query {
                    let plan = state
                        .statement_to_plan(DfStatement::Statement(Box::new(Statement::Query(
                            query.clone(),
                        ))))
                        .await
                        .map_err(|e| SqlError::Query(e.to_string()))?;
                    check_plan(&plan, &kind_of_statement(statement))?;
                }
            }
            Ok(())
        }
        other => {
            let plan = state
                .statement_to_plan(DfStatement::Statement(Box::new(other.clone())))
                .await
                .map_err(|e| match kind_of_statement(other) {
                    k if is_write_keyword(&k) => {
                        SqlError::Refused(format!("{k} is refused: {READ_ONLY}"))
                    }
                    _ => SqlError::Query(e.to_string()),
                })?;
            check_plan(&plan, &kind_of_statement(other))
        }
    }
}

fn check_set(set: &Set) -> Result<(), SqlError> {
    match set {
        Set::SingleAssignment {
            scope: None,
            hivevar: false,
            variable,
            ..
        } => {
            let name = variable.to_string().to_ascii_lowercase();
            if CLIENT_SETTINGS.contains(&name.as_str()) {
                Ok(())
            } else {
                Err(SqlError::Refused(format!(
                    "SET {name} is refused: it would change the server for every user. Settings a \
client may change: {}, and TIME ZONE",
                    CLIENT_SETTINGS.join(", ")
                )))
            }
        }
        Set::SetTimeZone { local: false, .. } => Ok(()),
        other => Err(SqlError::Refused(format!(
            "{} is refused: only client-local settings may be changed ({})",
            first_words(&other.to_string(), 2),
            CLIENT_SETTINGS.join(", ")
        ))),
    }
}

/// `CREATE TABLE`, `INSERT INTO`, `COPY`… — how a refusal names what it refused.
pub fn kind_of_statement(statement: &Statement) -> String {
    first_words(&statement.to_string(), 2)
}

pub fn is_write_keyword(kind: &str) -> bool {
    let first = kind.split_whitespace().next().unwrap_or("");
    matches!(
        first,
        "CREATE"
            | "DROP"
            | "ALTER"
            | "INSERT"
            | "UPDATE"
            | "DELETE"
            | "MERGE"
            | "TRUNCATE"
            | "COPY"
            | "GRANT"
            | "REVOKE"
            | "VACUUM"
            | "ANALYZE"
            | "SET"
            | "RESET"
            | "PREPARE"
            | "EXECUTE"
            | "DEALLOCATE"
            | "ATTACH"
            | "DETACH"
            | "INSTALL"
            | "LOAD"
    )
}

/// The first `n` words of a statement, upper-cased: how a refusal names what it refused.
pub fn first_words(s: &str, n: usize) -> String {
    s.split_whitespace()
        .take(n)
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_uppercase()
}

#[cfg(test)]
mod tests {

    /// Every way of nesting, at every depth: the parse succeeds or is refused with the depth
    /// limit's message, never with a syntax error the text does not have.
    #[test]
    fn every_nesting_construct_gets_the_depth_message() {
        let nested = |open: &str, inner: &str, close: &str, n: usize| {
            format!("{}{inner}{}", open.repeat(n), close.repeat(n))
        };
        type Build = Box<dyn Fn(usize) -> String>;
        let builds: Vec<(&str, Build)> = vec![
            (
                "case",
                Box::new(move |n| {
                    format!(
                        "SELECT {}",
                        nested("CASE WHEN true THEN ", "1", " ELSE 0 END", n)
                    )
                }),
            ),
            (
                "case no else",
                Box::new(move |n| {
                    format!("SELECT {}", nested("CASE WHEN true THEN ", "1", " END", n))
                }),
            ),
            (
                "parentheses",
                Box::new(move |n| format!("SELECT {}", nested("(", "1", ")", n))),
            ),
            (
                "function calls",
                Box::new(move |n| format!("SELECT {}", nested("abs(", "1", ")", n))),
            ),
            (
                "scalar subqueries",
                Box::new(move |n| format!("SELECT {}", nested("(SELECT ", "1", ")", n))),
            ),
            (
                "derived tables",
                Box::new(move |n| {
                    format!(
                        "SELECT * FROM {}",
                        nested("(SELECT * FROM ", "streams", ") t", n)
                    )
                }),
            ),
            (
                "in subqueries",
                Box::new(move |n| {
                    format!(
                        "SELECT 1 WHERE {}",
                        nested("1 IN (SELECT 1 WHERE ", "true", ")", n)
                    )
                }),
            ),
            (
                "array literals",
                Box::new(move |n| format!("SELECT {}", nested("[", "1", "]", n))),
            ),
            (
                "not",
                Box::new(|n| format!("SELECT {}true", "NOT ".repeat(n))),
            ),
            ("minus", Box::new(|n| format!("SELECT {}1", "- ".repeat(n)))),
            (
                "cast",
                Box::new(move |n| format!("SELECT {}", nested("CAST(", "1", " AS BIGINT)", n))),
            ),
        ];
        for (name, build) in &builds {
            for n in 1..=40 {
                match parse_bounded(&build(n)) {
                    Ok(_) | Err(SqlError::TooComplex(_)) => {}
                    Err(e) => panic!("{name} × {n}: {e}"),
                }
            }
        }
    }

    use super::*;

    /// Found by fuzzing (the first is `fuzz/regressions/sql_guard-exponential-parse`):
    /// nestings the parser backtracks through at every level, which ran for seconds to hours. Each
    /// must now end at once, refused or parsed; the test waits at most a minute for all of them.
    #[test]
    fn nestings_the_parser_backtracks_through_end_at_once() {
        let found = include_bytes!("../../../fuzz/regressions/sql_guard-exponential-parse");
        let mut cases = vec![String::from_utf8_lossy(found).into_owned()];
        for n in 1..=40 {
            for unit in [
                "abs(",
                "SELECT (abs(",
                "SELECT (CAST(b * ",
                "(CAST(CAST(b * SELECT ",
            ] {
                cases.push(format!("SELECT {}x", unit.repeat(n)));
            }
            cases.push(format!("SELECT {}1{}", "abs(".repeat(n), ")".repeat(n)));
        }
        let total = cases.len();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for sql in cases {
                let refused = matches!(parse_one(&sql), Err(SqlError::TooComplex(_)));
                if tx.send((sql.len(), refused)).is_err() {
                    return;
                }
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut refused = 0;
        for _ in 0..total {
            let wait = deadline.saturating_duration_since(std::time::Instant::now());
            let (_, r) = rx
                .recv_timeout(wait)
                .expect("a parse ran for over a minute");
            refused += usize::from(r);
        }
        // The deep ones are refused as too complex, naming the limit, not merely slow to fail.
        assert!(refused > total / 2, "{refused} of {total} refused");
        // A nesting that real queries use still parses.
        let sql = format!("SELECT {}1{}", "abs(".repeat(8), ")".repeat(8));
        assert!(parse_one(&sql).is_ok());
    }
}
