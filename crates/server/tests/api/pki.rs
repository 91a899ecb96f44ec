//! Test PKI for the mTLS tests: CAs, server and client certificates (rcgen) written to a temp
//! dir, CRLs, and a TLS client.

use std::net::SocketAddr;
use std::path::PathBuf;

use esb_proto::v1;
use esb_proto::v1::agent_service_client::AgentServiceClient;
use esb_server::{MutualTls, TlsSettings};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub struct Ca {
    pub issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

pub fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = p.self_signed(&key).unwrap();
    Ca {
        issuer: Issuer::new(p, key),
        pem: cert.pem(),
    }
}

/// A client or server certificate: (cert pem, key pem).
pub fn leaf(ca: &Ca, cn: &str, sans: Vec<SanType>, server: bool) -> (String, String) {
    leaf_serial(ca, cn, sans, server, None)
}

pub fn leaf_serial(
    ca: &Ca,
    cn: &str,
    sans: Vec<SanType>,
    server: bool,
    serial: Option<u64>,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.subject_alt_names = sans;
    p.serial_number = serial.map(SerialNumber::from);
    p.extended_key_usages = vec![if server {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    }];
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A CRL of `ca` revoking `serials`.
pub fn crl(ca: &Ca, number: u64, serials: &[u64]) -> String {
    let now = rcgen::date_time_ymd(2025, 1, 1);
    CertificateRevocationListParams {
        this_update: now,
        next_update: rcgen::date_time_ymd(2035, 1, 1),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from(*s),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca.issuer)
    .unwrap()
    .pem()
    .unwrap()
}

/// The agent's server certificate for `localhost`/127.0.0.1.
pub fn server_leaf(ca: &Ca) -> (String, String) {
    leaf(
        ca,
        "agent",
        vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
        ],
        true,
    )
}

pub fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().unwrap())
}

pub fn uri(u: &str) -> SanType {
    SanType::URI(u.try_into().unwrap())
}

pub fn gateway_sans() -> Vec<SanType> {
    vec![dns("gateway.local"), uri("spiffe://esb/gateway")]
}

/// server.crt, server.key and ca.crt in a temp dir, plus a second (public-looking) CA.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub other: Ca,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let own = ca("esb test ca");
        let other = ca("DigiCert Global Root G2");
        let (cert, key) = server_leaf(&own);
        std::fs::write(dir.path().join("server.crt"), cert).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), &own.pem).unwrap();
        Self {
            dir,
            ca: own,
            other,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn mutual(&self) -> MutualTls {
        MutualTls::new(
            self.path("server.crt"),
            self.path("server.key"),
            self.path("ca.crt"),
        )
    }

    /// mTLS with this allow-list; an empty one is the explicit any-certificate waiver.
    pub fn tls(&self, allow: &[&str]) -> TlsSettings {
        let mut m = self.mutual();
        m.allowed_client_identities = allow.iter().map(|s| (*s).to_owned()).collect();
        m.allow_any_client = allow.is_empty();
        TlsSettings::Mutual(m)
    }
}

/// A TLS client trusting `ca_pem` for the server, presenting `identity`.
pub async fn tls_client(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<(String, String)>,
) -> Result<AgentServiceClient<Channel>, tonic::transport::Error> {
    let mut cfg = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        cfg = cfg.identity(Identity::from_pem(cert, key));
    }
    let ch = Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(cfg)?
        .connect()
        .await?;
    Ok(AgentServiceClient::new(ch))
}

pub async fn caps(
    c: Result<AgentServiceClient<Channel>, tonic::transport::Error>,
) -> Result<v1::Capabilities, String> {
    let mut c = c.map_err(|e| format!("connect: {e}"))?;
    c.get_capabilities(v1::GetCapabilitiesRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{s:?}"))
}
