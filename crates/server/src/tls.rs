//! mTLS for the gRPC port (SPEC §10): rustls with the ring provider, TLS 1.2+, client
//! certificates verified against the configured CA only, optional client-identity allow-list.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use x509_parser::extensions::GeneralName;

use crate::error::ServerError;
use crate::listen::{Accepted, Guarded, Listener, Watch};
use crate::settings::TlsSettings;

/// A bounded TLS handshake: a silent client must not hold a slot forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An accepted, authenticated connection, still under its first-request deadline.
pub type Tls = Guarded<TlsStream<TcpStream>>;

/// Accepts TLS connections and enforces the allow-list.
#[derive(Clone)]
pub struct TlsAcceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    allowed: Arc<Vec<String>>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path).map_err(|source| ServerError::TlsFile {
        what,
        path: path.to_owned(),
        source,
    })
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    let pem = read(what, path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| ServerError::TlsInvalid {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(ServerError::TlsInvalid {
            what,
            path: path.to_owned(),
            reason: "no PEM certificate found".into(),
        });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, ServerError> {
    let what = "server key";
    let pem = read(what, path)?;
    let invalid = |reason: String| ServerError::TlsInvalid {
        what,
        path: path.to_owned(),
        reason,
    };
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| invalid(e.to_string()))?
        .ok_or_else(|| invalid("no PEM private key found".into()))
}

/// `None` when TLS is disabled.
pub fn load(tls: &TlsSettings) -> Result<Option<TlsAcceptor>, ServerError> {
    let TlsSettings::Mutual {
        cert_path,
        key_path,
        client_ca_path,
        allowed_client_identities,
    } = tls
    else {
        return Ok(None);
    };
    let chain = certs("server certificate", cert_path)?;
    let key = key(key_path)?;
    // Only the configured CA: never the system or public roots.
    let mut roots = RootCertStore::empty();
    for ca in certs("client CA", client_ca_path)? {
        roots.add(ca).map_err(|e| ServerError::TlsInvalid {
            what: "client CA",
            path: client_ca_path.clone(),
            reason: e.to_string(),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| ServerError::Tls(format!("server certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(TlsAcceptor {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        allowed: Arc::new(allowed_client_identities.clone()),
    }))
}

/// DNS/URI SANs and subject CNs of a certificate.
pub fn identities(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => out.push((*d).to_owned()),
                GeneralName::URI(u) => out.push((*u).to_owned()),
                _ => {}
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(s) = cn.as_str() {
            out.push(s.to_owned());
        }
    }
    out
}

fn allowed(ids: &[String], allow: &[String]) -> bool {
    allow.is_empty()
        || ids.iter().any(|id| {
            allow
                .iter()
                .any(|a| a == id || (!a.contains(':') && a.eq_ignore_ascii_case(id)))
        })
}

impl TlsAcceptor {
    /// Accepts connections into `tx` until the task is aborted. The listener enforces the
    /// connection cap; handshakes beyond the handshake cap are closed at once (H6).
    pub async fn accept_loop(self, listener: Listener, tx: mpsc::Sender<std::io::Result<Tls>>) {
        loop {
            let Accepted { stream, peer, slot } = listener.accept().await;
            let Some(handshake) = listener.handshake_slot() else {
                tracing::debug!(%peer, "tls handshake cap reached; closing");
                continue;
            };
            let this = self.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let tls =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, this.acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::warn!(%peer, error = %e, "tls handshake rejected");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(%peer, "tls handshake timed out");
                            return;
                        }
                    };
                drop(handshake);
                if !this.allowed.is_empty() {
                    let ids = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| identities(c.as_ref()))
                        .unwrap_or_default();
                    if !allowed(&ids, &this.allowed) {
                        tracing::warn!(%peer, identities = ?ids, "client certificate identity not in the allow-list");
                        return;
                    }
                }
                let _ = tx.send(Ok(slot.guard(tls, Watch::H2Request))).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matching() {
        let ids = vec!["gateway.local".to_owned(), "spiffe://esb/gw".to_owned()];
        assert!(allowed(&ids, &[]));
        assert!(allowed(&ids, &["Gateway.Local".to_owned()]));
        assert!(allowed(&ids, &["spiffe://esb/gw".to_owned()]));
        assert!(!allowed(&ids, &["spiffe://esb/GW".to_owned()]));
        assert!(!allowed(&ids, &["other".to_owned()]));
    }
}
