//! Capabilities (probed once at start-up) and the liveness ping.

use std::time::Duration;

use esb_cni::CniSettings;
use esb_runtime::settings::CommonSettings;

use crate::ContainerdSettings;
use esb_runtime::{RuntimeCapabilities, RuntimeError, RuntimeKind};

use crate::client::{Client, status_err};

const PING_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) async fn probe(
    client: &Client,
    common: &CommonSettings,
    cd: &ContainerdSettings,
    cni: &CniSettings,
) -> Result<RuntimeCapabilities, RuntimeError> {
    let version = client
        .version()
        .version(client.req_t(()))
        .await
        .map_err(|s| status_err("version", s))?
        .into_inner()
        .version;
    let worker = &common.worker;
    Ok(RuntimeCapabilities {
        kind: RuntimeKind::Containerd,
        version,
        pause_resume: true,
        metrics: true,
        cgroup_version: cgroup_version(),
        snapshotter: cd.snapshotter.clone(),
        network: cni.network_name.clone(),
        subnet: cni.subnet.clone(),
        bridge: cni.bridge.clone(),
        default_memory_bytes: worker.memory_bytes,
        default_cpu_millis: worker.cpu_for(worker.memory_bytes),
        default_pids_limit: worker.pids_limit,
    })
}

/// 2 when /sys/fs/cgroup is a cgroup2 mount, 1 otherwise, 0 when unknown.
fn cgroup_version() -> u32 {
    match nix::sys::statfs::statfs("/sys/fs/cgroup") {
        Ok(s) if s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => 2,
        Ok(_) => 1,
        Err(_) => 0,
    }
}

/// One bounded Version call: reflects whether containerd answers right now (the channel
/// reconnects lazily after a containerd restart).
pub(crate) async fn ping(client: &Client) -> Result<(), RuntimeError> {
    let mut req = client.req(());
    req.set_timeout(PING_TIMEOUT);
    match tokio::time::timeout(PING_TIMEOUT, client.version().version(req)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(s)) => Err(RuntimeError::unavailable("containerd is not answering").with_source(s)),
        Err(_) => Err(RuntimeError::unavailable("containerd ping timed out")),
    }
}
