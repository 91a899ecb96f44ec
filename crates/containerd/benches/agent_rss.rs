//! RSS of the real `esb-agent` binary (containerd backend) idle and with 100 workers, against
//! the private dev containerd: `cargo build --release -p esb-agent && cargo bench -p
//! esb-containerd --bench agent_rss`. Skipped without the dev env or the binary (looked up at
//! `$ESB_AGENT_BIN`, else `esb-agent` next to the bench's `deps/` directory). Workers are
//! created and destroyed over gRPC, 8 at a time; the agent runs on loopback plaintext with a
//! private state dir, CNI dirs, bridge `esbt-pf0` and subnet 10.199.210.0/24 (ipMasq off).
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use esb_proto::v1::{DestroyContainerRequest, EnsureContainerRequest, ListContainersRequest};
use esb_testkit::agent::AgentProcess;
use esb_testkit::ctr::Ctr;

const NAMESPACE: &str = "esbtperf";
const BRIDGE: &str = "esbt-pf0";
const SUBNET: &str = "10.199.210.0/24";
const OWNER: &str = "owner-perf";
const WORKERS: usize = 100;

/// `VmRSS` and `Threads` of a process, KiB / count.
fn rss(pid: u32) -> (u64, u64) {
    let [rss, threads] =
        esb_testkit::procs::status(pid, ["VmRSS:", "Threads:"]).unwrap_or_default();
    (rss, threads)
}

fn agent_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ESB_AGENT_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("esb-agent");
    p.exists().then_some(p)
}

fn ctr(socket: &str, args: &[&str]) -> Vec<String> {
    Ctr {
        socket: Path::new(socket),
        namespace: NAMESPACE,
    }
    .lines(args)
}

/// Removes whatever an earlier, interrupted run left in our namespace and the bridge.
fn cleanup(socket: &str) {
    for t in ctr(socket, &["tasks", "ls", "-q"]) {
        ctr(socket, &["tasks", "kill", "-s", "SIGKILL", &t]);
        for _ in 0..50 {
            ctr(socket, &["tasks", "rm", &t]);
            if !ctr(socket, &["tasks", "ls", "-q"]).contains(&t) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for c in ctr(socket, &["containers", "ls", "-q"]) {
        ctr(socket, &["containers", "rm", &c]);
    }
    let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
}

/// Leaves nothing of the namespace: leases, the image, its snapshots and content.
fn remove_namespace(socket: &str) {
    for l in ctr(socket, &["leases", "ls", "-q"]) {
        ctr(socket, &["leases", "rm", &l]);
    }
    Ctr {
        socket: Path::new(socket),
        namespace: NAMESPACE,
    }
    .purge_images_and_namespace();
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let Some(bin) = agent_bin() else {
        println!("agent_rss: no esb-agent binary (build it with --release or set ESB_AGENT_BIN)");
        return;
    };
    let socket = env.containerd_socket.clone().unwrap();
    let image = env.worker_image.clone().unwrap();
    let registry = env.registry.clone().unwrap();
    let dir = esb_testkit::agent::scratch_dir("scratch-perf-rss-").unwrap();
    let path = |p: &str| dir.path().join(p).to_str().unwrap().to_string();
    cleanup(&socket);
    let (state, conf, net, idf) = (
        path("state"),
        path("net.d"),
        path("networks"),
        path("esb-cni.env"),
    );
    let vars = [
        ("AGENT_RUNTIME", "containerd"),
        ("ENV", "perf"),
        ("ESB_BRAND_SLUG", NAMESPACE),
        ("CONTAINERD_SOCKET", socket.as_str()),
        ("CONTAINER_REGISTRY", registry.as_str()),
        ("CONTAINER_REGISTRY_INSECURE", "1"),
        ("AGENT_STATE_DIR", state.as_str()),
        ("CNI_CONF_DIR", conf.as_str()),
        ("CNI_NET_DIR", net.as_str()),
        ("CNI_IDENTITY_FILE", idf.as_str()),
        ("CNI_BIN_DIR", env.cni_bin_dir.as_str()),
        ("CNI_SUBNET", SUBNET),
        ("CNI_BRIDGE", BRIDGE),
        ("CNI_IP_MASQ", "false"),
        ("AGENT_SHUTDOWN_POLICY", "destroy"),
        ("AGENT_LOG_LEVEL", "warn"),
    ];
    let mut agent = AgentProcess::spawn(Path::new(&bin), "perf-agent-rss", &vars).unwrap();
    let pid = agent.pid();
    let mut client = agent.client(Duration::from_secs(30)).await.unwrap();
    // Idle = serving, image present (one worker created and destroyed), nothing running.
    let warm = client
        .ensure_container(EnsureContainerRequest {
            function_name: "rss-warm".into(),
            image: image.clone(),
            env: Default::default(),
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    client
        .destroy_container(DestroyContainerRequest {
            container_id: warm.id,
            owner_id: OWNER.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle, idle_threads) = rss(pid);

    let t = Instant::now();
    let mut ids = Vec::new();
    while ids.len() < WORKERS {
        let batch = (ids.len()..(ids.len() + 8).min(WORKERS)).map(|i| {
            let mut c = client.clone();
            let image = image.clone();
            async move {
                c.ensure_container(EnsureContainerRequest {
                    function_name: format!("rss-{i}"),
                    image,
                    env: Default::default(),
                    owner_id: OWNER.into(),
                })
                .await
                .map(|r| r.into_inner().id)
            }
        });
        for r in futures::future::join_all(batch).await {
            ids.push(r.expect("ensure"));
        }
    }
    let ensure_all = t.elapsed();
    let listed = client
        .list_containers(ListContainersRequest {
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let (busy, busy_threads) = rss(pid);
    let t = Instant::now();
    for chunk in ids.chunks(8) {
        let batch = chunk.iter().map(|id| {
            let mut c = client.clone();
            let id = id.clone();
            async move {
                c.destroy_container(DestroyContainerRequest {
                    container_id: id,
                    owner_id: OWNER.into(),
                    ..Default::default()
                })
                .await
            }
        });
        for r in futures::future::join_all(batch).await {
            r.expect("destroy");
        }
    }
    let destroy_all = t.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (after, after_threads) = rss(pid);
    agent.terminate(Duration::from_secs(30));

    println!("| agent (esb-agent, containerd backend) | VmRSS MiB | threads |");
    println!("|---|---|---|");
    println!(
        "| idle (serving, image present) | {:.1} | {idle_threads} |",
        idle as f64 / 1024.0
    );
    println!(
        "| {WORKERS} workers ({} listed) | {:.1} | {busy_threads} |",
        listed.containers.len(),
        busy as f64 / 1024.0
    );
    println!(
        "| after destroying them | {:.1} | {after_threads} |",
        after as f64 / 1024.0
    );
    println!(
        "{WORKERS} ensures (8 at a time) {:.0} ms, {WORKERS} destroys {:.0} ms",
        ensure_all.as_secs_f64() * 1000.0,
        destroy_all.as_secs_f64() * 1000.0
    );
    let left = ctr(&socket, &["containers", "ls", "-q"]);
    cleanup(&socket);
    remove_namespace(&socket);
    assert!(left.is_empty(), "leftover containers: {left:?}");
}
