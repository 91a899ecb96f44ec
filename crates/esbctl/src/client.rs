//! A gRPC client for the agent (plaintext or mTLS), shared by `esbctl` and the end-to-end
//! tests (through `esb_testkit::client`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use esb_proto::v1::agent_service_client::AgentServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Client-side TLS material: the CA that signed the agent's certificate and, for mTLS, the
/// client's certificate and key (PEM files).
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Name to verify the server certificate against (default: the endpoint's host).
    pub domain: Option<String>,
}

/// A channel to `addr` (`http://host:port`, or `https://…` with `tls`), with a bounded
/// connect timeout.
pub async fn channel(addr: &str, tls: Option<&ClientTls>) -> anyhow::Result<Channel> {
    let mut ep = Endpoint::from_shared(addr.to_string())
        .with_context(|| format!("invalid agent address {addr}"))?
        .connect_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        let ca = std::fs::read(&tls.ca).with_context(|| format!("read {}", tls.ca.display()))?;
        let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            let cert = std::fs::read(cert).with_context(|| format!("read {}", cert.display()))?;
            let key = std::fs::read(key).with_context(|| format!("read {}", key.display()))?;
            cfg = cfg.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &tls.domain {
            cfg = cfg.domain_name(domain.clone());
        }
        ep = ep.tls_config(cfg).context("tls config")?;
    }
    ep.connect()
        .await
        .with_context(|| format!("connect to agent at {addr}"))
}

/// The agent service client over [`channel`].
pub async fn connect(
    addr: &str,
    tls: Option<&ClientTls>,
) -> anyhow::Result<AgentServiceClient<Channel>> {
    Ok(AgentServiceClient::new(channel(addr, tls).await?)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024))
}

/// Connects, retrying until the agent answers or `timeout` passes (for freshly spawned agents).
pub async fn connect_eventually(
    addr: &str,
    tls: Option<&ClientTls>,
    timeout: Duration,
) -> anyhow::Result<AgentServiceClient<Channel>> {
    let start = std::time::Instant::now();
    loop {
        match connect(addr, tls).await {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() >= timeout => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
