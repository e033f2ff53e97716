//! Every placeholder of the client's text stays in the plan.
//!
//! datafusion-postgres rewrites some texts before planning and may drop the part that held a
//! placeholder (a correlated subquery in a select list becomes NULL). The client still sends a
//! value for every placeholder of its text, and values are decoded by position against the plan's
//! placeholders: a plan without `$1` would decode `$1`'s value as `$2`'s type (an empty string
//! parsed as an integer), or bind it to the wrong place. A plan that lost placeholders gets them
//! back in a filter that is always true, so the count and the positions are the client's.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use datafusion::common::Result;
use datafusion::logical_expr::expr::Placeholder;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, lit};
use datafusion::sql::sqlparser::ast::{self, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// `plan` with every placeholder of `text` in it (see the module docs).
pub fn keep_placeholders(text: &str, plan: LogicalPlan) -> Result<LogicalPlan> {
    if matches!(
        plan,
        LogicalPlan::Ddl(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::Explain(_)
            | LogicalPlan::Analyze(_)
            | LogicalPlan::DescribeTable(_)
            | LogicalPlan::Extension(_)
    ) {
        return Ok(plan);
    }
    let in_plan = plan.get_parameter_types()?;
    let missing: Vec<String> = placeholders_in(text)
        .into_iter()
        .filter(|id| !in_plan.contains_key(id))
        .collect();
    if missing.is_empty() {
        return Ok(plan);
    }
    let keep = missing.into_iter().fold(lit(true), |keep, id| {
        keep.or(Expr::Placeholder(Placeholder::new_with_field(id, None)).is_null())
    });
    LogicalPlanBuilder::from(plan).filter(keep)?.build()
}

/// The placeholders (`$1`, `$2`, …) of `text`, or none if it does not parse.
fn placeholders_in(text: &str) -> BTreeSet<String> {
    struct Collect(BTreeSet<String>);
    impl Visitor for Collect {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &ast::Expr) -> ControlFlow<()> {
            if let ast::Expr::Value(v) = expr
                && let ast::Value::Placeholder(id) = &v.value
            {
                self.0.insert(id.clone());
            }
            ControlFlow::Continue(())
        }
    }
    let parsed = Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(earshot_sql::guard::MAX_PARSE_DEPTH)
        .try_with_sql(text)
        .and_then(|mut p| p.parse_statements());
    let mut found = Collect(BTreeSet::new());
    if let Ok(statements) = parsed {
        let _ = statements.visit(&mut found);
    }
    found.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn a_placeholder_the_plan_lost_comes_back_and_the_rows_do_not_change() {
        let ctx = SessionContext::new();
        // What a rewrite that dropped `$1` leaves: a plan with only `$2`.
        let plan = ctx
            .state()
            .create_logical_plan("SELECT x FROM (VALUES (1), (2)) t(x) WHERE x > $2")
            .await
            .unwrap();
        let text = "SELECT x, (SELECT $1) FROM (VALUES (1), (2)) t(x) WHERE x > $2";
        let kept = keep_placeholders(text, plan).unwrap();
        let mut ids: Vec<String> = kept.get_parameter_types().unwrap().into_keys().collect();
        ids.sort();
        assert_eq!(ids, ["$1", "$2"]);
        let values: Vec<datafusion::common::ScalarValue> = vec!["".into(), 1i64.into()];
        let bound = kept.replace_params_with_values(&values.into()).unwrap();
        let rows = ctx
            .execute_logical_plan(bound)
            .await
            .unwrap()
            .collect()
            .await;
        let rows = datafusion::arrow::util::pretty::pretty_format_batches(&rows.unwrap())
            .unwrap()
            .to_string();
        assert!(rows.contains("| 2 |") && !rows.contains("| 1 |"), "{rows}");
    }

    #[tokio::test]
    async fn a_plan_with_every_placeholder_is_left_as_it_is() {
        let ctx = SessionContext::new();
        let text = "SELECT $1::INT + 1 AS y";
        let plan = ctx.state().create_logical_plan(text).await.unwrap();
        let same = keep_placeholders(text, plan.clone()).unwrap();
        assert_eq!(same, plan);
    }
}
