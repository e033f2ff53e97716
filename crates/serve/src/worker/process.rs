//! A worker process as the front holds it: its exit status when it comes, a kill that cannot hit
//! another process, and the last lines of its standard error.
//!
//! Every standard stream of a worker is one end of a Unix socket pair (or the client's socket),
//! never a pipe: the front reads and writes them with the same socket type it serves with.

use std::collections::VecDeque;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncBufReadExt;
use tokio::net::UnixStream;
use tokio::sync::watch;

/// A started worker.
pub struct Process {
    pub pid: u32,
    exited: watch::Receiver<Option<ExitStatus>>,
}

impl Process {
    /// Starts `cmd` with standard error on a socket the returned [`StderrTail`] reads.
    pub fn spawn(
        mut cmd: Command,
    ) -> std::io::Result<(Process, StderrTail, tokio::task::JoinHandle<()>)> {
        let (errors, theirs) = StdUnixStream::pair()?;
        cmd.stderr(std::os::fd::OwnedFd::from(theirs));
        let mut child = cmd.spawn()?;
        // This process's copies of the child's ends go with the command.
        drop(cmd);
        let pid = child.id();
        let (tell, exited) = watch::channel(None);
        std::thread::Builder::new()
            .name(format!("wait-{pid}"))
            .spawn(move || {
                let status = child.wait().ok();
                let _ = tell.send(status.or(Some(ExitStatus::default())));
            })?;
        errors.set_nonblocking(true)?;
        let (tail, done) = StderrTail::follow(UnixStream::from_std(errors)?, pid);
        Ok((Process { pid, exited }, tail, done))
    }

    /// Sends SIGKILL, unless the process has already been waited for (its id may be reused).
    pub fn kill(&self) {
        if self.exited.borrow().is_none() {
            let pid = nix::unistd::Pid::from_raw(self.pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Whether the process has been seen to exit (killed while idle, for one).
    pub fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    /// Waits for the exit.
    pub async fn wait(&mut self) -> Option<ExitStatus> {
        let status = self.exited.wait_for(|s| s.is_some()).await.ok()?;
        *status
    }

    /// Kills the process and waits for it.
    pub async fn kill_and_wait(&mut self) -> Option<ExitStatus> {
        self.kill();
        self.wait().await
    }
}

/// The last lines a worker wrote to standard error, and the first that says why a process died (a
/// backtrace can follow it for many lines). Every line is also passed on to this process's
/// standard error, so nothing a worker logs is lost.
#[derive(Clone, Default)]
pub struct StderrTail(Arc<Mutex<Lines>>);

#[derive(Default)]
struct Lines {
    last: VecDeque<String>,
    cause: Option<String>,
}

/// What the Rust runtime prints when a process dies of it.
const CAUSES: [&str; 4] = [
    "memory allocation of",
    "has overflowed its stack",
    "failed to allocate stack",
    "panicked at",
];

impl StderrTail {
    const LINES: usize = 16;

    /// Reads `stderr` until it closes, in a task (the handle ends with it).
    fn follow(stderr: UnixStream, pid: u32) -> (StderrTail, tokio::task::JoinHandle<()>) {
        let tail = StderrTail::default();
        let kept = tail.clone();
        let done = tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("query worker {pid}: {line}");
                let mut t = kept.0.lock().unwrap_or_else(|p| p.into_inner());
                if t.cause.is_none() && CAUSES.iter().any(|c| line.contains(c)) {
                    t.cause = Some(line.clone());
                }
                if t.last.len() == Self::LINES {
                    t.last.pop_front();
                }
                t.last.push_back(line);
            }
        });
        (tail, done)
    }

    pub fn contains(&self, words: &str) -> bool {
        let t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        t.cause
            .iter()
            .chain(t.last.iter())
            .any(|l| l.contains(words))
    }

    /// The line that says why the worker died, or else its last line.
    pub fn last(&self) -> Option<String> {
        let t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        t.cause.clone().or_else(|| t.last.back().cloned())
    }
}
