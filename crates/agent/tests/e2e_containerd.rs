//! End to end: the built `esb-agent` binary with `AGENT_RUNTIME=containerd` against the private
//! dev containerd, driven by a tonic client. Ensure → Invoke → List → Metrics → Destroy; a
//! restart that adopts a kept worker; a second signal that exits at once; the destroy
//! shutdown policy; and nothing left behind.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::process::Command;
use std::time::{Duration, Instant};

use esb_proto::v1::agent_service_client::AgentServiceClient;
use esb_proto::v1::{
    DestroyContainerRequest, EnsureContainerRequest, GetContainerMetricsRequest,
    InvokeWorkerRequest, ListContainersRequest,
};
use esb_testkit::agent::AgentProcess;
use tonic::transport::Channel;

#[path = "support/world.rs"]
mod support;
use support::{Net, World};

const NET: Net = Net {
    namespace: "esbte2e",
    env: "e2e",
    bridge: "esbt-e2e",
    subnet: "10.199.200.0/24",
    scratch_prefix: "scratch-agent-e2e-",
};
const OWNER: &str = "owner-e2e";

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
    let world = World::new(&env, NET);
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
        identity.contains(&format!("CNI_BRIDGE='{}'", NET.bridge)),
        "{identity}"
    );
}
