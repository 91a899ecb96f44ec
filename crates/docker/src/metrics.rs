//! Metrics from one inspect (limit, OOM, exit state) plus one one-shot stats call (usage
//! without page cache, CPU time). A stopped worker reports `STOPPED` with zero counters.

use std::time::{SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerInspectResponse, ContainerStatsResponse};
use bollard::query_parameters::StatsOptions;
use esb_runtime::{Result, RuntimeError, WorkerMetrics, WorkerStatus};
use futures::StreamExt;

use crate::Inner;
use crate::convert::{inspect_status, labels_of, unix_seconds};
use crate::error::{Subject, map};
use crate::list::inspect_managed;

pub(crate) async fn metrics(inner: &Inner, id: &str) -> Result<WorkerMetrics> {
    let c = inspect_managed(inner, id)
        .await?
        .ok_or_else(|| RuntimeError::not_found(format!("worker {id} not found")))?;
    let status = inspect_status(&c);
    let mut m = base(inner, &c, status);
    if matches!(status, WorkerStatus::Running | WorkerStatus::Paused) {
        let opts = StatsOptions {
            stream: false,
            one_shot: true,
        };
        match inner.docker.stats(&m.id, Some(opts)).next().await {
            Some(Ok(stats)) => apply_stats(&mut m, &stats),
            // No stats: the worker stopped or was removed meanwhile (a janitor racing a
            // destroy). Answer what it is now, never an internal error.
            other => return after_missing_stats(inner, id, other).await,
        }
    }
    Ok(m)
}

/// The answer when one-shot stats came back empty or failed: `NotFound` when the worker is
/// gone, `Stopped` with zero counters when it stopped, else the stats error.
async fn after_missing_stats(
    inner: &Inner,
    id: &str,
    stats: Option<Result<ContainerStatsResponse, bollard::errors::Error>>,
) -> Result<WorkerMetrics> {
    let Some(c) = inspect_managed(inner, id).await? else {
        return Err(RuntimeError::not_found(format!("worker {id} not found")));
    };
    let status = inspect_status(&c);
    if !matches!(status, WorkerStatus::Running | WorkerStatus::Paused) {
        return Ok(base(inner, &c, status));
    }
    Err(match stats {
        Some(Err(e)) => map(e, "worker stats", Subject::Worker),
        _ => RuntimeError::unavailable("worker stats: empty answer from the daemon"),
    })
}

/// Everything inspect tells: identity, limit, OOM flag, and the exit of a stopped worker.
fn base(inner: &Inner, c: &ContainerInspectResponse, status: WorkerStatus) -> WorkerMetrics {
    let identity = &inner.common.identity;
    let labels = labels_of(c.config.as_ref().and_then(|cfg| cfg.labels.as_ref()));
    let state = c.state.as_ref();
    let stopped = status == WorkerStatus::Stopped;
    WorkerMetrics {
        id: c.id.clone().unwrap_or_default(),
        name: c
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        function_name: labels
            .get(&identity.function_label_key())
            .cloned()
            .unwrap_or_default(),
        status: Some(status),
        memory_current: 0,
        memory_max: c
            .host_config
            .as_ref()
            .and_then(|h| h.memory)
            .and_then(|m| u64::try_from(m).ok())
            .unwrap_or(0),
        oom_events: u64::from(state.and_then(|s| s.oom_killed).unwrap_or(false)),
        cpu_usage_ns: 0,
        exit_code: if stopped {
            state
                .and_then(|s| s.exit_code)
                .and_then(|x| u32::try_from(x).ok())
                .unwrap_or(0)
        } else {
            0
        },
        restart_count: c
            .restart_count
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0),
        exit_time: if stopped {
            state
                .and_then(|s| s.finished_at.as_deref())
                .map(unix_seconds)
                .unwrap_or(0)
        } else {
            0
        },
        collected_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
            .unwrap_or(0),
    }
}

/// Usage minus page cache: cgroup v1 reports it as `cache`, v2 as `inactive_file` (what the
/// Docker CLI subtracts too).
fn apply_stats(m: &mut WorkerMetrics, s: &ContainerStatsResponse) {
    if let Some(mem) = &s.memory_stats {
        let usage = mem.usage.unwrap_or(0);
        let cache = mem
            .stats
            .as_ref()
            .and_then(|st| st.get("cache").or_else(|| st.get("inactive_file")).copied())
            .unwrap_or(0);
        m.memory_current = usage.saturating_sub(cache);
        if m.memory_max == 0 {
            m.memory_max = mem.limit.unwrap_or(0);
        }
    }
    m.cpu_usage_ns = s
        .cpu_stats
        .as_ref()
        .and_then(|c| c.cpu_usage.as_ref())
        .and_then(|u| u.total_usage)
        .unwrap_or(0);
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::{ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats};

    use super::*;

    #[test]
    fn cache_is_excluded_v1_and_v2() {
        for key in ["cache", "inactive_file"] {
            let s = ContainerStatsResponse {
                memory_stats: Some(ContainerMemoryStats {
                    usage: Some(10_000),
                    limit: Some(99),
                    stats: Some(HashMap::from([(key.to_string(), 4_000)])),
                    ..Default::default()
                }),
                cpu_stats: Some(ContainerCpuStats {
                    cpu_usage: Some(ContainerCpuUsage {
                        total_usage: Some(123),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let mut m = WorkerMetrics {
                memory_max: 536_870_912,
                ..Default::default()
            };
            apply_stats(&mut m, &s);
            assert_eq!(m.memory_current, 6_000);
            assert_eq!(m.memory_max, 536_870_912);
            assert_eq!(m.cpu_usage_ns, 123);
        }
    }
}
