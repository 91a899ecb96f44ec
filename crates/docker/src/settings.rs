//! The Docker backend's own settings (parsed and validated by the agent's config module).

use esb_cni::WorkerFirewall;

/// Docker settings (SPEC §6, §9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerSettings {
    /// `DOCKER_HOST`; `None` = the Docker default (local unix socket).
    pub host: Option<String>,
    /// Network workers join (`CONTAINERS_NETWORK`).
    pub network: String,
    /// Worker isolation on the network's Linux bridge (local Engine, bridge driver only).
    pub firewall: Option<WorkerFirewall>,
}
