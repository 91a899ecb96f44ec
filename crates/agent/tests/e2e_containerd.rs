//! End to end: the built `esb-agent` binary with `AGENT_RUNTIME=containerd` against the private
//! dev containerd, driven by a tonic client. Ensure → Invoke → List → Metrics → Destroy; a
//! restart that adopts a kept worker; a second signal that exits at once; the destroy
//! shutdown policy; and nothing left behind.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use esb_proto::v1::agent_service_client::AgentServiceClient;
use esb_proto::v1::{
    DestroyContainerRequest, EnsureContainerRequest, GetContainerMetricsRequest,
    InvokeWorkerRequest, ListContainersRequest,
};
use esb_testkit::agent::AgentProcess;
use esb_testkit::ctr::Ctr;
use tonic::transport::Channel;

const NAMESPACE: &str = "esbte2e";
const BRIDGE: &str = "esbt-e2e";
const SUBNET: &str = "10.199.200.0/24";
const OWNER: &str = "owner-e2e";

/// One test world: private dirs, and a cleanup (at start and on drop) of everything the
/// agent may have created: containerd objects of our namespace, netns pins, the bridge.
struct World {
    dir: tempfile::TempDir,
    socket: String,
    image: String,
    registry: String,
}

impl World {
    fn new(env: &esb_testkit::DevEnv) -> Self {
        let dir = esb_testkit::agent::scratch_dir("scratch-agent-e2e-").unwrap();
        let w = Self {
            dir,
            socket: env.containerd_socket.clone().unwrap(),
            image: env.worker_image.clone().unwrap(),
            registry: env.registry.clone().unwrap(),
        };
        w.cleanup();
        w
    }

    fn path(&self, p: &str) -> String {
        self.dir.path().join(p).to_str().unwrap().to_string()
    }

    fn spawn(&self, name: &str, policy: &str) -> AgentProcess {
        let (state, conf, net, idf) = (
            self.path("state"),
            self.path("net.d"),
            self.path("networks"),
            self.path("esb-cni.env"),
        );
        let env = [
            ("AGENT_RUNTIME", "containerd"),
            ("ENV", "e2e"),
            ("ESB_BRAND_SLUG", NAMESPACE),
            ("CONTAINERD_SOCKET", self.socket.as_str()),
            ("CONTAINER_REGISTRY", self.registry.as_str()),
            ("CONTAINER_REGISTRY_INSECURE", "1"),
            ("AGENT_STATE_DIR", state.as_str()),
            ("CNI_CONF_DIR", conf.as_str()),
            ("CNI_NET_DIR", net.as_str()),
            ("CNI_IDENTITY_FILE", idf.as_str()),
            ("CNI_BIN_DIR", "/usr/lib/cni"),
            ("CNI_SUBNET", SUBNET),
            ("CNI_BRIDGE", BRIDGE),
            ("CNI_IP_MASQ", "false"),
            ("AGENT_SHUTDOWN_POLICY", policy),
            ("AGENT_DRAIN_TIMEOUT", "20s"),
            ("AGENT_LOG_LEVEL", "info"),
        ];
        AgentProcess::spawn(Path::new(env!("CARGO_BIN_EXE_esb-agent")), name, &env).unwrap()
    }

    fn ctr(&self, args: &[&str]) -> Vec<String> {
        Ctr {
            socket: Path::new(&self.socket),
            namespace: NAMESPACE,
        }
        .lines(args)
    }

