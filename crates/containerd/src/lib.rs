//! The containerd backend (SPEC §7–§8): raw containerd gRPC plus the agent's own image pull
//! and unpack, OCI spec, pinned-netns CNI networking (esb-cni), tasks, metrics and GC.
//! One backend operation per module; this file only wires them into [`Runtime`].

mod capabilities;
mod client;
mod destroy;
mod ensure;
mod events;
mod gc;
mod image;
mod lease;
mod list;
pub mod log_writer;
mod logs;
mod metrics;
mod pause;
mod rootfs;
mod seccomp;
mod settings;
mod setup;
mod spec;
mod teardown;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use esb_cni::CniNetwork;
use esb_cni::CniSettings;
use esb_runtime::settings::CommonSettings;
use esb_runtime::{
    EnsureRequest, EventStream, GcReport, Observer, ObserverSlot, Result, Runtime,
    RuntimeCapabilities, RuntimeError, Worker, WorkerMetrics, WorkerState,
};
pub use settings::ContainerdSettings;

/// containerd-backed [`esb_runtime::Runtime`].
pub struct ContainerdRuntime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ContainerdRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerdRuntime").finish_non_exhaustive()
    }
}

/// Shared state of the backend; operations take `&Arc<Inner>` so detached tasks can own it.
pub(crate) struct Inner {
    pub common: CommonSettings,
    pub cd: ContainerdSettings,
    pub client: client::Client,
    pub images: image::ImageStore,
    pub cni: CniNetwork,
    pub resolv_conf: PathBuf,
    pub hosts: PathBuf,
    pub logs_dir: PathBuf,
    /// Ids whose ensure is in flight: GC must not mistake them for half-created leftovers.
    pub creating: Mutex<HashSet<String>>,
    /// Held for writing while GC releases unowned resources; ensures register under a read.
    pub gate: tokio::sync::RwLock<()>,
    pub caps: RuntimeCapabilities,
    /// runc v2 shim group shared by this agent's workers (`None` = one shim each).
    pub shim_group: Option<String>,
    /// Receives phase timings, pull outcomes, rollbacks and the IPAM count (metrics).
    pub observer: ObserverSlot,
}

impl Inner {
    /// The per-worker log file (stdout and stderr, appended by the log writer).
    pub(crate) fn log_path(&self, id: &str) -> std::path::PathBuf {
        self.logs_dir.join(format!("{id}.log"))
    }

    /// Reports the current number of IPAM reservations (journaled CNI attachments).
    fn report_ipam(&self) {
        match self.cni.attachment_count() {
            Ok(n) => self.observer.get().ipam_reservations(n as u64),
            Err(e) => tracing::debug!(error = %e, "cannot count cni attachments"),
        }
    }
}

impl ContainerdRuntime {
    /// Connects to containerd (bounded retry), prepares the namespace, CNI conflist, identity
    /// file and resolv.conf. Does not reconcile (the server calls `reconcile`).
    pub async fn connect(
        common: CommonSettings,
        containerd: ContainerdSettings,
        cni: CniSettings,
    ) -> Result<Self, RuntimeError> {
        if !containerd.log_writer.is_absolute() {
            return Err(RuntimeError::invalid_argument(format!(
                "the log writer must be an absolute path, got {:?}",
                containerd.log_writer
            )));
        }
        let state = common.state_dir.clone();
        let setup::StateFiles {
            logs_dir,
            tmp_dir,
            resolv_conf,
            hosts,
        } = setup::state_dir(&state, &cni.dns_server)?;
        let client = client::Client::connect(&containerd.socket, &containerd.namespace).await?;
        let network = CniNetwork::new(cni.clone(), &state)?;
        network.install().await?;
        let images = image::ImageStore::new(
            client.clone(),
            containerd.snapshotter.clone(),
            common.registry.clone(),
            tmp_dir,
        )?;
        let caps = capabilities::probe(&client, &common, &containerd, &cni).await?;
        let shim_group = Some(format!("esb-{}", containerd.namespace));
        Ok(Self {
            inner: Arc::new(Inner {
                common,
                cd: containerd,
                client,
                images,
                cni: network,
                resolv_conf,
                hosts,
                logs_dir,
                creating: Mutex::new(HashSet::new()),
                gate: tokio::sync::RwLock::new(()),
                caps,
                shim_group,
                observer: ObserverSlot::default(),
            }),
        })
    }
}

