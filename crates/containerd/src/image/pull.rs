//! Registry pull into the content store: resolve the manifest (linux/amd64 from an index),
//! stream layers to a scratch file and verify them, write blobs with gc labels, and create or
//! update the image record.

use std::collections::HashMap;
use std::time::Duration;

use containerd_client::services::v1::{CreateImageRequest, Image, UpdateImageRequest};
use containerd_client::types::Descriptor;
use esb_runtime::settings::RegistrySettings;
use esb_runtime::{ErrorKind, PullProgress, PullSink, RuntimeError};
use oci_client::Reference;
use oci_client::RegistryOperation;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use prost_types::FieldMask;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::ImageStore;
use super::content::{self, Source};
use super::oci::{self, Parsed};
use crate::client::status_err;

/// The two HTTP clients of a pull: oci-client for auth and blobs, and a plain one for the
/// manifest, which oci-client would read whole (an endless manifest would fill memory).
pub(crate) struct Registry {
    pub(crate) oci: oci_client::Client,
    http: reqwest::Client,
    scheme: &'static str,
}

/// Builds the registry clients per settings (P3-1): plain HTTP when insecure, else HTTPS with
/// the configured CA (added to, or replacing, the system roots).
pub(crate) fn registry_client(s: &RegistrySettings) -> Result<Registry, RuntimeError> {
    // reqwest panics without a process-wide provider; a second install is a harmless no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = ClientConfig {
        protocol: if s.insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        ..Default::default()
    };
    let mut http = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(config.user_agent)
        // Redirects carry no credentials of ours; registries redirect blobs, not manifests.
        .redirect(reqwest::redirect::Policy::limited(3));
    if let Some(path) = &s.ca_path {
        let data = std::fs::read(path).map_err(|e| {
            RuntimeError::invalid_argument(format!("cannot read registry CA {}", path.display()))
                .with_source(e)
        })?;
        let cert = Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        };
        let roots = vec![reqwest::Certificate::try_from(&cert).map_err(|e| {
            RuntimeError::invalid_argument(format!("bad registry CA {}", path.display()))
                .with_source(e)
        })?];
        if s.ca_only {
            config.tls_certs_only = vec![cert];
            http = http.tls_certs_only(roots);
        } else {
            config.extra_root_certificates = vec![cert];
            http = http.tls_certs_merge(roots);
        }
    }
    let http = http
        .build()
        .map_err(|e| RuntimeError::internal("building the registry client").with_source(e))?;
    Ok(Registry {
        oci: oci_client::Client::new(config),
        http,
        scheme: if s.insecure { "http" } else { "https" },
    })
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// GETs a manifest or index, reading at most [`MAX_CONFIG_BYTES`], and returns it with its
/// digest (the one pinned by the reference, else the one computed; a `Docker-Content-Digest`
/// that disagrees fails the pull).
async fn fetch_manifest(
    reg: &Registry,
    reference: &Reference,
) -> Result<(Vec<u8>, String), RuntimeError> {
    let name = reference.whole();
    // Anonymous pulls may still need a bearer token (the registry's 401 challenge); an error
    // here shows up again, named, on the GET below.
    let token = reg
        .oci
        .auth(reference, &RegistryAuth::Anonymous, RegistryOperation::Pull)
        .await
        .ok()
        .flatten();
    let url = format!(
        "{}://{}/v2/{}/manifests/{}",
        reg.scheme,
        reference.resolve_registry(),
        reference.repository(),
        reference
            .digest()
            .or_else(|| reference.tag())
            .unwrap_or("latest")
    );
    let mut req = reg
        .http
        .get(&url)
        .header(reqwest::header::ACCEPT, oci::ACCEPTED.join(", "));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let unreachable = |e: reqwest::Error| {
        RuntimeError::unavailable(format!("registry unreachable for {name}")).with_source(e)
    };
    let mut res = req.send().await.map_err(unreachable)?;
    let status = res.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(RuntimeError::new(
            ErrorKind::ImageNotFound,
            format!("image {name} not found in the registry"),
        ));
    }
    if status.is_server_error() {
        return Err(RuntimeError::unavailable(format!(
            "registry answered {status} for {name}"
        )));
    }
    if !status.is_success() {
        // A registry error envelope names MANIFEST_UNKNOWN / NAME_UNKNOWN as 4xx too.
        let body = read_capped(&mut res, 64 << 10).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        if text.contains("MANIFEST_UNKNOWN") || text.contains("NAME_UNKNOWN") {
            return Err(RuntimeError::new(
                ErrorKind::ImageNotFound,
                format!("image {name} not found in the registry"),
            ));
        }
        return Err(RuntimeError::internal(format!(
            "pulling {name} failed: registry answered {status}"
        )));
    }
    let header_digest = res
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if res.content_length().is_some_and(|n| n > MAX_CONFIG_BYTES) {
        return Err(manifest_too_large(&name));
    }
    let bytes = read_capped(&mut res, MAX_CONFIG_BYTES)
        .await
        .map_err(|e| match e {
            ReadErr::Over => manifest_too_large(&name),
            ReadErr::Io(e) => unreachable(e),
        })?;
    let got = oci::sha256_digest(&bytes);
    for want in [reference.digest(), header_digest.as_deref()]
        .into_iter()
        .flatten()
    {
        if want.starts_with("sha256:") && want != got {
            return Err(RuntimeError::internal(format!(
                "{name}: manifest digest mismatch: expected {want}, got {got}"
            )));
        }
    }
    Ok((bytes, got))
}

