//! Image references and pulls: default registry for host-less references, the pull policy
//! (SPEC §9, review P3-3: only not-found triggers a pull), errors inside the pull stream, and
//! one shared pull per reference at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bollard::Docker;
use bollard::query_parameters::CreateImageOptions;
use esb_runtime::settings::PullPolicy;
use esb_runtime::{Observer, Phase, PullOutcome, Result, RuntimeError};
use futures::StreamExt;

use crate::error::{Subject, is_not_found, map};

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageRef {
    /// `host[:port]/path` (no tag).
    pub repo: String,
    /// Tag, or digest (`sha256:...`).
    pub tag: String,
    /// `repo:tag` or `repo@digest`, what create and inspect use.
    pub full: String,
}

/// Parses `raw`, adding `default_registry` when the reference has no registry host
/// (the first path component is a host when it has a `.` or `:` or is `localhost`), and
/// `latest` when it has neither tag nor digest.
pub(crate) fn parse_ref(raw: &str, default_registry: &str) -> Result<ImageRef> {
    let raw = raw.trim();
    let bad = |why: &str| RuntimeError::invalid_argument(format!("invalid image reference: {why}"));
    if raw.is_empty() {
        return Err(bad("empty"));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("contains whitespace or control characters"));
    }
    let (name, digest) = match raw.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (raw, None),
    };
    let (repo, tag) = match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => (&name[..i], Some(&name[i + 1..])),
        _ => (name, None),
    };
    if repo.is_empty() || repo.starts_with('/') || repo.ends_with('/') || repo.contains("//") {
        return Err(bad("malformed repository"));
    }
    let has_host = repo.split_once('/').is_some_and(|(first, _)| {
        first.contains('.') || first.contains(':') || first == "localhost"
    });
    let path = if has_host {
        repo.split_once('/').map_or("", |(_, p)| p)
    } else {
        repo
    };
    let path_ok = path
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c));
    if !path_ok {
        return Err(bad("repository must be lowercase [a-z0-9._-/]"));
    }
    if let Some(t) = tag
        && (t.is_empty()
            || t.len() > 128
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
    {
        return Err(bad("malformed tag"));
    }
    if let Some(d) = digest
        && !d.split_once(':').is_some_and(|(alg, hex)| {
            !alg.is_empty() && !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit())
        })
    {
        return Err(bad("malformed digest"));
    }
    let registry = default_registry
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let repo = if has_host || registry.is_empty() {
        repo.to_string()
    } else {
        format!("{registry}/{repo}")
    };
    let (tag, full) = match (digest, tag) {
        (Some(d), _) => (d.to_string(), format!("{repo}@{d}")),
        (None, Some(t)) => (t.to_string(), format!("{repo}:{t}")),
        (None, None) => ("latest".to_string(), format!("{repo}:latest")),
    };
    Ok(ImageRef { repo, tag, full })
}

/// Serialises pulls per reference; remembers when the last successful pull finished so a
/// caller that waited behind it reuses its result instead of pulling again.
#[derive(Default)]
pub(crate) struct PullLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
}

impl PullLocks {
    fn entry(&self, reference: &str) -> Arc<tokio::sync::Mutex<Option<Instant>>> {
        let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(reference.to_string()).or_default().clone()
    }
}

/// Makes `image` available locally according to `policy`; reports the `pull` phase and
/// the outcome to `obs`.
pub(crate) async fn ensure_image(
    docker: &Docker,
    locks: &PullLocks,
    image: &ImageRef,
    policy: PullPolicy,
    obs: &dyn Observer,
) -> Result<()> {
    let started = Instant::now();
    let res = resolve(docker, locks, image, policy).await;
    obs.phase(Phase::Pull, started.elapsed());
    obs.pull(match &res {
        Ok(outcome) => *outcome,
        Err(_) => PullOutcome::Failed,
    });
    res.map(|_| ())
}

async fn resolve(
    docker: &Docker,
    locks: &PullLocks,
    image: &ImageRef,
    policy: PullPolicy,
) -> Result<PullOutcome> {
    let asked = Instant::now();
    let entry = locks.entry(&image.full);
    let mut last_pull = entry.lock().await;
    if last_pull.is_some_and(|done| done >= asked) {
        // A pull that finished while we waited serves us too.
        return Ok(PullOutcome::Cached);
    }
    match policy {
        PullPolicy::IfNotPresent => match docker.inspect_image(&image.full).await {
            Ok(_) => return Ok(PullOutcome::Cached),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(map(e, "inspect image", Subject::Image)),
        },
        PullPolicy::Always => {}
    }
    match pull(docker, image).await {
        Ok(()) => {
            *last_pull = Some(Instant::now());
            Ok(PullOutcome::Pulled)
        }
        Err(err) if policy == PullPolicy::Always => match docker.inspect_image(&image.full).await {
            Ok(_) => {
                tracing::warn!(image = %image.full, error = %err.chain(), "pull failed; using the local copy");
                Ok(PullOutcome::Fallback)
            }
            Err(_) => Err(err),
        },
        Err(err) => Err(err),
    }
}

async fn pull(docker: &Docker, image: &ImageRef) -> Result<()> {
    let started = Instant::now();
    let opts = CreateImageOptions {
        from_image: Some(image.repo.clone()),
        tag: Some(image.tag.clone()),
        ..Default::default()
    };
    let mut stream = docker.create_image(Some(opts), None, None);
    while let Some(item) = stream.next().await {
        // bollard turns an `errorDetail` line into an error item; a failed pull never
        // passes for a successful one (the old agent ignored these).
        item.map_err(|e| map(e, &format!("pull image {}", image.full), Subject::Image))?;
    }
    tracing::info!(image = %image.full, elapsed_ms = started.elapsed().as_millis() as u64, "image pulled");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(raw: &str, reg: &str) -> String {
        match parse_ref(raw, reg) {
            Ok(r) => r.full,
            Err(e) => format!("ERR {}", e.message()),
        }
    }

    #[test]
    fn adds_default_registry_only_without_host() {
        assert_eq!(
            full("esb/fn", "registry:5010"),
            "registry:5010/esb/fn:latest"
        );
        assert_eq!(full("fn:v1", "reg.local"), "reg.local/fn:v1");
        assert_eq!(
            full("127.0.0.1:35000/esb/w:latest", "reg.local"),
            "127.0.0.1:35000/esb/w:latest"
        );
        assert_eq!(full("localhost/x", "reg.local"), "localhost/x:latest");
        assert_eq!(
            full("ghcr.io/a/b", "http://reg.local/"),
            "ghcr.io/a/b:latest"
        );
        assert_eq!(full("a/b", ""), "a/b:latest");
        assert_eq!(full("reg:5000/a", "x"), "reg:5000/a:latest");
    }

    #[test]
    fn keeps_tag_and_digest() {
        let d = "sha256:0123456789abcdef";
        let r = parse_ref(&format!("reg.io/a@{d}"), "").ok();
        assert_eq!(r.as_ref().map(|r| r.tag.as_str()), Some(d));
        assert_eq!(r.map(|r| r.repo), Some("reg.io/a".to_string()));
        let r = parse_ref("reg.io:5000/a/b:1.2", "").ok();
        assert_eq!(
            r.as_ref().map(|r| (r.repo.as_str(), r.tag.as_str())),
            Some(("reg.io:5000/a/b", "1.2"))
        );
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            " ",
            "a b",
            "UPPER/case",
            "a//b",
            "a:",
            "a@sha256:",
            "a:t@x",
            "/a",
            "a/",
        ] {
            assert!(full(bad, "").starts_with("ERR"), "{bad:?} accepted");
        }
    }
}
