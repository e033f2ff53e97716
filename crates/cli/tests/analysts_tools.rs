//! The tools analysts open against `earshot serve --pg`, each the real program at the version
//! they run, installed by `scripts/setup`: Superset 6 through its REST API (its own virtual
//! environment: it pins SQLAlchemy 1.4), pgcli, SQLAlchemy's inspector at 2.0 and 2.1 with
//! psycopg2 and psycopg 3, and the SQL Grafana's PostgreSQL data source sends. pgjdbc's metadata walk (DBeaver, Metabase) is in `serve.rs`. Every
//! client prints PASS/FAIL lines and compares its figures with `earshot sql`.

mod serving;

use std::path::{Path, PathBuf};
use std::process::Command;

use serving::{Server, client_passes, data, repo, serve};

const STREAM: &str = "hall";

/// A server on `listeners` simulated accounts; the directory lives as long as the server.
fn served(listeners: u32) -> (tempfile::TempDir, PathBuf, Server) {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), listeners);
    let server = serve(&data, &["--pg", "127.0.0.1:0"], &[]);
    (dir, data, server)
}

/// A Python from `scripts/setup`'s virtual environment `name` (under tests/.venvs).
fn venv_python(name: &str) -> Command {
    let python = repo().join("tests/.venvs").join(name).join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup",
        python.display()
    );
    Command::new(python)
}

/// Runs a client script against `server`; every check must pass, `last_check` among them.
fn passes(cmd: Command, what: &str, server: &Server, data: &Path, last_check: &str) {
    let port = server.pg_port.unwrap();
    client_passes(
        what,
        cmd,
        port,
        data,
        (STREAM, "http-test-secret"),
        last_check,
    );
}

#[test]
fn superset_adds_every_table_and_charts_a_time_range_on_a_dashboard() {
    let (_dir, data, server) = served(2000);
    let mut superset = venv_python("superset");
    superset.arg(repo().join("tests/superset_client.py"));
    passes(
        superset,
        "Superset 6 through its REST API",
        &server,
        &data,
        "the dashboard's chart returns data",
    );
}

#[test]
fn pgcli_starts_with_completions_and_runs_its_commands() {
    let (_dir, data, server) = served(500);
    let mut pgcli = Command::new("python3");
    pgcli.arg(repo().join("tests/pgcli_client.py"));
    passes(
        pgcli,
        "pgcli",
        &server,
        &data,
        "a figure printed by pgcli equals earshot sql's",
    );
}

#[test]
fn grafana_macros_expand_to_sql_that_answers_and_gaps_fill() {
    let (_dir, data, server) = served(1000);
    let mut grafana = Command::new("python3");
    grafana.arg(repo().join("tests/grafana_sql.py"));
    passes(
        grafana,
        "Grafana's PostgreSQL macros",
        &server,
        &data,
        "generate_series over timestamps fills every minute",
    );
}

/// SQLAlchemy's inspector, every call on every table, with `driver`, from `python`.
fn sqlalchemy(mut python: Command, what: &str, driver: &str) {
    let (_dir, data, server) = served(500);
    python
        .arg(repo().join("tests/sqlalchemy_client.py"))
        .args(["--driver", driver]);
    passes(python, what, &server, &data, "writes are refused");
}

#[test]
fn sqlalchemy_2_1_inspects_every_table_with_psycopg_3() {
    sqlalchemy(Command::new("python3"), "SQLAlchemy 2.1", "psycopg");
}

#[test]
fn sqlalchemy_2_1_inspects_every_table_with_psycopg2() {
    sqlalchemy(Command::new("python3"), "SQLAlchemy 2.1", "psycopg2");
}

#[test]
fn sqlalchemy_2_0_inspects_every_table_with_psycopg_3() {
    sqlalchemy(venv_python("sqlalchemy20"), "SQLAlchemy 2.0", "psycopg");
}

#[test]
fn sqlalchemy_2_0_inspects_every_table_with_psycopg2() {
    sqlalchemy(venv_python("sqlalchemy20"), "SQLAlchemy 2.0", "psycopg2");
}
