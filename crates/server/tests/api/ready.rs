//! Ready-on-return (`AGENT_ENSURE_READY_TIMEOUT`): Ensure and Resume answer once the worker
//! accepts TCP connections, at the timeout when it never does, and with UNAVAILABLE (worker
//! destroyed) when it exits during the wait. FakeRuntime workers point at loopback ports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use esb_runtime::fake::{FakeRuntime, Op};
use esb_runtime::{WorkerEvent, WorkerEventKind, WorkerStatus};
use tonic::Code;

use super::harness::{Agent, OWNER};
use super::liveness::refusing_port;
use super::service::ensure_req;

async fn agent(port: u16, timeout: Duration) -> Agent {
    let rt = Arc::new(FakeRuntime::new());
    rt.set_worker_port(port);
    Agent::start_with(rt, |s| s.ensure_ready_timeout = timeout).await
}

async fn ensure_timed(agent: &Agent) -> (Result<String, tonic::Status>, Duration) {
    let mut c = agent.client().await;
    let started = Instant::now();
    let r = c
        .ensure_container(ensure_req("fn-a", OWNER, "img:1"))
        .await
        .map(|r| r.into_inner().id);
    (r, started.elapsed())
}

async fn metric(agent: &Agent, line: &str) -> bool {
    agent.scrape("/metrics").await.1.contains(line)
}

#[tokio::test]
async fn ensure_returns_once_the_worker_listens() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let agent = agent(port, Duration::from_secs(5)).await;
    // The worker starts listening 400 ms after Ensure began.
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap()
    });
    let (r, took) = ensure_timed(&agent).await;
    r.unwrap();
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let _listener = late.await.unwrap();
    assert!(metric(&agent, "esb_agent_ensure_ready_total{outcome=\"ready\"} 1").await);
    assert!(
        metric(
            &agent,
            "esb_agent_ensure_phase_duration_seconds_count{phase=\"ready\"} 1"
        )
        .await
    );
    // An already listening worker: no measurable wait.
    let (r, took) = ensure_timed(&agent).await;
    r.unwrap();
    assert!(took < Duration::from_millis(200), "{took:?}");
}

#[tokio::test]
async fn a_worker_that_never_listens_is_returned_at_the_timeout() {
    let agent = agent(refusing_port(), Duration::from_millis(300)).await;
    let (r, took) = ensure_timed(&agent).await;
    let id = r.unwrap();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(agent.rt.worker(&id).is_some(), "kept");
    assert!(
        metric(
            &agent,
            "esb_agent_ensure_ready_total{outcome=\"timeout\"} 1"
        )
        .await
    );
}

#[tokio::test]
async fn a_worker_that_exits_during_the_wait_fails_the_ensure_and_is_destroyed() {
    let agent = agent(refusing_port(), Duration::from_secs(5)).await;
    let rt = agent.rt.clone();
    // The worker's process dies shortly after start.
    let killer = tokio::spawn(async move {
        loop {
            if let Some(w) = rt.workers().first() {
                rt.set_status(&w.id, WorkerStatus::Stopped);
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let (r, took) = ensure_timed(&agent).await;
    killer.await.unwrap();
    let s = r.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().contains("exited"), "{}", s.message());
    assert!(s.message().contains("with code 0"), "{}", s.message());
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(agent.rt.workers().is_empty(), "destroyed");
    assert_eq!(agent.rt.count(Op::Destroy), 1);
    assert!(metric(&agent, "esb_agent_ensure_ready_total{outcome=\"exited\"} 1").await);
}

#[tokio::test]
async fn zero_timeout_keeps_the_old_behaviour() {
    let agent = agent(refusing_port(), Duration::ZERO).await;
    let (r, took) = ensure_timed(&agent).await;
    r.unwrap();
    assert!(took < Duration::from_millis(200), "{took:?}");
    assert_eq!(agent.rt.count(Op::Inspect), 0);
}

/// The exit told only by the daemon's events (its own state still says running, as Docker's
/// does right after `die`): the Ensure fails at once with the event's code and OOM flag.
#[tokio::test]
async fn an_exit_told_by_events_alone_fails_the_ensure_with_its_code() {
    let rt = Arc::new(FakeRuntime::new());
    rt.set_worker_port(refusing_port());
    rt.enable_events();
    let agent = Agent::start_with(rt, |s| s.ensure_ready_timeout = Duration::from_secs(5)).await;
    let rt = agent.rt.clone();
    let killer = tokio::spawn(async move {
        loop {
            if let Some(w) = rt.workers().first()
                && rt.has_subscriber()
            {
                for kind in [
                    WorkerEventKind::Oom,
                    WorkerEventKind::Exited {
                        exit_code: 137,
                        oom: false,
                    },
                ] {
                    assert!(rt.emit(WorkerEvent {
                        id: w.id.clone(),
                        kind,
                        at: Some(std::time::SystemTime::now()),
                    }));
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let (r, took) = ensure_timed(&agent).await;
    killer.await.unwrap();
    let s = r.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(
        s.message().contains("with code 137 (OOM-killed)"),
        "{}",
        s.message()
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(agent.rt.workers().is_empty(), "destroyed");
}
