//! libcni-style chain execution over a conflist: ADD in order with `prevResult` chaining,
//! DEL in reverse, CHECK best effort; transient failures retried with bounded backoff.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::conflist::CNI_VERSION;
use crate::error::CniError;
use crate::exec::{CniCommand, PluginCall, PluginExec};

/// Retry delays for transient plugin errors (bounded: < 1 s in total).
const BACKOFF_MS: [u64; 5] = [20, 40, 80, 160, 320];

/// What every call of one attachment shares.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
}

fn plugins(conflist: &Value) -> Result<&Vec<Value>, CniError> {
    conflist["plugins"]
        .as_array()
        .ok_or_else(|| CniError::InvalidSettings("conflist has no plugins".into()))
}

/// The per-plugin network config libcni builds: the plugin object plus the list's name and
/// version, and the previous result when there is one.
fn plugin_config(conflist: &Value, plugin: &Value, prev: Option<&Value>) -> Value {
    let mut cfg = plugin.clone();
    if let Some(obj) = cfg.as_object_mut() {
        obj.insert("name".into(), conflist["name"].clone());
        obj.insert("cniVersion".into(), Value::String(CNI_VERSION.into()));
        if let Some(prev) = prev {
            obj.insert("prevResult".into(), prev.clone());
        }
    }
    cfg
}

fn call_for(t: &Target, plugin: &Value, command: CniCommand, config: Value) -> PluginCall {
    PluginCall {
        plugin: plugin["type"].as_str().unwrap_or_default().to_string(),
        command,
        container_id: t.container_id.clone(),
        netns: t.netns.clone(),
        ifname: t.ifname.clone(),
        config,
    }
}

