//! Domain types exchanged between the server and the backends (no proto types here).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::status::WorkerStatus;

/// Port the worker's Runtime Interface Emulator listens on (compat).
pub const WORKER_PORT: u16 = 8080;

/// Env key whose value (MiB) sets the worker's memory limit (compat).
pub const MEMORY_SIZE_ENV: &str = "AWS_LAMBDA_FUNCTION_MEMORY_SIZE";

/// A validated request to create one new worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsureRequest {
    /// Raw function name (validated; sanitised only for the container name).
    pub function_name: String,
    /// Image reference, trimmed, non-empty.
    pub image: String,
    /// Env for the worker; overrides the image's env. Values are secrets: never log them.
    pub env: BTreeMap<String, String>,
    /// Trimmed, non-empty owner id, written as a label.
    pub owner_id: String,
}

/// A freshly created worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// Id accepted by every other operation (containerd: the container id = name).
    pub id: String,
    /// Container name.
    pub name: String,
    pub ip: IpAddr,
    pub port: u16,
    pub function_name: String,
    pub owner_id: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A managed worker as the backend sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerState {
    pub id: String,
    pub name: String,
    pub function_name: String,
    pub owner_id: String,
    pub status: WorkerStatus,
    /// `None` when the backend has no address for it (stopped, not networked).
    pub ip: Option<IpAddr>,
    /// True creation time, unix seconds (never 0 for a real worker).
    pub created_at: i64,
}

/// Resource counters of one worker (SPEC §3 GetContainerMetrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerMetrics {
    pub id: String,
    pub name: String,
    pub function_name: String,
    pub status: Option<WorkerStatus>,
    /// Bytes in use, page cache excluded where the cgroup lets us tell.
    pub memory_current: u64,
    /// Memory limit in bytes.
    pub memory_max: u64,
    pub oom_events: u64,
    pub cpu_usage_ns: u64,
    pub exit_code: u32,
    pub restart_count: u32,
    /// Unix seconds, 0 = unknown.
    pub exit_time: i64,
    /// Unix seconds.
    pub collected_at: i64,
}

/// What a GC or reconcile pass released.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Ids of workers removed.
    pub removed_workers: Vec<String>,
    /// Count of other resources released (IPAM reservations, netns, log files, ...).
    pub released_resources: u64,
    /// Non-fatal problems met on the way (already logged context, no secrets).
    pub errors: Vec<String>,
}

/// Which backend runs the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    Containerd,
    Docker,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::Docker => "docker",
        }
    }
}

/// What a backend supports and the limits it applies (GetCapabilities).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeCapabilities {
    pub kind: RuntimeKind,
    /// Daemon version as reported by the daemon.
    pub version: String,
    pub pause_resume: bool,
    pub metrics: bool,
    /// cgroup version of the host (1 or 2), 0 when unknown.
    pub cgroup_version: u32,
    /// containerd snapshotter; empty for Docker.
    pub snapshotter: String,
    /// CNI network name, subnet and bridge (containerd); Docker network name in `network`.
    pub network: String,
    pub subnet: String,
    pub bridge: String,
    pub default_memory_bytes: u64,
    pub default_cpu_millis: u64,
    pub default_pids_limit: u64,
}

/// A cgroup file holding a worker's peak memory usage in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPeakProbe {
    pub path: std::path::PathBuf,
    /// Writing `0` resets the peak (cgroup v1 `memory.max_usage_in_bytes`), so a per-call
    /// peak can be measured; otherwise it is the peak since the worker started (v2
    /// `memory.peak`).
    pub resettable: bool,
}

impl MemoryPeakProbe {
    /// The probe for a cgroup at `rel` (e.g. `/ns/id`) under the host's cgroup mount of
    /// `version` (1 or 2); `None` for an unknown version.
    pub fn for_cgroup(version: u32, rel: &str) -> Option<Self> {
        let rel = rel.trim_start_matches('/');
        match version {
            1 => Some(Self {
                path: format!("/sys/fs/cgroup/memory/{rel}/memory.max_usage_in_bytes").into(),
                resettable: true,
            }),
            2 => Some(Self {
                path: format!("/sys/fs/cgroup/{rel}/memory.peak").into(),
                resettable: false,
            }),
            _ => None,
        }
    }
}

/// How far a pull is (PullImage): layers and their compressed bytes, as the registry
/// declares them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullProgress {
    pub layers_done: u32,
    pub layers_total: u32,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// Where a pull reports its progress.
pub type PullSink<'a> = dyn Fn(PullProgress) + Send + Sync + 'a;

/// A pulled (or already present) image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The normalised reference.
    pub reference: String,
    /// Manifest digest (`sha256:…`; Docker: the repo digest, else the image id).
    pub digest: String,
    /// Whether the registry was contacted for it (false: it was present).
    pub pulled: bool,
}
