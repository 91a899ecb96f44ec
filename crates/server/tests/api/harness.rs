//! Starts an agent server over a FakeRuntime on loopback and hands out clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use esb_proto::v1::agent_service_client::AgentServiceClient;
use esb_runtime::fake::FakeRuntime;
use esb_server::{InvokeSettings, ServerError, ServerSettings, ShutdownPolicy, TlsSettings};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub const OWNER: &str = "owner-a";
pub const OTHER: &str = "owner-b";

pub fn settings(state_dir: &std::path::Path) -> ServerSettings {
    ServerSettings {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        tls: TlsSettings::Disabled,
        auth_token: None,
        reflection: false,
        max_request_bytes: 12 << 20,
        max_response_bytes: 12 << 20,
        invoke: InvokeSettings::default(),
        state_dir: state_dir.to_owned(),
        drain_timeout: Duration::from_secs(2),
        agent_version: "test".into(),
        shutdown_policy: ShutdownPolicy::Keep,
        gc_interval: Duration::from_secs(3600),
        health_interval: Duration::from_millis(50),
        ensure_ready_timeout: Duration::ZERO,
        admission: Default::default(),
        conn: esb_server::ConnSettings::default(),
        standby: Default::default(),
    }
}

pub struct Agent {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub rt: Arc<FakeRuntime>,
    _dir: Arc<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServerError>>>,
}

impl Agent {
    pub async fn start() -> Self {
        Self::start_with(Arc::new(FakeRuntime::new()), |_| {}).await
    }

    pub async fn start_with(rt: Arc<FakeRuntime>, f: impl FnOnce(&mut ServerSettings)) -> Self {
        Self::start_in(Arc::new(tempfile::tempdir().unwrap()), rt, f).await
    }

    pub async fn start_in(
        dir: Arc<tempfile::TempDir>,
        rt: Arc<FakeRuntime>,
        f: impl FnOnce(&mut ServerSettings),
    ) -> Self {
        let mut s = settings(dir.path());
        f(&mut s);
        let bound = esb_server::bind(s, rt.clone()).await.expect("bind");
        let addr = bound.grpc_addr();
        let metrics_addr = bound.metrics_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(bound.run(async {
            let _ = rx.await;
        }));
        Self {
            addr,
            metrics_addr,
            rt,
            _dir: dir,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub async fn client(&self) -> AgentServiceClient<Channel> {
        let ch = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        AgentServiceClient::new(ch)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }

    /// Graceful stop; returns the server's result.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.take().unwrap().await.unwrap()
    }

    pub async fn scrape(&self, path: &str) -> (u16, String) {
        http_get(self.metrics_addr.unwrap(), path).await
    }
}

/// A minimal HTTP/1.1 GET over a fresh connection.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// `cond` holds within 5 s (the one `esb_testkit::eventually`, for plain conditions).
pub async fn eventually(mut cond: impl FnMut() -> bool) {
    esb_testkit::eventually("the condition", Duration::from_secs(5), || {
        std::future::ready(cond().then_some(()))
    })
    .await;
}

/// Set in the child process of [`run_alone`].
pub const CHILD: &str = "ESB_TEST_CHILD";

/// Runs the ignored test `path` (e.g. `api::tls_reload::sighup_child`) alone in a child
/// process of the test binary: log capture needs tracing's process-wide callsite interest to
/// itself (another test thread can cache a callsite as disabled), and signals reach the whole
/// process.
pub fn run_alone(path: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", path, "--include-ignored", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{path} failed:\n{text}{err}");
    assert!(text.contains("1 passed"), "{path} did not run:\n{text}");
}
