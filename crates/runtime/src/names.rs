//! Worker names (SPEC §5): `<b>-<env>-<fn>-<8 hex random>`, at most 76 characters, sanitised
//! to the runtime charset; long function names are truncated with a short hash suffix.

use crate::error::RuntimeError;
use crate::identity::Identity;

/// containerd's id length limit.
pub const MAX_NAME_LEN: usize = 76;
/// Longest accepted raw function name, bytes.
pub const MAX_FUNCTION_NAME_BYTES: usize = 256;

/// Length of the random suffix, hex digits.
const RANDOM_HEX: usize = 8;
/// Length of the hash suffix appended to truncated parts, hex digits.
const HASH_HEX: usize = 8;
/// Longest `<b>-<env>` head; brand and ENV are constant per agent, so a plain cut is enough.
const MAX_HEAD_LEN: usize = 32;

/// Validates a raw function name: non-empty after sanitising, no control characters, at most
/// 256 bytes. Errors are `InvalidArgument` with a clear message.
pub fn validate_function_name(raw: &str) -> Result<(), RuntimeError> {
    if raw.trim().is_empty() {
        return Err(RuntimeError::invalid_argument("function_name is required"));
    }
    if raw.len() > MAX_FUNCTION_NAME_BYTES {
        return Err(RuntimeError::invalid_argument(format!(
            "function_name is too long ({} bytes, at most {MAX_FUNCTION_NAME_BYTES})",
            raw.len()
        )));
    }
    if raw.chars().any(char::is_control) {
        return Err(RuntimeError::invalid_argument(
            "function_name must not contain control characters",
        ));
    }
    if sanitize_component(raw).is_empty() {
        return Err(RuntimeError::invalid_argument(
            "function_name must contain at least one letter or digit (a-z, 0-9)",
        ));
    }
    Ok(())
}

/// A new unique worker name for `function_name` (already validated).
pub fn worker_name(identity: &Identity, function_name: &str) -> String {
    let random = format!("{:08x}", rand::random::<u32>());
    compose(identity, function_name, &random)
}

/// The name with a given random part (deterministic; tests use it).
fn compose(identity: &Identity, function_name: &str, random: &str) -> String {
    let brand = sanitize_component(identity.network_brand());
    let env = sanitize_component(identity.env());
    let head: String = [brand.as_str(), env.as_str()]
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("-");
    let head = truncate_clean(&head, MAX_HEAD_LEN);

    let mut func = sanitize_component(function_name);
    if func.is_empty() {
        // Only reachable for unvalidated input; keep the name valid and distinct.
        func = format!("fn-{}", short_hash(function_name));
    }
    // `<head>-<fn>-<random>` must fit.
    let budget = MAX_NAME_LEN - head.len() - 1 - 1 - RANDOM_HEX;
    if func.len() > budget {
        let keep = truncate_clean(&func, budget - 1 - HASH_HEX);
        func = format!("{keep}-{}", short_hash(function_name));
    }
    format!("{head}-{func}-{random}")
}

/// Lowercase; `[a-z0-9]` runs kept; every run of other characters becomes one separator
/// (its first `.`, `_` or `-`, else `-`); no separator at either end.
pub fn sanitize_component(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut sep: Option<char> = None;
    for c in raw.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if let Some(s) = sep.take()
                && !out.is_empty()
            {
                out.push(s);
            }
            out.push(c);
        } else if sep.is_none() {
            sep = Some(if matches!(c, '.' | '_' | '-') { c } else { '-' });
        }
    }
    out
}

/// At most `max` bytes of an ASCII component, without a trailing separator.
fn truncate_clean(s: &str, max: usize) -> String {
    let cut = s.get(..max.min(s.len())).unwrap_or(s);
    cut.trim_end_matches(['.', '_', '-']).to_string()
}

/// First hex digits of md5(raw): distinguishes names that truncate to the same prefix.
fn short_hash(raw: &str) -> String {
    use md5::Digest;
    let digest = md5::Md5::digest(raw.as_bytes());
    hex::encode(digest)[..HASH_HEX].to_string()
}

/// Longest container id a caller may send (M3): worker ids and names are far shorter.
pub const MAX_CONTAINER_ID_LEN: usize = 128;

/// Whether `id` is a plausible container id: `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`. Everything a
/// backend creates (containerd ids, Docker ids and names) has this form; anything else (`.`,
/// `..`, `/`, `?`, `%`) could be read as a path by a daemon API and is refused up front.
pub fn is_valid_container_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_CONTAINER_ID_LEN
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests;
