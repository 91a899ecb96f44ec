//! Metrics: Tasks.Metrics decoded for cgroup v1 or v2; a stopped worker reports state STOPPED
//! with zero counters plus its exit code/time (and OOM kills while its cgroup still exists).

mod decode;

use containerd_client::services::v1::MetricsRequest;
use esb_runtime::{RuntimeError, WorkerMetrics, WorkerStatus};

use decode::{Counters, decode};

use crate::Inner;
use crate::client::status_err;
use crate::list::{get_task, managed, status_of};

pub(crate) async fn metrics(inner: &Inner, id: &str) -> Result<WorkerMetrics, RuntimeError> {
    let Some(container) = managed(inner, id).await? else {
        return Err(RuntimeError::not_found(format!("worker {id} not found")));
    };
    let task = get_task(inner, id).await?;
    let status = status_of(task.as_ref());
    let mut out = WorkerMetrics {
        id: id.to_string(),
        name: id.to_string(),
        function_name: container
            .labels
            .get(&inner.common.identity.function_label_key())
            .cloned()
            .unwrap_or_default(),
        status: Some(status),
        collected_at: crate::now_unix(),
        ..Default::default()
    };
    let counters = if task.is_some() {
        sample(inner, id).await
    } else {
        Ok(None)
    };
    match status {
        WorkerStatus::Running | WorkerStatus::Paused => {
            let c = counters?.ok_or_else(|| {
                RuntimeError::internal(format!("containerd returned no metrics for {id}"))
            })?;
            out.memory_current = c.memory_current;
            out.memory_max = c.memory_max;
            out.oom_events = c.oom_events;
            out.cpu_usage_ns = c.cpu_usage_ns;
        }
        _ => {
            if let Some(t) = &task {
                out.exit_code = t.exit_status;
                out.exit_time = crate::unix(t.exited_at.as_ref());
            }
            let from_metrics = counters.ok().flatten().map_or(0, |c| c.oom_events);
            out.oom_events = from_metrics.max(oom_kills_v1(inner, id));
        }
    }
    Ok(out)
}

async fn sample(inner: &Inner, id: &str) -> Result<Option<Counters>, RuntimeError> {
    let c = &inner.client;
    let metrics = c
        .tasks()
        .metrics(c.req_t(MetricsRequest {
            filters: vec![format!("id==\"{id}\"")],
        }))
        .await
        .map_err(|s| status_err("task metrics", s))?
        .into_inner()
        .metrics;
    metrics
        .iter()
        .find(|m| m.id == id)
        .and_then(|m| m.data.as_ref())
        .map(decode)
        .transpose()
}

/// OOM kills from the v1 memory cgroup file (0 when absent, e.g. on v2 or after delete).
fn oom_kills_v1(inner: &Inner, id: &str) -> u64 {
    let path = format!(
        "/sys/fs/cgroup/memory/{}/{id}/memory.oom_control",
        inner.client.namespace()
    );
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}