    fn entries(&self, p: &str) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join(p))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Worker resources still present (empty = clean).
    fn leftovers(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .ctr(&["tasks", "ls", "-q"])
            .into_iter()
            .map(|t| format!("task {t}"))
            .collect();
        out.extend(
            self.ctr(&["containers", "ls", "-q"])
                .into_iter()
                .map(|c| format!("container {c}")),
        );
        out.extend(
            self.entries(&format!("networks/{NAMESPACE}-net"))
                .into_iter()
                .filter(|f| f.parse::<std::net::IpAddr>().is_ok())
                .map(|f| format!("ipam {f}")),
        );
        out.extend(
            self.entries("state/cni/netns")
                .into_iter()
                .map(|p| format!("netns pin {p}")),
        );
        out.extend(
            self.entries("state/logs")
                .into_iter()
                .map(|p| format!("log {p}")),
        );
        let veths = Command::new("ip")
            .args(["-o", "link", "show", "master", BRIDGE])
            .output()
            .unwrap();
        out.extend(
            String::from_utf8_lossy(&veths.stdout)
                .lines()
                .map(|l| format!("veth {l}")),
        );
        out
    }

    fn mounts_under_dir(&self) -> Vec<String> {
        let root = self.dir.path().to_str().unwrap().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| m.starts_with(&root))
            .map(str::to_string)
            .collect()
    }

    fn cleanup(&self) {
        for t in self.ctr(&["tasks", "ls", "-q"]) {
            self.ctr(&["tasks", "resume", &t]);
            self.ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", &t]);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ctr(&["tasks", "ls", "-q"]).is_empty() && Instant::now() < deadline {
            for t in self.ctr(&["tasks", "ls", "-q"]) {
                self.ctr(&["tasks", "rm", "-f", &t]);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for c in self.ctr(&["containers", "ls", "-q"]) {
            self.ctr(&["containers", "rm", &c]);
        }
        for l in self.ctr(&["leases", "ls", "-q"]) {
            self.ctr(&["leases", "rm", &l]);
        }
        Ctr {
            socket: Path::new(&self.socket),
            namespace: NAMESPACE,
        }
        .purge_images_and_namespace();
        for m in self.mounts_under_dir().into_iter().rev() {
            let _ = Command::new("umount").arg(&m).output();
        }
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
        // The agent keeps its firewall rule across stops (workers may outlive it): drop ours.
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "iptables -w -S INPUT | grep -F -- '-i {BRIDGE} ' | grep -F 'esb-agent ' \
                 | sed 's/^-A /-D /' | while read -r r; do eval \"iptables -w $r\"; done"
                ),
            ])
            .output();
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.cleanup();
    }
}

