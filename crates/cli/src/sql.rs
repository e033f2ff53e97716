//! `earshot sql`: one query, a query file with parameters, a script on stdin, or an interactive prompt.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use earshot_serve::Spawner;
use earshot_serve::worker::sql::{Request, SqlWorkers};
use earshot_sql::output::Format;
use earshot_sql::queries::NamedQuery;
use earshot_sql::{Limits, Params};

/// Where the statements run: a worker process (a crash or a runaway query ends it, not this
/// command), and the named parameters they get.
struct Runner {
    workers: Arc<SqlWorkers>,
    params: Vec<String>,
    allow_unused: bool,
}

impl Runner {
    /// Runs `sql`, passing the rendered result to `on_data`.
    async fn run(
        &self,
        sql: &str,
        format: Format,
        on_data: impl FnMut(&[u8]),
    ) -> Result<u64, earshot_serve::worker::Failure> {
        let request = Request {
            sql: sql.to_string(),
            params: self.params.clone(),
            allow_unused: self.allow_unused,
            output: format.into(),
        };
        self.workers.run(&request, on_data).await
    }
}

#[derive(Args)]
pub struct SqlArgs {
    /// Data directory written by `earshot ingest`.
    #[arg(long, short)]
    data: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Run a query file: a path, or the name of a canned query (`reach`, `timeline`… see --list).
    #[arg(long, short = 'f', conflicts_with = "query")]
    file: Option<String>,
    /// A named parameter for `$name` in the query, as name=value. Repeat for several.
    #[arg(long = "param", short = 'p', value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// List the canned queries with what they answer and their parameters, then exit.
    #[arg(long)]
    list: bool,
    #[command(flatten)]
    limits: LimitArgs,
    /// The query (read-only: SELECT, WITH, VALUES, EXPLAIN, SHOW, DESCRIBE). Without it, statements
    /// are read from standard input, or an interactive prompt opens on a terminal.
    query: Option<String>,
}

/// The per-query limits, shared by every command that runs SQL.
#[derive(Args, Clone, Debug)]
pub struct LimitArgs {
    /// Cancel a query that runs longer than this.
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration_ms)]
    query_timeout: i64,
    /// Memory all running queries may hold together; a query that needs more is cancelled.
    #[arg(long, default_value = "2GiB", value_parser = earshot_sql::parse_bytes)]
    memory_limit: usize,
}

impl LimitArgs {
    pub fn limits(&self) -> anyhow::Result<Limits> {
        if self.query_timeout <= 0 {
            bail!("--query-timeout must be positive");
        }
        Ok(Limits {
            time: std::time::Duration::from_millis(self.query_timeout.unsigned_abs()),
            memory: self.memory_limit,
            ..Limits::default()
        })
    }
}

pub fn run(a: SqlArgs) -> anyhow::Result<()> {
    if a.list {
        for q in NamedQuery::all() {
            let params: Vec<String> = q
                .params
                .iter()
                .map(|(p, m)| format!("--param {p}=… ({m})"))
                .collect();
            println!("{:<20} {}", q.name, q.summary);
            if !params.is_empty() {
                println!("{:<20}   {}", "", params.join(" "));
            }
        }
        return Ok(());
    }
    let limits: Limits = a.limits.limits()?;
    // Checked here for a clear error before anything starts; the worker binds them.
    Params::from_pairs(&a.params)?;
    let rt = crate::runtime()?;
    let place = crate::place::Place::for_reading(&a.data)?;
    let spawner = Spawner::this_program(
        place.local.clone(),
        Limits {
            running: 1,
            ..limits
        },
    )
    .context("cannot find this program to start a query worker")?;
    rt.block_on(async {
        let interactive = a.query.is_none()
            && a.file.is_none()
            && std::io::stdin().is_terminal()
            && std::io::stdout().is_terminal();
        let runner = Runner {
            workers: SqlWorkers::new(spawner, 0),
            params: a.params.clone(),
            allow_unused: interactive,
        };
        if let Some(query) = &a.query {
            return one(&runner, query, a.format).await;
        }
        if let Some(file) = &a.file {
            let sql = read_query_file(file)?;
            return one(&runner, &sql, a.format).await;
        }
        if interactive {
            return prompt(&runner, &a.data).await;
        }
        let mut script = String::new();
        std::io::stdin()
            .read_to_string(&mut script)
            .context("cannot read SQL from standard input")?;
        script_from_stdin(&runner, &script, a.format).await
    })
}

