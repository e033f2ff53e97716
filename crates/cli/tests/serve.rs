//! `earshot serve --pg` against real clients: Debian's `psql` and Python's psycopg 3
//! (`tests/pg_clients.py`), on 127.0.0.1 ports the server picks.

mod serving;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const STREAM: &str = "town-hall-main";

fn earshot() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_earshot"));
    c.env("EARSHOT_PSEUDONYM_KEY", "serve-test-secret")
        .env_remove("EARSHOT_PG_PASSWORD");
    c
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A simulated event of `listeners` accounts, ingested into `data`.
fn make_data(data: &Path, listeners: u32, seed: u32) {
    let input = data.with_extension("ndjson");
    ok(earshot()
        .args(["simulate", "--listeners", &listeners.to_string()])
        .args(["--seed", &seed.to_string(), "--output"])
        .arg(&input)
        .output()
        .unwrap());
    ok(earshot()
        .args(["ingest", "--input"])
        .arg(&input)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap());
}

/// A running `earshot serve`, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data: &Path, extra: &[&str], password: Option<&str>) -> Server {
    let mut cmd = earshot();
    cmd.args(["serve", "--pg", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(p) = password {
        cmd.env("EARSHOT_PG_PASSWORD", p);
    }
    let mut child = cmd.spawn().unwrap();
    let mut first = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut first).unwrap();
    // Keep reading, so the server never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let port = first
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {first:?}"));
    Server { child, port }
}

fn psql(port: u16, db: &str, password: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new("psql");
    c.args([
        "-X",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "earshot",
        "-d",
        db,
    ])
    .args(["-v", "ON_ERROR_STOP=1"])
    .args(args)
    .env("PGCONNECT_TIMEOUT", "10")
    .env_remove("PGPASSWORD");
    if let Some(p) = password {
        c.env("PGPASSWORD", p);
    }
    c.output()
        .expect("psql must be installed (scripts/setup installs postgresql-client)")
}

fn python_clients(server: &Server, data: &Path, extra: &[&str], password: Option<&str>) {
    let mut c = Command::new("python3");
    c.arg(repo().join("tests/pg_clients.py"))
        .args(["--port", &server.port.to_string()])
        .args(["--earshot", env!("CARGO_BIN_EXE_earshot"), "--data"])
        .arg(data)
        .args(["--stream", STREAM])
        .args(extra)
        .env("EARSHOT_PSEUDONYM_KEY", "serve-test-secret");
    if let Some(p) = password {
        c.args(["--password", p]);
    }
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pg_clients.py failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("FAIL"), "{text}");
}

fn cli_scalar(data: &Path, sql: &str) -> String {
    ok(earshot()
        .args(["sql", "--format", "csv", "--data"])
        .arg(data)
        .arg(sql)
        .output()
        .unwrap())
    .lines()
    .nth(1)
    .unwrap_or("")
    .to_string()
}

