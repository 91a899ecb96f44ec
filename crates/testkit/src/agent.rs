//! Spawns an `esb-agent` binary for end-to-end tests: free loopback ports, a log file under
//! the dev dir, SIGTERM on drop, and the log tail printed when the test panics.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use esb_proto::v1::agent_service_client::AgentServiceClient;
use tonic::transport::Channel;

use crate::client::connect_eventually;

/// `N` distinct free TCP ports on 127.0.0.1 (released before returning; fine for tests). All
/// are held until the last is chosen, and a port is never handed out twice in one test
/// binary: otherwise the kernel can give a just-released port again (a CI run got the same
/// port for an agent's gRPC and metrics listeners).
pub fn free_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut held = Vec::new();
    let mut ports = [0; N];
    for port in &mut ports {
        *port = loop {
            let l = TcpListener::bind("127.0.0.1:0")?;
            let p = l.local_addr()?.port();
            held.push(l);
            if !handed.contains(&p) {
                break p;
            }
        };
        handed.push(*port);
    }
    Ok(ports)
}

/// Directory for logs of agents and workers started by tests: `$ESB_TEST_DEV_DIR/logs` (shown
/// by `scripts/test` when a test fails), else the system temp dir.
pub fn logs_dir() -> PathBuf {
    let dir = std::env::var_os("ESB_TEST_DEV_DIR")
        .map(|d| PathBuf::from(d).join("logs"))
        .unwrap_or_else(|| std::env::temp_dir().join("esb-test-logs"));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// A fresh scratch directory named `<prefix>...` under `$ESB_TEST_DEV_DIR` when set (so
/// scripts/check-leftovers sees mounts made under it), else under the system temp dir.
pub fn scratch_dir(prefix: &str) -> std::io::Result<tempfile::TempDir> {
    let base = std::env::var_os("ESB_TEST_DEV_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)?;
    tempfile::Builder::new().prefix(prefix).tempdir_in(&base)
}

/// A running agent process.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    /// `http://127.0.0.1:<port>` of its gRPC server.
    pub addr: String,
    /// `127.0.0.1:<port>` of its Prometheus endpoint.
    pub metrics_addr: String,
    /// Its stdout+stderr.
    pub log: PathBuf,
}

impl AgentProcess {
    /// Starts `bin` with `env` (plus listen addresses on free loopback ports, plaintext gRPC
    /// unless `env` says otherwise); logs go to `logs_dir()/<name>.log`.
    pub fn spawn(bin: &Path, name: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let [port, metrics] = free_ports()?;
        let log = logs_dir().join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(bin);
        cmd.env("AGENT_LISTEN_ADDR", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("AGENT_METRICS_PORT", metrics.to_string())
            .env("AGENT_GRPC_TLS_DISABLED", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        Ok(Self {
            child,
            addr: format!("http://127.0.0.1:{port}"),
            metrics_addr: format!("127.0.0.1:{metrics}"),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client, once the agent answers (bounded by `timeout`).
    pub async fn client(&self, timeout: Duration) -> anyhow::Result<AgentServiceClient<Channel>> {
        connect_eventually(&self.addr, None, timeout)
            .await
            .with_context(|| format!("agent did not answer; log tail:\n{}", self.log_tail(30)))
    }

    /// Sends SIGTERM and waits up to `timeout`, then SIGKILL. Returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Some(st);
        }
        // `kill` keeps this crate free of unsafe signal code.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    /// Stops the agent (SIGTERM, 30 s) and panics with its log tail unless it exited 0: the
    /// end of every end-to-end test that stops its agent cleanly.
    pub fn stop_cleanly(&mut self) {
        let code = self
            .terminate(Duration::from_secs(30))
            .and_then(|s| s.code());
        assert_eq!(
            code,
            Some(0),
            "agent exit; log tail:\n{}",
            self.log_tail(20)
        );
    }

    /// Waits up to `timeout` for the agent to exit on its own (e.g. refusing to start);
    /// `None` if it is still running then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The last `lines` lines of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut buf = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
            let _ = f.read_to_string(&mut buf);
        }
        let all: Vec<&str> = buf.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(10));
        if std::thread::panicking() {
            eprintln!(
                "---- agent log tail ({}):\n{}",
                self.log.display(),
                self.log_tail(40)
            );
        }
    }
}

/// The sorted ids `owner`'s ListContainers returns (panics on an RPC error: for tests).
pub async fn listed_ids(c: &mut AgentServiceClient<Channel>, owner: &str) -> Vec<String> {
    let mut ids: Vec<String> = c
        .list_containers(esb_proto::v1::ListContainersRequest {
            owner_id: owner.into(),
        })
        .await
        .map(|r| r.into_inner().containers)
        .unwrap_or_else(|s| panic!("ListContainers: {s:?}"))
        .into_iter()
        .map(|s| s.container_id)
        .collect();
    ids.sort();
    ids
}

/// Invokes `id` with `{}` (10 s) and panics unless the worker answered 200.
pub async fn invoke_ok(c: &mut AgentServiceClient<Channel>, id: &str, owner: &str) {
    let r = c
        .invoke_worker(esb_proto::v1::InvokeWorkerRequest {
            container_id: id.into(),
            path: String::new(),
            payload: b"{}".to_vec(),
            headers: Default::default(),
            timeout_ms: 10_000,
            owner_id: owner.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("InvokeWorker {id}: {s:?}"))
        .into_inner();
    assert_eq!(r.status_code, 200, "InvokeWorker {id}");
}

/// Destroys `id` and panics unless the agent answered `success`.
pub async fn destroy_ok(c: &mut AgentServiceClient<Channel>, id: &str, owner: &str) {
    let ok = c
        .destroy_container(esb_proto::v1::DestroyContainerRequest {
            function_name: String::new(),
            container_id: id.into(),
            owner_id: owner.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("DestroyContainer {id}: {s:?}"))
        .into_inner()
        .success;
    assert!(ok, "DestroyContainer {id}");
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            for p in super::free_ports::<3>().unwrap() {
                assert!(seen.insert(p), "port {p} handed out twice");
            }
        }
    }
}
