//! What the Kafka tests share: a tansu broker started on a port of 127.0.0.1 the test picks, the
//! independent client (`tests/kafka_tool.py`), the earshot commands, and the comparison of every
//! table with the file ingest of the same messages.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const TOPIC: &str = "events";

pub fn earshot() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_earshot"));
    c.env("EARSHOT_PSEUDONYM_KEY", "kafka-test-secret");
    c
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({}): {}\nstdout: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tansu broker on 127.0.0.1, stopped on drop. With `sqlite`, its data survives a restart.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    sqlite: bool,
}

impl Broker {
    pub fn start(dir: &Path, sqlite: bool) -> Broker {
        let mut b = Broker {
            child: None,
            port: free_port(),
            dir: dir.to_owned(),
            sqlite,
        };
        b.spawn();
        b
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let storage = if self.sqlite {
            "sqlite://broker.db".to_string()
        } else {
            "memory://tansu/".to_string()
        };
        let log = std::fs::File::create(self.dir.join("broker.log")).unwrap();
        let child = Command::new("tansu")
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &storage])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tansu is not on PATH: run scripts/setup (it installs the broker the Kafka tests use)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        ok(Command::new("tansu")
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--partitions", &partitions.to_string(), name])
            .output()
            .unwrap());
    }

    pub fn tool(&self, args: &[&str]) -> String {
        let mut c = Command::new("python3");
        c.arg(repo().join("tests/kafka_tool.py"))
            .arg(args[0])
            .arg(self.addr())
            .args(&args[1..]);
        ok(c.output().unwrap())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A simulated event with duplicates, late and malformed lines, written to `dir/input.ndjson`.
pub fn simulate(dir: &Path, listeners: u32, seed: u32) -> PathBuf {
    let input = dir.join("input.ndjson");
    ok(earshot()
        .args(["simulate", "--listeners", &listeners.to_string()])
        .args(["--seed", &seed.to_string()])
        .args([
            "--duplicates",
            "0.03",
            "--malformed",
            "0.005",
            "--late",
            "0.002",
        ])
        .arg("--output")
        .arg(&input)
        .output()
        .unwrap());
    input
}

pub fn produce(b: &Broker, input: &Path) {
    ok(earshot()
        .args(["produce", "--kafka", &b.addr(), "--topic", TOPIC, "--input"])
        .arg(input)
        .output()
        .unwrap());
}

pub fn kafka_ingest(b: &Broker, data: &Path, extra: &[&str]) -> Command {
    let mut c = earshot();
    c.args(["ingest", "--kafka", &b.addr(), "--topic", TOPIC, "--data"])
        .arg(data)
        .args(extra);
    c
}

/// The file ingest of every partition's messages (the reference), into `dir/file-data`.
pub fn file_reference(b: &Broker, dir: &Path, partitions: u32) -> PathBuf {
    file_reference_of(b, dir, partitions, None)
}

/// The same, reading until `expected` messages have been dumped when it is known.
pub fn file_reference_of(
    b: &Broker,
    dir: &Path,
    partitions: u32,
    expected: Option<usize>,
) -> PathBuf {
    let parts = dir.join("parts");
    std::fs::create_dir_all(&parts).unwrap();
    let expected = expected.map(|n| n.to_string());
    let mut args = vec!["dump", TOPIC, parts.to_str().unwrap()];
    args.extend(expected.as_deref());
    b.tool(&args);
    let data = dir.join("file-data");
    let mut c = earshot();
    c.arg("ingest").arg("--data").arg(&data);
    for p in 0..partitions {
        c.arg("--input").arg(parts.join(format!("p{p}.ndjson")));
    }
    ok(c.output().unwrap());
    data
}

/// Every table of `data` as sorted CSV lines, leaving out where rows came from (`source`) and
/// when rejects were received (a wall clock).
pub fn tables(data: &Path, with_source: bool) -> Vec<(String, Vec<String>)> {
    tables_with(data, with_source, &[])
}

/// [`tables`] with `env` set for `earshot sql` (a bucket's settings).
pub fn tables_with(
    data: &Path,
    with_source: bool,
    env: &[(String, String)],
) -> Vec<(String, Vec<String>)> {
    ["streams", "buckets", "sessions", "events", "rejects"]
        .iter()
        .map(|name| {
            let left_out: &[&str] = match (*name, with_source) {
                ("events", false) => &["source"],
                ("rejects", false) => &["source", "received_at"],
                ("rejects", true) => &["received_at"],
                _ => &[],
            };
            let columns: Vec<String> = earshot_store::table_schema(name)
                .unwrap()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|c| !left_out.contains(&c.as_str()))
                .collect();
            let out = ok(earshot()
                .envs(env.iter().map(|(k, v)| (k, v)))
                .args(["sql", "--format", "csv", "--data"])
                .arg(data)
                .arg(format!("SELECT {} FROM {name}", columns.join(", ")))
                .output()
                .unwrap());
            let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
            lines.sort();
            (name.to_string(), lines)
        })
        .collect()
}

