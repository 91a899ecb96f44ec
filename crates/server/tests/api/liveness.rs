//! InvokeWorker against a worker that refuses connections: a bounded runtime `inspect` tells a
//! cold start (keep waiting) from a worker stopped, paused or removed outside the agent (fail
//! at once: UNAVAILABLE, retryable on another worker; NOT_FOUND when removed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use esb_proto::v1;
use esb_runtime::fake::{FakeRuntime, Op};
use esb_runtime::{Runtime, WorkerStatus};
use tonic::Code;

use super::harness::{Agent, OWNER};
use super::service::ensure;

/// A loopback port nobody listens on (connections are refused).
pub fn refusing_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub async fn setup(f: impl FnOnce(&mut esb_server::ServerSettings)) -> (Agent, String) {
    let rt = Arc::new(FakeRuntime::new());
    rt.set_worker_port(refusing_port());
    let agent = Agent::start_with(rt, f).await;
    let id = ensure(&agent, OWNER).await.id;
    (agent, id)
}

pub fn req(id: &str, timeout_ms: i32) -> v1::InvokeWorkerRequest {
    v1::InvokeWorkerRequest {
        container_id: id.into(),
        owner_id: OWNER.into(),
        payload: b"{}".to_vec(),
        timeout_ms,
        ..Default::default()
    }
}

pub async fn invoke_err(agent: &Agent, id: &str, timeout_ms: i32) -> (tonic::Status, Duration) {
    let mut c = agent.client().await;
    let started = Instant::now();
    let s = c.invoke_worker(req(id, timeout_ms)).await.unwrap_err();
    (s, started.elapsed())
}

#[tokio::test]
async fn a_worker_stopped_outside_the_agent_fails_well_before_the_deadline() {
    let (agent, id) = setup(|_| {}).await;
    agent.rt.set_status(&id, WorkerStatus::Stopped);
    let (s, took) = invoke_err(&agent, &id, 10_000).await;
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(
        s.message().contains("exited with code 0"),
        "{}",
        s.message()
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(agent.rt.count(Op::Inspect), 1);
    // The table learnt it: the next call fails at once, without another inspect.
    let (s, took) = invoke_err(&agent, &id, 10_000).await;
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(took < Duration::from_millis(200), "{took:?}");
    assert_eq!(agent.rt.count(Op::Inspect), 1);
}

#[tokio::test]
async fn a_worker_paused_outside_the_agent_fails_well_before_the_deadline() {
    let (agent, id) = setup(|_| {}).await;
    agent.rt.set_status(&id, WorkerStatus::Paused);
    let (s, took) = invoke_err(&agent, &id, 10_000).await;
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().contains("worker is paused"), "{}", s.message());
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn a_worker_removed_outside_the_agent_is_not_found() {
    let (agent, id) = setup(|_| {}).await;
    assert!(agent.rt.destroy(&id).await.unwrap());
    let (s, took) = invoke_err(&agent, &id, 10_000).await;
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn a_running_worker_that_never_listens_waits_for_the_deadline_with_bounded_inspects() {
    let (agent, id) = setup(|_| {}).await;
    let (s, took) = invoke_err(&agent, &id, 3_000).await;
    assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
    assert!(took >= Duration::from_millis(2900), "{took:?}");
    // Refusals at ~0, 0.1, 0.3, 0.7, 1.5, 2.5 s; inspects from 0.3 s, at most once a second.
    let inspects = agent.rt.count(Op::Inspect);
    assert!((1..=3).contains(&inspects), "{inspects} inspects");
}
