//! Reconcile: release attachments, IPAM reservations and netns pins that no live worker owns.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::{Inner, blocking, read_entry, release};
use crate::error::CniError;
use crate::{ipam, netns};

/// Attachments this process made less than this before a reconcile are left alone: the
/// caller computed `live` before calling, so a worker created meanwhile would look orphaned
/// (the next round catches real orphans). Entries of earlier processes are never recent.
const RECONCILE_GRACE: Duration = Duration::from_secs(5);

/// A reservation with no journal entry of ours must be at least this old before it is
/// released: another agent sharing the store (M5) reserves before its container exists, and
/// one attach is bounded far below this (plugin timeout 30 s, a few retries).
pub(crate) const FOREIGN_GRACE: Duration = Duration::from_secs(300);

pub(super) async fn reconcile(
    inner: &Arc<Inner>,
    live: &HashSet<String>,
    runtime_ids: &HashSet<String>,
) -> Result<u64, CniError> {
    let cutoff = std::time::Instant::now().checked_sub(RECONCILE_GRACE);
    let mut released = 0u64;
    let mut first_err = None;
    for id in inner.journal.ids()? {
        if live.contains(&id) || inner.busy(&id) {
            continue;
        }
        let _lock = inner.locks.lock(&id).await;
        // Re-read under the lock: a concurrent detach may have finished meanwhile.
        let Some(a) = read_entry(inner, &id)? else {
            continue;
        };
        if inner.attached_recently(&id, cutoff) {
            continue;
        }
        match release(inner, &a).await {
            Ok(()) => {
                tracing::info!(container_id = %id, ip = ?a.ip, "released orphaned cni attachment");
                released += 1;
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let inner2 = inner.clone();
    let live2 = live.clone();
    let runtime_ids = runtime_ids.clone();
    released += blocking(move || {
        // Journal existence is checked at decision time, not from a snapshot: attach writes its
        // entry before the netns and the IPAM reservation exist, so a reservation or pin whose
        // owner has no entry at that moment is not being created.
        let orphan = |owner: &str| {
            !live2.contains(owner) && !inner2.busy(owner) && !inner2.journal.exists(owner)
        };
        let mut n = 0u64;
        // Not ours by journal: only when no runtime knows the owner and it is not fresh.
        let stale = |r: &ipam::Reservation| {
            orphan(&r.owner)
                && !runtime_ids.contains(&r.owner)
                && r.modified
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|age| age >= FOREIGN_GRACE)
        };
        for r in ipam::release_where(&inner2.ipam_dir(), stale)? {
            tracing::info!(owner = %r.owner, ip = %r.ip, "released orphaned ipam reservation");
            n += 1;
        }
        for name in netns::list(&inner2.netns_dir)? {
            if name.starts_with('.') || !orphan(&name) {
                continue;
            }
            netns::remove(&inner2.pin_path(&name))?;
            tracing::info!(container_id = %name, "removed orphaned netns pin");
            n += 1;
        }
        Ok(n)
    })
    .await?;
    match first_err {
        Some(e) if released == 0 => Err(e),
        Some(e) => {
            tracing::warn!(error = %e, released, "cni reconcile partially failed");
            Ok(released)
        }
        None => Ok(released),
    }
}
