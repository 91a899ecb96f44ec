//! End to end on the default backend: the built `esb-agent` binary with `AGENT_RUNTIME=docker`
//! against the private dev dockerd, with mTLS on, a bearer token from a file and a client
//! allow-list — the production security settings wired through env vars. Ensure → Invoke →
//! List → Pause/Resume → Destroy, `/metrics`, rejected callers, clean stop, no leftovers.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use esb_proto::v1::agent_service_client::AgentServiceClient;
use esb_proto::v1::{
    DestroyContainerRequest, EnsureContainerRequest, InvokeWorkerRequest, ListContainersRequest,
    PauseContainerRequest, ResumeContainerRequest,
};
use esb_testkit::agent::AgentProcess;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request, Status};

#[path = "support/logtail.rs"]
mod logtail;

const BRAND: &str = "esbtdke2e";
const OWNER: &str = "owner-e2e";
const TOKEN: &str = "e2e-token-0123456789";

/// Removes every container of our brand from the private dockerd and the agent's worker
/// firewall for our network+ENV (kept by the keep policy) at start and on drop.
struct Cleanup {
    host: String,
    network: String,
}

impl Cleanup {
    fn ours(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args([
                "-H",
                &self.host,
                "ps",
                "-aq",
                "--filter",
                &format!("label=created_by={BRAND}-agent"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    fn run(&self) {
        for id in self.ours() {
            let _ = Command::new("docker")
                .args(["-H", &self.host, "rm", "-f", &id])
                .output();
        }
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "for c in INPUT FORWARD; do iptables -w -S $c \
                 | grep -F -- '--comment \"esb-agent {}/e2e ' | while read -r r; do \
                 t=$(echo \"$r\" | sed -n 's/.*-j \\(ESB[IF]-[0-9a-f]*\\).*/\\1/p'); \
                 eval \"iptables -w $(echo \"$r\" | sed 's/^-A /-D /')\"; \
                 [ -n \"$t\" ] && iptables -w -F $t && iptables -w -X $t; done; done",
                    self.network
                ),
            ])
            .output();
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.run();
    }
}

/// (cert pem, key pem) signed by `issuer`.
fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    cn: &str,
    sans: Vec<SanType>,
    server: bool,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.subject_alt_names = sans;
    p.extended_key_usages = vec![if server {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    }];
    (
        p.signed_by(&key, issuer).unwrap().pem(),
        key.serialize_pem(),
    )
}

struct Pki {
    ca_pem: String,
    gateway: (String, String),
    stranger: (String, String),
}

/// A CA, the agent's server cert (in `dir`), an allowed client and a client of the same CA
/// that is not on the allow-list.
fn pki(dir: &Path) -> Pki {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "esb e2e ca");
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_pem = p.self_signed(&key).unwrap().pem();
    let issuer = Issuer::new(p, key);
    let (cert, key) = leaf(
        &issuer,
        "agent",
        vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
        ],
        true,
    );
    std::fs::write(dir.join("server.crt"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
    std::fs::write(dir.join("ca.crt"), &ca_pem).unwrap();
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("token"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }
    let gateway = leaf(
        &issuer,
        "gateway",
        vec![SanType::DnsName("gateway.local".try_into().unwrap())],
        false,
    );
    let stranger = leaf(
        &issuer,
        "stranger",
        vec![SanType::DnsName("stranger.local".try_into().unwrap())],
        false,
    );
    Pki {
        ca_pem,
        gateway,
        stranger,
    }
}

/// Adds the bearer token to every call.
type Auth = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;

type Client = AgentServiceClient<InterceptedService<Channel, Auth>>;

async fn client(
    port: u16,
    ca: &str,
    id: &(String, String),
    token: Option<&'static str>,
) -> anyhow::Result<Client> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(&id.0, &id.1))
        .domain_name("localhost");
    let ch = Channel::from_shared(format!("https://localhost:{port}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let auth: Auth = Box::new(move |mut r: Request<()>| {
        if let Some(t) = token {
            r.metadata_mut().insert(
                "authorization",
                MetadataValue::try_from(format!("Bearer {t}")).unwrap(),
            );
        }
        Ok(r)
    });
    Ok(AgentServiceClient::with_interceptor(ch, auth))
}

async fn list(c: &mut Client) -> Result<Vec<String>, Status> {
    let r = c
        .list_containers(ListContainersRequest {
            owner_id: OWNER.into(),
        })
        .await?
        .into_inner();
    Ok(r.containers.into_iter().map(|s| s.container_id).collect())
}

