//! mTLS (SPEC §10): only certificates of the configured CA, allow-list, bearer token,
//! no plaintext when TLS is on, clear start-up errors naming the file.

use std::path::Path;
use std::sync::Arc;

use esb_proto::v1;
use esb_proto::v1::agent_service_client::AgentServiceClient;
use esb_runtime::fake::FakeRuntime;
use esb_server::{MutualTls, TlsSettings};
use tonic::Code;
use tonic::transport::Channel;

use super::harness::{Agent, settings};
use super::pki::{Pki, caps, dns, gateway_sans, leaf};

async fn tls_client(
    agent: &Agent,
    pki: &Pki,
    identity: Option<(String, String)>,
) -> Result<AgentServiceClient<Channel>, tonic::transport::Error> {
    super::pki::tls_client(agent.addr, &pki.ca.pem, identity).await
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
    let stranger = leaf(&pki.ca, "intruder", vec![dns("intruder.local")], false);
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
    let check = |m: MutualTls, needle: &Path| {
        let mut s = settings(dir.path());
        s.tls = TlsSettings::Mutual(MutualTls {
            allow_any_client: true,
            ..m
        });
        let needle = needle.display().to_string();
        async move {
            let err = esb_server::bind(s, Arc::new(FakeRuntime::new()))
                .await
                .expect_err("must fail");
            assert!(err.to_string().contains(&needle), "{err}");
        }
    };
    let missing = pki.path("missing.crt");
    check(
        MutualTls {
            cert_path: missing.clone(),
            ..pki.mutual()
        },
        &missing,
    )
    .await;
    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "not a pem").unwrap();
    check(
        MutualTls {
            client_ca_path: garbage.clone(),
            ..pki.mutual()
        },
        &garbage,
    )
    .await;
    check(
        MutualTls {
            key_path: garbage.clone(),
            ..pki.mutual()
        },
        &garbage,
    )
    .await;
    check(
        MutualTls {
            crl_path: Some(garbage.clone()),
            ..pki.mutual()
        },
        &garbage,
    )
    .await;
}

/// M2: mTLS without an allow-list, an owner map or the explicit waiver does not start, and
/// the one error line names the settings to set.
#[tokio::test]
async fn start_is_refused_without_an_allow_list() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.tls = TlsSettings::Mutual(pki.mutual());
    let err = esb_server::bind(s, Arc::new(FakeRuntime::new()))
        .await
        .expect_err("must refuse to start")
        .to_string();
    assert!(!err.contains('\n'), "{err}");
    for name in [
        "AGENT_GRPC_ALLOWED_CLIENTS",
        "AGENT_CLIENT_OWNER_MAP",
        "AGENT_GRPC_ALLOW_ANY_CLIENT_CERT",
    ] {
        assert!(err.contains(name), "{err}");
    }
}

/// M2: a subject CN is an identity only when the certificate has no DNS/URI SAN, so a CA that
/// issues SAN certificates cannot be tricked by a CN naming an allowed client.
#[tokio::test]
async fn cn_is_ignored_when_a_san_is_present() {
    let pki = Pki::new();
    let agent = start(&pki, &["ops-cli"], None).await;
    let cn_only = leaf(&pki.ca, "ops-cli", vec![], false);
    assert!(
        caps(tls_client(&agent, &pki, Some(cn_only)).await)
            .await
            .is_ok()
    );
    let cn_with_san = leaf(&pki.ca, "ops-cli", vec![dns("intruder.local")], false);
    assert!(
        caps(tls_client(&agent, &pki, Some(cn_with_san)).await)
            .await
            .is_err()
    );
}
