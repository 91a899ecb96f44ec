//! GC and start-up reconcile: only managed containers of this brand+ENV are considered (P1-3,
//! P1-Q). Broken ones (no task, stopped, half-created) are destroyed; CNI attachments, IPAM
//! reservations and netns pins of no live worker, orphan snapshots and logs are released;
//! oversized logs are truncated.

use std::collections::HashSet;
use std::sync::Arc;

use containerd_client::services::v1::snapshots::ListSnapshotsRequest;
use esb_runtime::{GcReport, RuntimeError, WorkerState, WorkerStatus};
use tokio_stream::StreamExt;

use crate::client::status_err;
use crate::list::{
    all_container_ids, get_task, managed_containers, managed_filter, status_of, to_state,
};
use crate::{Inner, destroy};

pub(crate) async fn gc(inner: &Arc<Inner>) -> Result<GcReport, RuntimeError> {
    Ok(sweep(inner).await?.0)
}

pub(crate) async fn reconcile(inner: &Arc<Inner>) -> Result<Vec<WorkerState>, RuntimeError> {
    let (report, live) = sweep(inner).await?;
    tracing::info!(
        adopted = live.len(),
        removed = report.removed_workers.len(),
        released = report.released_resources,
        errors = report.errors.len(),
        "containerd reconcile done"
    );
    Ok(live)
}

async fn sweep(inner: &Arc<Inner>) -> Result<(GcReport, Vec<WorkerState>), RuntimeError> {
    let (containers, tasks) = managed_containers(inner).await?;
    let creating: HashSet<String> = inner.creating.lock().map(|s| s.clone()).unwrap_or_default();
    let ips: std::collections::HashMap<_, _> = inner
        .cni
        .attachments()?
        .into_iter()
        .filter_map(|a| Some((a.container_id, a.ip?)))
        .collect();
    let mut report = GcReport::default();
    let mut live = Vec::new();
    let mut keep: HashSet<String> = creating.clone();
    for c in &containers {
        if creating.contains(&c.id) {
            continue;
        }
        let task = tasks.get(&c.id);
        match status_of(task) {
            WorkerStatus::Running | WorkerStatus::Paused => {
                keep.insert(c.id.clone());
                live.push(to_state(
                    &inner.common.identity,
                    c,
                    task,
                    ips.get(&c.id).copied(),
                ));
            }
            _ if still_alive(inner, &c.id).await => {
                // Created (or finished creating) after the listing: not broken.
                keep.insert(c.id.clone());
            }
            _ => match destroy::destroy_detached(inner, &c.id).await {
                Ok(_) => report.removed_workers.push(c.id.clone()),
                Err(e) => {
                    keep.insert(c.id.clone());
                    report
                        .errors
                        .push(format!("destroy {}: {}", c.id, e.chain()));
                }
            },
        }
    }
    // Ensures cannot register while the gate is held, so every id that may own a network
    // attachment, snapshot or log right now is either listed as live or in `creating`.
    let _gate = inner.gate.write().await;
    if let Ok(set) = inner.creating.lock() {
        keep.extend(set.iter().cloned());
    }
    // Asked after the gate: a container another ENV creates from here on reserves its IP
    // less than FOREIGN_GRACE before reconcile looks, so it is safe either way.
    match all_container_ids(inner).await {
        Ok(runtime_ids) => match inner.cni.reconcile_with(&keep, &runtime_ids).await {
            Ok(n) => report.released_resources += n,
            Err(e) => report.errors.push(format!("cni reconcile: {e}")),
        },
        Err(e) => report
            .errors
            .push(format!("cni reconcile skipped: {}", e.chain())),
    }
    match orphan_snapshots(inner, &keep).await {
        Ok(n) => report.released_resources += n,
        Err(e) => report.errors.push(format!("snapshots: {}", e.chain())),
    }
    report.released_resources += sweep_logs(inner, &keep);
    Ok((report, live))
}

/// Re-checks a worker that looked broken in the listing: an ensure may have been between
/// container and task creation when the listing was taken.
async fn still_alive(inner: &Inner, id: &str) -> bool {
    if inner.creating.lock().is_ok_and(|s| s.contains(id)) {
        return true;
    }
    match get_task(inner, id).await {
        Ok(task) => matches!(
            status_of(task.as_ref()),
            WorkerStatus::Running | WorkerStatus::Paused
        ),
        // Unsure: leave it for the next pass.
        Err(_) => true,
    }
}

/// Worker snapshots (labelled with the managed selector at prepare) without a live owner.
async fn orphan_snapshots(inner: &Inner, keep: &HashSet<String>) -> Result<u64, RuntimeError> {
    let c = &inner.client;
    let mut stream = c
        .snapshots()
        .list(c.req_t(ListSnapshotsRequest {
            snapshotter: inner.cd.snapshotter.clone(),
            filters: vec![managed_filter(&inner.common.identity)],
        }))
        .await
        .map_err(|s| status_err("list snapshots", s))?
        .into_inner();
    let mut orphans = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|s| status_err("list snapshots", s))?;
        orphans.extend(
            batch
                .info
                .into_iter()
                .map(|i| i.name)
                .filter(|name| !keep.contains(name)),
        );
    }
    let mut released = 0;
    for key in orphans {
        // A snapshot still used by a container record of ours is removed with that container.
        if crate::list::get_container(inner, &key).await?.is_some() {
            continue;
        }
        crate::teardown::remove_snapshot(inner, &key).await;
        released += 1;
    }
    Ok(released)
}

/// Removes logs of workers that no longer exist (all their files), truncates oversized ones:
/// a safety net, the log writer bounds them at write time.
fn sweep_logs(inner: &Inner, keep: &HashSet<String>) -> u64 {
    let Ok(entries) = std::fs::read_dir(&inner.logs_dir) else {
        return 0;
    };
    let mut released = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split_once(".log"))
            .map(|(id, _)| id)
        else {
            continue;
        };
        if !keep.contains(id) {
            if std::fs::remove_file(&path).is_ok() {
                released += 1;
            }
        } else if entry
            .metadata()
            .is_ok_and(|m| m.len() > inner.common.worker_log_max_bytes)
        {
            // Writers append (O_APPEND), so truncating in place is safe.
            if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path) {
                let _ = f.set_len(0);
            }
        }
    }
    released
}