/// A path that exists, or else the name of a canned query.
fn read_query_file(file: &str) -> anyhow::Result<String> {
    let path = Path::new(file);
    if path.exists() {
        return std::fs::read_to_string(path).with_context(|| format!("cannot read {file}"));
    }
    match NamedQuery::embedded(file) {
        Some(q) => Ok(q.sql),
        None => {
            let names: Vec<&str> = earshot_sql::queries::EMBEDDED
                .iter()
                .map(|(n, _)| *n)
                .collect();
            bail!(
                "{file}: no such file, and no canned query of that name (canned: {})",
                names.join(", ")
            )
        }
    }
}

async fn one(runner: &Runner, sql: &str, format: Format) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut written = Ok(());
    let ran = runner
        .run(sql, format, |data| {
            if written.is_ok() {
                written = out.write_all(data);
            }
        })
        .await;
    written?;
    ran?;
    out.flush()?;
    Ok(())
}

/// Runs each statement of a script in turn; stops at the first error, naming the statement.
async fn script_from_stdin(runner: &Runner, script: &str, format: Format) -> anyhow::Result<()> {
    let statements = split_statements(script);
    if statements.is_empty() {
        bail!("no query given: pass one as an argument, with -f FILE, or on standard input");
    }
    for (i, sql) in statements.iter().enumerate() {
        one(runner, sql, format)
            .await
            .with_context(|| format!("statement {} of {}", i + 1, statements.len()))?;
    }
    Ok(())
}

/// Splits SQL text at `;` outside quotes and comments. Empty statements are dropped.
pub fn split_statements(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = script.chars().peekable();
    let (mut single, mut double, mut line_comment, mut block_comment) = (false, false, false, 0u32);
    while let Some(c) = chars.next() {
        cur.push(c);
        if line_comment {
            line_comment = c != '\n';
        } else if block_comment > 0 {
            if c == '*' && chars.peek() == Some(&'/') {
                cur.push(chars.next().unwrap_or('/'));
                block_comment -= 1;
            }
        } else if single {
            single = c != '\'';
        } else if double {
            double = c != '"';
        } else {
            match c {
                '\'' => single = true,
                '"' => double = true,
                '-' if chars.peek() == Some(&'-') => line_comment = true,
                '/' if chars.peek() == Some(&'*') => {
                    cur.push(chars.next().unwrap_or('*'));
                    block_comment += 1;
                }
                ';' => {
                    cur.pop();
                    push_statement(&mut out, &cur);
                    cur.clear();
                }
                _ => {}
            }
        }
    }
    push_statement(&mut out, &cur);
    out
}

fn push_statement(out: &mut Vec<String>, s: &str) {
    let has_code = s.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with("--")
    });
    if has_code {
        out.push(s.trim().to_string());
    }
}

/// Whether the text typed so far ends a statement: a `;` outside quotes and comments at the end.
fn complete(buffer: &str) -> bool {
    let trimmed = buffer.trim_end();
    if !trimmed.ends_with(';') {
        return false;
    }
    // Re-split: if the last `;` were inside a quote, the tail would still hold text.
    let mut probe = trimmed.to_string();
    probe.push_str("\n__earshot_probe__");
    split_statements(&probe)
        .last()
        .is_some_and(|s| s == "__earshot_probe__")
}

const PROMPT_HELP: &str = "\
End a statement with ; to run it (it may span lines). Commands:
  \\dt             list the tables
  \\d TABLE        describe a table's columns
  \\queries        list the canned queries (run one with \\i NAME)
  \\i NAME|FILE    run a canned query or a query file (uses --param values)
  \\q              quit (or Ctrl-D)
