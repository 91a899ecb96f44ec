//! Ready-on-return (SPEC §3 EnsureContainer/ResumeContainer, `AGENT_ENSURE_READY_TIMEOUT`):
//! after the backend started a worker, wait until it accepts a TCP connection on its port,
//! so the gateway's own probe succeeds at its first try. A worker that never listens is
//! returned at the timeout; one whose process exits meanwhile is reported with its exit code
//! and the tail of its log. Runs over the [`Runtime`] trait, so both backends share it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use esb_runtime::{Observer, Phase, Runtime, WorkerStatus};
use tokio::net::TcpStream;

use crate::metrics::ReadyOutcome;
use crate::service::Core;
use crate::status::ApiError;
use crate::workers::WorkerTable;

/// Pause between refused connects: a refused connect costs microseconds, so a short pause
/// keeps the added latency small without spinning.
const RETRY_PAUSE: Duration = Duration::from_millis(5);
/// Bound of one connect attempt (an address with no host behind it never answers).
const CONNECT_BOUND: Duration = Duration::from_millis(200);
/// How often the process is checked with one `inspect` while it does not listen (the event
/// stream usually tells first, through the table).
const INSPECT_EVERY: Duration = Duration::from_millis(100);
/// Log tail in an exit message: at most this many bytes and lines.
const TAIL_BYTES: usize = 1024;
const TAIL_LINES: usize = 10;

/// What the caller of [`Core::await_ready`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadyFor {
    /// A new worker: its wait is the `ready` phase, and one that exits is destroyed.
    Ensure,
    /// A resumed worker: one that exits stays visible as STOPPED until GC.
    Resume,
}

impl Core {
    /// Waits (up to `AGENT_ENSURE_READY_TIMEOUT`) until the worker `id` at `addr` accepts a
    /// TCP connection. A timeout is not an error (the caller's own probe carries on); an exit
    /// is `UNAVAILABLE` with the exit code and log tail.
    pub(crate) async fn await_ready(
        &self,
        id: &str,
        addr: Option<SocketAddr>,
        what: ReadyFor,
    ) -> Result<(), ApiError> {
        let (Some(addr), false) = (addr, self.ready_timeout.is_zero()) else {
            return Ok(());
        };
        let started = Instant::now();
        let outcome = wait(
            self.runtime.as_ref(),
            &self.table,
            id,
            addr,
            self.ready_timeout,
        )
        .await;
        if what == ReadyFor::Ensure {
            self.metrics.phase(Phase::Ready, started.elapsed());
        }
        match outcome {
            Readiness::Ready => {
                self.metrics.events.ready(ReadyOutcome::Ready);
                Ok(())
            }
            Readiness::TimedOut => {
                self.metrics.events.ready(ReadyOutcome::Timeout);
                tracing::warn!(container_id = %id, timeout = ?self.ready_timeout, "worker not listening yet; returning it anyway");
                Ok(())
            }
            Readiness::Exited => {
                self.metrics.events.ready(ReadyOutcome::Exited);
                let msg = exit_report(self.runtime.as_ref(), id).await;
                if what == ReadyFor::Ensure {
                    match self.runtime.destroy(id).await {
                        Ok(_) => self.table.remove(id),
                        Err(e) => {
                            tracing::warn!(container_id = %id, error = %e.chain(), "cannot destroy a worker that exited at start; GC will")
                        }
                    }
                }
                Err(ApiError::Unavailable(msg))
            }
        }
    }
}

/// How a ready wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Readiness {
    Ready,
    TimedOut,
    /// The worker's process is gone (exited, or the worker vanished).
    Exited,
}

/// Waits until `addr` accepts a connection, `timeout` passes, or the worker `id` stops.
pub(crate) async fn wait(
    runtime: &dyn Runtime,
    table: &WorkerTable,
    id: &str,
    addr: SocketAddr,
    timeout: Duration,
) -> Readiness {
    let deadline = Instant::now() + timeout;
    let mut next_inspect = Instant::now() + INSPECT_EVERY;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Readiness::TimedOut;
        }
        if let Ok(Ok(_conn)) =
            tokio::time::timeout(left.min(CONNECT_BOUND), TcpStream::connect(addr)).await
        {
            return Readiness::Ready;
        }
        if table.status(id) == Some(WorkerStatus::Stopped) {
            return Readiness::Exited;
        }
        if Instant::now() >= next_inspect {
            next_inspect = Instant::now() + INSPECT_EVERY;
            match runtime.inspect(id).await {
                Ok(Some(s)) if s.status == WorkerStatus::Stopped => return Readiness::Exited,
                Ok(None) => return Readiness::Exited,
                // Running, paused, unknown, or the daemon did not answer: keep waiting.
                _ => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(RETRY_PAUSE)).await;
    }
}

/// Why the worker `id` is gone: "exited with code N (OOM-killed)" and the last lines of its
/// log, each part omitted when the backend cannot tell.
pub(crate) async fn exit_report(runtime: &dyn Runtime, id: &str) -> String {
    let mut msg = format!("worker {id} exited before accepting connections");
    if let Ok(m) = runtime.metrics(id).await
        && m.status == Some(WorkerStatus::Stopped)
    {
        msg.push_str(&format!(" with code {}", m.exit_code));
        if m.oom_events > 0 {
            msg.push_str(" (OOM-killed)");
        }
    }
    match runtime.read_log(id, None, TAIL_BYTES).await {
        Ok(bytes) if !bytes.is_empty() => {
            msg.push_str("; last output: ");
            msg.push_str(&tail(&bytes));
        }
        Ok(_) => {}
        Err(e) => {
            tracing::debug!(container_id = %id, error = %e.chain(), "no log tail for the exit report")
        }
    }
    msg
}

/// The last [`TAIL_LINES`] lines of `bytes` (already bounded by the caller), lossy UTF-8,
/// control characters replaced, lines joined with " | ".
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    lines[start..]
        .iter()
        .map(|l| {
            l.chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines_without_control_characters() {
        let mut log = String::new();
        for i in 0..15 {
            log.push_str(&format!("line {i}\n"));
        }
        log.push_str("bad \u{1b}[31m\n\n");
        let t = tail(log.as_bytes());
        assert!(t.starts_with("line 6 | "), "{t}");
        assert!(t.ends_with("bad ?[31m"), "{t}");
        assert_eq!(t.matches(" | ").count(), TAIL_LINES - 1);
    }
}
