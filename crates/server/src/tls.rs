//! mTLS for the gRPC port (SPEC §10): rustls with the ring provider, TLS 1.2+, client
//! certificates verified against the configured CA only (and its CRLs), a client-identity
//! allow-list required unless explicitly waived, the identity → owner binding attached to each
//! connection, and material that reloads without a restart.

mod material;
mod reload;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

pub use self::reload::Reloadable;
pub use self::stream::PeerStream;
use crate::authz::{OwnerMap, Peer, identities, identity_matches};
use crate::error::ServerError;
use crate::listen::{Accepted, Guarded, Listener, Watch};
use crate::settings::TlsSettings;

/// A bounded TLS handshake: a silent client must not hold a slot forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An accepted, authenticated connection, still under its first-request deadline.
pub type Tls = Guarded<PeerStream>;

/// Accepts TLS connections and enforces the allow-list.
#[derive(Clone)]
pub struct TlsAcceptor {
    material: Arc<Reloadable>,
    reload_interval: Option<Duration>,
    /// Empty only when explicitly waived (any certificate of the CA).
    allowed: Arc<Vec<String>>,
    owners: Arc<OwnerMap>,
}

/// `None` when TLS is disabled. Refuses mTLS without an allow-list unless waived.
pub fn load(tls: &TlsSettings) -> Result<Option<TlsAcceptor>, ServerError> {
    let TlsSettings::Mutual(m) = tls else {
        return Ok(None);
    };
    let allowed = if m.allowed_client_identities.is_empty() {
        m.owner_map.identities()
    } else {
        m.allowed_client_identities.clone()
    };
    if allowed.is_empty() && !m.allow_any_client {
        return Err(ServerError::Tls(NO_ALLOW_LIST.into()));
    }
    let material = Reloadable::load(material::Files::of(m))?;
    Ok(Some(TlsAcceptor {
        material: Arc::new(material),
        reload_interval: m.reload_interval,
        allowed: Arc::new(allowed),
        owners: Arc::new(m.owner_map.clone()),
    }))
}

/// The one start-up line when TLS is on without any client restriction.
pub const NO_ALLOW_LIST: &str = "mTLS without a client allow-list would admit every certificate of the CA: set AGENT_GRPC_ALLOWED_CLIENTS or AGENT_CLIENT_OWNER_MAP, or AGENT_GRPC_ALLOW_ANY_CLIENT_CERT=1 to accept that";

fn allowed(ids: &[String], allow: &[String]) -> bool {
    allow.is_empty()
        || ids
            .iter()
            .any(|id| allow.iter().any(|a| identity_matches(a, id)))
}

/// Aborts the reload watcher when the accept loop ends (it is aborted at shutdown).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl TlsAcceptor {
    /// Accepts connections into `tx` until the task is aborted; watches the TLS files meanwhile.
    /// The listener enforces the connection cap; handshakes beyond the handshake cap are
    /// closed at once (H6).
    pub async fn accept_loop(self, listener: Listener, tx: mpsc::Sender<std::io::Result<Tls>>) {
        let _watch = AbortOnDrop(tokio::spawn(
            self.material.clone().watch(self.reload_interval),
        ));
        loop {
            let Accepted { stream, peer, slot } = listener.accept().await;
            let Some(handshake) = listener.handshake_slot() else {
                tracing::debug!(%peer, "tls handshake cap reached; closing");
                continue;
            };
            let this = self.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                // The material current at accept time; a reload affects later connections only.
                let acceptor = tokio_rustls::TlsAcceptor::from(this.material.current());
                let tls =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
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
                let scope = this.owners.scope(&ids);
                let who = Peer {
                    identities: ids,
                    scope,
                };
                let _ = tx
                    .send(Ok(slot.guard(PeerStream::new(tls, who), Watch::H2Request)))
                    .await;
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
