//! Standby workers (issue 9 §3) end to end on both backends: the `esb-agent` binary with
//! `AGENT_STANDBY_PER_SPEC=1` against the private dev daemons. After an Ensure a standby is
//! created and listening but invisible to List; the next Ensure of the spec claims it (its
//! first invoke answers at once; the claim latency is printed) and the pool refills; an agent
//! restart destroys the standbys before serving (only the gateway's workers stay); a spec not
//! ensured for the TTL loses its standby; the destroy policy leaves nothing; 16 parallel
//! Ensures never put more than `AGENT_STANDBY_MAX` standbys on the node.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use esb_proto::v1::agent_service_client::AgentServiceClient;
use esb_proto::v1::{EnsureContainerRequest, GetCapabilitiesRequest, WorkerInfo};
use esb_testkit::agent::AgentProcess;
use tonic::transport::Channel;

#[path = "support/world.rs"]
mod support;
use support::{Net, World};

const NET: Net = Net {
    namespace: "esbtsb",
    env: "sb",
    bridge: "esbt-sb",
    subnet: "10.199.212.0/24",
    scratch_prefix: "scratch-agent-sb-",
};
const DOCKER_BRAND: &str = "esbtdksb";
const OWNER: &str = "owner-sb";
const STANDBY: [(&str, &str); 2] = [("AGENT_STANDBY_PER_SPEC", "1"), ("AGENT_GC_INTERVAL", "1s")];
/// Only the agent of the expiry step has a short TTL: under load, the other steps can take
/// longer than that between an Ensure and their checks, and a standby expiring meanwhile is
/// not what they test.
const SHORT_TTL: (&str, &str) = ("AGENT_STANDBY_TTL", "5s");

type Client = AgentServiceClient<Channel>;

/// The runtime's own view of this test's workers (ids), and how to start the agent.
trait Backend {
    fn worker_ids(&self) -> Vec<String>;
    fn spawn(&self, name: &str, policy: &str, extra: &[(&str, &str)]) -> AgentProcess;
    fn standby_file(&self) -> String;
}

struct Containerd<'a>(&'a World);

impl Backend for Containerd<'_> {
    fn worker_ids(&self) -> Vec<String> {
        self.0.ctr(&["containers", "ls", "-q"])
    }
    fn spawn(&self, name: &str, policy: &str, extra: &[(&str, &str)]) -> AgentProcess {
        let mut env = STANDBY.to_vec();
        env.extend_from_slice(extra);
        self.0.spawn_with(name, policy, &env)
    }
    fn standby_file(&self) -> String {
        std::fs::read_to_string(format!("{}/standby.json", self.0.path("state")))
            .unwrap_or_default()
    }
}

struct Docker {
    host: String,
    network: String,
    registry: String,
    state: tempfile::TempDir,
}

