//! The one error → gRPC status table (SPEC §3). Every error a handler returns passes through
//! [`ApiError`] → [`tonic::Status`] here, and is logged here once.

use esb_runtime::{ErrorKind, RuntimeError};
use tonic::{Code, Status};

/// Compat text: the gateway maps a metrics error containing it to HTTP 501.
pub const METRICS_NOT_IMPLEMENTED: &str = "metrics not implemented";

/// An error of the API layer: a server-side decision or a runtime error passed through.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidArgument(String),
    /// Input or output over a bound (maps, sizes, the invoke response limit).
    #[error("{0}")]
    TooLarge(String),
    /// The node or the owner is at a capacity bound (workers, memory budget).
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The worker could not be reached or broke the connection.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// The code of a runtime error kind (the table documented in docs/api.md).
pub fn runtime_code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound | ErrorKind::ImageNotFound => Code::NotFound,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::Unimplemented => Code::Unimplemented,
        ErrorKind::Internal => Code::Internal,
    }
}

impl ApiError {
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::TooLarge(_) | Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::NotFound(_) => Code::NotFound,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
            Self::Runtime(e) => runtime_code(e.kind()),
        }
    }

    /// For GetContainerMetrics: an unsupported backend must say `metrics not implemented`.
    pub fn for_metrics(self) -> Self {
        match self {
            Self::Runtime(e) if e.kind() == ErrorKind::Unimplemented => {
                if e.message().contains(METRICS_NOT_IMPLEMENTED) {
                    Self::Runtime(e)
                } else {
                    let msg = format!("{METRICS_NOT_IMPLEMENTED}: {}", e.message());
                    Self::Runtime(RuntimeError::unimplemented(msg).with_source(e))
                }
            }
            other => other,
        }
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        let code = err.code();
        // Logged once, here: server-side faults at warn with the full cause chain, caller
        // mistakes at debug (the per-RPC line already records the code).
        let detail = match &err {
            ApiError::Runtime(e) => e.chain(),
            other => other.to_string(),
        };
        match code {
            Code::Internal | Code::Unavailable | Code::Unknown | Code::DataLoss => {
                tracing::warn!(code = ?code, error = %detail, "request failed");
            }
            _ => tracing::debug!(code = ?code, error = %detail, "request rejected"),
        }
        Status::new(code, bounded_message(err.to_string()))
    }
}

/// Longest `grpc-message` sent: it travels in a header, and clients refuse header blocks
/// beyond their limit (16 KiB by default) with a protocol error instead of the real status.
const MAX_MESSAGE_BYTES: usize = 1024;

fn bounded_message(mut msg: String) -> String {
    if msg.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
        msg.push('…');
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_bounded_on_a_char_boundary() {
        let long = ApiError::InvalidArgument("é".repeat(40_000));
        let st = Status::from(long);
        assert!(st.message().len() <= MAX_MESSAGE_BYTES + '…'.len_utf8());
        assert!(st.message().ends_with('…'));
        let short = Status::from(ApiError::InvalidArgument("short".into()));
        assert_eq!(short.message(), "short");
    }

    #[test]
    fn runtime_kinds_map_to_codes() {
        let cases = [
            (ErrorKind::InvalidArgument, Code::InvalidArgument),
            (ErrorKind::NotFound, Code::NotFound),
            (ErrorKind::ImageNotFound, Code::NotFound),
            (ErrorKind::FailedPrecondition, Code::FailedPrecondition),
            (ErrorKind::ResourceExhausted, Code::ResourceExhausted),
            (ErrorKind::Unavailable, Code::Unavailable),
            (ErrorKind::DeadlineExceeded, Code::DeadlineExceeded),
            (ErrorKind::Unimplemented, Code::Unimplemented),
            (ErrorKind::Internal, Code::Internal),
        ];
        for (kind, code) in cases {
            let s: Status = ApiError::from(RuntimeError::new(kind, "x")).into();
            assert_eq!(s.code(), code, "{kind:?}");
        }
    }

    #[test]
    fn metrics_unimplemented_keeps_compat_text() {
        let e = ApiError::from(RuntimeError::unimplemented("docker cannot")).for_metrics();
        let s: Status = e.into();
        assert_eq!(s.code(), Code::Unimplemented);
        assert!(
            s.message().contains("metrics not implemented"),
            "{}",
            s.message()
        );
    }
}
