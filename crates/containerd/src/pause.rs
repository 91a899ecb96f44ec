//! Pause and resume (cgroup freezer via Tasks.Pause/Resume), idempotent by checking the task
//! status first; a stopped worker cannot be resumed.

use containerd_client::services::v1::{PauseTaskRequest, ResumeTaskRequest};
use esb_runtime::{RuntimeError, WorkerStatus};

use crate::Inner;
use crate::client::status_err;
use crate::list::{get_task, managed, status_of};

async fn current(inner: &Inner, id: &str) -> Result<WorkerStatus, RuntimeError> {
    if managed(inner, id).await?.is_none() {
        return Err(RuntimeError::not_found(format!("worker {id} not found")));
    }
    Ok(status_of(get_task(inner, id).await?.as_ref()))
}

pub(crate) async fn pause(inner: &Inner, id: &str) -> Result<(), RuntimeError> {
    match current(inner, id).await? {
        WorkerStatus::Paused => Ok(()),
        WorkerStatus::Running => {
            let c = &inner.client;
            c.tasks()
                .pause(c.req_t(PauseTaskRequest {
                    container_id: id.to_string(),
                }))
                .await
                .map_err(|s| status_err("pause task", s))?;
            Ok(())
        }
        s => Err(RuntimeError::failed_precondition(format!(
            "worker {id} is {s}, it cannot be paused"
        ))),
    }
}

pub(crate) async fn resume(inner: &Inner, id: &str) -> Result<(), RuntimeError> {
    match current(inner, id).await? {
        WorkerStatus::Running => Ok(()),
        WorkerStatus::Paused => {
            let c = &inner.client;
            c.tasks()
                .resume(c.req_t(ResumeTaskRequest {
                    container_id: id.to_string(),
                }))
                .await
                .map_err(|s| status_err("resume task", s))?;
            Ok(())
        }
        s => Err(RuntimeError::failed_precondition(format!(
            "worker {id} is {s}, it cannot be resumed"
        ))),
    }
}
