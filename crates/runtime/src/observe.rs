//! Backend observations for the agent's metrics (SPEC §11): ensure latency by phase, image
//! pulls by outcome, rollbacks by operation and IPAM reservations. A backend reports through
//! the [`Observer`] the server installs with [`crate::Runtime::set_observer`]; label values are
//! small fixed sets so metric cardinality stays bounded.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// One timed phase of `ensure`. Backends report the phases they have; not every backend has
/// every phase (Docker has no snapshot or task phase, containerd no separate IP wait).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Resolving the image: a registry pull, or only a local lookup when cached.
    Pull,
    /// Preparing the root filesystem snapshot (containerd).
    Snapshot,
    /// Creating the container record.
    Create,
    /// Attaching the network / waiting for the IP address.
    Network,
    /// Creating the task (containerd: shim + runc create).
    TaskCreate,
    /// Starting the worker process.
    Start,
    /// Waiting until the worker accepts TCP connections on its port (server side, after the
    /// backend's ensure; `AGENT_ENSURE_READY_TIMEOUT`).
    Ready,
}

impl Phase {
    /// Every phase, in ensure order.
    pub const ALL: [Phase; 7] = [
        Phase::Pull,
        Phase::Snapshot,
        Phase::Create,
        Phase::Network,
        Phase::TaskCreate,
        Phase::Start,
        Phase::Ready,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pull => "pull",
            Phase::Snapshot => "snapshot",
            Phase::Create => "create",
            Phase::Network => "network",
            Phase::TaskCreate => "task_create",
            Phase::Start => "start",
            Phase::Ready => "ready",
        }
    }
}

/// How an image resolution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PullOutcome {
    /// Fetched from the registry.
    Pulled,
    /// Already present locally; no registry traffic.
    Cached,
    /// The registry failed but a local copy was used (pull policy allowed it).
    Fallback,
    /// No usable image: the ensure fails.
    Failed,
}

impl PullOutcome {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PullOutcome::Pulled => "pulled",
            PullOutcome::Cached => "cached",
            PullOutcome::Fallback => "fallback",
            PullOutcome::Failed => "failed",
        }
    }
}

/// Receives a backend's observations. Calls are cheap and synchronous; implementations must
/// not block. `rollback` names a bounded operation (`"ensure"`, `"destroy"`, …).
pub trait Observer: Send + Sync + 'static {
    /// One phase of a (successful or failed) ensure took `d`.
    fn phase(&self, phase: Phase, d: Duration);
    /// One image resolution ended with `outcome`.
    fn pull(&self, outcome: PullOutcome);
    /// A compensation (undo of a partial operation) ran for `op`.
    fn rollback(&self, op: &'static str);
    /// Current number of IPAM reservations / network attachments (containerd + CNI only).
    fn ipam_reservations(&self, _n: u64) {}
    /// A new worker's process exited while the backend was still starting it (before the
    /// server's ready wait could see it); the ensure fails.
    fn exited_at_start(&self) {}
}

/// Discards everything; what a backend uses until an observer is installed.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl Observer for NoopObserver {
    fn phase(&self, _phase: Phase, _d: Duration) {}
    fn pull(&self, _outcome: PullOutcome) {}
    fn rollback(&self, _op: &'static str) {}
}

/// Where a backend keeps its observer: set once (later calls are ignored), a no-op until then.
#[derive(Default)]
pub struct ObserverSlot(OnceLock<Arc<dyn Observer>>);

impl std::fmt::Debug for ObserverSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserverSlot")
            .field("set", &self.0.get().is_some())
            .finish()
    }
}

impl ObserverSlot {
    /// Installs `observer`; `false` when one was already installed (it stays).
    pub fn set(&self, observer: Arc<dyn Observer>) -> bool {
        self.0.set(observer).is_ok()
    }

    /// The installed observer, or a [`NoopObserver`].
    pub fn get(&self) -> &dyn Observer {
        match self.0.get() {
            Some(o) => o.as_ref(),
            None => &NoopObserver,
        }
    }

    /// Reports the time since `since` as `phase`.
    pub fn phase_since(&self, phase: Phase, since: Instant) {
        self.get().phase(phase, since.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct() {
        let mut seen: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), Phase::ALL.len());
    }

    struct Count(std::sync::atomic::AtomicU32);
    impl Observer for Count {
        fn phase(&self, _: Phase, _: Duration) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fn pull(&self, _: PullOutcome) {}
        fn rollback(&self, _: &'static str) {}
    }

    #[test]
    fn slot_is_noop_until_set_and_keeps_the_first() {
        let slot = ObserverSlot::default();
        slot.phase_since(Phase::Pull, Instant::now());
        let first = Arc::new(Count(Default::default()));
        assert!(slot.set(first.clone()));
        assert!(!slot.set(Arc::new(NoopObserver)));
        slot.get().phase(Phase::Start, Duration::from_millis(1));
        assert_eq!(first.0.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
