//! The control socket between a Postgres connection's worker and the front, the worker's side.
//!
//! One line per message. Worker → front: `ready` (set up; from now on it is idle unless it holds a
//! turn), `key PID HEX` (the cancel key it gave its client), `turn` (asks to run a query), `done`
//! (gives a turn back), `login-failed`. Front → worker: `go` (the turn), `busy RUNNING WAITED_MS`
//! (no turn came in time), `cancel` (the client asked to cancel the running query).
//!
//! A worker asks for one turn at a time. Its front kills it if it holds a turn past the deadline
//! plus a grace, so everything that can take long — parsing, planning, running, sending rows —
//! happens inside a turn. If the front goes away, the worker exits.

use std::sync::Arc;
use std::time::Duration;

use earshot_sql::SqlError;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

/// What the front answered to `turn`.
enum Grant {
    Go,
    Busy { running: usize, waited: Duration },
}

pub struct Control {
    out: mpsc::UnboundedSender<String>,
    grants: tokio::sync::Mutex<mpsc::UnboundedReceiver<Grant>>,
    cancels: watch::Receiver<u64>,
}

impl Control {
    /// Starts the reading and writing tasks on `stream`.
    pub fn start(stream: tokio::net::UnixStream) -> Arc<Control> {
        let (read, mut write) = stream.into_split();
        let (out, mut outgoing) = mpsc::unbounded_channel::<String>();
        let (grant, grants) = mpsc::unbounded_channel();
        let (cancel, cancels) = watch::channel(0u64);
        tokio::spawn(async move {
            while let Some(line) = outgoing.recv().await {
                if write.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut words = line.split_whitespace();
                match words.next() {
                    Some("go") => {
                        let _ = grant.send(Grant::Go);
                    }
                    Some("busy") => {
                        let mut n = || words.next().and_then(|w| w.parse::<u64>().ok());
                        let running = n().unwrap_or(1) as usize;
                        let waited = Duration::from_millis(n().unwrap_or(0));
                        let _ = grant.send(Grant::Busy { running, waited });
                    }
                    Some("cancel") => {
                        // The operators stop at their next batch; the waiting client is answered
                        // at once.
                        earshot_sql::exec::cancel_running();
                        cancel.send_modify(|n| *n += 1);
                    }
                    _ => tracing::warn!("unknown control line from the front: {line:?}"),
                }
            }
            // The front is gone: nobody supervises this worker any more.
            std::process::exit(0);
        });
        Arc::new(Control {
            out,
            grants: tokio::sync::Mutex::new(grants),
            cancels,
        })
    }

    /// Sends one line to the front.
    pub fn send(&self, line: impl Into<String>) {
        let mut line = line.into();
        line.push('\n');
        let _ = self.out.send(line);
    }

    /// Waits for the front's turn to run a query; the turn goes back when the result is dropped.
    pub async fn turn(self: &Arc<Self>) -> Result<RemoteTurn, SqlError> {
        let mut grants = self.grants.lock().await;
        self.send("turn");
        match grants.recv().await {
            Some(Grant::Go) => Ok(RemoteTurn(self.clone())),
            Some(Grant::Busy { running, waited }) => Err(SqlError::Busy { running, waited }),
            None => Err(SqlError::Busy {
                running: 0,
                waited: Duration::ZERO,
            }),
        }
    }

    /// A receiver whose value changes when the client cancels; mark it seen before the query.
    pub fn cancels(&self) -> watch::Receiver<u64> {
        let mut r = self.cancels.clone();
        r.borrow_and_update();
        r
    }
}

/// A turn from the front, given back on drop.
pub struct RemoteTurn(Arc<Control>);

impl Drop for RemoteTurn {
    fn drop(&mut self) {
        self.0.send("done");
    }
}
