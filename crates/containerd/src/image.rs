//! Images: reference normalisation, local lookup (only NotFound leads to a pull — P3-3), pull
//! policy, one shared pull per reference, and the run config + top chain id a worker needs.

mod content;
mod oci;
mod pull;
mod reference;
mod unpack;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use containerd_client::services::v1::GetImageRequest;
use containerd_client::types::Descriptor;
use esb_runtime::keyed::KeyedLocks;
use esb_runtime::settings::{PullPolicy, RegistrySettings};
use esb_runtime::{Observer, PullOutcome, PullSink, RuntimeError};
use oci_client::Reference;

use crate::client::{Client, is_not_found, status_err};
pub(crate) use oci::RunConfig;

/// What a worker needs from its image.
#[derive(Debug, Clone)]
pub(crate) struct ImageInfo {
    /// Fully-qualified reference (the image record name).
    pub name: String,
    /// Digest of the platform manifest.
    pub manifest_digest: String,
    /// Chain id of the top layer (parent of the worker's snapshot).
    pub chain_id: String,
    pub config: RunConfig,
}

/// Image service of the backend (shared by all ensures).
pub(crate) struct ImageStore {
    client: Client,
    snapshotter: String,
    registry: RegistrySettings,
    registry_clients: pull::Registry,
    /// Scratch dir for layer downloads.
    tmp_dir: PathBuf,
    /// One lock per reference, so concurrent ensures share one pull.
    locks: KeyedLocks,
    /// Resolved images by name (valid while the record's target digest is unchanged).
    cache: Mutex<HashMap<String, ImageInfo>>,
}

