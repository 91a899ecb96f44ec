//! CNI errors: one variant per failure meaning, mapped to the runtime's [`ErrorKind`] in one
//! `From` impl so the server's status table stays the only place that picks gRPC codes.

use std::io;
use std::path::PathBuf;

use esb_runtime::{ErrorKind, RuntimeError};

/// CNI error codes with a fixed meaning (CNI spec "Error" section).
pub const CNI_CODE_TRY_AGAIN: u32 = 11;

/// An error from the CNI layer.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The settings cannot produce a valid network (bad subnet, gateway outside it, ...).
    #[error("invalid cni settings: {0}")]
    InvalidSettings(String),

    /// The container id cannot be used as a journal or netns file name.
    #[error("invalid container id {0:?}")]
    InvalidContainerId(String),

    /// A plugin binary is missing from `CNI_BIN_DIR`.
    #[error("cni plugin {plugin:?} not found at {path}")]
    PluginNotFound { plugin: String, path: PathBuf },

    /// The plugin could not be run, or did not finish in time.
    #[error("cannot run cni plugin {plugin:?} ({command}): {source}")]
    PluginExec {
        plugin: String,
        command: &'static str,
        #[source]
        source: io::Error,
    },

    /// The plugin ran and reported a CNI error.
    #[error("cni plugin {plugin:?} {command} failed: code {code}: {msg}{}", details_suffix(.details))]
    Plugin {
        plugin: String,
        command: &'static str,
        code: u32,
        msg: String,
        details: String,
    },

    /// The plugin's answer is not a CNI result we understand.
    #[error("cni plugin {plugin:?} returned a malformed result: {reason}")]
    BadResult { plugin: String, reason: String },

    /// The ADD result carries no address for the sandbox interface.
    #[error("cni result for {container_id:?} has no ip address")]
    NoIp { container_id: String },

    /// Creating, pinning or removing a network namespace failed.
    #[error("netns {action} failed for {}: {source}", .path.display())]
    Netns {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A file operation (conflist, identity file, journal, IPAM store) failed.
    #[error("{action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A journal entry cannot be decoded.
    #[error("corrupt attachment journal entry {}", .path.display())]
    Journal {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(" ({details})")
    }
}

impl CniError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Whether retrying the same plugin call may succeed (SPEC §8: `Link not found` races,
    /// the xtables lock, busy devices, and the CNI "try again later" code).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Plugin {
                code, msg, details, ..
            } => {
                *code == CNI_CODE_TRY_AGAIN || is_transient_text(msg) || is_transient_text(details)
            }
            _ => false,
        }
    }

    /// Semantic kind for the runtime layer.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidSettings(_) => ErrorKind::FailedPrecondition,
            Self::InvalidContainerId(_) => ErrorKind::InvalidArgument,
            Self::PluginNotFound { .. } | Self::PluginExec { .. } => ErrorKind::Unavailable,
            Self::Plugin { msg, details, .. }
                if is_exhausted_text(msg) || is_exhausted_text(details) =>
            {
                ErrorKind::ResourceExhausted
            }
            Self::Plugin { code, .. } if *code == CNI_CODE_TRY_AGAIN => ErrorKind::Unavailable,
            Self::Netns { source, .. } | Self::Io { source, .. } => {
                esb_runtime::error::io_error_kind(source)
            }
            Self::Plugin { .. }
            | Self::BadResult { .. }
            | Self::NoIp { .. }
            | Self::Journal { .. } => ErrorKind::Internal,
        }
    }
}

/// host-local's wording when the range is full ("no IP addresses available in range set").
fn is_exhausted_text(s: &str) -> bool {
    let s = s.to_ascii_lowercase();
    s.contains("no ip addresses available") || s.contains("no more addresses")
}

fn is_transient_text(s: &str) -> bool {
    let s = s.to_ascii_lowercase();
    [
        "link not found",
        "resource temporarily unavailable",
        "xtables lock",
        "another app is currently holding the xtables lock",
        "device or resource busy",
    ]
    .iter()
    .any(|p| s.contains(p))
}

impl From<CniError> for RuntimeError {
    fn from(e: CniError) -> Self {
        let message = match &e {
            CniError::Plugin { .. } | CniError::NoIp { .. } => e.to_string(),
            _ => format!("cni: {e}"),
        };
        RuntimeError::new(e.kind(), message).with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin_err(code: u32, msg: &str) -> CniError {
        CniError::Plugin {
            plugin: "bridge".into(),
            command: "ADD",
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    #[test]
    fn exhausted_maps_to_resource_exhausted() {
        let e = plugin_err(
            999,
            "failed to allocate for range 0: no IP addresses available in range set: 10.0.0.1-10.0.0.6",
        );
        assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
        let r: RuntimeError = e.into();
        assert_eq!(r.kind(), ErrorKind::ResourceExhausted);
    }

    #[test]
    fn transient_detection() {
        assert!(plugin_err(999, "Link not found").is_transient());
        assert!(plugin_err(999, "running iptables: xtables lock held").is_transient());
        assert!(plugin_err(11, "busy").is_transient());
        assert!(!plugin_err(7, "invalid config").is_transient());
    }

    #[test]
    fn missing_plugin_is_unavailable() {
        let e = CniError::PluginNotFound {
            plugin: "bridge".into(),
            path: "/nope/bridge".into(),
        };
        assert_eq!(RuntimeError::from(e).kind(), ErrorKind::Unavailable);
    }
}
