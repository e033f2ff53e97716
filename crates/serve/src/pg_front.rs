//! The Postgres listener of the front: it accepts connections and gives each to a worker process of
//! its own, as Postgres's postmaster forks a backend per connection. It never reads a query.
//!
//! - A new connection's first bytes are *peeked*, not read: a `CancelRequest` is answered here (the
//!   front knows which worker gave out the key); anything else — a startup message, an SSL request,
//!   a TLS handshake — is handed on untouched as the worker's standard input.
//! - At most `max_connections` connections have a worker; one more is refused with SQLSTATE 53300,
//!   before any process starts.
//! - Each worker's turns (`--max-queries` running at once over HTTP and Postgres together), its
//!   deadline plus [`GRACE`], its cancel requests and its CPU while idle are supervised here (see
//!   `worker::control` for the lines they exchange). A worker that dies or is killed while it owed
//!   an answer leaves its client an error saying why (on a plaintext connection; a TLS session
//!   died with the worker, so there the connection just closes), and the log says it too.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use earshot_sql::exec::Turn;
use earshot_sql::{Limits, SqlError, Tables};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::ServeError;
use crate::pg::{Auth, FailedLogins, PgTls};
use crate::worker::limits::{self, GRACE, IDLE_CPU_PER_SECOND, Killed};
use crate::worker::process::Process;
use crate::worker::{PgWorker, Spawner};

/// The protocol codes of a `CancelRequest`, an `SSLRequest` and a `GSSENCRequest`.
const CANCEL_REQUEST: u32 = 80_877_102;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// A cancel key as a client sends it back: the process id and the secret's bytes.
type CancelKey = (i32, Vec<u8>);

/// A bound Postgres listener, ready to serve.
pub struct PgServer {
    listener: TcpListener,
    front: Arc<Front>,
}

struct Front {
    spawner: Spawner,
    tables: Arc<Tables>,
    auth: Auth,
    tls: Option<PgTls>,
    salt: Vec<u8>,
    limits: Limits,
    max_connections: usize,
    open: Arc<tokio::sync::Semaphore>,
    /// Each live connection's cancel key, to its supervisor.
    keys: Mutex<HashMap<CancelKey, mpsc::UnboundedSender<()>>>,
    failed_logins: FailedLogins,
}