impl Backend for Docker {
    fn worker_ids(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args(["-H", &self.host, "ps", "-aq", "--no-trunc", "--filter"])
            .arg(format!("label=created_by={DOCKER_BRAND}-agent"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }
    fn standby_file(&self) -> String {
        std::fs::read_to_string(self.state.path().join("standby.json")).unwrap_or_default()
    }
    fn spawn(&self, name: &str, policy: &str, extra: &[(&str, &str)]) -> AgentProcess {
        let state = self.state.path().to_str().unwrap();
        let mut env = vec![
            ("AGENT_RUNTIME", "docker"),
            ("CONTAINER_REGISTRY", self.registry.as_str()),
            ("ENV", "sb"),
            ("ESB_BRAND_SLUG", DOCKER_BRAND),
            ("CONTAINERS_NETWORK", self.network.as_str()),
            ("DOCKER_HOST", self.host.as_str()),
            ("AGENT_STATE_DIR", state),
            ("AGENT_SHUTDOWN_POLICY", policy),
        ];
        env.extend_from_slice(&STANDBY);
        env.extend_from_slice(extra);
        AgentProcess::spawn(
            std::path::Path::new(env!("CARGO_BIN_EXE_esb-agent")),
            name,
            &env,
        )
        .unwrap()
    }
}

async fn ensure(c: &mut Client, image: &str) -> WorkerInfo {
    ensure_fn(c, image, "standby-fn").await
}

async fn ensure_fn(c: &mut Client, image: &str, function: &str) -> WorkerInfo {
    c.ensure_container(EnsureContainerRequest {
        function_name: function.into(),
        image: image.into(),
        env: HashMap::from([("AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(), "128".into())]),
        owner_id: OWNER.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn listed(c: &mut Client) -> Vec<String> {
    esb_testkit::agent::listed_ids(c, OWNER).await
}

async fn wait_standbys(c: &Client, n: u32) {
    let c = c.clone();
    esb_testkit::eventually("standbys ready", Duration::from_secs(30), || {
        let mut c = c.clone();
        async move {
            let caps = c
                .get_capabilities(GetCapabilitiesRequest {})
                .await
                .ok()?
                .into_inner();
            (caps.standby_ready == n).then_some(())
        }
    })
    .await;
}

async fn invoke_ok(c: &mut Client, id: &str) {
    esb_testkit::agent::invoke_ok(c, id, OWNER).await;
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

async fn scenario(b: &dyn Backend, image: &str, label: &str) {
    let mut agent = b.spawn(&format!("e2e-standby-{label}"), "keep", &[]);
    let mut c = agent.client(Duration::from_secs(30)).await.unwrap();

    // 1. An Ensure leaves one standby behind it, invisible to List.
    let first = ensure(&mut c, image).await;
    wait_standbys(&c, 1).await;
    let all = b.worker_ids();
    assert_eq!(all.len(), 2, "the worker and its standby: {all:?}");
    assert_eq!(listed(&mut c).await, vec![first.id.clone()]);
    let standby: Vec<String> = all.into_iter().filter(|id| *id != first.id).collect();

    // 2. The next Ensure claims it; its first invoke answers at once; the pool refills.
    let t = Instant::now();
    let second = ensure(&mut c, image).await;
    let claim = t.elapsed();
    assert_eq!(vec![second.id.clone()], standby, "claimed, not created");
    let t = Instant::now();
    invoke_ok(&mut c, &second.id).await;
    println!(
        "{label}: standby claim Ensure {claim:?}, first invoke {:?}",
        t.elapsed()
    );
    assert_eq!(
        listed(&mut c).await,
        sorted(vec![first.id.clone(), second.id.clone()])
    );
    wait_standbys(&c, 1).await;
    assert_eq!(b.worker_ids().len(), 3);

    // 3. A restart (keep policy) destroys the standby before serving.
    agent.stop_cleanly();
    assert_eq!(
        b.worker_ids().len(),
        3,
        "keep: every worker survives the stop"
    );
    assert_eq!(
        b.standby_file(),
        format!(
            "[{:?}]",
            b.worker_ids()
                .into_iter()
                .find(|id| !standby.contains(id) && *id != first.id)
                .unwrap()
        ),
        "the file lists the ready standby"
    );
    let mut agent = b.spawn(&format!("e2e-standby-{label}-2"), "destroy", &[SHORT_TTL]);
    let mut c = agent.client(Duration::from_secs(30)).await.unwrap();
    let kept = sorted(vec![first.id.clone(), second.id.clone()]);
    // The first answer comes once the agent serves (the TCP connect does not wait for that).
    assert_eq!(listed(&mut c).await, kept);
    assert_eq!(
        sorted(b.worker_ids()),
        kept,
        "the standby was removed before serving"
    );

    // 4. A spec not ensured for the TTL (5 s) loses its standby.
    let third = ensure(&mut c, image).await;
    wait_standbys(&c, 1).await;
    assert_eq!(b.worker_ids().len(), 4);
    esb_testkit::eventually("the standby expired", Duration::from_secs(20), || {
        std::future::ready((b.worker_ids().len() == 3).then_some(()))
    })
    .await;
    assert!(b.worker_ids().contains(&third.id));

    // 5. The destroy policy leaves nothing.
    assert!(agent.terminate(Duration::from_secs(30)).is_some());
    esb_testkit::eventually("no worker left", Duration::from_secs(20), || {
        std::future::ready(b.worker_ids().is_empty().then_some(()))
    })
    .await;

    // 6. 16 parallel Ensures over 8 specs: the pool never holds more than AGENT_STANDBY_MAX.
    let mut agent = b.spawn(
        &format!("e2e-standby-{label}-3"),
        "destroy",
        &[("AGENT_STANDBY_MAX", "3")],
    );
    let c = agent.client(Duration::from_secs(30)).await.unwrap();
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let (mut c, image) = (c.clone(), image.to_string());
            tokio::spawn(async move { ensure_fn(&mut c, &image, &format!("cap-{}", i % 8)).await })
        })
        .collect();
    let mut most = 0;
    while calls.iter().any(|t| !t.is_finished()) {
        most = most.max(standby_count(&c).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in calls {
        t.await.unwrap();
    }
    wait_standbys(&c, 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(standby_count(&c).await, 3);
    assert!(most <= 3, "{most} standbys at once");
    let mut lc = c.clone();
    assert_eq!(listed(&mut lc).await.len(), 16);
    assert_eq!(
        b.worker_ids().len(),
        16 + 3,
        "16 workers and 3 standbys, no more"
    );
    assert!(agent.terminate(Duration::from_secs(30)).is_some());
    esb_testkit::eventually("no worker left", Duration::from_secs(30), || {
        std::future::ready(b.worker_ids().is_empty().then_some(()))
    })
    .await;
}

async fn standby_count(c: &Client) -> u32 {
    c.clone()
        .get_capabilities(GetCapabilitiesRequest {})
        .await
        .map(|r| r.into_inner().standby_ready)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_standby_claim_refill_restart_ttl() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(&env, NET);
    scenario(&Containerd(&world), &world.image.clone(), "containerd").await;
    let left = world.leftovers();
    assert!(left.is_empty(), "leftovers: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_standby_claim_refill_restart_ttl() {
    let Some(env) = esb_testkit::docker() else {
        return;
    };
    let b = Docker {
        host: env.docker_host.clone().unwrap(),
        network: env.docker_network.clone().unwrap(),
        registry: env.registry.clone().unwrap(),
        state: tempfile::tempdir().unwrap(),
    };
    for id in b.worker_ids() {
        let _ = Command::new("docker")
            .args(["-H", &b.host, "rm", "-f", &id])
            .output();
    }
    scenario(&b, &env.worker_image.clone().unwrap(), "docker").await;
}
