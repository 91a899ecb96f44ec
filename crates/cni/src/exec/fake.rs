//! A scripted in-memory [`PluginExec`] for unit tests: records every call, hands out IPs from a
//! counter on `bridge` ADD, echoes `prevResult` for other plugins, and fails on request.

use std::net::Ipv4Addr;
use std::sync::Mutex;

use serde_json::{Value, json};

use super::{CniCommand, PluginCall, PluginExec};
use crate::error::CniError;

/// A scripted failure: matching calls fail with `code`/`msg` (`remaining` times, or forever).
#[derive(Debug, Clone)]
struct FailRule {
    plugin: String,
    command: CniCommand,
    code: u32,
    msg: String,
    remaining: Option<usize>,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<(String, CniCommand, String)>,
    rules: Vec<FailRule>,
    next_ip: u32,
    isolated: Vec<String>,
}

/// Fake plugin executor.
#[derive(Debug)]
pub struct FakeExec {
    base: Ipv4Addr,
    state: Mutex<State>,
}

impl FakeExec {
    /// IPs are handed out as `base + 2`, `base + 3`, ...
    pub fn new(base: Ipv4Addr) -> Self {
        Self {
            base,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the next `times` (or all, when `None`) matching calls fail.
    pub fn fail(
        &self,
        plugin: &str,
        command: CniCommand,
        code: u32,
        msg: &str,
        times: Option<usize>,
    ) {
        self.lock().rules.push(FailRule {
            plugin: plugin.into(),
            command,
            code,
            msg: msg.into(),
            remaining: times,
        });
    }

    /// Every call so far: (plugin, command, container id).
    pub fn calls(&self) -> Vec<(String, CniCommand, String)> {
        self.lock().calls.clone()
    }

    /// Host veth names passed to `isolate_port`, in order.
    pub fn isolated_ports(&self) -> Vec<String> {
        self.lock().isolated.clone()
    }
}

#[async_trait::async_trait]
impl PluginExec for FakeExec {
    async fn isolate_port(&self, ifname: &str) -> Result<(), CniError> {
        self.lock().isolated.push(ifname.to_string());
        Ok(())
    }

    async fn exec(&self, call: &PluginCall) -> Result<Option<Value>, CniError> {
        let mut st = self.lock();
        st.calls
            .push((call.plugin.clone(), call.command, call.container_id.clone()));
        let hit = st.rules.iter_mut().find(|r| {
            r.plugin == call.plugin && r.command == call.command && r.remaining != Some(0)
        });
        if let Some(rule) = hit {
            if let Some(n) = rule.remaining.as_mut() {
                *n -= 1;
            }
            return Err(CniError::Plugin {
                plugin: call.plugin.clone(),
                command: call.command.as_str(),
                code: rule.code,
                msg: rule.msg.clone(),
                details: String::new(),
            });
        }
        if call.command != CniCommand::Add {
            return Ok(None);
        }
        if call.plugin != "bridge" {
            return Ok(Some(
                call.config
                    .get("prevResult")
                    .cloned()
                    .unwrap_or(Value::Null),
            ));
        }
        st.next_ip += 1;
        let ip = Ipv4Addr::from(u32::from(self.base) + 1 + st.next_ip);
        Ok(Some(json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                { "name": "esb0", "mac": "02:00:00:00:00:01" },
                { "name": "veth0", "mac": "02:00:00:00:00:02" },
                { "name": call.ifname, "mac": "02:00:00:00:00:03", "sandbox": call.netns },
            ],
            "ips": [{ "interface": 2, "address": format!("{ip}/24"), "gateway": "10.0.0.1" }],
            "routes": [{ "dst": "0.0.0.0/0" }],
            "dns": {},
        })))
    }
}
