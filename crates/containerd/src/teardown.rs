//! The teardown steps Destroy, Ensure's rollback and GC share (issue 11 §1: they used to live
//! in `destroy.rs`, which made `ensure` and `destroy` depend on each other): stop the task
//! (thaw, SIGTERM only when PID 1 handles it, then SIGKILL to all, every wait bounded), delete
//! it, delete the container record, remove the snapshot. Each step treats "not found" as done.

use std::time::Duration;

use containerd_client::services::v1::snapshots::RemoveSnapshotRequest;
use containerd_client::services::v1::{
    DeleteContainerRequest, DeleteTaskRequest, GetRequest, KillRequest, ResumeTaskRequest,
    WaitRequest,
};
use containerd_client::types::v1::Status;
use esb_runtime::RuntimeError;

use crate::Inner;
use crate::client::{is_not_found, status_err};

/// Grace period after SIGTERM for a worker that handles it.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// Bound of the wait after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
const SIGTERM: u32 = 15;
const SIGKILL: u32 = 9;

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
pub(crate) async fn stop_task(inner: &Inner, id: &str) -> Result<(), RuntimeError> {
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

pub(crate) async fn delete_task(inner: &Inner, id: &str) -> Result<(), RuntimeError> {
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
