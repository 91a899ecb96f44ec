//! Worker names (SPEC §5): `<b>-<env>-<fn>-<8 hex random>`, at most 76 characters, sanitised
//! to the runtime charset; long function names are truncated with a short hash suffix.

use crate::error::RuntimeError;
use crate::identity::Identity;

/// containerd's id length limit.
pub const MAX_NAME_LEN: usize = 76;
/// Longest accepted raw function name, bytes.
pub const MAX_FUNCTION_NAME_BYTES: usize = 256;

/// Validates a raw function name: non-empty after sanitising, no control characters, at most
/// 256 bytes. Errors are `InvalidArgument` with a clear message.
pub fn validate_function_name(raw: &str) -> Result<(), RuntimeError> {
    todo!("names helper: {raw}")
}

/// A new unique worker name for `function_name` (already validated).
pub fn worker_name(identity: &Identity, function_name: &str) -> String {
    todo!("names helper: {identity:?} {function_name}")
}
