//! Runtime errors: a semantic [`ErrorKind`] (mapped to a gRPC code in exactly one place, the
//! server's status table), a lowercase message, and the underlying cause kept as `source`.

use std::error::Error as StdError;

/// Boxed cause of a runtime error.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What went wrong, independent of the backend. One kind per gRPC meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Bad input: function name, env, image reference.
    InvalidArgument,
    /// The worker does not exist (or is not managed by us).
    NotFound,
    /// The image is absent from the registry (and not present locally).
    ImageNotFound,
    /// The operation does not fit the worker's state (resume of a stopped worker, ...).
    FailedPrecondition,
    /// No free IP, worker limit reached, response too large.
    ResourceExhausted,
    /// Registry or runtime daemon unreachable.
    Unavailable,
    /// A bounded wait ran out.
    DeadlineExceeded,
    /// The backend does not support the operation.
    Unimplemented,
    /// Anything else.
    Internal,
}

/// An error from a runtime backend.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RuntimeError {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl RuntimeError {
    /// An error of `kind` with a lowercase, operator-readable message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause (kept for logs; the message stays ours).
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The message followed by every cause in the chain, `: `-separated; a cause whose text
    /// is already at the end (messages that quote their cause) is not repeated.
    pub fn chain(&self) -> String {
        let mut out = self.message.clone();
        let mut cur: Option<&(dyn StdError + 'static)> = self.source.as_deref().map(|e| e as _);
        while let Some(e) = cur {
            let text = e.to_string();
            if !out.ends_with(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            cur = e.source();
        }
        out
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn image_not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ImageNotFound, message)
    }
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::FailedPrecondition, message)
    }
    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ResourceExhausted, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    pub fn deadline_exceeded(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::DeadlineExceeded, message)
    }
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unimplemented, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// A failed file operation of the node (state dir, logs): `<what> <path>: <os error>`,
    /// with the kind the cause calls for (see [`io_error_kind`]).
    pub fn io(what: &str, path: &std::path::Path, e: std::io::Error) -> Self {
        Self::new(io_error_kind(&e), format!("{what} {}: {e}", path.display())).with_source(e)
    }
}

/// The kind of a node-side I/O failure: a full disk is RESOURCE_EXHAUSTED (gRPC's own example),
/// a read-only file system UNAVAILABLE (this node cannot create workers now; the gateway may
/// go elsewhere), anything else INTERNAL.
pub fn io_error_kind(e: &std::io::Error) -> ErrorKind {
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            ErrorKind::ResourceExhausted
        }
        std::io::ErrorKind::ReadOnlyFilesystem => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_name_their_cause_and_kind() {
        let full = std::io::Error::from_raw_os_error(28); // ENOSPC
        let e = RuntimeError::io("write", std::path::Path::new("/state/x"), full);
        assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
        assert!(
            e.message().starts_with("write /state/x: "),
            "{}",
            e.message()
        );
        assert!(e.message().contains("space"), "{}", e.message());
        assert_eq!(e.chain(), e.message(), "the cause is not repeated");
        let ro = std::io::Error::from_raw_os_error(30); // EROFS
        assert_eq!(io_error_kind(&ro), ErrorKind::Unavailable);
        assert_eq!(
            io_error_kind(&std::io::Error::other("x")),
            ErrorKind::Internal
        );
    }

    #[test]
    fn chain_includes_sources() {
        let io = std::io::Error::other("socket closed");
        let e = RuntimeError::unavailable("containerd unreachable").with_source(io);
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert_eq!(e.to_string(), "containerd unreachable");
        assert_eq!(e.chain(), "containerd unreachable: socket closed");
    }
}