impl PgServer {
    /// Binds `addr` (port 0 picks a free port) after checking that `auth` is allowed there.
    /// `tables` is the front's: its admission gives the turns.
    pub async fn bind(
        tables: Arc<Tables>,
        addr: SocketAddr,
        auth: Auth,
        tls: Option<PgTls>,
        spawner: Spawner,
        max_connections: usize,
    ) -> Result<PgServer, ServeError> {
        if matches!(auth, Auth::Trust) && !addr.ip().is_loopback() {
            return Err(ServeError::NoPassword(addr));
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| ServeError::Catalog(e.to_string()))?;
        let limits = spawner.limits;
        Ok(PgServer {
            listener,
            front: Arc::new(Front {
                spawner,
                tables,
                auth,
                tls,
                salt: salt.to_vec(),
                limits,
                max_connections: max_connections.max(1),
                open: Arc::new(tokio::sync::Semaphore::new(max_connections.max(1))),
                keys: Mutex::default(),
                failed_logins: FailedLogins::default(),
            }),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until the task is dropped.
    pub async fn run(self) {
        loop {
            match self.listener.accept().await {
                Ok((socket, peer)) => {
                    let front = self.front.clone();
                    tokio::spawn(async move { front.connection(socket, peer).await });
                }
                Err(e) => {
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl Front {
    async fn connection(self: Arc<Self>, mut socket: TcpStream, peer: SocketAddr) {
        let mut head = [0u8; 8];
        if !peek_exactly(&socket, &mut head, Duration::from_secs(10)).await {
            return;
        }
        let length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if code == CANCEL_REQUEST && (16..=300).contains(&length) {
            let mut message = vec![0u8; length];
            if socket.read_exact(&mut message).await.is_ok() {
                let key = &message[8..];
                let pid = i32::from_be_bytes([key[0], key[1], key[2], key[3]]);
                self.cancel(&(pid, key[4..].to_vec()));
            }
            return;
        }
        let Ok(permit) = self.open.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "Postgres connection refused: {} are open", self.max_connections);
            let message = format!(
                "sorry, too many clients already: this server takes {} Postgres connections at \
                 once (raise --pg-max-connections)",
                self.max_connections
            );
            let _ =
                tokio::time::timeout(Duration::from_secs(10), self.refuse(&mut socket, &message))
                    .await;
            return;
        };
        if let Err(e) = self.backend(socket, peer).await {
            tracing::warn!(%peer, "cannot start a worker for a Postgres connection: {e}");
        }
        drop(permit);
    }

    /// Refuses a connection as Postgres does: after the client's startup message, so that it shows
    /// the message. Without TLS, an SSL or GSS encryption request is declined first (`N`), as a
    /// server without TLS declines it; with TLS the refusal goes in answer to the request (libpq
    /// then says only that the server sent an error).
    async fn refuse(&self, socket: &mut TcpStream, message: &str) -> std::io::Result<()> {
        let refusal = error_response("FATAL", "53300", message);
        for _ in 0..3 {
            let mut head = [0u8; 8];
            socket.read_exact(&mut head).await?;
            let length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
            if (code == SSL_REQUEST || code == GSSENC_REQUEST) && self.tls.is_none() {
                socket.write_all(b"N").await?;
                continue;
            }
            if code != SSL_REQUEST && code != GSSENC_REQUEST && (8..=10_000).contains(&length) {
                let mut rest = vec![0u8; length - 8];
                socket.read_exact(&mut rest).await?;
            }
            break;
        }
        socket.write_all(&refusal).await
    }

    /// Passes a client's cancel request to the worker that gave out its key.
    fn cancel(&self, key: &CancelKey) {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        match keys.get(key) {
            Some(to) => {
                let _ = to.send(());
            }
            None => tracing::debug!("a cancel request with an unknown key"),
        }
    }

    /// Starts the connection's worker and supervises it until it ends.
    async fn backend(self: &Arc<Self>, socket: TcpStream, peer: SocketAddr) -> std::io::Result<()> {
        let socket = socket.into_std()?;
        // On a plaintext connection the front keeps a handle, to tell the client why its worker
        // died; a TLS session dies with the worker.
        let kept = match self.tls {
            None => socket.try_clone().ok(),
            Some(_) => None,
        };
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let (user, password) = match &self.auth {
            Auth::Trust => (None, None),
            Auth::Password { user, password } => (Some(user.clone()), Some(password.clone())),
        };
        let config = self.spawner.config(Some(PgWorker {
            peer,
            user,
            password,
            salt: self.salt.clone(),
            tls_cert: self.tls.as_ref().map(|t| t.cert.clone()),
            tls_key: self.tls.as_ref().map(|t| t.key.clone()),
            refused_for_secs: self
                .failed_logins
                .refused_for(peer.ip())
                .map(|d| d.as_secs().max(1)),
        }));
        let mut cmd = self.spawner.command(&config);
        cmd.stdin(OwnedFd::from(socket))
            .stdout(OwnedFd::from(theirs));
        // The command, and with it this process's copies of the socket and of the worker's end of
        // the control socket, is dropped in `spawn`: the worker holds them alone.
        let (mut child, tail, tail_done) = Process::spawn(cmd)?;
        let pid = child.pid;
        ours.set_nonblocking(true)?;
        let control = tokio::net::UnixStream::from_std(ours)?;
        let mut watch = Supervised {
            front: self.clone(),
            pid,
            peer,
            held: VecDeque::new(),
            cancelled_at: None,
            ready: false,
            keys: Vec::new(),
        };
        let (status, killed) = watch.supervise(&mut child, control).await;
        watch.forget_keys();
        // Its turns go back now, not after the client has been told.
        let owed_turns = !watch.held.is_empty();
        watch.held.clear();
        let _ = tokio::time::timeout(GRACE, tail_done).await;
        // A worker that exits cleanly ends its connection itself (the client said goodbye, or went).
        let clean = status.is_some_and(|s| s.success());
        if killed.is_some() || !clean {
            tracing::debug!(worker = pid, owed_turns, "the worker ended owing an answer");
            let failure = limits::death(status, &tail, killed, &self.limits);
            tracing::warn!(%peer, worker = pid, "a Postgres connection's worker ended: {failure}");
            if let Some(mut kept) = kept {
                use std::io::Write;
                let _ = kept.set_nonblocking(false);
                let _ = kept.write_all(&error_response(
                    "FATAL",
                    failure.sqlstate(),
                    &failure.message,
                ));
            }
        }
        Ok(())
    }
}

/// One connection's worker, as its supervisor sees it.
struct Supervised {
    front: Arc<Front>,
    pid: u32,
    peer: SocketAddr,
    /// Turns it holds, with when each was given.
    held: VecDeque<(Turn, Instant)>,
    cancelled_at: Option<Instant>,
    /// Set up and idle unless it holds a turn.
    ready: bool,
    keys: Vec<CancelKey>,
}

impl Supervised {
    /// Runs until the worker exits (or is killed). Returns its exit status and why it was killed.
    async fn supervise(
        &mut self,
        child: &mut Process,
        control: tokio::net::UnixStream,
    ) -> (Option<std::process::ExitStatus>, Option<Killed>) {
        let (read, mut write) = control.into_split();
        let mut lines = BufReader::new(read).lines();
        let (cancel_to, mut cancels) = mpsc::unbounded_channel::<()>();
        let (granted_to, mut grants) = mpsc::unbounded_channel::<Result<Turn, SqlError>>();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut cpu = (Instant::now(), Duration::ZERO);
        let mut burning = 0;
        // Whether a turn was held at any time in the current half-second: the CPU it measures is
        // then (partly) the query's, not idle burn.
        let mut turn_in_window = false;
        let limits = self.front.limits;
        let killed = loop {
            tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(line)) => self.heard(&line, &cancel_to, &granted_to),
                    // The worker closed its end: it is exiting.
                    _ => break None,
                },
                Some(turn) = grants.recv() => {
                    let reply = match turn {
                        Ok(turn) => {
                            self.held.push_back((turn, Instant::now()));
                            turn_in_window = true;
                            "go\n".to_string()
                        }
                        Err(SqlError::Busy { running, waited }) => {
                            format!("busy {running} {}\n", waited.as_millis())
                        }
                        Err(_) => "busy 0 0\n".to_string(),
                    };
                    let _ = write.write_all(reply.as_bytes()).await;
                }
                Some(()) = cancels.recv() => {
                    let _ = write.write_all(b"cancel\n").await;
                    if !self.held.is_empty() {
                        self.cancelled_at = Some(Instant::now());
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    if let Some((_, since)) = self.held.front()
                        && now > *since + limits.time + GRACE
                    {
                        break Some(Killed::Deadline);
                    }
                    if let Some(at) = self.cancelled_at
                        && !self.held.is_empty()
                        && now > at + GRACE
                    {
                        break Some(Killed::Cancelled);
                    }
                    if now >= cpu.0 + Duration::from_millis(500) {
                        // Two half-seconds in a row over the idle allowance, with no turn held:
                        // a query that was stopped but did not stop.
                        let spent = limits::cpu_time(self.pid).unwrap_or_default();
                        let idle = self.ready && self.held.is_empty() && !turn_in_window;
                        turn_in_window = !self.held.is_empty();
                        if idle && spent.saturating_sub(cpu.1) > IDLE_CPU_PER_SECOND / 2 {
                            burning += 1;
                            if burning >= 2 {
                                break Some(Killed::Runaway);
                            }
                        } else {
                            burning = 0;
                        }
                        cpu = (now, spent);
                    }
                }
            }
        };
        if killed.is_some() {
            child.kill();
        }
        let status = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
            Ok(s) => s,
            Err(_) => child.kill_and_wait().await,
        };
        (status, killed)
    }

    /// One line from the worker.
    fn heard(
        &mut self,
        line: &str,
        cancel_to: &mpsc::UnboundedSender<()>,
        granted_to: &mpsc::UnboundedSender<Result<Turn, SqlError>>,
    ) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("ready") => self.ready = true,
            Some("turn") => {
                let front = self.front.clone();
                let granted_to = granted_to.clone();
                tokio::spawn(async move {
                    let _ = granted_to.send(front.tables.admission.turn().await);
                });
            }
            Some("done") => {
                self.held.pop_front();
                if self.held.is_empty() {
                    self.cancelled_at = None;
                }
            }
            Some("key") => {
                let pid = words.next().and_then(|w| w.parse::<i32>().ok());
                let secret = words.next().and_then(unhex);
                if let (Some(pid), Some(secret)) = (pid, secret) {
                    let key = (pid, secret);
                    self.front
                        .keys
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key.clone(), cancel_to.clone());
                    self.keys.push(key);
                }
            }
            Some("login-failed") => self.front.failed_logins.failed(self.peer.ip()),
            // A cancel request that reached this worker: it may be for any connection.
            Some("cancel-request") => {
                let pid = words.next().and_then(|w| w.parse::<i32>().ok());
                let secret = words.next().and_then(unhex);
                if let (Some(pid), Some(secret)) = (pid, secret) {
                    self.front.cancel(&(pid, secret));
                }
            }
            _ => tracing::warn!(worker = self.pid, "unknown control line: {line:?}"),
        }
    }

    fn forget_keys(&mut self) {
        let mut keys = self.front.keys.lock().unwrap_or_else(|p| p.into_inner());
        for key in self.keys.drain(..) {
            keys.remove(&key);
        }
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Waits until `buf.len()` bytes can be peeked (without reading them), up to `within`.
async fn peek_exactly(socket: &TcpStream, buf: &mut [u8], within: Duration) -> bool {
    let until = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(until, socket.peek(buf)).await {
            Ok(Ok(n)) if n >= buf.len() => return true,
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
            // Part of it so far: the rest is on its way.
            Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
    }
}

/// A Postgres `ErrorResponse` message.
fn error_response(severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    for (tag, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        fields.push(tag);
        fields.extend_from_slice(value.replace('\0', " ").as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut out = vec![b'E'];
    out.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(&fields);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_response_is_framed_as_postgres_frames_it() {
        let m = error_response("FATAL", "53300", "too many");
        assert_eq!(m[0], b'E');
        let len = u32::from_be_bytes([m[1], m[2], m[3], m[4]]) as usize;
        assert_eq!(len + 1, m.len());
        assert!(m.ends_with(b"too many\0\0"));
        assert_eq!(unhex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(unhex("0"), None);
    }
}
