//! The server's domain model: what handlers hand to the core once a request is validated
//! (the edge builds these from proto messages; `service` and `invoke` only see these), so
//! the core never depends on the edge.

use std::time::Duration;

use bytes::Bytes;
use esb_runtime::WorkerState;
use http::header::{HeaderMap, HeaderName};
use http::uri::PathAndQuery;

/// A validated container id + owner pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub container_id: String,
    pub owner_id: String,
}

/// A validated InvokeWorker call.
#[derive(Debug, Clone)]
pub struct InvokeCall {
    pub target: Target,
    pub path: PathAndQuery,
    pub payload: Bytes,
    pub headers: HeaderMap,
    /// From `timeout_ms` (≤ 0 → the default), clamped to 900 s.
    pub timeout: Duration,
}

/// A listed worker with its last use.
pub struct Listed {
    pub state: WorkerState,
    pub last_used_at: i64,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the ones the proxy sets itself.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}
