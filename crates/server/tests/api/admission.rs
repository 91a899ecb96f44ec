//! Capacity admission (review H3/M4, issue 9 §5): node and owner worker caps, the memory budget
//! and bounds, and the concurrency bound that makes a burst queue. Over FakeRuntime: the point
//! is what reaches the runtime (nothing, once a cap says no).

use std::sync::Arc;
use std::time::{Duration, Instant};

use esb_proto::v1;
use esb_runtime::fake::{FakeRuntime, Op};
use esb_server::AdmissionSettings;
use tonic::Code;

use super::harness::{Agent, OWNER};
use super::service::ensure_req;

const MIB: u64 = 1024 * 1024;

async fn agent(a: AdmissionSettings) -> Agent {
    Agent::start_with(Arc::new(FakeRuntime::new()), |s| s.admission = a).await
}

fn with_memory(owner: &str, mib: &str) -> v1::EnsureContainerRequest {
    let mut r = ensure_req("fn-a", owner, "img:1");
    r.env
        .insert("AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(), mib.into());
    r
}

async fn ensure(agent: &Agent, req: v1::EnsureContainerRequest) -> Result<String, tonic::Status> {
    let mut c = agent.client().await;
    c.ensure_container(req).await.map(|r| r.into_inner().id)
}

async fn destroy(agent: &Agent, id: &str, owner: &str) {
    let mut c = agent.client().await;
    c.destroy_container(v1::DestroyContainerRequest {
        container_id: id.into(),
        owner_id: owner.into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn caps(agent: &Agent) -> v1::Capabilities {
    let mut c = agent.client().await;
    c.get_capabilities(v1::GetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn the_node_cap_answers_resource_exhausted_before_the_runtime() {
    let agent = agent(AdmissionSettings {
        max_workers: 3,
        ..Default::default()
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            ensure(&agent, ensure_req("fn-a", OWNER, "img:1"))
                .await
                .unwrap(),
        );
    }
    let c = caps(&agent).await;
    assert_eq!((c.max_workers, c.workers_used), (3, 3));
    assert_eq!(c.memory_reserved_bytes, 3 * 512 * MIB);
    assert_eq!(c.memory_budget_bytes, 0, "unlimited is reported as 0");

    let err = ensure(&agent, ensure_req("fn-b", "other-owner", "img:1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("AGENT_MAX_WORKERS"), "{err:?}");
    assert_eq!(agent.rt.count(Op::Ensure), 3, "nothing reached the runtime");
    assert_eq!(agent.rt.workers().len(), 3, "nothing created");

    // A destroyed worker frees its place at once.
    destroy(&agent, &ids[0], OWNER).await;
    ensure(&agent, ensure_req("fn-b", "other-owner", "img:1"))
        .await
        .unwrap();
    assert_eq!(caps(&agent).await.workers_used, 3);
}

#[tokio::test]
async fn one_owner_cannot_take_the_node() {
    let agent = agent(AdmissionSettings {
        max_workers_per_owner: 2,
        ..Default::default()
    })
    .await;
    for _ in 0..2 {
        ensure(&agent, ensure_req("fn-a", "greedy", "img:1"))
            .await
            .unwrap();
    }
    let err = ensure(&agent, ensure_req("fn-a", "greedy", "img:1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("AGENT_MAX_WORKERS_PER_OWNER"),
        "{err:?}"
    );
    // Another owner is still served.
    ensure(&agent, ensure_req("fn-a", "modest", "img:1"))
        .await
        .unwrap();
    assert_eq!(agent.rt.count(Op::Ensure), 3);
    assert_eq!(caps(&agent).await.max_workers_per_owner, 2);
}

#[tokio::test]
async fn memory_is_bounded_per_request_and_by_the_budget() {
    let agent = agent(AdmissionSettings {
        memory_budget_bytes: 1024 * MIB,
        memory_max_bytes: 2048 * MIB,
        ..Default::default()
    })
    .await;
    // Outside [128, max]: INVALID_ARGUMENT, the runtime never sees it (review H3).
    for bad in ["64", "127", "2049", "99999999999999"] {
        let err = ensure(&agent, with_memory(OWNER, bad)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
        assert!(err.message().contains("128..=2048 MiB"), "{err:?}");
    }
    assert_eq!(agent.rt.count(Op::Ensure), 0);

    // 512 (the default, asked by a non-number) + 384 fit; another 256 would not.
    ensure(&agent, with_memory(OWNER, "many")).await.unwrap();
    ensure(&agent, with_memory(OWNER, "384")).await.unwrap();
    let err = ensure(&agent, with_memory(OWNER, "256")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("AGENT_MEMORY_BUDGET"), "{err:?}");
    // The smallest still fits.
    ensure(&agent, with_memory(OWNER, "128")).await.unwrap();
    let c = caps(&agent).await;
    assert_eq!(c.memory_reserved_bytes, 1024 * MIB);
    assert_eq!(c.memory_budget_bytes, 1024 * MIB);
    assert_eq!(c.worker_memory_max_bytes, 2048 * MIB);
    assert_eq!(agent.rt.count(Op::Ensure), 3);
}

#[tokio::test]
async fn a_burst_waits_in_line_and_every_ensure_is_answered() {
    let agent = agent(AdmissionSettings {
        max_concurrent_ensures: 2,
        ..Default::default()
    })
    .await;
    agent.rt.set_ensure_delay(Duration::from_millis(300));
    assert_eq!(caps(&agent).await.max_concurrent_ensures, 2);
    let started = Instant::now();
    let mut calls = Vec::new();
    for i in 0..6 {
        let mut c = agent.client().await;
        calls.push(tokio::spawn(async move {
            c.ensure_container(ensure_req(&format!("fn-{i}"), OWNER, "img:1"))
                .await
        }));
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
    // Two at a time: three waves of 300 ms.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(880), "{took:?}");
    assert_eq!(agent.rt.count(Op::Ensure), 6);
}

/// The client's own timer (tonic: CANCELLED "Timeout expired") or the server's deadline.
fn gave_up(s: &tonic::Status) -> bool {
    matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled)
}

#[tokio::test]
async fn a_caller_that_leaves_keeps_its_place_until_the_runtime_is_done() {
    let agent = agent(AdmissionSettings {
        max_concurrent_ensures: 1,
        ..Default::default()
    })
    .await;
    agent.rt.set_ensure_delay(Duration::from_millis(600));
    let started = Instant::now();
    // Gets the one place, then gives up after 100 ms; its Ensure still finishes.
    let mut c = agent.client().await;
    let mut impatient = tonic::Request::new(ensure_req("fn-a", OWNER, "img:1"));
    impatient.set_timeout(Duration::from_millis(100));
    let err = c.ensure_container(impatient).await.unwrap_err();
    assert!(gave_up(&err), "{err:?}");

    // In line behind it: waits for the runtime's work, not for the caller that left.
    let mut queued = tonic::Request::new(ensure_req("fn-b", OWNER, "img:1"));
    queued.set_timeout(Duration::from_millis(200));
    let err = c.ensure_container(queued).await.unwrap_err();
    assert!(gave_up(&err), "{err:?}");
    assert_eq!(agent.rt.count(Op::Ensure), 1, "the queued one never ran");

    ensure(&agent, ensure_req("fn-c", OWNER, "img:1"))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1150));
    // Both Ensures that ran are known workers (the gateway's janitor finds the first in List).
    let listed = c
        .list_containers(v1::ListContainersRequest {
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(caps(&agent).await.workers_used, 2);
}