async fn invoke(
    c: &mut Client,
    id: &str,
    payload: &str,
) -> Result<esb_proto::v1::InvokeWorkerResponse, Status> {
    c.invoke_worker(InvokeWorkerRequest {
        container_id: id.into(),
        path: String::new(),
        payload: payload.as_bytes().to_vec(),
        headers: Default::default(),
        timeout_ms: 10_000,
        owner_id: OWNER.into(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn scrape(addr: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_binary_docker_mtls_token() {
    let Some(env) = esb_testkit::docker() else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let host = env.docker_host.clone().unwrap();
    let network = env.docker_network.clone().unwrap();
    let image = env.worker_image.clone().unwrap();
    let cleanup = Cleanup {
        host: host.clone(),
        network: network.clone(),
    };
    cleanup.run();
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let (cert, key, ca, token, state) = (
        p("server.crt"),
        p("server.key"),
        p("ca.crt"),
        p("token"),
        p("state"),
    );
    let mut agent = AgentProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_esb-agent")),
        "e2e-docker",
        &[
            ("AGENT_RUNTIME", "docker"),
            ("CONTAINER_REGISTRY", env.registry.as_deref().unwrap()),
            ("ENV", "e2e"),
            ("ESB_BRAND_SLUG", BRAND),
            ("CONTAINERS_NETWORK", network.as_str()),
            ("DOCKER_HOST", host.as_str()),
            ("AGENT_GRPC_TLS_DISABLED", "0"),
            ("AGENT_GRPC_CERT_PATH", cert.as_str()),
            ("AGENT_GRPC_KEY_PATH", key.as_str()),
            ("AGENT_GRPC_CA_CERT_PATH", ca.as_str()),
            ("AGENT_GRPC_ALLOWED_CLIENTS", "gateway.local"),
            ("AGENT_AUTH_TOKEN_FILE", token.as_str()),
            ("AGENT_STATE_DIR", state.as_str()),
            ("AGENT_SHUTDOWN_POLICY", "keep"),
        ],
    )
    .unwrap();
    let port: u16 = agent.addr.rsplit(':').next().unwrap().parse().unwrap();

    // The agent needs a moment to start; the allowed client with the token gets through.
    let start = Instant::now();
    let mut c = loop {
        if let Ok(mut c) = client(port, &pki.ca_pem, &pki.gateway, Some(TOKEN)).await
            && list(&mut c).await.is_ok()
        {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "agent never answered:\n{}",
            agent.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Missing token, and a same-CA client outside the allow-list, are refused.
    let mut no_token = client(port, &pki.ca_pem, &pki.gateway, None).await.unwrap();
    assert_eq!(
        list(&mut no_token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let refused = match client(port, &pki.ca_pem, &pki.stranger, Some(TOKEN)).await {
        Ok(mut c) => list(&mut c).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client outside the allow-list must be refused");

    let w = c
        .ensure_container(EnsureContainerRequest {
            function_name: "docker-e2e".into(),
            image: image.clone(),
            env: [("GREETING".to_string(), "hi-docker".to_string())].into(),
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!w.ip_address.is_empty(), "{w:?}");
    let r = invoke(&mut c, &w.id, r#"{"echo_env":["GREETING"]}"#)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["env"]["GREETING"], "hi-docker", "{body}");
    // The client is not Clone (boxed interceptor): lend it to the log-tail check.
    let shared = std::sync::Arc::new(tokio::sync::Mutex::new(c));
    let lent = shared.clone();
    let call = move |r| -> logtail::Reply {
        let c = lent.clone();
        Box::pin(async move {
            c.lock()
                .await
                .invoke_worker(r)
                .await
                .map(|r| r.into_inner())
        })
    };
    logtail::check(call, &w.id, OWNER).await;
    let mut c = std::sync::Arc::try_unwrap(shared)
        .ok()
        .unwrap()
        .into_inner();
    assert_eq!(list(&mut c).await.unwrap(), vec![w.id.clone()]);
    let paused = c
        .pause_container(PauseContainerRequest {
            container_id: w.id.clone(),
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(paused.success);
    assert_eq!(
        invoke(&mut c, &w.id, "{}").await.unwrap_err().code(),
        Code::Unavailable,
        "a paused worker is retryable elsewhere (SPEC §3)"
    );
    c.resume_container(ResumeContainerRequest {
        container_id: w.id.clone(),
        owner_id: OWNER.into(),
    })
    .await
    .unwrap();
    assert_eq!(invoke(&mut c, &w.id, "{}").await.unwrap().status_code, 200);
    let d = c
        .destroy_container(DestroyContainerRequest {
            function_name: String::new(),
            container_id: w.id.clone(),
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.success);
    assert!(list(&mut c).await.unwrap().is_empty());

    let metrics = scrape(&agent.metrics_addr).await;
    assert!(metrics.contains("grpc_server_handled_total"), "{metrics}");
    assert!(metrics.contains("InvokeWorker"), "{metrics}");

    agent.stop_cleanly();
    assert!(
        cleanup.ours().is_empty(),
        "leftover containers: {:?}",
        cleanup.ours()
    );
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert!(
        !log.contains(TOKEN) && !log.contains("hi-docker"),
        "secrets in the agent log"
    );
}
