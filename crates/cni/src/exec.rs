//! The plugin executor seam: [`PluginExec`] runs one CNI plugin command. [`ProcessExec`]
//! spawns the real binary (env + stdin per the CNI spec, never touching the agent's own env);
//! [`fake::FakeExec`] serves unit tests.

pub mod fake;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::error::CniError;

/// PATH for plugins when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CniCommand {
    Add,
    Del,
    Check,
}

impl CniCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
        }
    }
}

/// One plugin invocation.
#[derive(Debug, Clone)]
pub struct PluginCall {
    /// Plugin type (= binary name in `CNI_PATH`).
    pub plugin: String,
    pub command: CniCommand,
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// Network config for this plugin (name, cniVersion, prevResult already merged in).
    pub config: Value,
}

/// Runs CNI plugins. Implementations must be safe to call concurrently.
#[async_trait::async_trait]
pub trait PluginExec: Send + Sync + 'static {
    /// Runs the call. ADD returns the plugin's result; DEL and CHECK return `None`.
    async fn exec(&self, call: &PluginCall) -> Result<Option<Value>, CniError>;

    /// Isolates the worker veth's host end `ifname` on its bridge (review H5); the real
    /// implementation runs `bridge link set dev <ifname> isolated on`.
    async fn isolate_port(&self, ifname: &str) -> Result<(), CniError> {
        let name = ifname.to_string();
        tokio::task::spawn_blocking(move || crate::firewall::isolate_port(&name))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r.map_err(std::io::Error::other))
            .map_err(|e| CniError::io("isolate bridge port", ifname, e))
    }
}

/// Runs plugin binaries from a directory.
#[derive(Debug, Clone)]
pub struct ProcessExec {
    bin_dir: PathBuf,
    timeout: Duration,
}

impl ProcessExec {
    pub fn new(bin_dir: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            bin_dir: bin_dir.into(),
            timeout,
        }
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }
}

/// The error object a plugin prints on failure.
#[derive(Debug, Deserialize)]
struct CniErrorJson {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

#[async_trait::async_trait]
impl PluginExec for ProcessExec {
    async fn exec(&self, call: &PluginCall) -> Result<Option<Value>, CniError> {
        let path = self.bin_dir.join(&call.plugin);
        if call.plugin.contains('/') || !path.is_file() {
            return Err(CniError::PluginNotFound {
                plugin: call.plugin.clone(),
                path,
            });
        }
        let exec_err = |source: std::io::Error| CniError::PluginExec {
            plugin: call.plugin.clone(),
            command: call.command.as_str(),
            source,
        };
        let stdin = serde_json::to_vec(&call.config).map_err(|e| exec_err(e.into()))?;
        // Env only on the child: the agent's own environment is never modified, and none of it
        // (tokens, registry credentials) leaks into plugins beyond PATH (they run iptables).
        let path_env = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
        let mut child = tokio::process::Command::new(&path)
            .env_clear()
            .env("PATH", path_env)
            .env("CNI_COMMAND", call.command.as_str())
            .env("CNI_CONTAINERID", &call.container_id)
            .env("CNI_NETNS", &call.netns)
            .env("CNI_IFNAME", &call.ifname)
            .env("CNI_PATH", &self.bin_dir)
            .env("CNI_ARGS", "IgnoreUnknown=1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(exec_err)?;
        let mut pipe = child
            .stdin
            .take()
            .ok_or_else(|| exec_err(std::io::Error::other("no stdin pipe")))?;
        let run = async {
            pipe.write_all(&stdin).await?;
            drop(pipe);
            child.wait_with_output().await
        };
        let out = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| {
                exec_err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "plugin timed out",
                ))
            })?
            .map_err(exec_err)?;
        if !out.status.success() {
            return Err(plugin_failure(call, &out.stdout, &out.stderr, out.status));
        }
        if call.command != CniCommand::Add {
            return Ok(None);
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| CniError::BadResult {
                plugin: call.plugin.clone(),
                reason: format!("invalid json: {e}"),
            })
    }
}

/// Builds the error for a failed plugin: its CNI error JSON when it printed one, else stderr.
fn plugin_failure(
    call: &PluginCall,
    stdout: &[u8],
    stderr: &[u8],
    status: std::process::ExitStatus,
) -> CniError {
    let parsed: Option<CniErrorJson> = serde_json::from_slice(stdout).ok();
    let (code, msg, details) = match parsed {
        Some(e) if !e.msg.is_empty() || e.code != 0 => (e.code, e.msg, e.details),
        _ => {
            let text = String::from_utf8_lossy(if stderr.is_empty() { stdout } else { stderr });
            (
                999,
                format!("exited with {status}"),
                truncate(text.trim(), 512),
            )
        }
    };
    CniError::Plugin {
        plugin: call.plugin.clone(),
        command: call.command.as_str(),
        code,
        msg,
        details,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}
