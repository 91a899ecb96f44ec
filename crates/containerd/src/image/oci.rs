//! Pure OCI/Docker image document handling: manifest vs index, platform choice, image config
//! (run settings and diff ids) and chain ids.

use std::collections::HashMap;

use esb_runtime::RuntimeError;
use serde::Deserialize;
use sha2::{Digest, Sha256};

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Media types accepted when resolving a reference.
pub(crate) const ACCEPTED: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Desc {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Manifest {
    /// Absent in some OCI manifests (umoci): defaults to OCI.
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub config: Desc,
    #[serde(default)]
    pub layers: Vec<Desc>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Index {
    pub manifests: Vec<Desc>,
}

pub(crate) enum Parsed {
    Manifest(Manifest),
    Index(Index),
}

impl Manifest {
    pub(crate) fn media_type(&self) -> &str {
        self.media_type.as_deref().unwrap_or(OCI_MANIFEST)
    }
}

/// Parses a manifest or an index (decided by `mediaType`, else by shape).
pub(crate) fn parse_manifest_or_index(bytes: &[u8]) -> Result<Parsed, RuntimeError> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| RuntimeError::internal("image manifest is not json").with_source(e))?;
    let mt = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
    let is_index = mt == OCI_INDEX || mt == DOCKER_LIST || v.get("manifests").is_some();
    let bad = |e| RuntimeError::internal("malformed image manifest").with_source(e);
    if is_index {
        serde_json::from_value(v).map(Parsed::Index).map_err(bad)
    } else {
        serde_json::from_value(v).map(Parsed::Manifest).map_err(bad)
    }
}

/// The linux/amd64 entry of an index.
pub(crate) fn pick_platform(idx: &Index) -> Result<&Desc, RuntimeError> {
    idx.manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .ok_or_else(|| RuntimeError::image_not_found("image has no linux/amd64 manifest"))
}

/// Run settings from the image config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
}

pub(crate) struct ImageConfig {
    pub run: RunConfig,
    pub diff_ids: Vec<String>,
}

#[derive(Deserialize, Default)]
struct RawConfigFile {
    #[serde(default)]
    config: Option<RawRunConfig>,
    rootfs: RawRootfs,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

pub(crate) fn parse_config(bytes: &[u8]) -> Result<ImageConfig, RuntimeError> {
    let raw: RawConfigFile = serde_json::from_slice(bytes)
        .map_err(|e| RuntimeError::internal("malformed image config").with_source(e))?;
    let c = raw.config.unwrap_or_default();
    Ok(ImageConfig {
        run: RunConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            cwd: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
        },
        diff_ids: raw.rootfs.diff_ids,
    })
}

/// chain[0] = diff[0]; chain[i] = sha256(chain[i-1] + " " + diff[i]).
pub(crate) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// gc labels of a manifest blob.
pub(crate) fn manifest_labels(m: &Manifest) -> HashMap<String, String> {
    let mut labels = HashMap::from([(
        "containerd.io/gc.ref.content.config".to_string(),
        m.config.digest.clone(),
    )]);
    for (i, l) in m.layers.iter().enumerate() {
        labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest.clone(),
        );
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_spec() {
        let diffs = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let chain = chain_ids(&diffs);
        assert_eq!(chain[0], "sha256:a");
        assert_eq!(chain[1], sha256_digest(b"sha256:a sha256:b"));
    }

    #[test]
    fn parses_manifest_without_media_type_and_index() {
        let m = br#"{"schemaVersion":2,"config":{"digest":"sha256:c","size":1},"layers":[{"mediaType":"x","digest":"sha256:l","size":2}]}"#;
        let Ok(Parsed::Manifest(m)) = parse_manifest_or_index(m) else {
            panic!("manifest expected")
        };
        assert_eq!(m.media_type(), OCI_MANIFEST);
        assert_eq!(
            manifest_labels(&m)["containerd.io/gc.ref.content.l.0"],
            "sha256:l"
        );
        let i = br#"{"manifests":[{"digest":"sha256:arm","size":1,"platform":{"os":"linux","architecture":"arm64"}},{"digest":"sha256:amd","size":1,"platform":{"os":"linux","architecture":"amd64"}}]}"#;
        let Ok(Parsed::Index(i)) = parse_manifest_or_index(i) else {
            panic!("index expected")
        };
        assert_eq!(pick_platform(&i).expect("amd64").digest, "sha256:amd");
    }

    #[test]
    fn parses_config() {
        let c = br#"{"config":{"Entrypoint":["/w"],"Env":["A=1"],"User":"1000:1000","WorkingDir":"/app"},"rootfs":{"type":"layers","diff_ids":["sha256:d"]}}"#;
        let c = parse_config(c).expect("config");
        assert_eq!(c.run.entrypoint, vec!["/w"]);
        assert_eq!(c.run.user, "1000:1000");
        assert_eq!(c.diff_ids, vec!["sha256:d"]);
    }
}
