//! Worker isolation for the Docker backend (review H5): the same agent-owned iptables chains as
//! the containerd backend ([`esb_cni::firewall`]), installed for the Linux bridge and subnet of
//! `CONTAINERS_NETWORK`. dockerd's own `enable_icc=false` needs dockerd to manage iptables,
//! which nodes (and the dev env) often turn off. Worker ↔ worker on the bridge is dropped by
//! the chain's `-o <bridge>` rule, which sees bridged frames when `br_netfilter` is loaded
//! (dockerd loads it); there is no per-port isolation here. Only for a local Engine (the rules
//! go into this host's iptables) and a `bridge` network.

use std::net::{IpAddr, Ipv4Addr};

use crate::DockerSettings;
use bollard::Docker;
use bollard::query_parameters::InspectNetworkOptions;
use esb_cni::firewall::{self, Plan};

/// Docker's option naming the Linux bridge of a bridge network.
const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

/// Whether the Engine runs on this host (its bridge is in our netns).
fn local_engine(settings: &DockerSettings) -> bool {
    settings
        .host
        .as_deref()
        .is_none_or(|h| h.starts_with("unix://"))
}

/// Docker's gateway when the network names none: the subnet's first host address.
pub(crate) fn default_gateway(subnet: &str) -> Option<IpAddr> {
    let (net, _) = subnet.split_once('/')?;
    let net: Ipv4Addr = net.parse().ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(u32::from(net).checked_add(1)?)))
}

/// The plan for the network, or why there is none.
pub(crate) async fn plan(docker: &Docker, settings: &DockerSettings) -> Result<Plan, String> {
    let fw = settings.firewall.as_ref().ok_or("no firewall configured")?;
    if !local_engine(settings) {
        return Err("the Docker Engine is remote: its bridge is not on this host".into());
    }
    let net = docker
        .inspect_network(&settings.network, None::<InspectNetworkOptions>)
        .await
        .map_err(|e| format!("inspect network: {e}"))?;
    if net.driver.as_deref() != Some("bridge") {
        return Err(format!("network driver {:?} is not bridge", net.driver));
    }
    let id = net.id.clone().unwrap_or_default();
    let bridge = net
        .options
        .as_ref()
        .and_then(|o| o.get(BRIDGE_NAME_OPTION).cloned())
        .filter(|b| !b.is_empty())
        .or_else(|| id.get(..12).map(|short| format!("br-{short}")))
        .ok_or("network has no id")?;
    let (subnet, gateway) = net
        .ipam
        .and_then(|i| i.config)
        .unwrap_or_default()
        .into_iter()
        .find_map(|c| {
            let subnet = c.subnet?;
            let gw = match c.gateway.filter(|g| !g.is_empty()) {
                Some(g) => g.parse().ok()?,
                None => default_gateway(&subnet)?,
            };
            matches!(gw, IpAddr::V4(_)).then_some((subnet, gw))
        })
        .ok_or("network has no IPv4 subnet")?;
    Ok(Plan {
        scope: fw.scope.clone(),
        bridge,
        subnet,
        gateway,
        // Containers on user networks resolve through Docker's embedded DNS (127.0.0.11).
        dns_server: None,
        deny_cidrs: fw.deny_cidrs.clone(),
        egress: fw.egress,
    })
}

/// Installs the chains at connect; a failure is logged (workers then run unconfined).
pub(crate) async fn install(docker: &Docker, settings: &DockerSettings) {
    if settings.firewall.is_none() {
        return;
    }
    let plan = match plan(docker, settings).await {
        Ok(p) => p,
        Err(why) => {
            tracing::warn!(network = %settings.network, %why, "no worker firewall for the docker network");
            return;
        }
    };
    let network = settings.network.clone();
    let res =
        tokio::task::spawn_blocking(move || firewall::install(&plan, &network).map(|()| plan))
            .await;
    match res {
        Ok(Ok(plan)) => tracing::info!(
            network = %settings.network,
            bridge = %plan.bridge,
            chains = ?firewall::chain_names(&plan.scope),
            "worker firewall installed"
        ),
        Ok(Err(e)) => tracing::warn!(
            network = %settings.network,
            error = %e,
            "cannot install the worker firewall; workers can reach the node's ports and networks"
        ),
        Err(e) => tracing::warn!(error = %e, "worker firewall task failed"),
    }
}

/// Removes the chains (destroy shutdown policy). Idempotent.
pub(crate) async fn remove(settings: &DockerSettings) -> Result<(), String> {
    let Some(fw) = settings.firewall.clone() else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || firewall::remove(&fw.scope).map_err(|e| e.to_string()))
        .await
        .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_defaults_to_first_host() {
        assert_eq!(
            default_gateway("172.31.250.0/24"),
            Some("172.31.250.1".parse().expect("ip"))
        );
        assert_eq!(default_gateway("fd00::/64"), None);
        assert_eq!(default_gateway("junk"), None);
    }
}
