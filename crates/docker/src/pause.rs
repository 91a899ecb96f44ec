//! Pause and resume: idempotent by state; a stopped worker cannot be resumed.

use esb_runtime::{Result, RuntimeError, WorkerStatus};

use crate::Inner;
use crate::convert::inspect_status;
use crate::error::{Subject, map};
use crate::list::inspect_managed;

async fn current(inner: &Inner, id: &str) -> Result<(String, WorkerStatus)> {
    let c = inspect_managed(inner, id)
        .await?
        .ok_or_else(|| RuntimeError::not_found(format!("worker {id} not found")))?;
    let status = inspect_status(&c);
    Ok((c.id.unwrap_or_else(|| id.to_string()), status))
}

pub(crate) async fn pause(inner: &Inner, id: &str) -> Result<()> {
    match current(inner, id).await? {
        (_, WorkerStatus::Paused) => Ok(()),
        (full, WorkerStatus::Running) => match inner.docker.pause_container(&full).await {
            Ok(()) => Ok(()),
            // Paused by a concurrent call between our inspect and pause: same outcome.
            Err(e) if is_already(&e, "already paused") => Ok(()),
            Err(e) => Err(map(e, "pause worker", Subject::Worker)),
        },
        (_, s) => Err(RuntimeError::failed_precondition(format!(
            "cannot pause worker {id}: it is {}",
            s.as_str().to_lowercase()
        ))),
    }
}

pub(crate) async fn resume(inner: &Inner, id: &str) -> Result<()> {
    match current(inner, id).await? {
        (_, WorkerStatus::Running) => Ok(()),
        (full, WorkerStatus::Paused) => match inner.docker.unpause_container(&full).await {
            Ok(()) => Ok(()),
            Err(e) if is_already(&e, "is not paused") => Ok(()),
            Err(e) => Err(map(e, "resume worker", Subject::Worker)),
        },
        (_, s) => Err(RuntimeError::failed_precondition(format!(
            "cannot resume worker {id}: it is {}",
            s.as_str().to_lowercase()
        ))),
    }
}

fn is_already(e: &bollard::errors::Error, words: &str) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 409, message } if message.contains(words))
}