fn manifest_too_large(name: &str) -> RuntimeError {
    RuntimeError::resource_exhausted(format!(
        "{name}: manifest over the {MAX_CONFIG_BYTES}-byte limit"
    ))
}

/// Why [`read_capped`] stopped.
enum ReadErr {
    Over,
    Io(reqwest::Error),
}

/// Reads a response body of at most `max` bytes.
async fn read_capped(res: &mut reqwest::Response, max: u64) -> Result<Vec<u8>, ReadErr> {
    let mut out = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(ReadErr::Io)? {
        if (out.len() + chunk.len()) as u64 > max {
            return Err(ReadErr::Over);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Pulls `reference`; when the registry's manifest equals `local`'s, nothing is written.
/// Returns the image record's target.
pub(super) async fn pull(
    store: &ImageStore,
    reference: &Reference,
    lease: &str,
    local: Option<&Descriptor>,
    progress: &PullSink<'_>,
) -> Result<Descriptor, RuntimeError> {
    let name = reference.whole();
    let (mut bytes, mut digest) = fetch_manifest(&store.registry_clients, reference).await?;
    let mut parsed = oci::parse_manifest_or_index(&bytes)?;
    if let Parsed::Index(idx) = &parsed {
        let d = oci::pick_platform(idx)?;
        let by_digest = Reference::with_digest(
            reference.registry().to_string(),
            reference.repository().to_string(),
            d.digest.clone(),
        );
        (bytes, digest) = fetch_manifest(&store.registry_clients, &by_digest).await?;
        parsed = oci::parse_manifest_or_index(&bytes)?;
    }
    let Parsed::Manifest(manifest) = parsed else {
        return Err(RuntimeError::internal(format!(
            "{name}: nested image index"
        )));
    };
    if local.is_some_and(|l| l.digest == digest) {
        return Ok(local.cloned().unwrap_or_default());
    }
    let client = &store.client;
    check_sizes(&name, &manifest, store.registry.max_image_bytes)?;

    let mut config_bytes = Capped::new(Vec::new(), manifest.config.size as u64);
    let pulled = store
        .registry_clients
        .oci
        .pull_blob(
            reference,
            manifest.config.digest.as_str(),
            &mut config_bytes,
        )
        .await;
    config_bytes.check(&name, "config")?;
    pulled.map_err(|e| registry_err(&name, e))?;
    let config_bytes = config_bytes.inner;
    verify(&config_bytes, &manifest.config.digest)?;
    let config = oci::parse_config(&config_bytes)?;
    if config.diff_ids.len() != manifest.layers.len() {
        return Err(RuntimeError::internal(format!(
            "{name}: manifest and config disagree on the layer count"
        )));
    }
    let chain = oci::chain_ids(&config.diff_ids);

    let mut done = PullProgress {
        layers_done: 0,
        layers_total: manifest.layers.len() as u32,
        bytes_done: 0,
        bytes_total: manifest.layers.iter().map(|l| l.size.max(0) as u64).sum(),
    };
    progress(done);
    for (layer, diff_id) in manifest.layers.iter().zip(&config.diff_ids) {
        let report = |d: &mut PullProgress| {
            d.layers_done += 1;
            d.bytes_done += layer.size.max(0) as u64;
            progress(*d);
        };
        let labels = HashMap::from([("containerd.io/uncompressed".to_string(), diff_id.clone())]);
        if content::info(client, &layer.digest).await?.is_some() {
            content::ensure(
                client,
                lease,
                &layer.digest,
                layer.size,
                Source::Bytes(vec![]),
                labels,
            )
            .await?;
            report(&mut done);
            continue;
        }
        let path = store.tmp_dir.join(format!(
            "{}.{}",
            layer.digest.replace(':', "-"),
            crate::lease::random_hex(4)
        ));
        // Removed however the pull ends, a timeout (future dropped) included.
        let _scratch = Scratch(path.clone());
        let result = async {
            download(store, reference, &layer.digest, layer.size as u64, &path).await?;
            content::ensure(
                client,
                lease,
                &layer.digest,
                layer.size,
                Source::File(path.clone()),
                labels,
            )
            .await
        }
        .await;
        result?;
        report(&mut done);
    }

    let mut config_labels = HashMap::new();
    if let Some(top) = chain.last() {
        config_labels.insert(
            format!("containerd.io/gc.ref.snapshot.{}", store.snapshotter),
            top.clone(),
        );
    }
    content::ensure(
        client,
        lease,
        &manifest.config.digest,
        manifest.config.size,
        Source::Bytes(config_bytes),
        config_labels,
    )
    .await?;
    let size = bytes.len() as i64;
    content::ensure(
        client,
        lease,
        &digest,
        size,
        Source::Bytes(bytes),
        oci::manifest_labels(&manifest),
    )
    .await?;

    let target = Descriptor {
        media_type: manifest.media_type().to_string(),
        digest,
        size,
        annotations: HashMap::new(),
    };
    put_record(store, &name, &target, lease).await?;
    Ok(target)
}

/// Creates the image record, or repoints an existing one.
async fn put_record(
    store: &ImageStore,
    name: &str,
    target: &Descriptor,
    lease: &str,
) -> Result<(), RuntimeError> {
    let client = &store.client;
    let image = Image {
        name: name.to_string(),
        target: Some(target.clone()),
        ..Default::default()
    };
    let created = client
        .images()
        .create(client.leased(
            CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            },
            lease,
        ))
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            client
                .images()
                .update(client.leased(
                    UpdateImageRequest {
                        image: Some(image),
                        update_mask: Some(FieldMask {
                            paths: vec!["target".to_string()],
                        }),
                        source_date_epoch: None,
                    },
                    lease,
                ))
                .await
                .map_err(|s| status_err("update image", s))?;
            Ok(())
        }
        Err(s) => Err(status_err("create image", s)),
    }
}