pub fn assert_same_tables(a: &Path, b: &Path, with_source: bool) {
    assert_same_tables_with(a, b, with_source, &[]);
}

/// [`assert_same_tables`] with `env` set for `earshot sql` (a bucket's settings).
pub fn assert_same_tables_with(a: &Path, b: &Path, with_source: bool, env: &[(String, String)]) {
    let (ta, tb) = (
        tables_with(a, with_source, env),
        tables_with(b, with_source, env),
    );
    for ((name, la), (_, lb)) in ta.iter().zip(&tb) {
        assert!(la.len() > 1 || name == "rejects", "{name} is empty");
        if la != lb {
            let short = |l: &&String| l.chars().take(240).collect::<String>();
            let only_a: Vec<_> = la
                .iter()
                .filter(|l| !lb.contains(l))
                .take(3)
                .map(|l| short(&l))
                .collect();
            let only_b: Vec<_> = lb
                .iter()
                .filter(|l| !la.contains(l))
                .take(3)
                .map(|l| short(&l))
                .collect();
            panic!(
                "table {name} differs ({} vs {} rows)\nonly in {}: {only_a:#?}\nonly in {}: {only_b:#?}",
                la.len(),
                lb.len(),
                a.display(),
                b.display()
            );
        }
    }
}

/// The number after `name=` in a log line.
pub fn field(line: &str, name: &str) -> u64 {
    let at = line
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    line[at + name.len() + 2..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not a number in {line}"))
}

pub fn manifest(data: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(data.join("current/manifest.json")).unwrap()).unwrap()
}

/// Runs `psql` against the endpoint on `port` and returns the single value printed.
pub fn psql(port: u16, sql: &str) -> String {
    ok(Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "earshot",
            "-d",
            "earshot",
        ])
        .args(["-X", "-A", "-t", "-c", sql])
        .output()
        .unwrap())
    .trim()
    .to_string()
}

/// A worker of group `g` on `data` (a directory, or a bucket with `env`), checkpointing every
/// `every`, its log (partitions taken over and handed over) in `log`.
pub fn worker_with(
    b: &Broker,
    data: &Path,
    every: &str,
    extra: &[&str],
    env: &[(String, String)],
    log: &Path,
) -> Child {
    kafka_ingest(
        b,
        data,
        &[
            "--assign",
            "group",
            "--group",
            "g",
            "--checkpoint-interval",
            every,
        ],
    )
    .args(extra)
    .envs(env.iter().map(|(k, v)| (k, v)))
    .env("EARSHOT_LOG", "earshot_ingest=debug")
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(log).unwrap())
    .spawn()
    .unwrap()
}

/// Waits for a worker and fails with its log if it failed.
pub fn wait_ok(mut child: Child, log: &Path) {
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "a worker failed ({status}):\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Produces `input` at `rate` messages a second, in the background.
pub fn produce_at(b: &Broker, input: &Path, rate: u32) -> Child {
    earshot()
        .args(["produce", "--kafka", &b.addr(), "--topic", TOPIC])
        .args(["--rate", &rate.to_string(), "--input"])
        .arg(input)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

pub fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// `earshot run` reading `TOPIC` of `b` into `data` (a directory or a bucket's URL) with `extra`
/// arguments, the environment `env` and a Postgres endpoint on a free port: the child, its
/// standard output (after the line giving the port) and the port.
pub fn spawn_run(
    b: &Broker,
    data: impl AsRef<std::ffi::OsStr>,
    extra: &[&str],
    env: &[(String, String)],
) -> (Child, std::io::BufReader<std::process::ChildStdout>, u16) {
    let mut child = earshot()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(["run", "--kafka", &b.addr(), "--topic", TOPIC, "--data"])
        .arg(data)
        .args(extra)
        .args(["--pg", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let port = pg_port(&mut out);
    (child, out, port)
}

/// The port of the Postgres endpoint a `run` or `serve` announces on standard output.
pub fn pg_port(out: &mut impl std::io::BufRead) -> u16 {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "it ended before serving"
        );
        if let Some(rest) = line.strip_prefix("postgres: listening on ") {
            let addr = rest.split_whitespace().next().unwrap();
            return addr.rsplit(':').next().unwrap().parse().unwrap();
        }
    }
}
