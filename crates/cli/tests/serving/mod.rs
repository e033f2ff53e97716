//! What the tests of `earshot serve` share: the command, a simulated data directory, a running
//! server on ports of 127.0.0.1 it picks, a plain HTTP/1.1 client, psql, and CPU time read from
//! `/proc` (for a server and the worker processes it started).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

pub fn earshot() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_earshot"));
    c.env("EARSHOT_PSEUDONYM_KEY", "http-test-secret")
        .env_remove("EARSHOT_HTTP_TOKEN")
        .env_remove("EARSHOT_PG_PASSWORD");
    c
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn data(dir: &Path, listeners: u32) -> PathBuf {
    let input = dir.join("events.ndjson");
    let data = dir.join("data");
    assert!(
        earshot()
            .args([
                "simulate",
                "--listeners",
                &listeners.to_string(),
                "--stream-id",
                "hall",
                "--output"
            ])
            .arg(&input)
            .output()
            .unwrap()
            .status
            .success()
    );
    assert!(
        earshot()
            .args(["ingest", "--input"])
            .arg(&input)
            .arg("--data")
            .arg(&data)
            .output()
            .unwrap()
            .status
            .success()
    );
    data
}

pub struct Server {
    pub child: Child,
    pub port: u16,
    /// With `--pg 127.0.0.1:0` among the arguments.
    pub pg_port: Option<u16>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let mut cmd = earshot();
    cmd.args(["serve", "--http", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut port = None;
    let mut pg_port = None;
    let mut line = String::new();
    let number = |rest: &str| {
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|p| p.parse().ok())
    };
    while port.is_none() {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "server exited");
        if let Some(rest) = line.strip_prefix("http: listening on 127.0.0.1:") {
            port = number(rest);
        }
        if let Some(rest) = line.strip_prefix("postgres: listening on 127.0.0.1:") {
            pg_port = number(rest);
        }
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Server {
        child,
        port: port.unwrap(),
        pg_port,
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A plain HTTP/1.1 exchange over a fresh connection.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16)
                .unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + n]);
            rest = &rest[nl + 2 + n + 2..];
        }
        body = out;
    }
    Reply {
        status,
        headers,
        body,
    }
}

pub fn get(port: u16, path: &str) -> Reply {
    http(port, "GET", path, &[], b"")
}

/// Runs `cmd` with `input` on its standard input; returns its output.
pub fn with_stdin(cmd: &mut Command, input: &str) -> std::io::Result<std::process::Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())?;
    child.wait_with_output()
}

/// CPU seconds the process has used so far (Linux: utime + stime of /proc/PID/stat).
pub fn cpu_seconds(pid: u32) -> f64 {
    try_cpu_seconds(pid).unwrap_or_else(|| panic!("no /proc entry for {pid}"))
}

fn try_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// psql on the server's Postgres port, as user `earshot` on database `earshot`, stopping at the
/// first error, unaligned rows only.
pub fn psql(pg_port: u16) -> Command {
    let mut c = Command::new("psql");
    c.args(["-X", "-h", "127.0.0.1", "-p", &pg_port.to_string()])
        .args(["-U", "earshot", "-d", "earshot"])
        .args(["-v", "ON_ERROR_STOP=1", "-At"])
        .env("PGCONNECT_TIMEOUT", "10");
    c
}

pub fn psql_fails(pg_port: u16, sql: &str) -> String {
    let out = psql(pg_port)
        .args(["-v", "VERBOSITY=verbose", "-c", sql])
        .output()
        .expect("psql (scripts/setup installs postgresql-client)");
    assert!(!out.status.success(), "{sql} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A cross join feeding a sort: CPU-bound, and never waiting on input once it starts.
// Three copies of `events` (15,000 rows each): a pair of copies sorted in 1.5 s on a fast machine,
// under the 2 s limit the tests set; three never finish.
pub const WORST: &str = "SELECT a.event_id, b.event_id FROM events a, events b, events c \
                         ORDER BY a.session_id || b.session_id || c.session_id DESC LIMIT 5";

/// The processes whose parent is `pid` (a server's query workers), from `/proc`.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let parent = stat[close + 2..]
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if parent == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// CPU seconds used so far by `pid` and the processes it started that are still running.
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    let mut total = cpu_seconds(pid);
    for child in children(pid) {
        // A worker may end between the listing and the read.
        total += try_cpu_seconds(child).unwrap_or(0.0);
    }
    total
}

/// Runs a client program (one of `tests/*.py`, node, java) that prints PASS/FAIL lines against a
/// Postgres endpoint on `pg_port` serving `data`: it must exit 0, pass `last_check`, fail nothing.
/// `key` is the pseudonym key `data` was ingested with (the client runs `earshot sql` on it).
pub fn client_passes(
    what: &str,
    mut cmd: Command,
    pg_port: u16,
    data: &Path,
    (stream, key): (&str, &str),
    last_check: &str,
) {
    let out = cmd
        .args(["--port", &pg_port.to_string()])
        .args(["--earshot", env!("CARGO_BIN_EXE_earshot"), "--data"])
        .arg(data)
        .args(["--stream", stream])
        .env("EARSHOT_PSEUDONYM_KEY", key)
        .output()
        .unwrap_or_else(|e| panic!("{what} (scripts/setup installs it): {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&format!("PASS {last_check}")),
        "{what} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("FAIL"), "{what}:\n{text}");
}