async fn exec_retrying(
    exec: &dyn PluginExec,
    call: &PluginCall,
) -> Result<Option<Value>, CniError> {
    let mut attempt = 0;
    loop {
        match exec.exec(call).await {
            Err(e) if e.is_transient() && attempt < BACKOFF_MS.len() => {
                tracing::debug!(plugin = %call.plugin, command = call.command.as_str(),
                    container_id = %call.container_id, attempt, error = %e, "transient cni error, retrying");
                tokio::time::sleep(Duration::from_millis(BACKOFF_MS[attempt])).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Runs ADD through the chain and returns the final result. Does not undo on failure; the
/// caller runs [`del`] (which tolerates partial state), like libcni's users do.
pub(crate) async fn add(
    exec: &dyn PluginExec,
    conflist: &Value,
    t: &Target,
) -> Result<Value, CniError> {
    let mut prev: Option<Value> = None;
    for plugin in plugins(conflist)? {
        let call = call_for(
            t,
            plugin,
            CniCommand::Add,
            plugin_config(conflist, plugin, prev.as_ref()),
        );
        let result = exec_retrying(exec, &call)
            .await?
            .ok_or_else(|| CniError::BadResult {
                plugin: call.plugin.clone(),
                reason: "empty ADD result".into(),
            })?;
        prev = Some(result);
    }
    prev.ok_or_else(|| CniError::InvalidSettings("conflist has no plugins".into()))
}

/// Runs DEL through the chain in reverse order, every plugin even when one fails; returns the
/// first error. `prev` is the cached ADD result, when known.
pub(crate) async fn del(
    exec: &dyn PluginExec,
    conflist: &Value,
    t: &Target,
    prev: Option<&Value>,
) -> Result<(), CniError> {
    let mut first_err = None;
    for plugin in plugins(conflist)?.iter().rev() {
        let call = call_for(
            t,
            plugin,
            CniCommand::Del,
            plugin_config(conflist, plugin, prev),
        );
        match exec_retrying(exec, &call).await {
            Ok(_) => {}
            // A plugin that cannot run cannot hold state we could free through it; the
            // caller still releases IPAM and the netns directly.
            Err(e @ CniError::PluginNotFound { .. }) => {
                tracing::warn!(container_id = %t.container_id, error = %e, "cni DEL skipped");
            }
            Err(e) => {
                tracing::warn!(plugin = %call.plugin, container_id = %t.container_id, error = %e, "cni DEL failed");
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// CHECK through the chain. Best effort: portmap's CHECK fails on plugins 1.1.1, so callers
/// should log rather than act on an error.
pub(crate) async fn check(
    exec: &dyn PluginExec,
    conflist: &Value,
    t: &Target,
    prev: &Value,
) -> Result<(), CniError> {
    for plugin in plugins(conflist)? {
        let call = call_for(
            t,
            plugin,
            CniCommand::Check,
            plugin_config(conflist, plugin, Some(prev)),
        );
        exec_retrying(exec, &call).await?;
    }
    Ok(())
}

/// Host-side interfaces of a CNI 1.0 result: no `sandbox`, not the bridge itself (for the
/// bridge plugin: the worker veth's host end).
pub(crate) fn host_veths(result: &Value, bridge: &str) -> Vec<String> {
    result["interfaces"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|i| i["sandbox"].as_str().is_none_or(str::is_empty))
                .filter_map(|i| i["name"].as_str())
                .filter(|n| *n != bridge)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The address of the sandbox interface `ifname` in a CNI 1.0 result (falls back to the
/// first address when no interface index links them).
pub(crate) fn sandbox_ip(result: &Value, ifname: &str) -> Option<IpAddr> {
    let ifaces = result["interfaces"].as_array();
    let sandbox_idx = ifaces.and_then(|list| {
        list.iter().position(|i| {
            i["name"].as_str() == Some(ifname)
                && i["sandbox"].as_str().is_some_and(|s| !s.is_empty())
        })
    });
    let ips = result["ips"].as_array()?;
    let parse = |ip: &Value| -> Option<IpAddr> {
        let addr = ip["address"].as_str()?;
        addr.split('/').next()?.parse().ok()
    };
    if let Some(idx) = sandbox_idx
        && let Some(ip) = ips
            .iter()
            .find(|ip| ip["interface"].as_u64() == Some(idx as u64))
            .and_then(parse)
    {
        return Some(ip);
    }
    ips.iter().find_map(parse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::fake::FakeExec;
    use serde_json::json;

    fn conflist() -> Value {
        json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}, {"type": "portmap"}]})
    }

    fn target() -> Target {
        Target {
            container_id: "c1".into(),
            netns: "/x/netns/c1".into(),
            ifname: "eth0".into(),
        }
    }

    #[tokio::test]
    async fn add_chains_and_del_reverses() {
        let fake = FakeExec::new("10.0.0.0".parse().expect("ip"));
        let res = add(&fake, &conflist(), &target()).await.expect("add");
        assert_eq!(
            sandbox_ip(&res, "eth0"),
            Some("10.0.0.2".parse().expect("ip"))
        );
        del(&fake, &conflist(), &target(), Some(&res))
            .await
            .expect("del");
        let order: Vec<_> = fake.calls().into_iter().map(|(p, c, _)| (p, c)).collect();
        assert_eq!(
            order,
            vec![
                ("bridge".into(), CniCommand::Add),
                ("portmap".into(), CniCommand::Add),
                ("portmap".into(), CniCommand::Del),
                ("bridge".into(), CniCommand::Del),
            ]
        );
    }

    #[tokio::test]
    async fn transient_errors_are_retried_then_fail() {
        let fake = FakeExec::new("10.0.0.0".parse().expect("ip"));
        fake.fail("bridge", CniCommand::Add, 999, "Link not found", Some(2));
        add(&fake, &conflist(), &target()).await.expect("retried");
        assert_eq!(fake.calls().len(), 4);

        let fake = FakeExec::new("10.0.0.0".parse().expect("ip"));
        fake.fail("bridge", CniCommand::Add, 7, "bad config", None);
        assert!(add(&fake, &conflist(), &target()).await.is_err());
        assert_eq!(fake.calls().len(), 1, "permanent errors are not retried");
    }

    #[tokio::test]
    async fn del_runs_every_plugin_and_reports_first_error() {
        let fake = FakeExec::new("10.0.0.0".parse().expect("ip"));
        fake.fail("portmap", CniCommand::Del, 7, "boom", None);
        assert!(del(&fake, &conflist(), &target(), None).await.is_err());
        assert_eq!(fake.calls().len(), 2);
    }

    #[test]
    fn ip_from_sandbox_interface() {
        let r = json!({
            "interfaces": [{"name": "br"}, {"name": "eth0", "sandbox": "/ns"}],
            "ips": [{"interface": 0, "address": "10.0.0.1/24"}, {"interface": 1, "address": "10.0.0.9/24"}],
        });
        assert_eq!(
            sandbox_ip(&r, "eth0"),
            Some("10.0.0.9".parse().expect("ip"))
        );
        assert_eq!(sandbox_ip(&json!({"ips": []}), "eth0"), None);
        assert_eq!(
            sandbox_ip(&json!({"ips": [{"address": "10.1.1.1/16"}]}), "eth0"),
            Some("10.1.1.1".parse().expect("ip"))
        );
    }
}