impl ImageStore {
    pub(crate) fn new(
        client: Client,
        snapshotter: String,
        registry: RegistrySettings,
        tmp_dir: PathBuf,
    ) -> Result<Self, RuntimeError> {
        let registry_clients = pull::registry_client(&registry)?;
        Ok(Self {
            client,
            snapshotter,
            registry,
            registry_clients,
            tmp_dir,
            locks: KeyedLocks::default(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Makes `raw` present and unpacked (per policy) and returns what a worker needs.
    /// Content and snapshots written here are held by `lease` until records reference them.
    /// Reports the outcome (pulled, cached, fallback, failed) to `obs`.
    pub(crate) async fn ensure(
        &self,
        raw: &str,
        lease: &str,
        obs: &dyn Observer,
    ) -> Result<ImageInfo, RuntimeError> {
        self.ensure_reporting(raw, lease, obs, &|_| {})
            .await
            .map(|(info, _)| info)
    }

    /// [`ImageStore::ensure`] with pull progress (PullImage); also says whether it pulled.
    pub(crate) async fn ensure_reporting(
        &self,
        raw: &str,
        lease: &str,
        obs: &dyn Observer,
        progress: &PullSink<'_>,
    ) -> Result<(ImageInfo, PullOutcome), RuntimeError> {
        let mut outcome = PullOutcome::Cached;
        let res = self.ensure_as(raw, lease, &mut outcome, progress).await;
        obs.pull(if res.is_ok() {
            outcome
        } else {
            PullOutcome::Failed
        });
        res.map(|info| (info, outcome))
    }

    async fn ensure_as(
        &self,
        raw: &str,
        lease: &str,
        outcome: &mut PullOutcome,
        progress: &PullSink<'_>,
    ) -> Result<ImageInfo, RuntimeError> {
        let reference = normalize(raw, &self.registry)?;
        let name = reference.whole();
        if self.registry.pull_policy == PullPolicy::IfNotPresent
            && let Some(target) = self.local(&name).await?
            && let Some(hit) = self.cached(&name, &target.digest)
        {
            return Ok(hit);
        }
        let _guard = self.locks.lock(&name).await;
        let local = self.local(&name).await?;
        let was_local = local.as_ref().map(|t| t.digest.clone());
        let target = match (self.registry.pull_policy, local) {
            (PullPolicy::IfNotPresent, Some(t)) => t,
            (_, None) => {
                let t = self.pull(&reference, lease, None, progress).await?;
                *outcome = PullOutcome::Pulled;
                t
            }
            (PullPolicy::Always, Some(t)) => {
                match self.pull(&reference, lease, Some(&t), progress).await {
                    Ok(new) => {
                        *outcome = PullOutcome::Pulled;
                        new
                    }
                    Err(e) => {
                        tracing::warn!(image = %name, error = %e.chain(), "pull failed; using the local copy");
                        *outcome = PullOutcome::Fallback;
                        t
                    }
                }
            }
        };
        // A fresh record (first pull, or re-pull after the image was removed and its
        // snapshots collected) is always resolved again, so the unpack is checked.
        if was_local.as_deref() == Some(target.digest.as_str())
            && let Some(hit) = self.cached(&name, &target.digest)
        {
            return Ok(hit);
        }
        let info = self.resolve(&name, &target, lease).await?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(name, info.clone());
        }
        Ok(info)
    }

    fn cached(&self, name: &str, digest: &str) -> Option<ImageInfo> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(name)
            .filter(|i| i.manifest_digest == digest)
            .cloned()
    }

    /// The image record's target, `None` on NotFound; any other error fails (P3-3).
    async fn local(&self, name: &str) -> Result<Option<Descriptor>, RuntimeError> {
        match self
            .client
            .images()
            .get(self.client.req_t(GetImageRequest {
                name: name.to_string(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().image.and_then(|i| i.target)),
            Err(s) if is_not_found(&s) => Ok(None),
            Err(s) => Err(status_err("get image", s)),
        }
    }

    async fn pull(
        &self,
        reference: &Reference,
        lease: &str,
        local: Option<&Descriptor>,
        progress: &PullSink<'_>,
    ) -> Result<Descriptor, RuntimeError> {
        // The whole pull is bounded (review M1): a registry that trickles bytes cannot hold
        // an Ensure, its admission place and a lease forever.
        let limit = self.registry.pull_timeout;
        match tokio::time::timeout(limit, pull::pull(self, reference, lease, local, progress)).await
        {
            Ok(r) => r,
            Err(_) => Err(RuntimeError::deadline_exceeded(format!(
                "pull of {} did not finish within IMAGE_PULL_TIMEOUT ({} s)",
                reference.whole(),
                limit.as_secs()
            ))),
        }
    }

    /// Reads manifest and config of a local image and makes sure its layers are unpacked.
    async fn resolve(
        &self,
        name: &str,
        target: &Descriptor,
        lease: &str,
    ) -> Result<ImageInfo, RuntimeError> {
        let bytes = content::read(&self.client, &target.digest).await?;
        let manifest = match oci::parse_manifest_or_index(&bytes)? {
            oci::Parsed::Manifest(m) => m,
            oci::Parsed::Index(idx) => {
                let d = oci::pick_platform(&idx)?;
                let bytes = content::read(&self.client, &d.digest).await?;
                match oci::parse_manifest_or_index(&bytes)? {
                    oci::Parsed::Manifest(m) => m,
                    oci::Parsed::Index(_) => {
                        return Err(RuntimeError::internal("nested image index"));
                    }
                }
            }
        };
        let config_bytes = content::read(&self.client, &manifest.config.digest).await?;
        let config = oci::parse_config(&config_bytes)?;
        let chain = oci::chain_ids(&config.diff_ids);
        if chain.len() != manifest.layers.len() {
            return Err(RuntimeError::internal(format!(
                "image {name}: {} layers but {} diff ids",
                manifest.layers.len(),
                chain.len()
            )));
        }
        unpack::unpack(self, &manifest.layers, &config.diff_ids, &chain, lease).await?;
        let chain_id = chain
            .last()
            .cloned()
            .ok_or_else(|| RuntimeError::internal(format!("image {name} has no layers")))?;
        Ok(ImageInfo {
            name: name.to_string(),
            manifest_digest: target.digest.clone(),
            chain_id,
            config: config.run,
        })
    }
}

/// The request's reference, normalised and allowed (one grammar for both backends).
pub(crate) fn normalize(raw: &str, registry: &RegistrySettings) -> Result<Reference, RuntimeError> {
    registry.resolve(raw).map(|r| reference::to_oci(&r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use esb_runtime::image_ref::AllowedRegistries;

    #[test]
    fn normalizes_and_checks_the_allow_list() {
        let mut reg = RegistrySettings {
            default_registry: "127.0.0.1:5000".into(),
            insecure: true,
            ca_path: None,
            ca_only: false,
            pull_policy: PullPolicy::IfNotPresent,
            allowed: RegistrySettings::only_default("127.0.0.1:5000"),
            pull_timeout: esb_runtime::settings::DEFAULT_PULL_TIMEOUT,
            max_image_bytes: esb_runtime::settings::DEFAULT_MAX_IMAGE_BYTES,
        };
        let r = normalize("esb/worker:1", &reg).expect("ref");
        assert_eq!(r.whole(), "127.0.0.1:5000/esb/worker:1");
        assert!(normalize("10.0.0.5:22/x", &reg).is_err());
        reg.allowed = AllowedRegistries::Any;
        assert_eq!(
            normalize("localhost/w", &reg).expect("ref").registry(),
            "localhost"
        );
        assert!(normalize("UPPER/Case::", &reg).is_err());
    }
}
