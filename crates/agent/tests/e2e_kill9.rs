//! End to end: `kill -9` of the `esb-agent` binary (containerd runtime) with running and paused
//! workers, one worker's task SIGKILLed while no agent runs, then a new agent on the same state
//! dir: it adopts the live workers with their IPs and creation times, cleans up the dead one
//! (IP reservation and netns pin released), and nothing is left behind after destroy + SIGTERM.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use esb_proto::v1::agent_service_client::AgentServiceClient;
use esb_proto::v1::{
    ContainerState, DestroyContainerRequest, EnsureContainerRequest, GetContainerMetricsRequest,
    InvokeWorkerRequest, ListContainersRequest, PauseContainerRequest, ResumeContainerRequest,
    WorkerInfo,
};
use tonic::transport::Channel;

#[path = "support/world.rs"]
mod support;
use support::{Net, World};

const NET: Net = Net {
    namespace: "esbtk9",
    env: "k9",
    bridge: "esbt-k9",
    subnet: "10.199.201.0/24",
    scratch_prefix: "scratch-agent-k9-",
};
const OWNER: &str = "owner-k9";

async fn ensure(c: &mut AgentServiceClient<Channel>, image: &str, function: &str) -> WorkerInfo {
    c.ensure_container(EnsureContainerRequest {
        function_name: function.into(),
        image: image.into(),
        env: Default::default(),
        owner_id: OWNER.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn invoke(
    c: &mut AgentServiceClient<Channel>,
    id: &str,
) -> Result<esb_proto::v1::InvokeWorkerResponse, tonic::Status> {
    c.invoke_worker(InvokeWorkerRequest {
        container_id: id.into(),
        path: String::new(),
        payload: b"{}".to_vec(),
        headers: Default::default(),
        timeout_ms: 10_000,
        owner_id: OWNER.into(),
    })
    .await
    .map(|r| r.into_inner())
}

/// The listed workers, sorted by id.
async fn list(c: &mut AgentServiceClient<Channel>) -> Vec<ContainerState> {
    let mut v = c
        .list_containers(ListContainersRequest {
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    v.sort_by(|a, b| a.container_id.cmp(&b.container_id));
    v
}

async fn destroy(c: &mut AgentServiceClient<Channel>, id: &str) -> bool {
    c.destroy_container(DestroyContainerRequest {
        function_name: String::new(),
        container_id: id.into(),
        owner_id: OWNER.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .success
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_agent_then_restart_adopts_and_cleans_up() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(&env, NET);
    let image = world.image.clone();

    // 1. Agent A: three workers, w2 paused.
    let mut a = world.spawn("e2e-kill9-a", "keep");
    let mut c = a.client(Duration::from_secs(30)).await.unwrap();
    let w1 = ensure(&mut c, &image, "k9-one").await;
    let w2 = ensure(&mut c, &image, "k9-two").await;
    let w3 = ensure(&mut c, &image, "k9-three").await;
    for w in [&w1, &w2, &w3] {
        assert!(w.ip_address.starts_with("10.199.201."), "{w:?}");
        assert_eq!(invoke(&mut c, &w.id).await.unwrap().status_code, 200);
    }
    let paused = c
        .pause_container(PauseContainerRequest {
            container_id: w2.id.clone(),
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(paused.success);
    let before = list(&mut c).await;
    assert_eq!(before.len(), 3, "{before:?}");
    let created = |states: &[ContainerState], id: &str| {
        states
            .iter()
            .find(|s| s.container_id == id)
            .map(|s| s.created_at)
    };

    // 2. kill -9 the agent; the workers outlive it.
    assert!(
        Command::new("kill")
            .args(["-KILL", &a.pid().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let st = a.terminate(Duration::from_secs(10)).unwrap();
    assert_eq!(st.signal(), Some(9), "{st:?}");
    drop(a);
    assert_eq!(world.ctr(&["tasks", "ls", "-q"]).len(), 3);

    // 3. While no agent runs, w3's task dies.
    world.ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", &w3.id]);
    esb_testkit::eventually("w3's task stopped", Duration::from_secs(10), || async {
        world.task_stopped(&w3.id).then_some(())
    })
    .await;

    // 4. Agent B on the same state dir adopts w1 (running) and w2 (paused).
    let mut b = world.spawn("e2e-kill9-b", "keep");
    let mut c = b.client(Duration::from_secs(30)).await.unwrap();
    let after = list(&mut c).await;
    let got: Vec<(String, String)> = after
        .iter()
        .map(|s| (s.container_id.clone(), s.status.clone()))
        .collect();
    let mut expect = vec![
        (w1.id.clone(), "RUNNING".to_string()),
        (w2.id.clone(), "PAUSED".to_string()),
    ];
    expect.sort();
    assert_eq!(got, expect, "adoption after kill -9: {after:?}");
    for w in [&w1, &w2] {
        assert_eq!(created(&after, &w.id), created(&before, &w.id), "{w:?}");
        assert!(created(&after, &w.id).unwrap() > 0);
    }

    // The dead worker is cleaned up at start-up: its IP and netns pin are released; the
    // adopted ones keep their reservations (List has no IP, so check the IPAM files).
    let ipam = esb_testkit::eventually("w3's IP released", Duration::from_secs(15), || async {
        let ipam = world.ipam();
        let pins = world.pins();
        (!ipam.contains(&w3.ip_address) && !pins.contains(&w3.id)).then_some(ipam)
    })
    .await;
    let mut want_ips = vec![w1.ip_address.clone(), w2.ip_address.clone()];
    want_ips.sort();
    let mut ipam = ipam;
    ipam.sort();
    assert_eq!(ipam, want_ips);
    for w in [&w1, &w2] {
        let owner = world.reservation(&w.ip_address).unwrap();
        assert!(owner.contains(&w.id), "{} holds {owner:?}", w.ip_address);
        assert!(world.pins().contains(&w.id), "netns pin of {}", w.id);
    }
    assert!(
        !world.ctr(&["containers", "ls", "-q"]).contains(&w3.id),
        "w3's container is removed"
    );

    // 5. The adopted workers work: w1 answers, w2 refuses until resumed.
    assert_eq!(invoke(&mut c, &w1.id).await.unwrap().status_code, 200);
    let err = invoke(&mut c, &w2.id).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "paused: {err:?}");
    let resumed = c
        .resume_container(ResumeContainerRequest {
            container_id: w2.id.clone(),
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resumed.success);
    assert_eq!(invoke(&mut c, &w2.id).await.unwrap().status_code, 200);

    // 6. w3 is gone for the API too.
    let err = c
        .get_container_metrics(GetContainerMetricsRequest {
            container_id: w3.id.clone(),
            owner_id: OWNER.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(destroy(&mut c, &w3.id).await);

    // 7. Destroy the rest, stop B cleanly, nothing left.
    assert!(destroy(&mut c, &w1.id).await);
    assert!(destroy(&mut c, &w2.id).await);
    assert!(list(&mut c).await.is_empty());
    assert_eq!(
        b.terminate(Duration::from_secs(30)).and_then(|s| s.code()),
        Some(0),
        "{}",
        b.log_tail(20)
    );
    let left = world.leftovers();
    assert!(left.is_empty(), "leftovers: {left:?}");
}
