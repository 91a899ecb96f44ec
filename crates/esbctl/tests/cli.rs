//! `esbctl` end to end against a real agent server (esb-server over the in-process fake
//! runtime, bearer token on): every command, table and JSON output, stdin payloads, the
//! invocation report, logs, errors as one line with the gRPC code, completions and help.
//! The real-daemon path is covered by `scripts/quickstart`, which drives the agent with esbctl.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use esb_runtime::fake::FakeRuntime;
use esb_server::{InvokeSettings, ServerSettings, ShutdownPolicy, TlsSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "s3cret-token";

/// A worker that answers every POST with a fixed JSON body (keep-alive).
async fn worker() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut b = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&b[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&b[..n]),
                        }
                    }
                    let body = buf[end + 4..end + 4 + len].to_vec();
                    buf.drain(..end + 4 + len);
                    let reply = format!(r#"{{"got":{}}}"#, String::from_utf8_lossy(&body));
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
                        reply.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn settings(dir: &std::path::Path) -> ServerSettings {
    ServerSettings {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: None,
        tls: TlsSettings::Disabled,
        auth_token: Some(TOKEN.into()),
        reflection: false,
        max_request_bytes: 12 << 20,
        max_response_bytes: 12 << 20,
        invoke: InvokeSettings::default(),
        state_dir: dir.to_owned(),
        drain_timeout: Duration::from_secs(2),
        agent_version: "test".into(),
        shutdown_policy: ShutdownPolicy::Keep,
        gc_interval: Duration::from_secs(3600),
        health_interval: Duration::from_millis(50),
        ensure_ready_timeout: Duration::ZERO,
        admission: Default::default(),
        conn: Default::default(),
        standby: Default::default(),
    }
}

struct Ctl {
    addr: String,
    token_file: std::path::PathBuf,
}

impl Ctl {
    /// Runs esbctl with the address, owner and token file, `stdin` piped in.
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_esbctl"));
        cmd.args(["--addr", &self.addr, "--owner", "ops", "--token-file"])
            .arg(&self.token_file)
            .args(args)
            .env_remove("ESB_AGENT_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut pipe = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            pipe.write_all(s.as_bytes()).unwrap();
        }
        drop(pipe);
        child.wait_with_output().unwrap()
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> (String, String) {
        let o = self.run(args, stdin);
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        );
        assert!(o.status.success(), "esbctl {args:?}: {err}");
        (out, err)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_against_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::new());
    rt.set_worker_port(worker().await);
    let bound = esb_server::bind(settings(dir.path()), rt.clone())
        .await
        .unwrap();
    let addr = format!("http://{}", bound.grpc_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bound.run(async {
        let _ = stop_rx.await;
    }));
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let ctl = Ctl { addr, token_file };

    let blocking = tokio::task::spawn_blocking(move || {
        let (out, _) = ctl.ok(&["health"], None);
        assert_eq!(out.trim(), "SERVING");
        let (out, _) = ctl.ok(&["caps"], None);
        assert!(
            out.contains("runtime") && out.contains("containerd"),
            "{out}"
        );
        let (out, _) = ctl.ok(&["-o", "json", "caps"], None);
        let caps: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(caps["tls_enabled"], false);

        let (out, _) = ctl.ok(
            &[
                "-o",
                "json",
                "ensure",
                "--function",
                "hello",
                "--image",
                "img:1",
                "--env",
                "A=1",
            ],
            None,
        );
        let w: serde_json::Value = serde_json::from_str(&out).unwrap();
        let id = w["id"].as_str().unwrap().to_string();

        let (out, _) = ctl.ok(&["ls"], None);
        let mut lines = out.lines();
        assert!(lines.next().unwrap().starts_with("ID"), "{out}");
        let row = lines.next().unwrap();
        assert!(row.starts_with(&id) && row.contains("hello"), "{out}");
        let (out, _) = ctl.ok(&["ls", "-o", "json"], None);
        let l: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(l["containers"][0]["container_id"], id.as_str());
        let (out, _) = ctl.ok(&["inspect", &id], None);
        assert!(
            out.contains("function_name") && out.contains("metrics"),
            "{out}"
        );

        // Payload from stdin; body on stdout, status and report on stderr.
        let (out, err) = ctl.ok(&["invoke", &id, "-"], Some(r#"{"n":7}"#));
        assert_eq!(out.trim(), r#"{"got":{"n":7}}"#);
        assert!(err.contains("status 200"), "{err}");
        assert!(err.contains("outcome=ok"), "report trailers shown: {err}");
        let (out, _) = ctl.ok(&["-o", "json", "invoke", &id, r#"{"n":8}"#], None);
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(r["body"]["got"]["n"], 8);
        assert_eq!(r["report"][0].as_array().map(Vec::len), Some(2));

        (ctl, id)
    })
    .await
    .unwrap();
    let (ctl, id) = blocking;
    rt.write_log(&id, b"hello from the worker\n");
    let blocking = tokio::task::spawn_blocking(move || {
        let (out, _) = ctl.ok(&["logs", &id], None);
        assert_eq!(out, "hello from the worker\n");
        let (out, _) = ctl.ok(&["metrics", &id], None);
        assert!(out.contains("memory_max"), "{out}");
        let (out, _) = ctl.ok(&["pause", &id], None);
        assert_eq!(out.trim(), format!("{id} paused"));
        ctl.ok(&["resume", &id], None);
        ctl.ok(&["rm", &id], None);
        let (out, _) = ctl.ok(&["ls"], None);
        assert_eq!(out.lines().count(), 1, "only the header: {out}");

        // Errors: one line with the gRPC code, exit status 1.
        let o = ctl.run(&["pause", "no-such-worker"], None);
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.starts_with("esbctl: NotFound:"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        let bad = Ctl {
            addr: ctl.addr.clone(),
            token_file: ctl.token_file.with_file_name("wrong"),
        };
        std::fs::write(&bad.token_file, "wrong-token").unwrap();
        let o = bad.run(&["ls"], None);
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("Unauthenticated"), "{err}");
        assert!(!err.contains("wrong-token"), "never echo the token: {err}");

        // Not a terminal: plain progress lines on stderr, the result on stdout.
        let (out, err) = ctl.ok(&["pull", "esb/fn:1"], None);
        assert!(out.contains("sha256:fake"), "{out}");
        assert!(err.contains("layers 2/2  bytes 200/200"), "{err}");
        let (out, _) = ctl.ok(&["-o", "json", "pull", "esb/fn:1"], None);
        let p: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(p["reference"], "registry.test/esb/fn:1");

        let (out, _) = ctl.ok(&["completion", "bash"], None);
        assert!(out.contains("_esbctl()"), "{}", &out[..out.len().min(200)]);
        let (out, _) = ctl.ok(&["--help"], None);
        assert!(out.contains("Examples:") && out.contains("logs"), "{out}");
    });
    blocking.await.unwrap();
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}
