//! The CNI network's settings, owned here: parsed and validated by the agent's config module,
//! read by this crate and the backends that attach workers through it.

use std::path::PathBuf;

/// Default [`CniSettings::plugin_timeout`].
pub const DEFAULT_CNI_PLUGIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// CNI settings (containerd backend; SPEC §6, §8). Derived values are already resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniSettings {
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
    /// Full path of the generated conflist.
    pub conf_file: PathBuf,
    /// CNI network name (`<b>-net`).
    pub network_name: String,
    pub bridge: String,
    /// CIDR, e.g. `10.184.208.0/23`.
    pub subnet: String,
    /// Gateway IP (network + 1 unless `CNI_GW_IP`).
    pub gateway: String,
    /// Nameserver written into workers' resolv.conf.
    pub dns_server: String,
    /// host-local IPAM data dir (`CNI_NET_DIR`).
    pub net_dir: PathBuf,
    pub ip_masq: bool,
    /// Where the identity file (`esb-cni.env`) is written.
    pub identity_file: PathBuf,
    /// Upper bound for one plugin run (`CNI_PLUGIN_TIMEOUT`); a plugin still running then is
    /// killed and the attach rolled back.
    pub plugin_timeout: std::time::Duration,
    /// The agent-owned iptables chains that confine workers (SPEC §10, review H5); `None`
    /// installs none (tests of plain attach/detach).
    pub firewall: Option<WorkerFirewall>,
}

/// Worker network isolation rules (review H5, M5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerFirewall {
    /// Names the agent that owns the rules (`<network>/<ENV>`): chain names and the rule
    /// comment derive from it, so two ENVs sharing a bridge never touch each other's rules.
    pub scope: String,
    /// IPv4 CIDRs workers may never reach through the node (`AGENT_WORKER_DENY_CIDRS`).
    pub deny_cidrs: Vec<String>,
    /// Whether workers may open connections beyond the node at all (`AGENT_WORKER_EGRESS`);
    /// replies and DNS are allowed either way.
    pub egress: bool,
}
