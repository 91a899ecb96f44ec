//! Connection behaviour without a real daemon: a fake Engine on a unix socket shows that
//! `connect` retries until the daemon appears, `ping` reports `Unavailable` while it is gone,
//! and the client recovers when it returns.

use std::path::{Path, PathBuf};
use std::time::Duration;

use esb_docker::{DockerRuntime, DockerSettings};
use esb_runtime::identity::Identity;
use esb_runtime::settings::{CommonSettings, PullPolicy, RegistrySettings, WorkerDefaults};
use esb_runtime::{ErrorKind, Runtime, RuntimeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

/// Serves just enough of the Engine API for connect/ping/capabilities.
fn fake_engine(path: &Path) -> std::io::Result<JoinHandle<()>> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    Ok(tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let target = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                let (status, body) = if target.ends_with("/_ping") {
                    ("200 OK", "OK".to_string())
                } else if target.ends_with("/version") {
                    (
                        "200 OK",
                        r#"{"Version":"20.10.99","ApiVersion":"1.41"}"#.to_string(),
                    )
                } else if target.ends_with("/info") {
                    ("200 OK", r#"{"CgroupVersion":"2"}"#.to_string())
                } else {
                    ("404 Not Found", r#"{"message":"not here"}"#.to_string())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    }))
}

fn settings(sock: &Path) -> (CommonSettings, DockerSettings) {
    let common = CommonSettings {
        identity: Identity::new("esbt-dk-fake", "test"),
        registry: RegistrySettings {
            default_registry: String::new(),
            insecure: false,
            ca_path: None,
            ca_only: false,
            pull_policy: PullPolicy::IfNotPresent,
            // Backend tests also pull from the TLS registry; the allow-list has its own tests.
            allowed: esb_runtime::image_ref::AllowedRegistries::Any,
            pull_timeout: esb_runtime::settings::DEFAULT_PULL_TIMEOUT,
            max_image_bytes: esb_runtime::settings::DEFAULT_MAX_IMAGE_BYTES,
        },
        worker: WorkerDefaults::default(),
        state_dir: std::env::temp_dir(),
        worker_log_max_bytes: 1024 * 1024,
    };
    let docker = DockerSettings {
        host: Some(format!("unix://{}", sock.display())),
        network: "esbt-net".into(),
        firewall: None,
    };
    (common, docker)
}

fn socket_path(tag: &str) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(format!("{tag}.sock"));
    Ok((dir, path))
}

#[tokio::test]
async fn connect_waits_for_a_starting_daemon() -> anyhow::Result<()> {
    let (_dir, sock) = socket_path("late")?;
    let (common, docker) = settings(&sock);
    let later = sock.clone();
    let server = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        fake_engine(&later)
    });
    let rt = DockerRuntime::connect(common, docker).await?;
    let caps = rt.capabilities();
    assert_eq!(caps.kind, RuntimeKind::Docker);
    assert_eq!(caps.version, "20.10.99");
    assert_eq!(caps.cgroup_version, 2);
    assert_eq!(caps.network, "esbt-net");
    server.await??.abort();
    Ok(())
}

#[tokio::test]
async fn ping_follows_the_daemon_down_and_back() -> anyhow::Result<()> {
    let (_dir, sock) = socket_path("flap")?;
    let (common, docker) = settings(&sock);
    let server = fake_engine(&sock)?;
    let rt = DockerRuntime::connect(common, docker).await?;
    rt.ping().await?;

    server.abort();
    let _ = server.await;
    std::fs::remove_file(&sock)?;
    let err = rt.ping().await.err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Unavailable));

    let server = fake_engine(&sock)?;
    esb_testkit::eventually("ping recovers", Duration::from_secs(5), || async {
        rt.ping().await.ok()
    })
    .await;
    server.abort();
    Ok(())
}
