//! Plain settings the backends are built from. Parsed and validated by the agent's config
//! module (env + flags); backends only read them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::image_ref::{AllowedRegistries, ImageRef};
use crate::types::MEMORY_SIZE_ENV;

/// Lambda gives one full vCPU at 1769 MiB; CPU scales linearly with memory below that.
pub const LAMBDA_MIB_PER_VCPU: u64 = 1769;

/// Default resource limits for workers (SPEC §10: one function must not take the host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerDefaults {
    /// Memory limit when the request does not set `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`.
    pub memory_bytes: u64,
    /// CPU quota in millicores; `None` = proportional to memory like Lambda
    /// (1000 at 1769 MiB, at least 100, at most `cpu_max_millis`).
    pub cpu_millis: Option<u64>,
    /// Upper bound for the proportional CPU quota.
    pub cpu_max_millis: u64,
    pub pids_limit: u64,
    /// `oom_score_adj` of worker processes: the kernel's OOM killer picks workers before the
    /// agent and the daemons (review L5).
    pub oom_score_adj: i32,
    /// `(uid, gid)` that replaces root for images whose user is root or unset
    /// (`AGENT_WORKER_USER`; review H4). `None` runs the image user as is.
    pub run_as: Option<(u32, u32)>,
}

impl Default for WorkerDefaults {
    fn default() -> Self {
        Self {
            memory_bytes: 512 * 1024 * 1024,
            cpu_millis: None,
            cpu_max_millis: 2000,
            pids_limit: 1024,
            oom_score_adj: 500,
            run_as: None,
        }
    }
}

impl WorkerDefaults {
    /// Memory limit for a request: `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` (MiB, trimmed) when it
    /// is a positive integer, else the default.
    pub fn memory_for(&self, env: &BTreeMap<String, String>) -> u64 {
        env.get(MEMORY_SIZE_ENV)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|mib| *mib > 0)
            .and_then(|mib| mib.checked_mul(1024 * 1024))
            .unwrap_or(self.memory_bytes)
    }

    /// The `(uid, gid)` a worker runs as: `image_user`, or [`Self::run_as`] instead of root.
    pub fn effective_user(&self, image_user: (u32, u32)) -> (u32, u32) {
        match self.run_as {
            Some(forced) if image_user.0 == 0 => forced,
            _ => image_user,
        }
    }

    /// CPU quota (millicores) for a worker with `memory_bytes` of memory.
    pub fn cpu_for(&self, memory_bytes: u64) -> u64 {
        match self.cpu_millis {
            Some(m) => m,
            None => {
                let mib = memory_bytes / (1024 * 1024);
                (mib.saturating_mul(1000) / LAMBDA_MIB_PER_VCPU).clamp(100, self.cpu_max_millis)
            }
        }
    }
}

/// When to contact the registry for an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull only when the image is not present locally.
    IfNotPresent,
    /// Always pull; on failure fall back to a local copy.
    Always,
}

/// Registry access (SPEC §6, review P3-1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Registry used for references without a host (`CONTAINER_REGISTRY`).
    pub default_registry: String,
    /// Plain HTTP to registries (`CONTAINER_REGISTRY_INSECURE`).
    pub insecure: bool,
    /// Extra CA (PEM) trusted for registry HTTPS.
    pub ca_path: Option<PathBuf>,
    /// Trust only `ca_path`, not the system roots.
    pub ca_only: bool,
    pub pull_policy: PullPolicy,
    /// Registries references may name (`CONTAINER_REGISTRY_ALLOWED`; review M1).
    pub allowed: AllowedRegistries,
    /// Bound of one whole pull, manifest to last layer (`IMAGE_PULL_TIMEOUT`).
    pub pull_timeout: std::time::Duration,
    /// Bound of one image's compressed size, config and layers (`IMAGE_MAX_BYTES`).
    pub max_image_bytes: u64,
}

/// Default [`RegistrySettings::pull_timeout`].
pub const DEFAULT_PULL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// Default [`RegistrySettings::max_image_bytes`]: 10 GiB, Lambda's container image limit.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 10 << 30;

impl RegistrySettings {
    /// The reference a request names, normalised (default registry) and checked against the
    /// allow-list: the one entry point of both backends, before any connection.
    pub fn resolve(&self, raw: &str) -> crate::Result<ImageRef> {
        let r = ImageRef::normalize(raw, &self.default_registry)?;
        self.allowed.check(&r)?;
        Ok(r)
    }

    /// Only the default registry's host may be named (the agent's default policy).
    pub fn only_default(default_registry: &str) -> AllowedRegistries {
        AllowedRegistries::Only(vec![
            default_registry.trim().trim_end_matches('/').to_string(),
        ])
    }
}

/// Settings shared by every backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommonSettings {
    pub identity: crate::identity::Identity,
    pub registry: RegistrySettings,
    pub worker: WorkerDefaults,
    /// Agent state directory (journals, last-used, resolv.conf, netns pins, logs).
    pub state_dir: PathBuf,
    /// Per-worker log bound on disk (live file + one rotated generation), bytes.
    pub worker_log_max_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_from_env_or_default() {
        let d = WorkerDefaults::default();
        let mut env = BTreeMap::new();
        assert_eq!(d.memory_for(&env), 512 * 1024 * 1024);
        env.insert(MEMORY_SIZE_ENV.to_string(), " 256 ".to_string());
        assert_eq!(d.memory_for(&env), 256 * 1024 * 1024);
        env.insert(MEMORY_SIZE_ENV.to_string(), "0".to_string());
        assert_eq!(d.memory_for(&env), 512 * 1024 * 1024);
        env.insert(MEMORY_SIZE_ENV.to_string(), "lots".to_string());
        assert_eq!(d.memory_for(&env), 512 * 1024 * 1024);
        env.insert(MEMORY_SIZE_ENV.to_string(), u64::MAX.to_string());
        assert_eq!(d.memory_for(&env), 512 * 1024 * 1024);
    }

    #[test]
    fn cpu_proportional_to_memory() {
        let d = WorkerDefaults::default();
        assert_eq!(d.cpu_for(1769 * 1024 * 1024), 1000);
        assert_eq!(d.cpu_for(128 * 1024 * 1024), 100);
        assert_eq!(d.cpu_for(10240 * 1024 * 1024), 2000);
        let fixed = WorkerDefaults {
            cpu_millis: Some(500),
            ..WorkerDefaults::default()
        };
        assert_eq!(fixed.cpu_for(1), 500);
    }
}
