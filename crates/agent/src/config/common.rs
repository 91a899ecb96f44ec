//! Settings shared by both backends (registry, worker limits, state dir) and the per-backend
//! connection settings (containerd, Docker).

use std::path::Path;
use std::time::Duration;

use esb_containerd::ContainerdSettings;
use esb_docker::DockerSettings;
use esb_runtime::identity::Identity;
use esb_runtime::image_ref::AllowedRegistries;
use esb_runtime::settings::{
    CommonSettings, DEFAULT_MAX_IMAGE_BYTES, DEFAULT_PULL_TIMEOUT, PullPolicy, RegistrySettings,
    WorkerDefaults,
};

use super::env;
use super::{ConfigError, Vars};

const MIB: u64 = 1024 * 1024;

pub fn load(v: &Vars<'_>, identity: Identity) -> Result<CommonSettings, ConfigError> {
    Ok(CommonSettings {
        identity,
        registry: registry(v)?,
        worker: worker(v)?,
        state_dir: v.abs_path(env::AGENT_STATE_DIR, "/var/lib/esb-agent")?,
        worker_log_max_bytes: v.u64_in(env::AGENT_WORKER_LOG_MAX_BYTES, 10 * MIB, 4096, 1 << 40)?,
    })
}

fn registry(v: &Vars<'_>) -> Result<RegistrySettings, ConfigError> {
    let default_registry = v.string(env::CONTAINER_REGISTRY, "registry:5010")?;
    if !valid_registry_host(&default_registry) {
        return Err(v.bad(
            env::CONTAINER_REGISTRY,
            &default_registry,
            "a registry host with an optional port, without scheme or path, e.g. registry:5010",
        ));
    }
    let ca_path = v.opt_abs_path(env::CONTAINER_REGISTRY_CA_PATH)?;
    if let Some(p) = &ca_path {
        require_file(env::CONTAINER_REGISTRY_CA_PATH, p)?;
    }
    let ca_only = v.bool(env::CONTAINER_REGISTRY_CA_ONLY, false)?;
    if ca_only && ca_path.is_none() {
        return Err(ConfigError::new(
            env::CONTAINER_REGISTRY_CA_ONLY,
            "is on but CONTAINER_REGISTRY_CA_PATH is unset; set the CA or turn it off",
        ));
    }
    let allowed = match v.raw(env::CONTAINER_REGISTRY_ALLOWED)? {
        None => RegistrySettings::only_default(&default_registry),
        Some(s) if s.trim() == "*" => AllowedRegistries::Any,
        Some(s) => {
            let hosts: Vec<String> = s
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_string)
                .collect();
            if hosts.is_empty() || !hosts.iter().all(|h| valid_registry_host(h)) {
                return Err(v.bad(
                    env::CONTAINER_REGISTRY_ALLOWED,
                    &s,
                    "* or comma-separated registry hosts with optional ports, e.g. registry:5010,ghcr.io",
                ));
            }
            AllowedRegistries::Only(hosts)
        }
    };
    Ok(RegistrySettings {
        allowed,
        pull_timeout: v.duration(
            env::IMAGE_PULL_TIMEOUT,
            DEFAULT_PULL_TIMEOUT,
            Duration::from_secs(1),
        )?,
        max_image_bytes: v.u64_in(env::IMAGE_MAX_BYTES, DEFAULT_MAX_IMAGE_BYTES, MIB, 1 << 44)?,
        default_registry,
        insecure: v.bool(env::CONTAINER_REGISTRY_INSECURE, false)?,
        ca_path,
        ca_only,
        pull_policy: v.choice(
            env::IMAGE_PULL_POLICY,
            PullPolicy::IfNotPresent,
            &[
                ("if-not-present", PullPolicy::IfNotPresent),
                ("ifnotpresent", PullPolicy::IfNotPresent),
                ("always", PullPolicy::Always),
            ],
        )?,
    })
}

/// `host[:port]` with a DNS-ish host or an IP (IPv6 in brackets).
fn valid_registry_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.contains("://")
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
        })
}

