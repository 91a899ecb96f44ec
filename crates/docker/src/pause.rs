//! Pause and resume: idempotent by state; a stopped worker cannot be resumed. Workers known
//! to be managed go straight to the daemon; the state is only inspected when the daemon
//! refuses or the worker is not known yet.

use esb_runtime::{Result, RuntimeError, WorkerStatus};

use crate::Inner;
use crate::convert::inspect_status;
use crate::error::{Subject, is_not_found, map, status_of};
use crate::list::inspect_managed;

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
            // Already in the target state, stopped, or the daemon is struggling: the
            // inspected state decides below (Engine 20.10 answers 500, not 409, to an unpause
            // of a running container).
            Err(_) => {}
        }
    }
    let c = inspect_managed(inner, id)
        .await?
        .ok_or_else(|| RuntimeError::not_found(format!("worker {id} not found")))?;
    let full = c.id.clone().unwrap_or_else(|| id.to_string());
    match (op, inspect_status(&c)) {
        (Op::Pause, WorkerStatus::Paused) | (Op::Resume, WorkerStatus::Running) => Ok(()),
        (Op::Pause, WorkerStatus::Running) | (Op::Resume, WorkerStatus::Paused) => {
            match op.call(inner, &full).await {
                Ok(()) => Ok(()),
                // Changed by a concurrent call between our inspect and the call: recheck once.
                Err(e) if status_of(&e).is_some() => settled(inner, &full, op).await,
                Err(e) => Err(map(e, &format!("{} worker", op.verb()), Subject::Worker)),
            }
        }
        (_, s) => Err(refused(id, op, s)),
    }
}

async fn settled(inner: &Inner, id: &str, op: Op) -> Result<()> {
    let c = inspect_managed(inner, id)
        .await?
        .ok_or_else(|| RuntimeError::not_found(format!("worker {id} not found")))?;
    match (op, inspect_status(&c)) {
        (Op::Pause, WorkerStatus::Paused) | (Op::Resume, WorkerStatus::Running) => Ok(()),
        (_, s) => Err(refused(id, op, s)),
    }
}

fn refused(id: &str, op: Op, s: WorkerStatus) -> RuntimeError {
    RuntimeError::failed_precondition(format!(
        "cannot {} worker {id}: it is {}",
        op.verb(),
        s.as_str().to_lowercase()
    ))
}