#[async_trait::async_trait]
impl Runtime for ContainerdRuntime {
    async fn ensure(&self, req: EnsureRequest) -> Result<Worker> {
        let r = ensure::ensure(&self.inner, req).await;
        self.inner.report_ipam();
        r
    }

    async fn destroy(&self, id: &str) -> Result<bool> {
        let r = destroy::destroy(&self.inner, id).await;
        self.inner.report_ipam();
        r
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
        let r = gc::gc(&self.inner).await;
        self.inner.report_ipam();
        r
    }

    async fn reconcile(&self) -> Result<Vec<WorkerState>> {
        let r = gc::reconcile(&self.inner).await;
        self.inner.report_ipam();
        r
    }

    async fn ping(&self) -> Result<()> {
        capabilities::ping(&self.inner.client).await
    }

    async fn events(&self) -> Result<EventStream> {
        events::subscribe(&self.inner)
    }

    async fn release_node_resources(&self) -> Result<()> {
        Ok(self.inner.cni.remove_firewall().await?)
    }

    fn capabilities(&self) -> RuntimeCapabilities {
        self.inner.caps.clone()
    }

    // A few small file reads (positions file, `stat`, ≤ max bytes): cheap enough inline.
    async fn log_position(&self, id: &str) -> Result<u64> {
        logs::position(&self.inner, id)
    }

    async fn read_log(&self, id: &str, since: Option<u64>, max_bytes: usize) -> Result<Vec<u8>> {
        logs::read(&self.inner, id, since, max_bytes)
    }

    async fn pull_image(
        &self,
        image: &str,
        progress: &esb_runtime::PullSink<'_>,
    ) -> Result<esb_runtime::PulledImage> {
        let inner = &self.inner;
        // The lease holds what is written until the image record references it; it expires on
        // its own if this call is dropped half-way.
        let lease = lease::create(&inner.client, ensure::LEASE_TTL).await?;
        let res = inner
            .images
            .ensure_reporting(image, &lease, inner.observer.get(), progress)
            .await;
        if let Err(e) = lease::delete(&inner.client, &lease, false).await {
            tracing::debug!(error = %e.chain(), "pre-pull lease left to expire");
        }
        let (info, outcome) = res?;
        Ok(esb_runtime::PulledImage {
            reference: info.name,
            digest: info.manifest_digest,
            pulled: outcome == esb_runtime::PullOutcome::Pulled,
        })
    }

    fn set_observer(&self, observer: Arc<dyn Observer>) {
        self.inner.observer.set(observer);
    }

    /// The task's cgroup is `cgroupsPath` `/<namespace>/<id>` (spec.rs).
    fn memory_peak_probe(&self, id: &str) -> Option<esb_runtime::MemoryPeakProbe> {
        let rel = format!("{}/{id}", self.inner.client.namespace());
        esb_runtime::MemoryPeakProbe::for_cgroup(self.inner.caps.cgroup_version, &rel)
    }
}

pub(crate) fn io_err(what: &str, path: &Path, e: std::io::Error) -> RuntimeError {
    RuntimeError::io(what, path, e)
}

/// Writes `bytes` to `path` via a unique temp file, fsync and rename (+ directory fsync), so
/// readers never see a partial file and a crash keeps the old or the new content (L4).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    esb_runtime::fsutil::write_atomic(path, bytes).map_err(|e| io_err("write", path, e))
}

/// Unix seconds of a protobuf timestamp (0 when absent).
pub(crate) fn unix(ts: Option<&prost_types::Timestamp>) -> i64 {
    ts.map_or(0, |t| t.seconds)
}

pub(crate) use esb_runtime::clock::unix_now as now_unix;
