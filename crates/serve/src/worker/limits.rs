//! What holds a worker to its limits, whatever its query does.
//!
//! - **Memory.** DataFusion's pool is the cooperative limit. Under it, the worker caps its own
//!   address space (`RLIMIT_AS`) once it is ready: what it has mapped then, plus its query memory,
//!   plus [`OVERHEAD`]. An allocation past that fails, and the worker dies of it, not the front:
//!   planning, functions that allocate outside the pool, a huge message — all are inside the cap.
//! - **Time.** The worker stops its query at the deadline; the front kills a worker still busy one
//!   second after it ([`GRACE`]), and a worker that burns CPU with no query running.
//! - **Why it died.** The front keeps the last lines the worker wrote to standard error (a stack
//!   overflow and an allocation failure each print one) and turns them and the exit status into a
//!   [`Failure`] the client can act on.

use std::time::Duration;

use earshot_sql::Limits;

use super::process::StderrTail;
use super::{Failure, FailureKind};

/// Address space a worker may map beyond its baseline and its query memory: the planner, the
/// parser, the rendered result's copy, the stacks of the query runtime's blocking threads (up to
/// 8 × 32 MiB, reserved, mostly untouched) and the allocator's own rounding.
pub const OVERHEAD: usize = 512 << 20;

/// How long after its deadline a busy worker is killed.
pub const GRACE: Duration = Duration::from_secs(1);

/// CPU a worker with no query running may use per second (measured over two half-seconds in a
/// row) before it is taken for a query that did not stop, and killed.
pub const IDLE_CPU_PER_SECOND: Duration = Duration::from_millis(500);

/// Caps this process's address space at what it has mapped now plus `memory` plus [`OVERHEAD`].
/// Returns the cap. Call it once the worker is ready: its query threads started (a first query has
/// run), its tables registered.
pub fn cap_address_space(memory: usize) -> std::io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| std::io::Error::other("cannot read /proc/self/statm"))?;
    let cap = pages * 4096 + memory as u64 + OVERHEAD as u64;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_AS, cap, cap)
        .map_err(std::io::Error::from)?;
    Ok(cap)
}

/// CPU time (user and system) used so far by process `pid`, from `/proc`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here (0-based, after
    // field 2), in clock ticks of 1/100 s (USER_HZ on Linux).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Why the front killed a worker, if it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Killed {
    /// Still busy a [`GRACE`] after its deadline.
    Deadline,
    /// Cancelled by its client and still busy a [`GRACE`] later.
    Cancelled,
    /// Burning CPU with no query running: a stopped query that did not stop.
    Runaway,
}

/// The failure to report for a worker that ended with `status` while it owed an answer.
pub fn death(
    status: Option<std::process::ExitStatus>,
    tail: &StderrTail,
    killed: Option<Killed>,
    limits: &Limits,
) -> Failure {
    use std::os::unix::process::ExitStatusExt;
    let time = earshot_sql::human_duration(limits.time);
    let memory = earshot_sql::human_bytes(limits.memory);
    let (kind, message) = match killed {
        Some(Killed::Runaway) => (
            FailureKind::TimeLimit,
            "query cancelled: its worker process kept computing after its query had been \
             stopped, so it was killed and replaced"
                .to_string(),
        ),
        Some(Killed::Deadline) => (
            FailureKind::TimeLimit,
            format!(
                "query cancelled: it ran longer than the time limit of {time} and did not stop, so \
                 its worker process was killed (raise the limit with --query-timeout)"
            ),
        ),
        Some(Killed::Cancelled) => (
            FailureKind::TimeLimit,
            "query cancelled at the client's request; it did not stop, so its worker process was killed"
                .to_string(),
        ),
        // The stack ran out, or growing it (DataFusion's planner grows its stack on the heap as it
        // recurses) passed the address-space cap.
        None if tail.contains("has overflowed its stack")
            || tail.contains("failed to allocate stack") =>
        {
            (
            FailureKind::TooComplex,
            "query refused: it is nested too deeply to plan or run (its worker process ran out of \
             stack and was replaced); write it with fewer nested or chained terms"
                .to_string(),
            )
        }
        None if tail.contains("memory allocation of") => (
            FailureKind::MemoryLimit,
            format!(
                "query cancelled: it needed more memory than the limit of {memory} allows (its worker \
                 process could not allocate and was replaced; raise the limit with --memory-limit)"
            ),
        ),
        None => {
            let how = match status {
                Some(s) if s.signal() == Some(9) => {
                    "was killed by the operating system (out of memory?)".to_string()
                }
                Some(s) if s.signal().is_some() => {
                    format!("died of signal {}", s.signal().unwrap_or(0))
                }
                Some(s) => format!("exited with {s}"),
                None => "stopped answering".to_string(),
            };
            let last = tail.last().map(|l| format!(": {l}")).unwrap_or_default();
            (
                FailureKind::Crashed,
                format!(
                    "the query's worker process {how}{last}. The server carries on; this is a bug in \
                     earshot, please report it with the query"
                ),
            )
        }
    };
    Failure { kind, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_reads_this_process() {
        let spent = cpu_time(std::process::id()).expect("own /proc entry");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let later = cpu_time(std::process::id()).expect("own /proc entry");
        assert!(
            later >= spent + Duration::from_millis(150),
            "{spent:?} → {later:?}"
        );
    }
}
