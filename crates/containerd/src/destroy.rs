//! Destroy: thaw, stop (Wait before Kill; SIGTERM only when PID 1 handles it, then SIGKILL to
//! all), delete task, container, snapshot, log; CNI DEL + netns alongside. Idempotent; runs in a detached
//! task so a dropped caller cannot stop it half-way; every wait is bounded.

use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::snapshots::RemoveSnapshotRequest;
use containerd_client::services::v1::{
    DeleteContainerRequest, DeleteTaskRequest, GetContainerRequest, GetRequest, KillRequest,
    ResumeTaskRequest, WaitRequest,
};
use containerd_client::types::v1::Status;
use esb_runtime::RuntimeError;

use crate::client::{is_not_found, status_err};
use crate::{Inner, ensure};

/// Grace period after SIGTERM for a worker that handles it.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// Bound of the wait after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
const SIGTERM: u32 = 15;
const SIGKILL: u32 = 9;

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
            crate::logs::remove(&ensure::log_path(inner, id));
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
    crate::logs::remove(&ensure::log_path(inner, id));
    Ok(true)
}

/// Stops the task (bounded) and deletes it. Best effort: problems are logged.
pub(crate) async fn stop_and_delete_task(inner: &Inner, id: &str) {
    let r = match stop_task(inner, id).await {
        Ok(()) => delete_task(inner, id).await,
        Err(e) => Err(e),
    };
    if let Err(e) = r {
        tracing::warn!(container_id = %id, error = %e.chain(), "stopping task failed");
    }
}

/// Thaws and stops the task (bounded waits); no task = nothing to do.
async fn stop_task(inner: &Inner, id: &str) -> Result<(), RuntimeError> {
    let c = &inner.client;
    let process = match c
        .tasks()
        .get(c.req_t(GetRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        }))
        .await
    {
        Ok(r) => r.into_inner().process.unwrap_or_default(),
        Err(s) if is_not_found(&s) => return Ok(()),
        Err(s) => return Err(status_err("get task", s)),
    };
    let status = Status::try_from(process.status).unwrap_or(Status::Unknown);
    if matches!(status, Status::Paused | Status::Pausing) {
        // A frozen cgroup cannot act on signals: thaw first.
        let _ = c
            .tasks()
            .resume(c.req_t(ResumeTaskRequest {
                container_id: id.to_string(),
            }))
            .await;
    }
    if status != Status::Stopped {
        // Start Wait before Kill so the exit cannot be missed.
        let mut tasks = c.tasks();
        let wait_req = c.req(WaitRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        });
        let mut wait = tokio::spawn(async move { tasks.wait(wait_req).await });
        let mut exited = false;
        if catches_sigterm(process.pid) {
            kill(inner, id, SIGTERM, false).await;
            exited = tokio::time::timeout(TERM_GRACE, &mut wait).await.is_ok();
        }
        if !exited {
            kill(inner, id, SIGKILL, true).await;
            if tokio::time::timeout(KILL_WAIT, &mut wait).await.is_err() {
                tracing::warn!(container_id = %id, "task did not exit within the kill wait");
            }
        }
        wait.abort();
    }
    Ok(())
}

async fn delete_task(inner: &Inner, id: &str) -> Result<(), RuntimeError> {
    let c = &inner.client;
    match c
        .tasks()
        .delete(c.req_t(DeleteTaskRequest {
            container_id: id.to_string(),
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if is_not_found(&s) => Ok(()),
        Err(s) => Err(status_err("delete task", s)),
    }
}

async fn kill(inner: &Inner, id: &str, signal: u32, all: bool) {
    let c = &inner.client;
    if let Err(s) = c
        .tasks()
        .kill(c.req_t(KillRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
            signal,
            all,
        }))
        .await
        && !is_not_found(&s)
    {
        tracing::debug!(container_id = %id, signal, error = %s, "kill failed");
    }
}

/// Whether the (host) pid has a SIGTERM handler; PID 1 of a namespace ignores signals it does
/// not handle, so without one SIGTERM would only cost the grace period. Unknown → assume yes.
fn catches_sigterm(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_none_or(|mask| mask & (1 << (SIGTERM - 1)) != 0)
}

pub(crate) async fn delete_container(inner: &Inner, id: &str) {
    let c = &inner.client;
    match c
        .containers()
        .delete(c.req_t(DeleteContainerRequest { id: id.to_string() }))
        .await
    {
        Ok(_) => {}
        Err(s) if is_not_found(&s) => {}
        Err(s) => tracing::warn!(container_id = %id, error = %s, "deleting container failed"),
    }
}

pub(crate) async fn remove_snapshot(inner: &Inner, id: &str) {
    let c = &inner.client;
    match c
        .snapshots()
        .remove(c.req_t(RemoveSnapshotRequest {
            snapshotter: inner.cd.snapshotter.clone(),
            key: id.to_string(),
        }))
        .await
    {
        Ok(_) => {}
        Err(s) if is_not_found(&s) => {}
        Err(s) => tracing::warn!(container_id = %id, error = %s, "removing snapshot failed"),
    }
}
