//! The rules of an Ensure request, in one place for the server's converter and both backends
//! (issue 11 §1: the backends used to keep their own, drifting, copies). Messages name fields
//! and variables, never env values (they are secrets).

use crate::error::RuntimeError;
use crate::names::validate_function_name;
use crate::types::EnsureRequest;

/// Longest accepted image reference, bytes.
pub const MAX_IMAGE_BYTES: usize = 4096;
/// Most env entries per worker.
pub const MAX_ENV_ENTRIES: usize = 1024;
/// Largest total env size (keys + values), bytes.
pub const MAX_ENV_BYTES: usize = 256 * 1024;
/// Largest single env entry as execve sees it (`KEY=VALUE\0`): Linux refuses longer strings
/// (MAX_ARG_STRLEN, 32 pages) with E2BIG, so the worker would be created but never run (L2).
pub const MAX_ENV_ENTRY_BYTES: usize = 128 * 1024;

/// An image reference as a request carries it: trimmed, non-empty, bounded, one token.
/// Returns it trimmed. (Its grammar is [`crate::image_ref`]'s, checked by the backend.)
pub fn image(raw: &str) -> Result<&str, RuntimeError> {
    let image = raw.trim();
    if image.is_empty() {
        return Err(RuntimeError::invalid_argument("image is required"));
    }
    if image.len() > MAX_IMAGE_BYTES {
        return Err(RuntimeError::invalid_argument(format!(
            "image is too long ({} bytes, max {MAX_IMAGE_BYTES})",
            image.len()
        )));
    }
    if image.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(RuntimeError::invalid_argument(
            "image contains whitespace or control characters",
        ));
    }
    Ok(image)
}

/// The worker's env: at most [`MAX_ENV_ENTRIES`] entries and [`MAX_ENV_BYTES`] in all
/// (RESOURCE_EXHAUSTED), names non-empty without `=` or control characters, entries within
/// [`MAX_ENV_ENTRY_BYTES`], values without NUL (INVALID_ARGUMENT).
pub fn env<'a, I>(entries: I) -> Result<(), RuntimeError>
where
    I: ExactSizeIterator<Item = (&'a String, &'a String)> + Clone,
{
    if entries.len() > MAX_ENV_ENTRIES {
        return Err(RuntimeError::resource_exhausted(format!(
            "env has too many entries ({}, max {MAX_ENV_ENTRIES})",
            entries.len()
        )));
    }
    let total: usize = entries.clone().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_ENV_BYTES {
        return Err(RuntimeError::resource_exhausted(format!(
            "env is too large ({total} bytes, max {MAX_ENV_BYTES})"
        )));
    }
    for (k, v) in entries {
        if k.is_empty() || k.contains('=') || k.chars().any(char::is_control) {
            return Err(RuntimeError::invalid_argument(format!(
                "invalid env name {:?}: must be non-empty, without '=' or control characters",
                truncate(k)
            )));
        }
        if k.len() + v.len() + 2 > MAX_ENV_ENTRY_BYTES {
            return Err(RuntimeError::invalid_argument(format!(
                "env entry {:?} is too large ({} bytes, max {MAX_ENV_ENTRY_BYTES} including the name)",
                truncate(k),
                k.len() + v.len() + 2
            )));
        }
        if v.contains('\0') {
            return Err(RuntimeError::invalid_argument(format!(
                "env value of {:?} contains a NUL byte",
                truncate(k)
            )));
        }
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

impl EnsureRequest {
    /// Every rule of a request, in SPEC §3's order: function_name → owner_id → image → env.
    /// The server applies the same functions at the edge; a backend calls this for callers
    /// that build requests themselves.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        validate_function_name(&self.function_name)?;
        if self.owner_id.trim().is_empty() {
            return Err(RuntimeError::invalid_argument("owner_id is required"));
        }
        image(&self.image)?;
        env(self.env.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn req(env: &[(&str, &str)]) -> EnsureRequest {
        EnsureRequest {
            function_name: "f".into(),
            image: "img:1".into(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            owner_id: "o".into(),
        }
    }

    #[test]
    fn the_rules_in_order_without_values() {
        assert!(req(&[("A", "secret")]).validate().is_ok());
        let kind = |r: EnsureRequest| r.validate().map_err(|e| (e.kind(), e.message().to_owned()));
        let mut r = req(&[]);
        r.function_name = String::new();
        r.owner_id = String::new();
        assert!(
            kind(r).unwrap_err().1.contains("function_name"),
            "function name first"
        );
        let mut r = req(&[]);
        r.owner_id = " ".into();
        r.image = String::new();
        assert_eq!(
            kind(r).unwrap_err(),
            (ErrorKind::InvalidArgument, "owner_id is required".into())
        );
        let mut r = req(&[]);
        r.image = "a b".into();
        assert_eq!(kind(r).unwrap_err().0, ErrorKind::InvalidArgument);
        for bad in [("", "v"), ("A=B", "v"), ("A\n", "v"), ("A", "x\0secret")] {
            let e = req(&[bad]).validate().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}");
            assert!(!e.message().contains("secret"), "{}", e.message());
        }
        let big = "x".repeat(MAX_ENV_ENTRY_BYTES);
        let e = req(&[("BIG", big.as_str())]).validate().unwrap_err();
        assert!(e.message().contains("BIG") && !e.message().contains("xxxx"));
        let many: Vec<(String, String)> = (0..=MAX_ENV_ENTRIES)
            .map(|i| (format!("K{i}"), String::new()))
            .collect();
        let mut r = req(&[]);
        r.env = many.into_iter().collect();
        assert_eq!(
            r.validate().unwrap_err().kind(),
            ErrorKind::ResourceExhausted
        );
    }
}
