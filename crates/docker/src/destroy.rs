//! Destroy: force-remove a managed worker with its anonymous volumes; idempotent, and run to
//! completion in a detached task even when the caller goes away.

use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::RemoveContainerOptions;
use esb_runtime::{Result, RuntimeError};

use crate::Inner;
use crate::error::{Subject, is_not_found, map};
use crate::list::inspect_managed;

/// Bound of a rollback removal.
const REMOVE_DEADLINE: Duration = Duration::from_secs(30);

pub(crate) async fn destroy(inner: &Arc<Inner>, id: &str) -> Result<bool> {
    let task_inner = Arc::clone(inner);
    let id = id.to_string();
    let span = tracing::info_span!("destroy", container_id = %id);
    esb_runtime::saga::finish_detached("destroy", span, async move {
        destroy_now(&task_inner, &id).await
    })
    .await
}

async fn destroy_now(inner: &Inner, id: &str) -> Result<bool> {
    // Only managed workers are ours to remove; anything else is "not there" for us.
    let Some(c) = inspect_managed(inner, id).await? else {
        inner.known.forget(id);
        return Ok(false);
    };
    let full_id = c.id.unwrap_or_else(|| id.to_string());
    match inner
        .docker
        .remove_container(&full_id, Some(remove_options()))
        .await
    {
        Ok(()) => {
            inner.known.forget(&full_id);
            tracing::info!(container_id = %full_id, "worker destroyed");
            Ok(true)
        }
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(map(e, "destroy worker", Subject::Worker)),
    }
}

fn remove_options() -> RemoveContainerOptions {
    RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    }
}

/// Best-effort bounded removal used by rollbacks and GC; failures are logged, not returned.
pub(crate) async fn remove_quietly(inner: &Inner, id: &str) -> Result<()> {
    let fut = inner.docker.remove_container(id, Some(remove_options()));
    let res = match tokio::time::timeout(REMOVE_DEADLINE, fut).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if is_not_found(&e) => Ok(()),
        Ok(Err(e)) => Err(map(e, "remove worker", Subject::Worker)),
        Err(_) => Err(RuntimeError::deadline_exceeded(
            "remove worker: no answer within 30s",
        )),
    };
    if res.is_ok() {
        inner.known.forget(id);
    }
    if let Err(e) = &res {
        tracing::warn!(container_id = %id, error = %e.chain(), "worker removal failed");
    }
    res
}

/// Rollback of a failed or abandoned ensure.
pub(crate) async fn remove_detached(inner: &Inner, id: &str) {
    inner.observer.get().rollback("ensure");
    let _ = remove_quietly(inner, id).await;
}