fn worker(v: &Vars<'_>) -> Result<WorkerDefaults, ConfigError> {
    let d = WorkerDefaults::default();
    let cpu_millis = match v.raw(env::AGENT_WORKER_CPU_MILLIS)? {
        None => d.cpu_millis,
        Some(s) if s.eq_ignore_ascii_case("auto") => None,
        Some(_) => Some(
            v.u64_in(env::AGENT_WORKER_CPU_MILLIS, 0, 10, 1_000_000)
                .map_err(|e| {
                    ConfigError::new(e.var, e.message.replace("expected ", "expected auto or "))
                })?,
        ),
    };
    Ok(WorkerDefaults {
        memory_bytes: v.u64_in(
            env::AGENT_WORKER_MEMORY_MIB,
            d.memory_bytes / MIB,
            128,
            1 << 20,
        )? * MIB,
        cpu_millis,
        cpu_max_millis: v.u64_in(
            env::AGENT_WORKER_CPU_MAX_MILLIS,
            d.cpu_max_millis,
            100,
            1_000_000,
        )?,
        pids_limit: v.u64_in(env::AGENT_WORKER_PIDS_LIMIT, d.pids_limit, 16, 4_194_304)?,
        oom_score_adj: v.u64_in(
            env::AGENT_WORKER_OOM_SCORE_ADJ,
            d.oom_score_adj.unsigned_abs().into(),
            0,
            1000,
        )? as i32,
        run_as: run_as(v)?,
    })
}

/// `AGENT_WORKER_USER`: `uid:gid`, both numeric, uid not 0 (unset = image user as is).
fn run_as(v: &Vars<'_>) -> Result<Option<(u32, u32)>, ConfigError> {
    let Some(raw) = v.raw(env::AGENT_WORKER_USER)? else {
        return Ok(None);
    };
    let parsed = raw
        .trim()
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)))
        .filter(|(uid, _)| *uid != 0);
    match parsed {
        Some(ids) => Ok(Some(ids)),
        None => Err(v.bad(
            env::AGENT_WORKER_USER,
            &raw,
            "numeric uid:gid with a non-zero uid, e.g. 1000:1000",
        )),
    }
}

pub fn containerd(v: &Vars<'_>, identity: &Identity) -> Result<ContainerdSettings, ConfigError> {
    let runtime = v.string(env::CONTAINERD_RUNTIME, "io.containerd.runc.v2")?;
    if !runtime
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(v.bad(
            env::CONTAINERD_RUNTIME,
            &runtime,
            "a runtime name such as io.containerd.runc.v2",
        ));
    }
    let default_snapshotter = if runtime == "aws.firecracker" {
        "devmapper"
    } else {
        "overlayfs"
    };
    let snapshotter = v.string(env::CONTAINERD_SNAPSHOTTER, default_snapshotter)?;
    if !snapshotter
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(v.bad(
            env::CONTAINERD_SNAPSHOTTER,
            &snapshotter,
            "a snapshotter name such as overlayfs",
        ));
    }
    Ok(ContainerdSettings {
        socket: v.abs_path(env::CONTAINERD_SOCKET, "/run/containerd/containerd.sock")?,
        runtime,
        snapshotter,
        namespace: identity.namespace().to_string(),
        // Resolved at start (serve): the agent's own executable.
        log_writer: std::path::PathBuf::new(),
    })
}

pub fn docker(v: &Vars<'_>, identity: &Identity) -> Result<DockerSettings, ConfigError> {
    let network = v.raw(env::CONTAINERS_NETWORK)?.ok_or_else(|| {
        ConfigError::new(
            env::CONTAINERS_NETWORK,
            "is required with AGENT_RUNTIME=docker: the Docker network workers join",
        )
    })?;
    let host = v.raw(env::DOCKER_HOST)?;
    if let Some(h) = &host
        && !["unix://", "tcp://", "http://"]
            .iter()
            .any(|p| h.starts_with(p))
    {
        // What the Docker backend's client speaks (no TLS to the Engine).
        return Err(v.bad(env::DOCKER_HOST, h, "a unix://, tcp:// or http:// URL"));
    }
    let firewall = Some(super::cni::worker_firewall(v, identity, &network)?);
    Ok(DockerSettings {
        host,
        network,
        firewall,
    })
}

/// `path` must be an existing regular file (checked at start-up, not at first use).
pub fn require_file(var: &'static str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(ConfigError::new(
            var,
            format!("{} is not a regular file", path.display()),
        )),
        Err(e) => Err(ConfigError::new(
            var,
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}
