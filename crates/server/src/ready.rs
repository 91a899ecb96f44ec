//! Ready-on-return (SPEC §3 EnsureContainer/ResumeContainer, `AGENT_ENSURE_READY_TIMEOUT`):
//! after the backend started a worker, wait until it accepts a TCP connection on its port,
//! so the gateway's own probe succeeds at its first try. A worker that never listens is
//! returned at the timeout; one whose process exits meanwhile is reported with its exit code
//! and the tail of its log. Runs over the [`Runtime`] trait, so both backends share it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use esb_runtime::{Runtime, WorkerStatus, report};
use tokio::net::TcpStream;

use crate::workers::WorkerTable;

/// Pause between refused connects: a refused connect costs microseconds, so a short pause
/// keeps the added latency small without spinning.
const RETRY_PAUSE: Duration = Duration::from_millis(5);
/// Bound of one connect attempt (an address with no host behind it never answers).
const CONNECT_BOUND: Duration = Duration::from_millis(200);
/// How often the process is checked with one `inspect` while it does not listen (the event
/// stream usually tells first, through the table).
const INSPECT_EVERY: Duration = Duration::from_millis(100);

/// What the caller of `Core::await_ready` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadyFor {
    /// A new worker: its wait is the `ready` phase, and one that exits is destroyed.
    Ensure,
    /// A resumed worker: one that exits stays visible as STOPPED until GC.
    Resume,
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

/// Why the worker `id` is gone: its exit code (OOM kill) and the last lines of its log, each
/// part omitted when the backend cannot tell. The exit event's code comes first: the daemon's
/// own state may still say running right after it (Docker).
pub(crate) async fn exit_report(runtime: &dyn Runtime, table: &WorkerTable, id: &str) -> String {
    let told = table.exit(id);
    let exit = match told.code {
        Some(code) => Some((code, told.oom)),
        None => match runtime.metrics(id).await {
            Ok(m) if m.status == Some(WorkerStatus::Stopped) => {
                Some((m.exit_code, m.oom_events > 0 || told.oom))
            }
            _ => None,
        },
    };
    let log = match runtime.read_log(id, None, report::TAIL_BYTES).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::debug!(container_id = %id, error = %e.chain(), "no log tail for the exit report");
            Vec::new()
        }
    };
    report::exited_at_start(id, exit, &log)
}
