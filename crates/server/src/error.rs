//! Errors of starting and running the server (the API-level errors live in status.rs).

use std::net::SocketAddr;
use std::path::PathBuf;

use esb_runtime::RuntimeError;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind the {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the {what} file {}: {source}", path.display())]
    TlsFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {what} file {}: {reason}", path.display())]
    TlsInvalid {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("tls configuration rejected: {0}")]
    Tls(String),
    #[error("start-up reconcile failed: {0}")]
    Reconcile(#[source] RuntimeError),
    #[error("grpc server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
}
