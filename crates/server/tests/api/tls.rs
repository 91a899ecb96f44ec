//! mTLS (SPEC §10): only certificates of the configured CA, allow-list, bearer token,
//! no plaintext when TLS is on, clear start-up errors naming the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use esb_proto::v1;
use esb_proto::v1::agent_service_client::AgentServiceClient;
use esb_runtime::fake::FakeRuntime;
use esb_server::TlsSettings;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::harness::{Agent, settings};

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
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

/// (cert pem, key pem)
fn leaf(ca: &Ca, cn: &str, sans: Vec<SanType>, server: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.subject_alt_names = sans;
    p.extended_key_usages = vec![if server {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    }];
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    other: Ca,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca("esb test ca");
        let other = ca_public_looking();
        let (cert, key) = leaf(
            &ca,
            "agent",
            vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress("127.0.0.1".parse().unwrap()),
            ],
            true,
        );
        std::fs::write(dir.path().join("server.crt"), cert).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), &ca.pem).unwrap();
        Self { dir, ca, other }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn tls(&self, allow: &[&str]) -> TlsSettings {
        TlsSettings::Mutual {
            cert_path: self.path("server.crt"),
            key_path: self.path("server.key"),
            client_ca_path: self.path("ca.crt"),
            allowed_client_identities: allow.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

fn ca_public_looking() -> Ca {
    ca("DigiCert Global Root G2")
}

fn gateway_sans() -> Vec<SanType> {
    vec![
        SanType::DnsName("gateway.local".try_into().unwrap()),
        SanType::URI("spiffe://esb/gateway".try_into().unwrap()),
    ]
}

async fn tls_client(
    agent: &Agent,
    pki: &Pki,
    identity: Option<(String, String)>,
) -> Result<AgentServiceClient<Channel>, tonic::transport::Error> {
    let mut cfg = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca.pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        cfg = cfg.identity(Identity::from_pem(cert, key));
    }
    let ch = Channel::from_shared(format!("https://localhost:{}", agent.addr.port()))
        .unwrap()
        .tls_config(cfg)?
        .connect()
        .await?;
    Ok(AgentServiceClient::new(ch))
}

async fn caps(
    c: Result<AgentServiceClient<Channel>, tonic::transport::Error>,
) -> Result<v1::Capabilities, String> {
    let mut c = c.map_err(|e| format!("connect: {e}"))?;
    c.get_capabilities(v1::GetCapabilitiesRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{s:?}"))
}

async fn start(pki: &Pki, allow: &[&str], token: Option<&str>) -> Agent {
    let tls = pki.tls(allow);
    let token = token.map(str::to_owned);
    Agent::start_with(Arc::new(FakeRuntime::new()), move |s| {
        s.tls = tls;
        s.auth_token = token;
    })
    .await
}

#[tokio::test]
async fn client_cert_of_the_configured_ca_is_required() {
    let pki = Pki::new();
    let agent = start(&pki, &[], None).await;
    let good = leaf(&pki.ca, "gateway", gateway_sans(), false);
    let c = caps(tls_client(&agent, &pki, Some(good)).await)
        .await
        .unwrap();
    assert!(c.tls_enabled);
    assert!(c.warnings.is_empty());
    // No client certificate.
    assert!(caps(tls_client(&agent, &pki, None).await).await.is_err());
    // A certificate from another (public-looking) CA.
    let foreign = leaf(&pki.other, "gateway", gateway_sans(), false);
    assert!(
        caps(tls_client(&agent, &pki, Some(foreign)).await)
            .await
            .is_err()
    );
    // Plaintext against the TLS port.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{}", agent.addr.port()))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        let mut c = AgentServiceClient::new(ch);
        assert!(
            c.get_capabilities(v1::GetCapabilitiesRequest {})
                .await
                .is_err()
        );
    }
}

#[tokio::test]
async fn allow_list_matches_san_or_cn() {
    let pki = Pki::new();
    let agent = start(&pki, &["spiffe://esb/gateway", "ops-cli"], None).await;
    let by_uri = leaf(&pki.ca, "gateway", gateway_sans(), false);
    assert!(
        caps(tls_client(&agent, &pki, Some(by_uri)).await)
            .await
            .is_ok()
    );
    let by_cn = leaf(&pki.ca, "ops-cli", vec![], false);
    assert!(
        caps(tls_client(&agent, &pki, Some(by_cn)).await)
            .await
            .is_ok()
    );
    let stranger = leaf(
        &pki.ca,
        "intruder",
        vec![SanType::DnsName("intruder.local".try_into().unwrap())],
        false,
    );
    assert!(
        caps(tls_client(&agent, &pki, Some(stranger)).await)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn bearer_token_is_required_when_configured() {
    let pki = Pki::new();
    let agent = start(&pki, &[], Some("s3cret-token")).await;
    let id = leaf(&pki.ca, "gateway", gateway_sans(), false);
    let mut c = tls_client(&agent, &pki, Some(id)).await.unwrap();
    let s = c
        .get_capabilities(v1::GetCapabilitiesRequest {})
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(v1::GetCapabilitiesRequest {});
    req.metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    assert_eq!(
        c.get_capabilities(req).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut req = tonic::Request::new(v1::GetCapabilitiesRequest {});
    req.metadata_mut()
        .insert("authorization", "Bearer s3cret-token".parse().unwrap());
    assert!(c.get_capabilities(req).await.is_ok());
}

#[tokio::test]
async fn bad_tls_material_names_the_file() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let check = |tls: TlsSettings, needle: &Path| {
        let mut s = settings(dir.path());
        s.tls = tls;
        let needle = needle.display().to_string();
        async move {
            let err = esb_server::bind(s, Arc::new(FakeRuntime::new()))
                .await
                .err()
                .expect("must fail");
            assert!(err.to_string().contains(&needle), "{err}");
        }
    };
    let missing = pki.path("missing.crt");
    let TlsSettings::Mutual {
        key_path,
        client_ca_path,
        ..
    } = pki.tls(&[])
    else {
        unreachable!()
    };
    check(
        TlsSettings::Mutual {
            cert_path: missing.clone(),
            key_path: key_path.clone(),
            client_ca_path: client_ca_path.clone(),
            allowed_client_identities: vec![],
        },
        &missing,
    )
    .await;
    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "not a pem").unwrap();
    check(
        TlsSettings::Mutual {
            cert_path: pki.path("server.crt"),
            key_path: key_path.clone(),
            client_ca_path: garbage.clone(),
            allowed_client_identities: vec![],
        },
        &garbage,
    )
    .await;
    check(
        TlsSettings::Mutual {
            cert_path: pki.path("server.crt"),
            key_path: garbage.clone(),
            client_ca_path,
            allowed_client_identities: vec![],
        },
        &garbage,
    )
    .await;
}
