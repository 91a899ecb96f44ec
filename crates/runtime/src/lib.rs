//! The runtime contract: domain types, the [`Runtime`] trait every backend implements,
//! typed errors with a semantic kind, the shared status enum, identity (brand, namespace,
//! network, subnet), worker names and labels, the settings backends are built from, and the
//! [`Observer`] through which backends report phase timings, pulls and rollbacks.

pub mod clock;
pub mod error;
pub mod events;
pub mod fsutil;
pub mod identity;
pub mod image_ref;
pub mod keyed;
pub mod names;
pub mod observe;
pub mod report;
pub mod request;
pub mod saga;
pub mod settings;
pub mod status;
pub mod types;

#[cfg(feature = "fake")]
pub mod fake;

pub use error::{ErrorKind, RuntimeError};
pub use events::{EventStream, WorkerEvent, WorkerEventKind};
pub use observe::{NoopObserver, Observer, ObserverSlot, Phase, PullOutcome};
pub use status::WorkerStatus;
pub use types::*;

/// Result alias for runtime operations.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// A container backend (containerd or Docker), chosen once at start-up and used as
/// `Arc<dyn Runtime>`.
///
/// Rules every implementation follows:
/// - **Factory**: `ensure` always creates a brand-new worker; it never reuses one.
/// - **Atomic create**: if `ensure` fails (or its future is dropped) after creating anything,
///   everything is rolled back in a detached task with its own deadline; nothing leaks.
/// - **Idempotent teardown**: `destroy` of an unknown or already-removed worker returns
///   `Ok(false)`; a removed one returns `Ok(true)`. Destroy runs to completion even when the
///   caller's future is dropped.
/// - **Idempotent pause/resume**: pausing a paused worker and resuming a running one succeed.
///   Resuming a stopped worker fails with [`ErrorKind::FailedPrecondition`].
/// - **Scope**: the backend only ever sees and touches *managed* workers — those carrying the
///   labels of this brand and ENV (SPEC §5). Ownership (`owner_id`) is checked by the caller
///   (the server) using [`WorkerState::owner_id`]; backends never filter by owner.
/// - Unsupported operations return [`ErrorKind::Unimplemented`].
/// - **Observation**: the server installs an [`Observer`] once, before `reconcile`, with
///   [`Runtime::set_observer`]; the backend then reports ensure phases, pull outcomes,
///   rollbacks and (containerd) IPAM reservations to it. The default ignores it.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Creates, starts and networks a new worker. Returns once its process runs and it has
    /// an IP address (it does not wait for port 8080).
    async fn ensure(&self, req: EnsureRequest) -> Result<Worker>;

    /// Stops and removes a worker and everything it holds (task, network attachment, IP,
    /// netns, snapshot, logs). `Ok(false)` when it did not exist.
    async fn destroy(&self, id: &str) -> Result<bool>;

    /// Freezes a worker. Idempotent.
    async fn pause(&self, id: &str) -> Result<()>;

    /// Thaws a worker. Idempotent; a stopped worker is `FailedPrecondition`.
    async fn resume(&self, id: &str) -> Result<()>;

    /// Every managed worker of this brand+ENV, in one backend query.
    async fn list(&self) -> Result<Vec<WorkerState>>;

    /// One managed worker by id (or name); `Ok(None)` when absent or not managed.
    async fn inspect(&self, id: &str) -> Result<Option<WorkerState>>;

    /// Resource counters of one worker. A stopped worker returns state `Stopped` with
    /// counters zero (not an error).
    async fn metrics(&self, id: &str) -> Result<WorkerMetrics>;

    /// Removes broken managed workers (stopped or half-created) and releases resources that
    /// belong to no live worker (IPAM reservations, netns, logs). Never touches containers
    /// without the managed labels of this brand+ENV.
    async fn gc(&self) -> Result<GcReport>;

    /// Start-up reconcile, run once before serving: cleans up like [`Runtime::gc`] and returns
    /// the live managed workers to adopt into the worker table.
    async fn reconcile(&self) -> Result<Vec<WorkerState>>;

    /// Cheap liveness probe of the backend daemon (drives gRPC health).
    async fn ping(&self) -> Result<()>;

    /// What this backend supports; static after start-up.
    fn capabilities(&self) -> RuntimeCapabilities;

    /// An opaque, monotonic cursor into the worker's combined stdout/stderr log: what the
    /// worker has written so far. Take one before an invocation and pass it to
    /// [`Runtime::read_log`] afterwards to get what that invocation printed. It stays valid
    /// when the bounded log drops old bytes (containerd: bytes written since the worker
    /// started; Docker: a timestamp). Default: `Unimplemented`.
    async fn log_position(&self, _id: &str) -> Result<u64> {
        Err(RuntimeError::new(
            ErrorKind::Unimplemented,
            "worker logs not implemented by this backend",
        ))
    }

    /// At most the last `max_bytes` of what the worker wrote to stdout/stderr after `since`
    /// (a [`Runtime::log_position`] cursor; `None` = everything still kept). Bytes dropped by
    /// the log bound are simply missing. Default: `Unimplemented`.
    async fn read_log(&self, _id: &str, _since: Option<u64>, _max_bytes: usize) -> Result<Vec<u8>> {
        Err(RuntimeError::new(
            ErrorKind::Unimplemented,
            "worker logs not implemented by this backend",
        ))
    }

    /// Makes `image` ready for a worker ahead of its first Ensure (pre-pull): the same path
    /// as Ensure (allow-list, `IMAGE_PULL_POLICY`, one shared pull per reference, unpack),
    /// reporting [`PullProgress`] as layers arrive. Default: `Unimplemented`.
    async fn pull_image(&self, _image: &str, _progress: &PullSink<'_>) -> Result<PulledImage> {
        Err(RuntimeError::new(
            ErrorKind::Unimplemented,
            "image pre-pull not implemented by this backend",
        ))
    }

    /// Subscribes to the daemon's events about managed workers (exit, OOM, pause, resume,
    /// delete). Returns once the subscription request is on its way; the stream ends or
    /// yields an error when the daemon connection breaks, and the caller subscribes again
    /// (then relists, so nothing is lost between the two). Events of unmanaged containers
    /// may be filtered by the backend or left to the caller (which applies events only to
    /// workers it knows). Default: `Unimplemented` (the server then relies on polling).
    async fn events(&self) -> Result<EventStream> {
        Err(RuntimeError::new(
            ErrorKind::Unimplemented,
            "worker events not implemented by this backend",
        ))
    }

    /// Removes node-wide state the backend installed for its workers (the worker firewall),
    /// after every worker is gone: the destroy shutdown policy calls it. Idempotent. Default:
    /// nothing to remove.
    async fn release_node_resources(&self) -> Result<()> {
        Ok(())
    }

    /// Installs the observer for metrics; called once at start-up. Later calls may be
    /// ignored. The default discards it (a backend with nothing to report).
    fn set_observer(&self, _observer: std::sync::Arc<dyn Observer>) {}

    /// Where the worker's peak memory can be read (for the invocation report); `None` when
    /// this backend or host cannot tell. Cheap: no I/O, called once per worker.
    fn memory_peak_probe(&self, _id: &str) -> Option<MemoryPeakProbe> {
        None
    }
}
