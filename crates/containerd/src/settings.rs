//! The containerd backend's own settings (parsed and validated by the agent's config module).

use std::path::PathBuf;

/// containerd settings (SPEC §6, §7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdSettings {
    pub socket: PathBuf,
    /// Runtime name for new containers, e.g. `io.containerd.runc.v2`.
    pub runtime: String,
    pub snapshotter: String,
    /// containerd namespace (the brand).
    pub namespace: String,
    /// Absolute path of the executable the shim runs as each task's log writer (`binary://`
    /// logging): the `esb-agent` binary itself (its `log-writer` mode).
    pub log_writer: PathBuf,
}
