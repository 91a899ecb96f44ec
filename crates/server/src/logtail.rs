//! Lambda's log tail around an invocation: with `X-Amz-Log-Type: Tail` in the request headers
//! the reply carries `x-amz-log-result`, base64 of the last 4 KiB the worker wrote to
//! stdout/stderr during the call. A cursor is taken before the call and the log read after it;
//! output reaches the log slightly after the HTTP answer (pipe → log writer → file, or
//! dockerd; usually < 1 ms, several ms on a loaded node), so the read is repeated until it has
//! not changed for `QUIET` (`QUIET_EMPTY` while still empty), at most `SETTLE_MAX`.
//! Best effort: a backend without logs or a failed read means no header, never a failed
//! invocation.

use std::time::{Duration, Instant};

use base64::Engine as _;
use esb_runtime::Runtime;
use http::HeaderMap;

/// Request header asking for the tail, and its value (case-insensitive).
pub const LOG_TYPE_HEADER: &str = "x-amz-log-type";
/// Reply header carrying the tail (reply header names are lowercase).
pub const LOG_RESULT_HEADER: &str = "x-amz-log-result";
/// Bytes of log returned at most (Lambda's 4 KiB).
pub const TAIL_BYTES: usize = 4096;
/// Pause between two reads while waiting for late output to land.
const SETTLE_STEP: Duration = Duration::from_millis(1);
/// The tail is final once it has not changed for this long…
const QUIET: Duration = Duration::from_millis(5);
/// …or this long while nothing arrived yet.
const QUIET_EMPTY: Duration = Duration::from_millis(15);
/// Longest wait for late output after the answer.
const SETTLE_MAX: Duration = Duration::from_millis(50);

/// Whether the request asks for the log tail.
pub fn wants_tail(headers: &HeaderMap) -> bool {
    headers
        .get(LOG_TYPE_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("tail"))
}

/// The cursor to read from after the call; `None` when the backend cannot tell.
pub async fn before(runtime: &dyn Runtime, id: &str) -> Option<u64> {
    match runtime.log_position(id).await {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::debug!(container_id = %id, error = %e.chain(), "no log position");
            None
        }
    }
}

/// Base64 of the last [`TAIL_BYTES`] written since `since`, once the output has settled.
pub async fn after(runtime: &dyn Runtime, id: &str, since: u64) -> Option<String> {
    let started = Instant::now();
    let read = || async {
        match runtime.read_log(id, Some(since), TAIL_BYTES).await {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::debug!(container_id = %id, error = %e.chain(), "log tail read failed");
                None
            }
        }
    };
    let mut tail = read().await?;
    let mut changed = Instant::now();
    while started.elapsed() < SETTLE_MAX {
        let quiet = if tail.is_empty() { QUIET_EMPTY } else { QUIET };
        if changed.elapsed() >= quiet {
            break;
        }
        tokio::time::sleep(SETTLE_STEP).await;
        let next = read().await?;
        if next != tail {
            tail = next;
            changed = Instant::now();
        }
    }
    tracing::trace!(container_id = %id, bytes = tail.len(), settle_us = started.elapsed().as_micros() as u64, "log tail");
    Some(base64::engine::general_purpose::STANDARD.encode(tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_header_is_case_insensitive() {
        let mut h = HeaderMap::new();
        assert!(!wants_tail(&h));
        h.insert("X-Amz-Log-Type", "Tail".parse().unwrap());
        assert!(wants_tail(&h));
        h.insert("x-amz-log-type", "TAIL".parse().unwrap());
        assert!(wants_tail(&h));
        h.insert("x-amz-log-type", "None".parse().unwrap());
        assert!(!wants_tail(&h));
    }
}
