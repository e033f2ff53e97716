//! The canned analyses of `queries/*.sql`, compiled into the binary.
//!
//! Each file starts with a header comment: `-- name: what it answers`, more lines of explanation, and
//! one `-- param NAME: meaning` line per named parameter (`$NAME` in the SQL). The files in the
//! repository are the source; the binary carries the same bytes so `earshot sql -f reach` works
//! anywhere, and the audit can quote the exact SQL it ran.

/// One canned query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedQuery {
    pub name: String,
    /// The first header line after `name:`.
    pub summary: String,
    /// `(name, meaning)` of each parameter, in header order.
    pub params: Vec<(String, String)>,
    /// The whole file, header included.
    pub sql: String,
}

macro_rules! embedded {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../../queries/", $name, ".sql")))),*]
    };
}

/// Every file of `queries/`, by name.
pub const EMBEDDED: &[(&str, &str)] = embedded!(
    "streams",
    "timeline",
    "reach",
    "failed_joins",
    "time_to_first_audio",
    "drop_reasons",
    "start_delay",
    "breakdown",
    "rollup_minute",
    "rollup_hour",
    "audit_figures",
    "event_counts",
    "rejects_by_reason",
    "timeline_step",
    "timeline_points",
    "failures_by_minute",
    "overload",
    "failure_by_load",
);

impl NamedQuery {
    /// Reads a query file's header. `name` is used when the header does not give one.
    pub fn parse(name: &str, sql: &str) -> NamedQuery {
        let mut summary = String::new();
        let mut params = Vec::new();
        let mut header_name = None;
        for line in sql.lines() {
            let Some(comment) = line.trim_start().strip_prefix("--") else {
                if line.trim().is_empty() {
                    continue;
                }
                break;
            };
            let comment = comment.trim();
            if let Some(rest) = comment.strip_prefix("param ") {
                if let Some((p, meaning)) = rest.split_once(':') {
                    params.push((p.trim().to_string(), meaning.trim().to_string()));
                }
            } else if header_name.is_none()
                && let Some((n, s)) = comment.split_once(':')
            {
                header_name = Some(n.trim().to_string());
                summary = s.trim().to_string();
            }
        }
        NamedQuery {
            name: header_name.unwrap_or_else(|| name.to_string()),
            summary,
            params,
            sql: sql.to_string(),
        }
    }

    /// The embedded query called `name` (with or without `.sql`, with or without a `queries/` prefix).
    pub fn embedded(name: &str) -> Option<NamedQuery> {
        let key = name.trim_start_matches("queries/").trim_end_matches(".sql");
        EMBEDDED
            .iter()
            .find(|(n, _)| *n == key)
            .map(|(n, sql)| NamedQuery::parse(n, sql))
    }

    /// All embedded queries.
    pub fn all() -> Vec<NamedQuery> {
        EMBEDDED
            .iter()
            .map(|(n, sql)| NamedQuery::parse(n, sql))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_query_has_a_header_naming_it_and_its_parameters() {
        for q in NamedQuery::all() {
            let file = EMBEDDED.iter().find(|(n, _)| *n == q.name);
            assert!(
                file.is_some(),
                "header name {} is not the file name",
                q.name
            );
            assert!(!q.summary.is_empty(), "{} has no summary", q.name);
            for (p, meaning) in &q.params {
                assert!(q.sql.contains(&format!("${p}")), "{}: ${p} unused", q.name);
                assert!(!meaning.is_empty());
            }
            let dollars = q.sql.matches('$').count();
            let documented: usize = q
                .params
                .iter()
                .map(|(p, _)| q.sql.matches(&format!("${p}")).count())
                .sum();
            assert_eq!(dollars, documented, "{}: undocumented parameter", q.name);
        }
    }

    #[test]
    fn embedded_lookup_accepts_paths() {
        assert!(NamedQuery::embedded("reach").is_some());
        assert!(NamedQuery::embedded("queries/reach.sql").is_some());
        assert!(NamedQuery::embedded("nope").is_none());
    }
}
