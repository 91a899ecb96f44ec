//! Maps bollard errors to [`RuntimeError`]s, keeping Docker's HTTP status as the semantic kind.

use bollard::errors::Error as DockerError;
use esb_runtime::{ErrorKind, RuntimeError};

/// What a 404 means for the call that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subject {
    Worker,
    Image,
}

/// Converts a bollard error into a runtime error: `what` is our lowercase context
/// ("pause worker"), the daemon's own message is appended for operators.
pub(crate) fn map(err: DockerError, what: &str, subject: Subject) -> RuntimeError {
    map_adjusted(err, what, subject, |kind, _| kind)
}

/// Like [`map`], letting the caller refine the kind from the daemon's message (the same
/// status means different things to different calls).
pub(crate) fn map_adjusted(
    err: DockerError,
    what: &str,
    subject: Subject,
    adjust: impl FnOnce(ErrorKind, &str) -> ErrorKind,
) -> RuntimeError {
    let (kind, detail) = classify(&err, subject);
    let kind = adjust(kind, detail.as_deref().unwrap_or_default());
    let message = match detail {
        Some(d) => format!("{what}: {}", d.to_lowercase()),
        None => what.to_string(),
    };
    RuntimeError::new(kind, message).with_source(DaemonSource(err))
}

/// The bollard error kept as a source without repeating the daemon's message (already in
/// ours): a daemon answer shows its HTTP status only; other errors show themselves.
#[derive(Debug)]
struct DaemonSource(DockerError);

impl std::fmt::Display for DaemonSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            DockerError::DockerResponseServerError { status_code, .. } => {
                write!(f, "docker status {status_code}")
            }
            DockerError::DockerStreamError { .. } => f.write_str("docker stream error"),
            other => other.fmt(f),
        }
    }
}

impl std::error::Error for DaemonSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)
    }
}

/// The HTTP status of a daemon response, if the error is one.
pub(crate) fn status_of(err: &DockerError) -> Option<u16> {
    match err {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// True when the daemon answered 404.
pub(crate) fn is_not_found(err: &DockerError) -> bool {
    status_of(err) == Some(404)
}

fn classify(err: &DockerError, subject: Subject) -> (ErrorKind, Option<String>) {
    match err {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => {
            let kind = match *status_code {
                404 if subject == Subject::Image => ErrorKind::ImageNotFound,
                404 => ErrorKind::NotFound,
                409 => ErrorKind::FailedPrecondition,
                400 => ErrorKind::InvalidArgument,
                // The daemon reports registry trouble during a pull as a 500.
                500 if subject == Subject::Image => pull_message_kind(message),
                _ => ErrorKind::Internal,
            };
            (kind, Some(message.clone()))
        }
        DockerError::DockerStreamError { error } => (pull_message_kind(error), Some(error.clone())),
        DockerError::RequestTimeoutError => (
            ErrorKind::DeadlineExceeded,
            Some("docker request timed out".into()),
        ),
        DockerError::HyperLegacyError { .. }
        | DockerError::HyperResponseError { .. }
        | DockerError::IOError { .. }
        | DockerError::SocketNotFoundError(_) => (
            ErrorKind::Unavailable,
            Some("docker daemon unreachable".into()),
        ),
        _ => (ErrorKind::Internal, None),
    }
}

/// Classifies a pull failure by the registry's words (the daemon gives no structured code).
pub(crate) fn pull_message_kind(message: &str) -> ErrorKind {
    let m = message.to_lowercase();
    if m.contains("manifest unknown")
        || m.contains("name unknown")
        || m.contains("not found")
        || m.contains("pull access denied")
        || m.contains("repository does not exist")
    {
        ErrorKind::ImageNotFound
    } else if m.contains("invalid reference") || m.contains("invalid tag") {
        ErrorKind::InvalidArgument
    } else if m.contains("connection refused")
        || m.contains("no such host")
        || m.contains("i/o timeout")
        || m.contains("dial tcp")
        || m.contains("tls handshake")
        || m.contains("server gave http response")
        || m.contains("service unavailable")
        || m.contains("connection reset")
    {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Internal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16, msg: &str) -> DockerError {
        DockerError::DockerResponseServerError {
            status_code: code,
            message: msg.into(),
        }
    }

    #[test]
    fn the_chain_says_the_daemon_message_once_and_keeps_the_status() {
        let e = map(
            server(409, "Container abc is not running"),
            "pause worker",
            Subject::Worker,
        );
        let chain = e.chain();
        assert_eq!(chain.matches("is not running").count(), 1, "{chain}");
        assert!(chain.contains("docker status 409"), "{chain}");
    }

    #[test]
    fn http_status_becomes_kind() {
        assert_eq!(
            map(
                server(404, "No such container: x"),
                "pause worker",
                Subject::Worker
            )
            .kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            map(
                server(404, "manifest unknown"),
                "pull image",
                Subject::Image
            )
            .kind(),
            ErrorKind::ImageNotFound
        );
        assert_eq!(
            map(server(409, "conflict"), "remove", Subject::Worker).kind(),
            ErrorKind::FailedPrecondition
        );
        assert_eq!(
            map(
                server(400, "invalid reference format"),
                "pull",
                Subject::Image
            )
            .kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            map(server(500, "boom"), "start", Subject::Worker).kind(),
            ErrorKind::Internal
        );
        let e = map(
            server(404, "No such container: x"),
            "pause worker",
            Subject::Worker,
        );
        assert_eq!(e.message(), "pause worker: no such container: x");
    }

    #[test]
    fn pull_messages_are_classified() {
        let refused =
            "Get \"http://127.0.0.1:1/v2/\": dial tcp 127.0.0.1:1: connect: connection refused";
        assert_eq!(pull_message_kind(refused), ErrorKind::Unavailable);
        assert_eq!(
            pull_message_kind("manifest for x:latest not found: manifest unknown"),
            ErrorKind::ImageNotFound
        );
        assert_eq!(pull_message_kind("something odd"), ErrorKind::Internal);
        let io = DockerError::IOError {
            err: std::io::Error::other("refused"),
        };
        assert_eq!(
            map(io, "ping", Subject::Worker).kind(),
            ErrorKind::Unavailable
        );
    }
}
