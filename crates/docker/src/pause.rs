//! Pause and resume: idempotent by state; a stopped worker cannot be resumed. Workers known
//! to be managed go straight to the daemon; the state is only inspected when the daemon
//! refuses or the worker is not known yet.

use std::time::Duration;

use esb_runtime::{Result, RuntimeError, WorkerStatus};

use crate::Inner;
use crate::convert::inspect_status;
use crate::error::{Subject, is_not_found, map, status_of};
use crate::list::inspect_managed;

/// dockerd applies containerd's pause/resume events asynchronously: right after a quick
/// pause -> unpause, a late "paused" event can flip the state back for a few milliseconds
/// (the same race as fnproject/fn#836). A refused call waits this long before the state is
/// read, so a pending event has landed.
const STATE_SETTLE: Duration = Duration::from_millis(50);
/// Inspect-and-call rounds before giving up on a state that keeps changing.
const ATTEMPTS: u32 = 3;

#[derive(Clone, Copy)]
enum Op {
    Pause,
    Resume,
}

impl Op {
    fn verb(self) -> &'static str {
        match self {
            Op::Pause => "pause",
            Op::Resume => "resume",
        }
    }

    async fn call(self, inner: &Inner, id: &str) -> Result<(), bollard::errors::Error> {
        match self {
            Op::Pause => inner.docker.pause_container(id).await,
            Op::Resume => inner.docker.unpause_container(id).await,
        }
    }
}

pub(crate) async fn pause(inner: &Inner, id: &str) -> Result<()> {
    apply(inner, id, Op::Pause).await
}

pub(crate) async fn resume(inner: &Inner, id: &str) -> Result<()> {
    apply(inner, id, Op::Resume).await
}

async fn apply(inner: &Inner, id: &str, op: Op) -> Result<()> {
    if inner.known.contains(id) {
        match op.call(inner, id).await {
            Ok(()) => return Ok(()),
            Err(e) if is_not_found(&e) => {
                inner.known.forget(id);
                return Err(RuntimeError::not_found(format!("worker {id} not found")));
            }
            // Already in the target state, stopped, or a stale daemon state: the inspected
            // state decides below (Engine 20.10 answers 500, not 409, to an unpause of a
            // running container).
            Err(_) => tokio::time::sleep(STATE_SETTLE).await,
        }
    }
    for attempt in 1..=ATTEMPTS {
        let c = inspect_managed(inner, id)
            .await?
            .ok_or_else(|| RuntimeError::not_found(format!("worker {id} not found")))?;
        let full = c.id.clone().unwrap_or_else(|| id.to_string());
        match (op, inspect_status(&c)) {
            (Op::Pause, WorkerStatus::Paused) | (Op::Resume, WorkerStatus::Running) => {
                return Ok(());
            }
            (Op::Pause, WorkerStatus::Running) | (Op::Resume, WorkerStatus::Paused) => {
                match op.call(inner, &full).await {
                    Ok(()) => return Ok(()),
                    // A concurrent call or a stale state: let it settle and look again.
                    Err(e) if status_of(&e).is_some() && attempt < ATTEMPTS => {
                        tokio::time::sleep(STATE_SETTLE).await;
                    }
                    Err(e) => {
                        return Err(map(e, &format!("{} worker", op.verb()), Subject::Worker));
                    }
                }
            }
            (_, s) => return Err(refused(id, op, s)),
        }
    }
    Err(RuntimeError::internal(format!(
        "{} worker {id}: state did not settle",
        op.verb()
    )))
}

fn refused(id: &str, op: Op, s: WorkerStatus) -> RuntimeError {
    RuntimeError::failed_precondition(format!(
        "cannot {} worker {id}: it is {}",
        op.verb(),
        s.as_str().to_lowercase()
    ))
}