Ctrl-C clears the statement being typed.";

/// The interactive prompt: history in the data directory's parent-independent history file,
/// multi-line statements, errors that keep the prompt alive.
async fn prompt(runner: &Runner, data: &Path) -> anyhow::Result<()> {
    use rustyline::error::ReadlineError;
    let mut editor =
        rustyline::DefaultEditor::new().context("cannot start the interactive prompt")?;
    let history = std::env::var_os("EARSHOT_HISTORY")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".earshot_history")));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!(
        "earshot {} — SQL over {} (read-only). \\? for help, \\q to quit.",
        env!("CARGO_PKG_VERSION"),
        data.display()
    );
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "earshot> "
        } else {
            "     ..> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                if buffer.is_empty() && line.trim_start().starts_with('\\') {
                    let _ = editor.add_history_entry(line.as_str());
                    if !meta(runner, line.trim()).await {
                        break;
                    }
                    continue;
                }
                if !buffer.is_empty() {
                    buffer.push('\n');
                }
                buffer.push_str(&line);
                if complete(&buffer) {
                    let _ = editor.add_history_entry(buffer.as_str());
                    for sql in split_statements(&buffer) {
                        timed(runner, &sql).await;
                    }
                    buffer.clear();
                }
            }
            Err(ReadlineError::Interrupted) => buffer.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("the prompt failed"),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}

/// Runs a statement at the prompt and prints the table, the row count and the time, or the error.
async fn timed(runner: &Runner, sql: &str) {
    let started = Instant::now();
    let mut table = Vec::new();
    match runner
        .run(sql, Format::Table, |data| table.extend_from_slice(data))
        .await
    {
        Ok(_) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&table);
            let _ = writeln!(out, "time: {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
        }
        Err(e) => eprintln!("error: {e}"),
    }
}

/// A backslash command. Returns false to quit.
async fn meta(runner: &Runner, line: &str) -> bool {
    let mut words = line.split_whitespace();
    let cmd = words.next().unwrap_or("");
    let arg = words.next();
    match (cmd, arg) {
        ("\\q", _) => return false,
        ("\\?" | "\\h" | "\\help", _) => println!("{PROMPT_HELP}"),
        ("\\dt", _) => {
            let sql = "SELECT table_name FROM information_schema.tables \
                       WHERE table_schema = 'public' ORDER BY table_name";
            timed(runner, sql).await;
        }
        ("\\d", Some(table)) => {
            if !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                eprintln!("error: {table:?} is not a table name");
            } else {
                let sql = format!(
                    "SELECT column_name, data_type, is_nullable FROM information_schema.columns \
                     WHERE table_schema = 'public' AND table_name = '{table}' ORDER BY ordinal_position"
                );
                timed(runner, &sql).await;
            }
        }
        ("\\queries", _) => {
            for q in NamedQuery::all() {
                println!("{:<20} {}", q.name, q.summary);
            }
        }
        ("\\i", Some(name)) => match read_query_file(name) {
            Ok(sql) => timed(runner, &sql).await,
            Err(e) => eprintln!("error: {e:#}"),
        },
        _ => eprintln!("error: unknown command {line:?}; \\? lists the commands"),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_quotes_and_comments() {
        let s = split_statements(
            "SELECT ';' AS a; -- a comment; with a semicolon\nSELECT \"x;y\" FROM t;\n/* c; */ SELECT 3",
        );
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0], "SELECT ';' AS a");
        assert!(s[1].ends_with("SELECT \"x;y\" FROM t"));
        assert!(s[2].ends_with("SELECT 3"));
        assert!(split_statements("  ;; -- only a comment\n").is_empty());
    }

    #[test]
    fn a_statement_is_complete_only_at_a_real_semicolon() {
        assert!(complete("SELECT 1;"));
        assert!(complete("SELECT 1\n  ;  "));
        assert!(!complete("SELECT 1"));
        assert!(!complete("SELECT ';"));
        assert!(!complete("SELECT 1 -- done;"));
    }
}
