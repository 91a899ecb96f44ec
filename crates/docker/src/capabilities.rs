//! Capabilities probed once at connect: daemon version, cgroup version, the workers' network
//! (name, subnet, bridge) and the default limits.

use bollard::Docker;
use bollard::models::SystemInfoCgroupVersionEnum;
use bollard::query_parameters::InspectNetworkOptions;
use esb_runtime::settings::CommonSettings;

use crate::DockerSettings;
use esb_runtime::{RuntimeCapabilities, RuntimeKind};

/// Docker's option naming the Linux bridge of a bridge network.
const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

pub(crate) async fn probe(
    docker: &Docker,
    common: &CommonSettings,
    settings: &DockerSettings,
) -> RuntimeCapabilities {
    let version = match docker.version().await {
        Ok(v) => v.version.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "docker version unknown");
            String::new()
        }
    };
    let cgroup_version = match docker.info().await {
        Ok(info) => match info.cgroup_version {
            Some(SystemInfoCgroupVersionEnum::_1) => 1,
            Some(SystemInfoCgroupVersionEnum::_2) => 2,
            _ => 0,
        },
        Err(e) => {
            tracing::warn!(error = %e, "docker info unavailable");
            0
        }
    };
    let (subnet, bridge) = match docker
        .inspect_network(&settings.network, None::<InspectNetworkOptions>)
        .await
    {
        Ok(net) => (
            net.ipam
                .and_then(|i| i.config)
                .and_then(|c| c.into_iter().find_map(|c| c.subnet))
                .unwrap_or_default(),
            net.options
                .and_then(|o| o.get(BRIDGE_NAME_OPTION).cloned())
                .unwrap_or_default(),
        ),
        Err(e) => {
            tracing::warn!(network = %settings.network, error = %e, "docker network not inspectable");
            (String::new(), String::new())
        }
    };
    let w = &common.worker;
    RuntimeCapabilities {
        kind: RuntimeKind::Docker,
        version,
        pause_resume: true,
        metrics: true,
        cgroup_version,
        snapshotter: String::new(),
        network: settings.network.clone(),
        subnet,
        bridge,
        default_memory_bytes: w.memory_bytes,
        default_cpu_millis: w.cpu_for(w.memory_bytes),
        default_pids_limit: w.pids_limit,
    }
}