/// A scratch download, removed on drop.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Largest image config or manifest the agent reads into memory (review M1).
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Refuses an image whose declared sizes are out of bounds before any blob is fetched.
fn check_sizes(name: &str, m: &oci::Manifest, max_image_bytes: u64) -> Result<(), RuntimeError> {
    if m.config.size < 0 || m.config.size as u64 > MAX_CONFIG_BYTES {
        return Err(RuntimeError::resource_exhausted(format!(
            "{name}: image config of {} bytes is over the {MAX_CONFIG_BYTES}-byte limit",
            m.config.size
        )));
    }
    let mut total = m.config.size as u64;
    for l in &m.layers {
        if l.size < 0 {
            return Err(RuntimeError::invalid_argument(format!(
                "{name}: layer {} has a negative size",
                l.digest
            )));
        }
        total = total.saturating_add(l.size as u64);
    }
    if total > max_image_bytes {
        return Err(RuntimeError::resource_exhausted(format!(
            "{name}: image of {total} bytes is over IMAGE_MAX_BYTES ({max_image_bytes})"
        )));
    }
    Ok(())
}

/// A writer that takes at most the blob's declared size: a registry sending more (an endless
/// or oversized blob) fails the pull instead of filling memory or the disk (review M1).
struct Capped<W> {
    inner: W,
    left: u64,
    over: bool,
}

