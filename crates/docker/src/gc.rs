//! GC and start-up reconcile, strictly scoped by the managed labels (review P1-3): remove
//! exited, dead and half-created workers; reconcile returns the live ones to adopt.

use esb_runtime::{GcReport, Result, WorkerState, WorkerStatus};

use crate::Inner;
use crate::destroy::remove_quietly;
use crate::list::list;

pub(crate) async fn gc(inner: &Inner) -> Result<GcReport> {
    let workers = list(inner).await?;
    let mut report = GcReport::default();
    for w in workers.iter().filter(|w| is_broken(inner, w)) {
        match remove_quietly(inner, &w.id).await {
            Ok(()) => report.removed_workers.push(w.id.clone()),
            Err(e) => report
                .errors
                .push(format!("remove {}: {}", w.name, e.message())),
        }
    }
    if !report.removed_workers.is_empty() {
        tracing::info!(
            removed = report.removed_workers.len(),
            "gc removed broken workers"
        );
    }
    Ok(report)
}

/// Stopped workers, and `created`/unknown ones that no ensure of this process is building.
fn is_broken(inner: &Inner, w: &WorkerState) -> bool {
    match w.status {
        WorkerStatus::Running | WorkerStatus::Paused => false,
        WorkerStatus::Stopped => true,
        WorkerStatus::Unknown => !inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&w.name),
    }
}

pub(crate) async fn reconcile(inner: &Inner) -> Result<Vec<WorkerState>> {
    let report = gc(inner).await?;
    for e in &report.errors {
        tracing::warn!(error = %e, "reconcile could not clean up a worker");
    }
    let live: Vec<WorkerState> = list(inner)
        .await?
        .into_iter()
        .filter(|w| matches!(w.status, WorkerStatus::Running | WorkerStatus::Paused))
        .collect();
    tracing::info!(
        adopted = live.len(),
        removed = report.removed_workers.len(),
        "docker reconcile done"
    );
    Ok(live)
}
