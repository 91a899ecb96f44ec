//! Image references and pulls: default registry for host-less references, the pull policy
//! (SPEC §9, review P3-3: only not-found triggers a pull), errors inside the pull stream, and
//! one shared pull per reference at a time.

use std::collections::HashMap;

use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::CreateImageOptions;
use esb_runtime::keyed::KeyedLocks;
use esb_runtime::settings::{PullPolicy, RegistrySettings};
use esb_runtime::{Observer, Phase, PullOutcome, PullProgress, PullSink, Result, RuntimeError};
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

/// Serialises pulls per reference; the state remembers when the last successful pull
/// finished, so a caller that waited behind it reuses its result instead of pulling again.
pub(crate) type PullLocks = KeyedLocks<Option<Instant>>;

/// Makes `image` available locally according to `policy`; reports the `pull` phase and
/// the outcome to `obs`.
pub(crate) async fn ensure_image(
    docker: &Docker,
    locks: &PullLocks,
    image: &ImageRef,
    registry: &RegistrySettings,
    obs: &dyn Observer,
) -> Result<()> {
    ensure_image_reporting(docker, locks, image, registry, obs, &|_| {})
        .await
        .map(|_| ())
}

/// [`ensure_image`] with pull progress (PullImage); returns the outcome.
pub(crate) async fn ensure_image_reporting(
    docker: &Docker,
    locks: &PullLocks,
    image: &ImageRef,
    registry: &RegistrySettings,
    obs: &dyn Observer,
    progress: &PullSink<'_>,
) -> Result<PullOutcome> {
    let started = Instant::now();
    let res = resolve(docker, locks, image, registry, progress).await;
    obs.phase(Phase::Pull, started.elapsed());
    obs.pull(match &res {
        Ok(outcome) => *outcome,
        Err(_) => PullOutcome::Failed,
    });
    res
}

async fn resolve(
    docker: &Docker,
    locks: &PullLocks,
    image: &ImageRef,
    registry: &RegistrySettings,
    progress: &PullSink<'_>,
) -> Result<PullOutcome> {
    let (policy, pull_timeout) = (registry.pull_policy, registry.pull_timeout);
    let asked = Instant::now();
    let mut last_pull = locks.lock(&image.full).await;
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
    match pull(docker, image, pull_timeout, progress).await {
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
async fn pull(
    docker: &Docker,
    image: &ImageRef,
    limit: Duration,
    progress: &PullSink<'_>,
) -> Result<()> {
    match tokio::time::timeout(limit, pull_stream(docker, image, progress)).await {
        Ok(r) => r,
        Err(_) => Err(RuntimeError::deadline_exceeded(format!(
            "pull of {} did not finish within IMAGE_PULL_TIMEOUT ({} s)",
            image.full,
            limit.as_secs()
        ))),
    }
}

async fn pull_stream(docker: &Docker, image: &ImageRef, progress: &PullSink<'_>) -> Result<()> {
    let started = Instant::now();
    // Per layer id: (bytes current, bytes total, done), from the Engine's progress lines.
    let mut layers: HashMap<String, (u64, u64, bool)> = HashMap::new();
    let opts = CreateImageOptions {
        from_image: Some(image.repo.clone()),
        tag: Some(image.tag.clone()),
        ..Default::default()
    };
    let mut stream = docker.create_image(Some(opts), None, None);
    while let Some(item) = stream.next().await {
        // bollard turns an `errorDetail` line into an error item; a failed pull never
        // passes for a successful one (the old agent ignored these).
        let info =
            item.map_err(|e| map(e, &format!("pull image {}", image.full), Subject::Image))?;
        if let (Some(id), Some(status)) = (&info.id, &info.status)
            && track_layer(&mut layers, id, status, info.progress_detail.as_ref())
        {
            let p = layers
                .values()
                .fold(PullProgress::default(), |mut p, (cur, tot, done)| {
                    p.layers_total += 1;
                    p.layers_done += u32::from(*done);
                    p.bytes_total += tot;
                    p.bytes_done += if *done { *tot } else { *cur };
                    p
                });
            progress(p);
        }
    }
    tracing::info!(image = %image.full, elapsed_ms = started.elapsed().as_millis() as u64, "image pulled");
    Ok(())
}

/// Updates one layer from an Engine progress line; `false` for lines that are not about a
/// layer (the tag line, digest, status summary).
fn track_layer(
    layers: &mut HashMap<String, (u64, u64, bool)>,
    id: &str,
    status: &str,
    detail: Option<&bollard::models::ProgressDetail>,
) -> bool {
    let known = layers.contains_key(id);
    match status {
        "Pulling fs layer" | "Waiting" => {
            layers.entry(id.to_string()).or_default();
        }
        "Downloading" | "Extracting" | "Verifying Checksum" | "Download complete" => {
            let e = layers.entry(id.to_string()).or_default();
            if let Some(d) = detail
                && status == "Downloading"
            {
                e.0 = d.current.unwrap_or(0).max(0) as u64;
                e.1 = d.total.unwrap_or(0).max(0) as u64;
            }
        }
        "Pull complete" | "Already exists" => {
            let e = layers.entry(id.to_string()).or_default();
            e.2 = true;
        }
        _ => return known,
    }
    true
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
    fn engine_progress_lines_become_layer_progress() {
        let d = |current, total| bollard::models::ProgressDetail {
            current: Some(current),
            total: Some(total),
        };
        let mut l = HashMap::new();
        assert!(!track_layer(&mut l, "t1", "Pulling from x", None));
        assert!(track_layer(&mut l, "a", "Pulling fs layer", None));
        assert!(track_layer(&mut l, "b", "Already exists", None));
        assert!(track_layer(&mut l, "a", "Downloading", Some(&d(50, 200))));
        assert_eq!(l["a"], (50, 200, false));
        assert!(track_layer(&mut l, "a", "Download complete", None));
        assert!(track_layer(&mut l, "a", "Pull complete", None));
        assert_eq!(l["a"], (50, 200, true));
        assert!(l["b"].2);
        assert!(!track_layer(&mut l, "zzz", "Digest: sha256:00", None));
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