#[test]
fn psql_and_psycopg_read_the_tables_and_cannot_change_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_data(&data, 1500, 7);
    let server = serve(&data, &[], None);

    let tables = ok(psql(server.port, "earshot", None, &["-c", "\\dt"]));
    for t in [
        "buckets", "events", "rejects", "rollups", "sessions", "streams",
    ] {
        assert!(tables.contains(&format!("public | {t} ")), "{tables}");
    }
    let described = ok(psql(server.port, "earshot", None, &["-c", "\\d streams"]));
    assert!(described.contains("listeners_connected_60s"), "{described}");
    assert!(described.contains("joined_hll"), "{described}");

    let sql = "SELECT peak_connected FROM streams";
    let got = ok(psql(server.port, "earshot", None, &["-A", "-t", "-c", sql]));
    assert_eq!(got.trim(), cli_scalar(&data, sql));

    let refused = psql(server.port, "earshot", None, &["-c", "DROP TABLE sessions"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("read-only"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let wrong_db = psql(server.port, "postgres", None, &["-c", "SELECT 1"]);
    assert!(!wrong_db.status.success());
    assert!(
        String::from_utf8_lossy(&wrong_db.stderr).contains("database \"postgres\" does not exist")
    );

    python_clients(&server, &data, &[], None);

    let after = ok(psql(
        server.port,
        "earshot",
        None,
        &["-A", "-t", "-c", "SELECT count(*) FROM sessions"],
    ));
    assert_eq!(
        after.trim(),
        cli_scalar(&data, "SELECT count(*) FROM sessions")
    );
}

#[test]
fn runaway_queries_hit_the_limits_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_data(&data, 3000, 8);
    let server = serve(
        &data,
        &["--query-timeout", "1s", "--memory-limit", "4MiB"],
        None,
    );
    python_clients(&server, &data, &["--limits"], None);
}

#[test]
fn off_loopback_needs_a_password_and_logins_are_checked_with_scram() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_data(&data, 300, 9);

    // Refused before binding anything.
    let out = earshot()
        .args(["serve", "--pg", "0.0.0.0:0", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without a password") && err.contains("EARSHOT_PG_PASSWORD"),
        "{err}"
    );

    let server = serve(&data, &[], Some("s3cret-pw-for-tests"));
    let good = ok(psql(
        server.port,
        "earshot",
        Some("s3cret-pw-for-tests"),
        &["-A", "-t", "-c", "SELECT count(*) FROM streams"],
    ));
    assert_eq!(good.trim(), "1");
    let bad = psql(server.port, "earshot", Some("wrong"), &["-c", "SELECT 1"]);
    assert!(!bad.status.success());
    let none = psql(server.port, "earshot", None, &["-w", "-c", "SELECT 1"]);
    assert!(!none.status.success(), "a login without a password got in");
    python_clients(&server, &data, &[], Some("s3cret-pw-for-tests"));

    // The password can also come from a file.
    let file = dir.path().join("pw");
    std::fs::write(&file, "from-a-file-secret\n").unwrap();
    let server = serve(&data, &["--pg-password-file", file.to_str().unwrap()], None);
    let good = ok(psql(
        server.port,
        "earshot",
        Some("from-a-file-secret"),
        &["-A", "-t", "-c", "SELECT 1"],
    ));
    assert_eq!(good.trim(), "1");
}

#[test]
fn short_passwords_are_refused_and_failed_logins_are_logged_and_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_data(&data, 200, 3);
    let short = earshot()
        .args(["serve", "--pg", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env("EARSHOT_PG_PASSWORD", "x")
        .output()
        .unwrap();
    assert!(!short.status.success());
    let err = String::from_utf8_lossy(&short.stderr);
    assert!(err.contains("1 characters long; use at least 12"), "{err}");

    // The server's log (standard error) goes to a file the test reads.
    let log = dir.path().join("serve.log");
    let mut cmd = earshot();
    cmd.args(["serve", "--pg", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env("EARSHOT_PG_PASSWORD", "a-long-enough-password")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = cmd.spawn().unwrap();
    let mut first = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut first).unwrap();
    // Keep reading, so the server never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let port: u16 = first
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {first:?}"));
    let server = Server { child, port };
    for _ in 0..5 {
        let bad = psql(
            port,
            "earshot",
            Some("wrong-guess-000"),
            &["-c", "SELECT 1"],
        );
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(err.contains("assword authentication failed"), "{err}");
    }
    // The sixth attempt is refused before its password is even checked, right one included.
    let refused = psql(
        port,
        "earshot",
        Some("a-long-enough-password"),
        &["-c", "SELECT 1"],
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("too many failed logins"),
        "{err}"
    );
    drop(server);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        logged
            .matches("Postgres login failed: wrong password")
            .count(),
        5,
        "{logged}"
    );
    assert!(logged.contains("too many failed logins"), "{logged}");
}

#[test]
fn a_new_generation_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_data(&data, 300, 10);
    let server = serve(&data, &[], None);
    let query = ["-A", "-t", "-c", "SELECT listeners_joined FROM streams"];
    let before = ok(psql(server.port, "earshot", None, &query));
    assert_eq!(before.trim(), "300");

    make_data(&data, 700, 11);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = ok(psql(server.port, "earshot", None, &query));
        if now.trim() == "700" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still serving {now:?} after the re-ingest"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs a client program that prints PASS/FAIL lines against a server on `data`.
fn client_passes(what: &str, cmd: Command, server: &Server, data: &Path, last_check: &str) {
    let key = (STREAM, "serve-test-secret");
    serving::client_passes(what, cmd, server.port, data, key, last_check);
}

/// node-postgres, and pgjdbc (the JDBC driver behind DBeaver, Metabase and Tableau): metadata,
/// prepared statements with parameters, types, read-only, and earshot's figures.
#[test]
fn node_postgres_and_pgjdbc_connect_and_read_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_data(&data, 500, 11);
    let server = serve(&data, &[], None);
    let mut node = Command::new("node");
    node.arg(repo().join("tests/node_client/client.mjs"));
    client_passes(
        "node with node-postgres",
        node,
        &server,
        &data,
        "the connection keeps working after errors",
    );
    let mut java = Command::new("java");
    java.args(["-cp", "/usr/share/java/postgresql.jar"])
        .arg(repo().join("tests/jdbc/JdbcClient.java"));
    client_passes(
        "java with pgjdbc (Debian's libpostgresql-jdbc-java)",
        java,
        &server,
        &data,
        "the connection keeps working after an error",
    );
}

/// With a certificate, the endpoint speaks TLS, and refuses a plaintext login.
#[test]
fn with_a_certificate_postgres_clients_must_use_tls() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_data(&data, 300, 12);
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    ok(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (scripts/setup installs it)"));
    let password = "correct-horse-battery";
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let server = serve(
        &data,
        &["--pg-tls-cert", cert_s, "--pg-tls-key", key_s],
        Some(password),
    );
    let with_mode = |mode: &str| {
        let mut c = Command::new("psql");
        c.args(["-X", "-At", "-v", "ON_ERROR_STOP=1"])
            .arg(format!(
                "host=127.0.0.1 port={} user=earshot dbname=earshot sslmode={mode} sslrootcert={cert_s}",
                server.port
            ))
            .args(["-c", "SELECT count(*) FROM streams"])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10");
        c.output().unwrap()
    };
    let plain = with_mode("disable");
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(
        !plain.status.success() && err.contains("requires TLS"),
        "{err}"
    );
    // verify-full checks the certificate against the root and the host name.
    assert_eq!(ok(with_mode("verify-full")).trim(), "1");

    // A key that is not PEM is refused at start, naming the file.
    std::fs::write(&key, "not a key").unwrap();
    let out = earshot()
        .args(["serve", "--pg", "127.0.0.1:0", "--data"])
        .arg(&data)
        .args(["--pg-tls-cert", cert_s, "--pg-tls-key", key_s])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("key.pem"), "{err}");
}
