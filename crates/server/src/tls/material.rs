//! Reading the TLS files (server chain, key, client CA, optional CRLs) into a rustls
//! `ServerConfig`, and the file stamps that tell when they changed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};

use crate::error::ServerError;
use crate::settings::MutualTls;

/// The files one `ServerConfig` is built from.
#[derive(Debug, Clone)]
pub(super) struct Files {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    crl: Option<PathBuf>,
}

impl Files {
    pub(super) fn of(s: &MutualTls) -> Self {
        Self {
            cert: s.cert_path.clone(),
            key: s.key_path.clone(),
            ca: s.client_ca_path.clone(),
            crl: s.crl_path.clone(),
        }
    }

    fn all(&self) -> impl Iterator<Item = &Path> {
        [&self.cert, &self.key, &self.ca]
            .into_iter()
            .chain(self.crl.as_ref())
            .map(PathBuf::as_path)
    }
}

/// What identifies one version of a file without reading it (symlink targets followed, so a
/// Kubernetes-style `..data` swap counts as a change). `None`: the file is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

pub(super) type Stamps = Vec<Option<Stamp>>;

pub(super) fn stamps(files: &Files) -> Stamps {
    files
        .all()
        .map(|p| {
            std::fs::metadata(p).ok().map(|m| Stamp {
                dev: m.dev(),
                ino: m.ino(),
                len: m.len(),
                mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
                ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            })
        })
        .collect()
}

/// A built configuration and what to say about it.
pub(super) struct Built {
    pub config: Arc<rustls::ServerConfig>,
    /// The server certificate's notAfter (RFC 2822), for the log line.
    pub expires: String,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path).map_err(|source| ServerError::TlsFile {
        what,
        path: path.to_owned(),
        source,
    })
}

fn invalid(what: &'static str, path: &Path, reason: impl ToString) -> ServerError {
    ServerError::TlsInvalid {
        what,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    let pem = read(what, path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(what, path, e))?;
    if certs.is_empty() {
        return Err(invalid(what, path, "no PEM certificate found"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, ServerError> {
    let what = "server key";
    let pem = read(what, path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| invalid(what, path, e))?
        .ok_or_else(|| invalid(what, path, "no PEM private key found"))
}

fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, ServerError> {
    let what = "client CRL";
    let pem = read(what, path)?;
    let crls: Vec<_> = rustls_pemfile::crls(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(what, path, e))?;
    if crls.is_empty() {
        return Err(invalid(what, path, "no PEM X509 CRL found"));
    }
    Ok(crls)
}

fn expiry(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .and_then(|(_, c)| c.validity().not_after.to_rfc2822().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Reads every file and builds the configuration; any fault names its file.
pub(super) fn build(files: &Files) -> Result<Built, ServerError> {
    let chain = certs("server certificate", &files.cert)?;
    let expires = chain.first().map_or_else(String::new, |c| expiry(c));
    let key = key(&files.key)?;
    // Only the configured CA: never the system or public roots.
    let mut roots = RootCertStore::empty();
    for ca in certs("client CA", &files.ca)? {
        roots
            .add(ca)
            .map_err(|e| invalid("client CA", &files.ca, e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if let Some(path) = &files.crl {
        // Revocation is checked for the whole chain; a CA without a CRL here fails closed.
        verifier = verifier.with_crls(crls(path)?);
    }
    let verifier = verifier.build().map_err(|e| match (&e, &files.crl) {
        (VerifierBuilderError::InvalidCrl(_), Some(path)) => invalid("client CRL", path, e),
        _ => ServerError::Tls(e.to_string()),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            ServerError::Tls(format!(
                "server certificate {} and key {}: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Built {
        config: Arc::new(config),
        expires,
    })
}
