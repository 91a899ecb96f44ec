//! The Docker Engine backend (SPEC §9): [`DockerRuntime`] implements [`esb_runtime::Runtime`]
//! over bollard. One operation per module; this file holds the shared state and the trait
//! wiring.

mod capabilities;
mod connect;
mod convert;
mod destroy;
mod ensure;
mod error;
mod events;
mod firewall;
mod gc;
mod image;
mod known;
mod list;
mod logs;
mod metrics;
mod pause;
mod settings;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bollard::Docker;
use esb_runtime::settings::CommonSettings;
use esb_runtime::{
    EnsureRequest, EventStream, GcReport, Observer, ObserverSlot, Result, Runtime,
    RuntimeCapabilities, RuntimeError, Worker, WorkerMetrics, WorkerState,
};
pub use settings::DockerSettings;

/// Docker-backed [`esb_runtime::Runtime`].
pub struct DockerRuntime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime").finish_non_exhaustive()
    }
}

/// State shared with the detached tasks (ensure rollback, destroy).
pub(crate) struct Inner {
    pub(crate) docker: Docker,
    pub(crate) common: CommonSettings,
    pub(crate) settings: DockerSettings,
    pub(crate) pulls: image::PullLocks,
    /// Names of workers an `ensure` of this process is still building; GC leaves them alone.
    pub(crate) in_flight: Mutex<HashSet<String>>,
    pub(crate) caps: RuntimeCapabilities,
    /// Ids known to be managed (hot-path scope check).
    pub(crate) known: known::KnownWorkers,
    /// Receives phase timings, pull outcomes and rollbacks (metrics).
    pub(crate) observer: ObserverSlot,
}

impl DockerRuntime {
    /// Connects to the Docker Engine (bounded retry, negotiated API version).
    pub async fn connect(
        common: CommonSettings,
        docker: DockerSettings,
    ) -> Result<Self, RuntimeError> {
        let client = connect::connect(docker.host.as_deref()).await?;
        let caps = capabilities::probe(&client, &common, &docker).await;
        firewall::install(&client, &docker).await;
        Ok(Self {
            inner: Arc::new(Inner {
                docker: client,
                common,
                settings: docker,
                pulls: image::PullLocks::default(),
                in_flight: Mutex::new(HashSet::new()),
                caps,
                known: known::KnownWorkers::default(),
                observer: ObserverSlot::default(),
            }),
        })
    }

    /// The bollard client, for tests and tools that need raw daemon access.
    pub fn client(&self) -> &Docker {
        &self.inner.docker
    }
}

#[async_trait::async_trait]
impl Runtime for DockerRuntime {
    async fn ensure(&self, req: EnsureRequest) -> Result<Worker> {
        ensure::ensure(&self.inner, req).await
    }

    async fn destroy(&self, id: &str) -> Result<bool> {
        destroy::destroy(&self.inner, id).await
    }

    async fn pause(&self, id: &str) -> Result<()> {
        pause::pause(&self.inner, id).await
    }

    async fn resume(&self, id: &str) -> Result<()> {
        pause::resume(&self.inner, id).await
    }

    async fn list(&self) -> Result<Vec<WorkerState>> {
        list::list(&self.inner).await
    }

    async fn inspect(&self, id: &str) -> Result<Option<WorkerState>> {
        list::inspect(&self.inner, id).await
    }

    async fn metrics(&self, id: &str) -> Result<WorkerMetrics> {
        metrics::metrics(&self.inner, id).await
    }

    async fn gc(&self) -> Result<GcReport> {
        gc::gc(&self.inner).await
    }

    async fn reconcile(&self) -> Result<Vec<WorkerState>> {
        gc::reconcile(&self.inner).await
    }

    async fn ping(&self) -> Result<()> {
        connect::ping(&self.inner.docker).await
    }

    async fn events(&self) -> Result<EventStream> {
        events::subscribe(&self.inner)
    }

    async fn release_node_resources(&self) -> Result<()> {
        firewall::remove(&self.inner.settings)
            .await
            .map_err(|e| RuntimeError::internal(format!("remove worker firewall: {e}")))
    }

    fn capabilities(&self) -> RuntimeCapabilities {
        self.inner.caps.clone()
    }

    async fn log_position(&self, _id: &str) -> Result<u64> {
        Ok(logs::position())
    }

    async fn read_log(&self, id: &str, since: Option<u64>, max_bytes: usize) -> Result<Vec<u8>> {
        logs::read(&self.inner, id, since, max_bytes).await
    }

    async fn pull_image(
        &self,
        image: &str,
        progress: &esb_runtime::PullSink<'_>,
    ) -> Result<esb_runtime::PulledImage> {
        let inner = &self.inner;
        let r = image::ImageRef::resolve(image, &inner.common.registry)?;
        let outcome = image::ensure_image_reporting(
            &inner.docker,
            &inner.pulls,
            &r,
            &inner.common.registry,
            inner.observer.get(),
            progress,
        )
        .await?;
        let img = inner
            .docker
            .inspect_image(&r.full)
            .await
            .map_err(|e| error::map(e, "inspect image", error::Subject::Image))?;
        // The registry's manifest digest when the Engine knows it, else the image id.
        let digest = img
            .repo_digests
            .unwrap_or_default()
            .iter()
            .find_map(|d| d.strip_prefix(&format!("{}@", r.repo)).map(str::to_string))
            .or(img.id)
            .unwrap_or_default();
        Ok(esb_runtime::PulledImage {
            reference: r.full,
            digest,
            pulled: outcome == esb_runtime::PullOutcome::Pulled,
        })
    }

    fn set_observer(&self, observer: Arc<dyn Observer>) {
        self.inner.observer.set(observer);
    }

    /// The container's cgroup under the daemon's parent: `docker/<id>` (cgroupfs driver) or
    /// `system.slice/docker-<id>.scope` (systemd driver), whichever exists.
    fn memory_peak_probe(&self, id: &str) -> Option<esb_runtime::MemoryPeakProbe> {
        ["docker/{id}", "system.slice/docker-{id}.scope"]
            .iter()
            .filter_map(|rel| {
                esb_runtime::MemoryPeakProbe::for_cgroup(
                    self.inner.caps.cgroup_version,
                    &rel.replace("{id}", id),
                )
            })
            .find(|p| p.path.exists())
    }
}
