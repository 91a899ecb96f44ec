//! The one worker status enum shared by every backend (wire strings are compat).

use std::fmt;

/// Lifecycle state of a worker as seen by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum WorkerStatus {
    Running,
    Paused,
    Stopped,
    Unknown,
}

impl WorkerStatus {
    /// The exact wire string (`RUNNING`, `PAUSED`, `STOPPED`, `UNKNOWN`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Paused => "PAUSED",
            Self::Stopped => "STOPPED",
            Self::Unknown => "UNKNOWN",
        }
    }
}

impl fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_strings_are_compat() {
        assert_eq!(WorkerStatus::Running.as_str(), "RUNNING");
        assert_eq!(WorkerStatus::Paused.as_str(), "PAUSED");
        assert_eq!(WorkerStatus::Stopped.as_str(), "STOPPED");
        assert_eq!(WorkerStatus::Unknown.to_string(), "UNKNOWN");
    }
}
