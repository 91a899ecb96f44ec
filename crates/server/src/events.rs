//! Events drive state (DESIGN §5): one long-lived subscription to the backend's daemon
//! events, applied to the worker table as they arrive, so a worker that exits, is paused,
//! resumed or removed outside the agent shows in the table (and so in invokes) within a
//! second. The subscription is re-made with backoff whenever it breaks (daemon restart), and
//! every (re)subscription is followed by a relist — subscribe first, then list — so nothing
//! that happened while it was down is missed. The periodic relist of the GC loop stays as
//! the safety net.

use std::sync::Arc;
use std::time::{Duration, Instant};

use esb_runtime::{ErrorKind, WorkerEventKind};
use futures::StreamExt;

use crate::service::Core;

/// Backoff between failed subscriptions: doubles from `MIN` up to `MAX`.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A subscription that lived this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// The daemon may register a subscription a little after the request left (containerd
/// answers a stream's headers only with its first event): a second relist this long after
/// subscribing closes that window.
const SETTLE_RELIST: Duration = Duration::from_secs(1);

/// Runs until the runtime says it has no events (`Unimplemented`) or the task is aborted.
pub(crate) async fn event_loop(core: Arc<Core>) {
    let mut backoff = BACKOFF_MIN;
    // Whether a subscription ever worked (its relist answered): later ones are re-subscriptions.
    let mut subscribed_before = false;
    loop {
        let started = Instant::now();
        match core.runtime.events().await {
            Ok(mut stream) => {
                // containerd accepts a subscription without answering: a relist that fails
                // means the daemon is still down, and the stream will say so.
                if relist(&core).await {
                    if subscribed_before {
                        core.metrics.events.resubscribed();
                        tracing::info!("worker event stream subscribed again");
                    }
                    subscribed_before = true;
                }
                let settle = tokio::time::sleep(SETTLE_RELIST);
                tokio::pin!(settle);
                let mut settled = false;
                loop {
                    tokio::select! {
                        item = stream.next() => match item {
                            Some(Ok(ev)) => {
                                core.metrics.events.event(ev.kind);
                                let applied = core.table.apply_event(&ev);
                                if let Some(at) = ev.at {
                                    // A clock step can put the event in the future: 0.
                                    core.metrics.events.lag(at.elapsed().unwrap_or_default());
                                }
                                if applied {
                                    tracing::debug!(container_id = %ev.id, kind = ev.kind.as_str(), "worker event applied");
                                    match ev.kind {
                                        WorkerEventKind::Exited { exit_code, oom } => {
                                            tracing::info!(container_id = %ev.id, exit_code, oom, "worker exited");
                                        }
                                        WorkerEventKind::Deleted => release_removed(&core, ev.id),
                                        _ => {}
                                    }
                                }
                            }
                            Some(Err(e)) => {
                                tracing::warn!(error = %e.chain(), "worker event stream failed; resubscribing");
                                break;
                            }
                            None => {
                                tracing::warn!("worker event stream ended; resubscribing");
                                break;
                            }
                        },
                        () = &mut settle, if !settled => {
                            settled = true;
                            let _ = relist(&core).await;
                        }
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::Unimplemented => {
                tracing::info!("runtime has no event stream; worker state is kept by polling only");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e.chain(), "cannot subscribe to worker events; retrying");
            }
        }
        if started.elapsed() >= HEALTHY_AFTER {
            backoff = BACKOFF_MIN;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// A known worker's container record is gone — removed outside the agent, or by the agent's
/// own destroy, which this repeats harmlessly (destroy is idempotent). Releases, in the
/// background, what the record did not own: with containerd the netns, IP and log of the
/// worker (Docker keeps nothing beside the container).
fn release_removed(core: &Arc<Core>, id: String) {
    let core = Arc::clone(core);
    tokio::spawn(async move {
        if let Err(e) = core.runtime.destroy(&id).await {
            tracing::warn!(container_id = %id, error = %e.chain(), "releasing a removed worker's resources failed; GC will");
        }
    });
}

/// One full listing merged into the table; `false` when it failed (left to the next relist).
async fn relist(core: &Core) -> bool {
    let started = Instant::now();
    match core.runtime.list().await {
        Ok(states) => {
            core.table.refresh(&states, started);
            true
        }
        Err(e) => {
            tracing::warn!(error = %e.chain(), "worker relist after subscribing failed");
            false
        }
    }
}