async fn ensure(
    c: &mut AgentServiceClient<Channel>,
    image: &str,
    function: &str,
) -> esb_proto::v1::WorkerInfo {
    c.ensure_container(EnsureContainerRequest {
        function_name: function.into(),
        image: image.into(),
        env: [("GREETING".to_string(), "hello-e2e".to_string())].into(),
        owner_id: OWNER.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn invoke(
    c: &mut AgentServiceClient<Channel>,
    id: &str,
    payload: &str,
    timeout_ms: i32,
) -> Result<esb_proto::v1::InvokeWorkerResponse, tonic::Status> {
    c.invoke_worker(InvokeWorkerRequest {
        container_id: id.into(),
        path: String::new(),
        payload: payload.as_bytes().to_vec(),
        headers: Default::default(),
        timeout_ms,
        owner_id: OWNER.into(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn list_ids(c: &mut AgentServiceClient<Channel>) -> Vec<String> {
    let r = c
        .list_containers(ListContainersRequest {
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    r.containers.into_iter().map(|s| s.container_id).collect()
}

/// Sends `sig` to the agent with the `kill` command (no unsafe signal code here).
fn signal(agent: &AgentProcess, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &agent.pid().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_binary_end_to_end() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(&env);
    let image = world.image.clone();

    // 1. Full lifecycle through agent A (policy keep).
    let mut a = world.spawn("e2e-containerd-a", "keep");
    let mut c = a.client(Duration::from_secs(30)).await.unwrap();
    let started = Instant::now();
    let w1 = ensure(&mut c, &image, "Hello E2E").await;
    eprintln!("first ensure (incl. pull) {:?}", started.elapsed());
    assert!(w1.name.starts_with("esbte2e-e2e-hello-e2e-"), "{w1:?}");
    assert!(w1.ip_address.starts_with("10.199.200."), "{w1:?}");
    assert_eq!(w1.port, 8080);
    let r = invoke(&mut c, &w1.id, r#"{"echo_env":["GREETING"]}"#, 10_000)
        .await
        .unwrap();
    assert_eq!(r.status_code, 200);
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["env"]["GREETING"], "hello-e2e", "{body}");
    let list = c
        .list_containers(ListContainersRequest {
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let st = list
        .containers
        .iter()
        .find(|s| s.container_id == w1.id)
        .unwrap();
    assert_eq!(st.function_name, "Hello E2E");
    assert_eq!(st.status, "RUNNING");
    assert!(
        st.created_at > 0 && st.last_used_at >= st.created_at,
        "{st:?}"
    );
    let m = c
        .get_container_metrics(GetContainerMetricsRequest {
            container_id: w1.id.clone(),
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .metrics
        .unwrap();
    assert_eq!(m.memory_max, 536_870_912);
    let d = c
        .destroy_container(DestroyContainerRequest {
            function_name: String::new(),
            container_id: w1.id.clone(),
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.success);
    assert!(!list_ids(&mut c).await.contains(&w1.id));
    // A kept worker for the restart.
    let w2 = ensure(&mut c, &image, "kept").await;
    assert_eq!(
        a.terminate(Duration::from_secs(30)).and_then(|s| s.code()),
        Some(0),
        "{}",
        a.log_tail(20)
    );
    assert_eq!(
        world.ctr(&["tasks", "ls", "-q"]).len(),
        1,
        "keep policy must leave the worker running"
    );

    // 2. Agent B adopts it (IP survives), then a second signal cuts a drain short.
    let mut b = world.spawn("e2e-containerd-b", "keep");
    let mut c = b.client(Duration::from_secs(30)).await.unwrap();
    assert_eq!(list_ids(&mut c).await, vec![w2.id.clone()]);
    let r = invoke(&mut c, &w2.id, "{}", 10_000).await.unwrap();
    assert_eq!(r.status_code, 200);
    let mut slow = c.clone();
    let id = w2.id.clone();
    let in_flight =
        tokio::spawn(async move { invoke(&mut slow, &id, r#"{"sleep_ms":15000}"#, 30_000).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&b, "-TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let forced = Instant::now();
    signal(&b, "-INT");
    let status = b.terminate(Duration::from_secs(5));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(130),
        "{}",
        b.log_tail(20)
    );
    assert!(forced.elapsed() < Duration::from_secs(3));
    assert!(
        in_flight.await.unwrap().is_err(),
        "the forced exit drops the in-flight invoke"
    );

    // 3. Agent C with the destroy policy adopts and destroys everything on SIGTERM.
    let mut cc = world.spawn("e2e-containerd-c", "destroy");
    let mut c = cc.client(Duration::from_secs(30)).await.unwrap();
    assert_eq!(list_ids(&mut c).await, vec![w2.id.clone()]);
    assert_eq!(
        cc.terminate(Duration::from_secs(60)).and_then(|s| s.code()),
        Some(0),
        "{}",
        cc.log_tail(20)
    );
    let left = world.leftovers();
    assert!(
        left.is_empty(),
        "leftovers after the destroy policy: {left:?}"
    );
    let mounts = world.mounts_under_dir();
    assert!(
        mounts.is_empty(),
        "mounts left after a clean stop: {mounts:?}"
    );
    let identity = std::fs::read_to_string(world.path("esb-cni.env")).unwrap();
    assert!(
        identity.contains("CNI_SUBNET='10.199.200.0/24'"),
        "{identity}"
    );
    assert!(
        identity.contains(&format!("CNI_BRIDGE='{BRIDGE}'")),
        "{identity}"
    );
}
