//! Destroy: thaw, stop (Wait before Kill; SIGTERM only when PID 1 handles it, then SIGKILL to
//! all), delete task, container, snapshot, log; CNI DEL + netns alongside. Idempotent; runs in a detached
//! task so a dropped caller cannot stop it half-way; every wait is bounded.

use std::sync::Arc;

use containerd_client::services::v1::GetContainerRequest;
use esb_runtime::RuntimeError;

use crate::Inner;
use crate::client::{is_not_found, status_err};
use crate::teardown::{delete_container, delete_task, remove_snapshot, stop_task};

/// Destroys `id` in a detached task and waits for it.
pub(crate) async fn destroy(inner: &Arc<Inner>, id: &str) -> Result<bool, RuntimeError> {
    let task_inner = inner.clone();
    let id = id.to_string();
    let span = tracing::info_span!("destroy", container_id = %id);
    esb_runtime::saga::finish_detached("destroy", span, async move {
        destroy_detached(&task_inner, &id).await
    })
    .await
}

/// The destroy itself (caller guarantees it runs to completion).
pub(crate) async fn destroy_detached(inner: &Arc<Inner>, id: &str) -> Result<bool, RuntimeError> {
    let c = &inner.client;
    match c
        .containers()
        .get(c.req_t(GetContainerRequest { id: id.to_string() }))
        .await
    {
        Ok(r) => {
            let labels = r
                .into_inner()
                .container
                .map(|c| c.labels.into_iter().collect())
                .unwrap_or_default();
            if !inner.common.identity.is_managed(&labels) {
                return Ok(false);
            }
        }
        Err(s) if is_not_found(&s) => {
            // Nothing to destroy (removed outside the agent, or a repeat); still release what
            // the container record did not own: a journaled attachment and the log.
            if let Ok(Some(_)) = inner.cni.attachment(id) {
                inner.cni.detach(id).await?;
            }
            crate::logs::remove(&inner.log_path(id));
            return Ok(false);
        }
        Err(s) => return Err(status_err("get container", s)),
    }
    let t = std::time::Instant::now();
    // The network comes down while the process is stopped: with its veth gone the worker can
    // answer nobody, and destroy releases everything whether or not the stop succeeds.
    let records = async {
        if let Err(e) = stop_task(inner, id).await {
            tracing::warn!(container_id = %id, error = %e.chain(), "stopping task failed");
        }
        let stop_us = t.elapsed().as_micros() as u64;
        if let Err(e) = delete_task(inner, id).await {
            tracing::warn!(container_id = %id, error = %e.chain(), "deleting task failed");
        }
        let task_delete_us = t.elapsed().as_micros() as u64 - stop_us;
        // Deleting a container record does not touch its snapshot: both go at once.
        tokio::join!(delete_container(inner, id), remove_snapshot(inner, id));
        (stop_us, task_delete_us)
    };
    let network = async {
        let r = inner.cni.detach(id).await;
        (r, t.elapsed().as_micros() as u64)
    };
    let ((detached, network_us), (stop_us, task_delete_us)) = tokio::join!(network, records);
    tracing::debug!(
        container_id = %id, stop_us, task_delete_us, network_us,
        total_us = t.elapsed().as_micros() as u64, "worker destroyed"
    );
    detached?;
    crate::logs::remove(&inner.log_path(id));
    Ok(true)
}
