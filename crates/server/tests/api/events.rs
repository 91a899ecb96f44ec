//! Events drive state (DESIGN §5): the runtime's event stream updates the worker table at
//! once; a broken stream is subscribed again with a relist, so a change made while it was
//! down is still learnt. Driven through FakeRuntime's scripted event stream.

use std::sync::Arc;
use std::time::Duration;

use esb_proto::v1;
use esb_runtime::fake::{FakeRuntime, Op};
use esb_runtime::{ErrorKind, WorkerEvent, WorkerEventKind, WorkerStatus};

use super::harness::{Agent, OWNER, eventually};
use super::liveness::refusing_port;
use super::service::ensure;

async fn setup() -> (Agent, String) {
    let rt = Arc::new(FakeRuntime::new());
    rt.set_worker_port(refusing_port());
    rt.enable_events();
    let agent = Agent::start_with(rt, |_| {}).await;
    let id = ensure(&agent, OWNER).await.id;
    eventually(|| agent.rt.has_subscriber()).await;
    (agent, id)
}

fn ev(id: &str, kind: WorkerEventKind) -> WorkerEvent {
    WorkerEvent {
        id: id.into(),
        kind,
        at: Some(std::time::SystemTime::now()),
    }
}

/// The workers gauge as the metrics endpoint reports it (refreshed from the table).
async fn gauge(agent: &Agent, state: &str) -> String {
    let (_, text) = agent.scrape("/metrics").await;
    let key = format!("esb_agent_workers{{state=\"{state}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key).map(str::to_owned))
        .unwrap_or_default()
}

async fn wait_gauge(agent: &Agent, state: &str, want: &str) {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = gauge(agent, state).await;
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "{state} gauge {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn events_update_the_table_without_any_rpc() {
    let (agent, id) = setup().await;
    let (lists, inspects) = (agent.rt.count(Op::List), agent.rt.count(Op::Inspect));
    assert!(agent.rt.emit(ev(&id, WorkerEventKind::Paused)));
    wait_gauge(&agent, "PAUSED", "1").await;
    assert!(agent.rt.emit(ev(&id, WorkerEventKind::Resumed)));
    wait_gauge(&agent, "RUNNING", "1").await;
    agent.rt.set_status(&id, WorkerStatus::Stopped);
    assert!(agent.rt.emit(ev(
        &id,
        WorkerEventKind::Exited {
            exit_code: 3,
            oom: false
        }
    )));
    wait_gauge(&agent, "STOPPED", "1").await;
    // Stopped is terminal: a late resume event does not revive it.
    assert!(agent.rt.emit(ev(&id, WorkerEventKind::Resumed)));
    assert!(agent.rt.emit(ev("someone-else", WorkerEventKind::Paused)));
    let (_, text) = agent.scrape("/metrics").await;
    assert!(
        text.contains("esb_agent_worker_events_total{kind=\"resumed\"} 2"),
        "{text}"
    );
    // Every event carried the (fake) daemon's timestamp: each one's lag was observed.
    assert!(
        text.contains("esb_agent_worker_event_lag_seconds_count 5"),
        "{text}"
    );
    assert_eq!(gauge(&agent, "STOPPED").await, "1");
    assert_eq!(
        gauge(&agent, "PAUSED").await,
        "0",
        "unknown ids are ignored"
    );
    assert!(agent.rt.emit(ev(&id, WorkerEventKind::Deleted)));
    wait_gauge(&agent, "STOPPED", "0").await;
    assert_eq!(
        (agent.rt.count(Op::List), agent.rt.count(Op::Inspect)),
        (lists, inspects),
        "learnt from events alone"
    );
}

#[tokio::test]
async fn a_broken_stream_is_resubscribed_and_relisted() {
    let (agent, id) = setup().await;
    assert_eq!(agent.rt.count(Op::Events), 1);
    // The next two subscriptions fail: backoff, then success.
    agent.rt.fail_nth(Op::Events, 2, ErrorKind::Unavailable);
    agent.rt.fail_nth(Op::Events, 3, ErrorKind::Unavailable);
    agent.rt.break_events(Some(ErrorKind::Unavailable));
    // Paused while nobody listens: no event will ever tell it.
    agent.rt.set_status(&id, WorkerStatus::Paused);
    eventually(|| agent.rt.count(Op::Events) == 4 && agent.rt.has_subscriber()).await;
    // The relist after subscribing brings the change in.
    wait_gauge(&agent, "PAUSED", "1").await;
    let (_, text) = agent.scrape("/metrics").await;
    assert!(
        text.contains("esb_agent_event_resubscriptions_total 1"),
        "{text}"
    );
    // The new subscription delivers again; a stream that just ends is re-made too.
    assert!(agent.rt.emit(ev(&id, WorkerEventKind::Resumed)));
    wait_gauge(&agent, "RUNNING", "1").await;
    agent.rt.break_events(None);
    eventually(|| agent.rt.count(Op::Events) == 5 && agent.rt.has_subscriber()).await;
    assert!(agent.rt.emit(ev(&id, WorkerEventKind::Paused)));
    wait_gauge(&agent, "PAUSED", "1").await;
}

#[tokio::test]
async fn a_runtime_without_events_is_polled_only() {
    let rt = Arc::new(FakeRuntime::new());
    let agent = Agent::start_with(rt, |_| {}).await;
    ensure(&agent, OWNER).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(agent.rt.count(Op::Events), 0);
    assert_eq!(agent.rt.count(Op::List), 0, "no relist without a stream");
}

/// Docker sends `die` before its own state says exited: a listing or inspect taken right
/// after the event still says running. The exit (code, OOM) the events told wins — in List,
/// GetContainerMetrics and Invoke (which needs no runtime call to name the code).
#[tokio::test]
async fn an_exit_event_wins_over_a_lagging_listing() {
    let (agent, id) = setup().await;
    let mut c = agent.client().await;
    assert!(agent.rt.emit(ev(&id, WorkerEventKind::Oom)));
    assert!(agent.rt.emit(ev(
        &id,
        WorkerEventKind::Exited {
            exit_code: 137,
            oom: false
        }
    )));
    wait_gauge(&agent, "STOPPED", "1").await;
    // The fake still says running, like Docker right after `die`.
    assert_eq!(
        agent.rt.worker(&id).map(|w| w.status),
        Some(WorkerStatus::Running)
    );
    let listed = c
        .list_containers(v1::ListContainersRequest {
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, "STOPPED");
    assert_eq!(gauge(&agent, "STOPPED").await, "1", "the relist kept it");
    let m = c
        .get_container_metrics(v1::GetContainerMetricsRequest {
            container_id: id.clone(),
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .metrics
        .unwrap();
    assert_eq!((m.exit_code, m.oom_events >= 1), (137, true));
    let metrics_calls = agent.rt.count(Op::Metrics);
    let err = c
        .invoke_worker(v1::InvokeWorkerRequest {
            container_id: id.clone(),
            owner_id: OWNER.into(),
            payload: b"{}".to_vec(),
            timeout_ms: 5_000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("with code 137 (OOM-killed)"),
        "{}",
        err.message()
    );
    assert_eq!(
        agent.rt.count(Op::Metrics),
        metrics_calls,
        "named from the event"
    );
}

/// A worker removed outside the agent: on the delete event the agent releases what the
/// container record did not own (containerd: netns, IP, log) with an idempotent destroy.
#[tokio::test]
async fn a_delete_event_releases_the_workers_resources() {
    let (agent, id) = setup().await;
    let destroys = |agent: &Agent| {
        agent
            .rt
            .calls()
            .into_iter()
            .filter(|c| c.op == Op::Destroy && c.id.as_deref() == Some(id.as_str()))
            .count()
    };
    assert_eq!(destroys(&agent), 0);
    // An id the table does not know (another agent's, or already gone) is not touched;
    // events apply in order, so once the known one is handled this one was too.
    assert!(agent.rt.emit(ev("someone-else", WorkerEventKind::Deleted)));
    assert!(agent.rt.emit(ev(&id, WorkerEventKind::Deleted)));
    eventually(|| destroys(&agent) == 1).await;
    wait_gauge(&agent, "RUNNING", "0").await;
    assert!(
        agent
            .rt
            .calls()
            .iter()
            .all(|c| c.op != Op::Destroy || c.id.as_deref() == Some(id.as_str()))
    );
}