impl<W> Capped<W> {
    fn new(inner: W, declared: u64) -> Self {
        Self {
            inner,
            left: declared,
            over: false,
        }
    }

    /// The error to report when the blob outgrew its declared size.
    fn check(&self, name: &str, what: &str) -> Result<(), RuntimeError> {
        if self.over {
            return Err(RuntimeError::resource_exhausted(format!(
                "{name}: the registry sent a {what} blob larger than its declared size"
            )));
        }
        Ok(())
    }
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Capped<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if buf.len() as u64 > this.left {
            this.over = true;
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "blob larger than its declared size",
            )));
        }
        let poll = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &poll {
            this.left -= *n as u64;
        }
        poll
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Streams one blob to `path` (at most its declared `size`), verifying its digest.
async fn download(
    store: &ImageStore,
    reference: &Reference,
    digest: &str,
    size: u64,
    path: &std::path::Path,
) -> Result<(), RuntimeError> {
    let io = |e: std::io::Error| RuntimeError::internal("writing layer download").with_source(e);
    let file = tokio::fs::File::create(path).await.map_err(io)?;
    let mut hashing = Capped::new(
        HashingWriter {
            inner: file,
            hasher: Sha256::new(),
        },
        size,
    );
    let pulled = store
        .registry_clients
        .oci
        .pull_blob(reference, digest, &mut hashing)
        .await;
    hashing.check(&reference.whole(), "layer")?;
    pulled.map_err(|e| registry_err(&reference.whole(), e))?;
    let mut hashing = hashing.inner;
    hashing.inner.flush().await.map_err(io)?;
    let got = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
    if got != digest {
        return Err(RuntimeError::internal(format!(
            "layer digest mismatch: expected {digest}, got {got}"
        )));
    }
    Ok(())
}

fn verify(bytes: &[u8], digest: &str) -> Result<(), RuntimeError> {
    let got = oci::sha256_digest(bytes);
    if got == digest {
        Ok(())
    } else {
        Err(RuntimeError::internal(format!(
            "blob digest mismatch: expected {digest}, got {got}"
        )))
    }
}

/// An `AsyncWrite` that hashes what passes through.
struct HashingWriter {
    inner: tokio::fs::File,
    hasher: Sha256,
}

impl tokio::io::AsyncWrite for HashingWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let poll = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &poll {
            this.hasher.update(&buf[..*n]);
        }
        poll
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Registry errors by meaning: absent → ImageNotFound, unreachable → Unavailable.
fn registry_err(name: &str, e: OciDistributionError) -> RuntimeError {
    let kind = match &e {
        OciDistributionError::ImageManifestNotFoundError(_) => ErrorKind::ImageNotFound,
        OciDistributionError::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|x| {
                matches!(
                    x.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                )
            }) =>
        {
            ErrorKind::ImageNotFound
        }
        OciDistributionError::ServerError { code: 404, .. } => ErrorKind::ImageNotFound,
        OciDistributionError::ServerError { code, .. } if *code >= 500 => ErrorKind::Unavailable,
        OciDistributionError::RequestError(_) => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    };
    let msg = match kind {
        ErrorKind::ImageNotFound => format!("image {name} not found in the registry"),
        ErrorKind::Unavailable => format!("registry unreachable for {name}"),
        _ => format!("pulling {name} failed"),
    };
    RuntimeError::new(kind, msg).with_source(e)
}
