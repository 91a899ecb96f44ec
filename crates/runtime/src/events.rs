//! Backend-neutral worker events (SPEC §5, DESIGN §5): what a backend's daemon event stream
//! (containerd `/tasks/*` + `/containers/delete`, Docker `/events`) says happened to a managed
//! worker, so the server's worker table changes within a second instead of at the next poll.

use std::pin::Pin;
use std::time::SystemTime;

use futures::Stream;

use crate::Result;

/// Something that happened to one worker outside (or inside) the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEvent {
    /// The worker id as every other operation takes it (containerd: container id; Docker:
    /// full container id).
    pub id: String,
    pub kind: WorkerEventKind,
    /// When the daemon says it happened (for the event → table lag), if it says.
    pub at: Option<SystemTime>,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerEventKind {
    /// The worker's main process exited (crash, `exit`, kill, OOM kill).
    Exited {
        exit_code: u32,
        /// The exit was an OOM kill, when the backend tells it on the exit itself (Docker's
        /// `die` does not; an [`WorkerEventKind::Oom`] comes separately).
        oom: bool,
    },
    /// The kernel OOM killer hit the worker (the exit follows separately).
    Oom,
    Paused,
    Resumed,
    /// The container record is gone.
    Deleted,
}

impl WorkerEventKind {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exited { .. } => "exited",
            Self::Oom => "oom",
            Self::Paused => "paused",
            Self::Resumed => "resumed",
            Self::Deleted => "deleted",
        }
    }

    /// Every label value, for pre-registering metrics.
    pub const LABELS: [&'static str; 5] = ["exited", "oom", "paused", "resumed", "deleted"];
}

/// One live subscription: yields events until the daemon connection breaks (then an `Err`
/// or the end of the stream); the caller resubscribes and relists.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<WorkerEvent>> + Send + 'static>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_match_kinds() {
        let kinds = [
            WorkerEventKind::Exited {
                exit_code: 0,
                oom: false,
            },
            WorkerEventKind::Oom,
            WorkerEventKind::Paused,
            WorkerEventKind::Resumed,
            WorkerEventKind::Deleted,
        ];
        let got: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        assert_eq!(got, WorkerEventKind::LABELS);
    }
}
