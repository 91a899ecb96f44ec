//! Image references and pulls: default registry for host-less references, the pull policy
//! (SPEC §9, review P3-3: only not-found triggers a pull), errors inside the pull stream, and
//! one shared pull per reference at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::CreateImageOptions;
use esb_runtime::settings::{PullPolicy, RegistrySettings};
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

impl ImageRef {
    /// The request's reference through the shared grammar and the registry allow-list
    /// (`esb_runtime::image_ref`; review M1, issue 11 §1).
    pub(crate) fn resolve(raw: &str, registry: &RegistrySettings) -> Result<Self> {
        let r = registry.resolve(raw)?;
        Ok(Self {
            repo: r.repo(),
            tag: r
                .digest
                .clone()
                .or_else(|| r.tag.clone())
                .unwrap_or_else(|| "latest".to_string()),
            full: r.whole(),
        })
    }
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
    registry: &RegistrySettings,
    obs: &dyn Observer,
) -> Result<()> {
    let started = Instant::now();
    let res = resolve(
        docker,
        locks,
        image,
        registry.pull_policy,
        registry.pull_timeout,
    )
    .await;
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
    pull_timeout: Duration,
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
    match pull(docker, image, pull_timeout).await {
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

/// The whole pull within `limit` (review M1: a registry that trickles bytes cannot hold an
/// Ensure forever); dropping the stream closes the Engine request.
async fn pull(docker: &Docker, image: &ImageRef, limit: Duration) -> Result<()> {
    match tokio::time::timeout(limit, pull_stream(docker, image)).await {
        Ok(r) => r,
        Err(_) => Err(RuntimeError::deadline_exceeded(format!(
            "pull of {} did not finish within IMAGE_PULL_TIMEOUT ({} s)",
            image.full,
            limit.as_secs()
        ))),
    }
}

async fn pull_stream(docker: &Docker, image: &ImageRef) -> Result<()> {
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
    use esb_runtime::image_ref::AllowedRegistries;

    fn settings(default_registry: &str, allowed: AllowedRegistries) -> RegistrySettings {
        RegistrySettings {
            default_registry: default_registry.into(),
            insecure: true,
            ca_path: None,
            ca_only: false,
            pull_policy: PullPolicy::IfNotPresent,
            allowed,
            pull_timeout: esb_runtime::settings::DEFAULT_PULL_TIMEOUT,
            max_image_bytes: esb_runtime::settings::DEFAULT_MAX_IMAGE_BYTES,
        }
    }

    #[test]
    fn create_fields_come_from_the_shared_grammar() {
        let any = settings("registry:5010", AllowedRegistries::Any);
        let r = ImageRef::resolve("esb/fn", &any).expect("ref");
        assert_eq!(
            (r.repo.as_str(), r.tag.as_str(), r.full.as_str()),
            (
                "registry:5010/esb/fn",
                "latest",
                "registry:5010/esb/fn:latest"
            )
        );
        let d = format!("sha256:{}", "0".repeat(64));
        let r = ImageRef::resolve(&format!("reg.io/a@{d}"), &any).expect("ref");
        assert_eq!((r.repo.as_str(), r.tag.as_str()), ("reg.io/a", d.as_str()));
        let only = settings(
            "registry:5010",
            RegistrySettings::only_default("registry:5010"),
        );
        assert!(ImageRef::resolve("fn:1", &only).is_ok());
        let e = ImageRef::resolve("10.0.0.5:22/x", &only).expect_err("not allowed");
        assert!(e.message().contains("CONTAINER_REGISTRY_ALLOWED"), "{e:?}");
    }
}
