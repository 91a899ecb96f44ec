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

    /// The message followed by every cause in the chain, `: `-separated.
    pub fn chain(&self) -> String {
        let mut out = self.message.clone();
        let mut cur: Option<&(dyn StdError + 'static)> = self.source.as_deref().map(|e| e as _);
        while let Some(e) = cur {
            out.push_str(": ");
            out.push_str(&e.to_string());
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_includes_sources() {
        let io = std::io::Error::other("socket closed");
        let e = RuntimeError::unavailable("containerd unreachable").with_source(io);
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert_eq!(e.to_string(), "containerd unreachable");
        assert_eq!(e.chain(), "containerd unreachable: socket closed");
    }
}
