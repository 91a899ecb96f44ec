//! InvokeWorker (SPEC §4) against a real loopback HTTP worker.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use esb_proto::v1;
use esb_runtime::fake::FakeRuntime;
use tonic::Code;

use super::harness::{Agent, OWNER};
use super::service::ensure;
use super::worker::Worker;

async fn setup(
    worker: &Worker,
    f: impl FnOnce(&mut esb_server::ServerSettings),
) -> (Agent, String) {
    let rt = Arc::new(FakeRuntime::new());
    rt.set_worker_port(worker.addr.port());
    let agent = Agent::start_with(rt, f).await;
    let id = ensure(&agent, OWNER).await.id;
    (agent, id)
}

fn req(id: &str, payload: serde_json::Value) -> v1::InvokeWorkerRequest {
    v1::InvokeWorkerRequest {
        container_id: id.into(),
        owner_id: OWNER.into(),
        payload: serde_json::to_vec(&payload).unwrap(),
        ..Default::default()
    }
}

#[tokio::test]
async fn default_path_headers_both_ways_and_first_value() {
    let worker = Worker::start().await;
    let (agent, id) = setup(&worker, |_| {}).await;
    let mut c = agent.client().await;
    let mut r = req(&id, serde_json::json!({"headers": {"X-Reply": "r1"}}));
    r.headers = HashMap::from([
        ("X-Amz-Request-Id".to_owned(), "abc".to_owned()),
        (String::new(), "skipped".to_owned()),
        ("Connection".to_owned(), "close".to_owned()),
        ("Transfer-Encoding".to_owned(), "chunked".to_owned()),
        ("Host".to_owned(), "evil.example".to_owned()),
        ("Content-Length".to_owned(), "999".to_owned()),
    ]);
    let resp = c.invoke_worker(r).await.unwrap().into_inner();
    assert_eq!(resp.status_code, 200);
    let got = worker.last();
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/2015-03-31/functions/function/invocations");
    assert_eq!(got.header("x-amz-request-id"), Some("abc"));
    assert_eq!(got.header("host"), Some(worker.addr.to_string().as_str()));
    assert_ne!(got.header("content-length"), Some("999"));
    assert_eq!(
        got.header("content-length").unwrap(),
        got.body.len().to_string()
    );
    assert!(got.header("transfer-encoding").is_none());
    assert!(
        got.header("connection")
            .is_none_or(|v| !v.contains("close"))
    );
    assert_eq!(resp.headers.get("x-reply").map(String::as_str), Some("r1"));
    assert_eq!(resp.headers.get("x-dup").map(String::as_str), Some("first"));
    for hop in ["connection", "keep-alive", "x-private", "transfer-encoding"] {
        assert!(!resp.headers.contains_key(hop), "{hop} must be stripped");
    }
    let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(body["payload"]["headers"]["X-Reply"], "r1");
}

#[tokio::test]
async fn path_normalisation_and_status_passthrough() {
    let worker = Worker::start().await;
    let (agent, id) = setup(&worker, |_| {}).await;
    let mut c = agent.client().await;
    let mut r = req(&id, serde_json::json!({"status": 503}));
    r.path = "custom/path?q=1".into();
    let resp = c.invoke_worker(r).await.unwrap().into_inner();
    assert_eq!(
        resp.status_code, 503,
        "a worker status is a reply, not an error"
    );
    assert_eq!(worker.last().path, "/custom/path?q=1");
    let mut r = req(&id, serde_json::json!({"status": 404}));
    r.path = "/abs".into();
    assert_eq!(
        c.invoke_worker(r).await.unwrap().into_inner().status_code,
        404
    );
    assert_eq!(worker.last().path, "/abs");
    // Keep-alive: one connection served all of it.
    assert_eq!(worker.seen.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn cold_start_waits_for_the_worker_to_listen() {
    let worker = Worker::start_after(Duration::from_millis(1500)).await;
    let (agent, id) = setup(&worker, |_| {}).await;
    let mut c = agent.client().await;
    let started = Instant::now();
    let mut r = req(&id, serde_json::json!({}));
    r.timeout_ms = 10_000;
    let resp = c.invoke_worker(r).await.unwrap().into_inner();
    assert_eq!(resp.status_code, 200);
    assert!(started.elapsed() >= Duration::from_millis(1400));
    assert_eq!(worker.deliveries(), 1);
    // The worker is running, so liveness inspects only confirm the cold start; they are
    // bounded (from ~300 ms, at most once a second), not one per connect retry.
    let inspects = agent.rt.count(esb_runtime::fake::Op::Inspect);
    assert!((1..=2).contains(&inspects), "{inspects} inspects");
    let (_, text) = agent.scrape("/metrics").await;
    assert!(
        text.contains("esb_agent_invoke_connect_retries_total"),
        "{text}"
    );
    assert!(
        !text.contains("esb_agent_invoke_connect_retries_total 0\n"),
        "{text}"
    );
}

#[tokio::test]
async fn deadline_from_timeout_ms_and_from_grpc() {
    let worker = Worker::start().await;
    let (agent, id) = setup(&worker, |_| {}).await;
    let mut c = agent.client().await;
    let mut r = req(&id, serde_json::json!({"sleep_ms": 3000}));
    r.timeout_ms = 300;
    let started = Instant::now();
    let s = c.invoke_worker(r).await.unwrap_err();
    assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
    assert!(started.elapsed() < Duration::from_millis(1500));
    // The gRPC deadline applies too, whichever is sooner.
    let mut grpc = tonic::Request::new(req(&id, serde_json::json!({"sleep_ms": 3000})));
    grpc.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let s = c.invoke_worker(grpc).await.unwrap_err();
    assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
    assert!(started.elapsed() < Duration::from_millis(1500));
    // A worker that never listens: connect retries stop at the deadline.
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = nobody.local_addr().unwrap().port();
    drop(nobody);
    let rt = Arc::new(FakeRuntime::new());
    rt.set_worker_port(port);
    let agent2 = Agent::start_with(rt, |_| {}).await;
    let id2 = ensure(&agent2, OWNER).await.id;
    let mut c2 = agent2.client().await;
    let mut r = req(&id2, serde_json::json!({}));
    r.timeout_ms = 700;
    let s = c2.invoke_worker(r).await.unwrap_err();
    assert_eq!(s.code(), Code::DeadlineExceeded);
}

#[tokio::test]
async fn cancellation_closes_the_worker_connection_and_frees_the_slot() {
    let worker = Worker::start().await;
    let (agent, id) = setup(&worker, |_| {}).await;
    let mut c = agent.client().await;
    let r = req(&id, serde_json::json!({"sleep_ms": 5000}));
    let call = tokio::spawn(async move { c.invoke_worker(r).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    call.abort();
    let _ = call.await;
    super::harness::eventually(|| worker.seen.disconnects.load(Ordering::SeqCst) == 1).await;
    // The per-worker slot is free again at once.
    let mut c = agent.client().await;
    let started = Instant::now();
    let resp = c
        .invoke_worker(req(&id, serde_json::json!({})))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status_code, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    let (_, text) = agent.scrape("/metrics").await;
    assert!(
        text.contains("esb_agent_invoke_total{outcome=\"cancelled\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn body_limit_exactly_and_one_over() {
    let worker = Worker::start().await;
    let (agent, id) = setup(&worker, |s| s.invoke.max_response_bytes = 1000).await;
    let mut c = agent.client().await;
    let resp = c
        .invoke_worker(req(&id, serde_json::json!({"body_bytes": 1000})))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.body.len(), 1000);
    let s = c
        .invoke_worker(req(&id, serde_json::json!({"body_bytes": 1001})))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert_eq!(s.message(), "response body too large (limit 1000 bytes)");
    // The worker is still usable afterwards.
    let resp = c
        .invoke_worker(req(&id, serde_json::json!({})))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status_code, 200);
}

#[tokio::test]
async fn a_request_the_worker_received_is_never_resent() {
    let worker = Worker::start().await;
    let (agent, id) = setup(&worker, |_| {}).await;
    let mut c = agent.client().await;
    // Warm a pooled connection first, so the drop happens on a reused one too.
    c.invoke_worker(req(&id, serde_json::json!({})))
        .await
        .unwrap();
    let before = worker.deliveries();
    let s = c
        .invoke_worker(req(&id, serde_json::json!({"drop": true})))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(worker.deliveries(), before + 1, "delivered exactly once");
}

#[tokio::test]
async fn paused_or_exited_worker_is_unavailable_at_once_and_no_ip_is_failed_precondition() {
    let worker = Worker::start().await;
    let (agent, id) = setup(&worker, |_| {}).await;
    let mut c = agent.client().await;
    c.pause_container(v1::PauseContainerRequest {
        container_id: id.clone(),
        owner_id: OWNER.into(),
    })
    .await
    .unwrap();
    let started = Instant::now();
    let s = c
        .invoke_worker(req(&id, serde_json::json!({})))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable);
    assert!(s.message().contains("worker is paused"), "{}", s.message());
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(worker.deliveries(), 0);
    // A stopped worker (learnt from a listing) fails at once too.
    c.resume_container(v1::ResumeContainerRequest {
        container_id: id.clone(),
        owner_id: OWNER.into(),
    })
    .await
    .unwrap();
    agent.rt.set_status(&id, esb_runtime::WorkerStatus::Stopped);
    c.list_containers(v1::ListContainersRequest {
        owner_id: OWNER.into(),
    })
    .await
    .unwrap();
    let started = Instant::now();
    let s = c
        .invoke_worker(req(&id, serde_json::json!({})))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable);
    assert!(
        s.message().contains("exited with code 0"),
        "{}",
        s.message()
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    // A worker the runtime knows without an address.
    agent.rt.insert_worker(esb_runtime::WorkerState {
        id: "noip".into(),
        name: "noip".into(),
        function_name: "f".into(),
        owner_id: OWNER.into(),
        status: esb_runtime::WorkerStatus::Running,
        ip: None,
        created_at: 1,
    });
    let s = c
        .invoke_worker(req("noip", serde_json::json!({})))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(s.message().contains("no ip"), "{}", s.message());
}

#[tokio::test]
async fn concurrent_invokes_to_one_worker_are_serialised() {
    let worker = Worker::start().await;
    let (agent, id) = setup(&worker, |_| {}).await;
    let mut calls = Vec::new();
    for _ in 0..3 {
        let mut c = agent.client().await;
        let r = req(&id, serde_json::json!({"sleep_ms": 200}));
        calls.push(tokio::spawn(async move { c.invoke_worker(r).await }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().into_inner().status_code, 200);
    }
    assert_eq!(worker.deliveries(), 3);
    assert_eq!(worker.seen.max_in_flight.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn invoke_touches_last_used_even_on_failure() {
    let rt = Arc::new(FakeRuntime::new());
    rt.insert_worker(esb_runtime::WorkerState {
        id: "w".into(),
        name: "w".into(),
        function_name: "f".into(),
        owner_id: OWNER.into(),
        status: esb_runtime::WorkerStatus::Running,
        ip: None,
        created_at: 1_000,
    });
    let agent = Agent::start_with(rt, |_| {}).await;
    let mut c = agent.client().await;
    c.invoke_worker(req("w", serde_json::json!({})))
        .await
        .unwrap_err();
    let list = c
        .list_containers(v1::ListContainersRequest {
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(list[0].last_used_at > 1_000);
}

#[tokio::test]
async fn pause_drops_the_pooled_connection() {
    let worker = Worker::start().await;
    let (agent, id) = setup(&worker, |_| {}).await;
    let mut c = agent.client().await;
    c.invoke_worker(req(&id, serde_json::json!({})))
        .await
        .unwrap();
    c.invoke_worker(req(&id, serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(
        worker.seen.connections.load(Ordering::SeqCst),
        1,
        "keep-alive reuse"
    );
    c.pause_container(v1::PauseContainerRequest {
        container_id: id.clone(),
        owner_id: OWNER.into(),
    })
    .await
    .unwrap();
    c.resume_container(v1::ResumeContainerRequest {
        container_id: id.clone(),
        owner_id: OWNER.into(),
    })
    .await
    .unwrap();
    c.invoke_worker(req(&id, serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(
        worker.seen.connections.load(Ordering::SeqCst),
        2,
        "a fresh connection after pause"
    );
}

#[tokio::test]
async fn a_changed_ip_gets_a_new_connection_to_the_new_address() {
    let first = Worker::start().await;
    let port = first.addr.port();
    let Ok(second) = tokio::net::TcpListener::bind(("127.0.0.2", port)).await else {
        return; // 127.0.0.2 unavailable on this host
    };
    drop(second);
    let second = Worker::start_on(std::net::SocketAddr::from(([127, 0, 0, 2], port))).await;
    let (agent, id) = setup(&first, |_| {}).await;
    let mut c = agent.client().await;
    c.invoke_worker(req(&id, serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(first.deliveries(), 1);
    // The runtime re-addresses the worker; a listing teaches the table.
    agent.rt.set_ip(&id, Some("127.0.0.2".parse().unwrap()));
    c.list_containers(v1::ListContainersRequest {
        owner_id: OWNER.into(),
    })
    .await
    .unwrap();
    c.invoke_worker(req(&id, serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(
        first.deliveries(),
        1,
        "the old pooled connection was dropped"
    );
    assert_eq!(second.deliveries(), 1);
    // And a listing without an address never blanks the known one.
    agent.rt.set_ip(&id, None);
    c.list_containers(v1::ListContainersRequest {
        owner_id: OWNER.into(),
    })
    .await
    .unwrap();
    c.invoke_worker(req(&id, serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(second.deliveries(), 2);
}

/// M6: a deadline that fires while the worker runs the call must not free the worker for the
/// next queued call; the worker (which keeps running, like a real RIE) never sees two at once.
#[tokio::test]
async fn deadlines_never_put_two_invocations_on_one_worker() {
    let worker = Worker::start().await;
    let (agent, id) = setup(&worker, |_| {}).await;
    let mut calls = Vec::new();
    for i in 0..40 {
        let mut c = agent.client().await;
        let mut r = req(&id, serde_json::json!({"sleep_ms": 400, "hold": true}));
        // Short deadlines, some shorter than the call itself, some long enough to queue.
        r.timeout_ms = [150, 300, 900, 1500][i % 4];
        calls.push(tokio::spawn(async move { c.invoke_worker(r).await }));
    }
    let mut codes = Vec::new();
    for call in calls {
        codes.push(
            call.await
                .unwrap()
                .map(|_| Code::Ok)
                .unwrap_or_else(|s| s.code()),
        );
    }
    assert!(codes.contains(&Code::DeadlineExceeded), "{codes:?}");
    assert!(worker.deliveries() >= 2, "{}", worker.deliveries());
    assert_eq!(
        worker.seen.max_in_flight.load(Ordering::SeqCst),
        1,
        "{codes:?}"
    );
    // Once the last held call has finished, the worker is usable again, on the same
    // connection (the drained answer returned it to the pool).
    super::harness::eventually(|| worker.seen.in_flight.load(Ordering::SeqCst) == 0).await;
    let mut c = agent.client().await;
    let resp = c
        .invoke_worker(req(&id, serde_json::json!({})))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status_code, 200);
    assert_eq!(worker.seen.max_in_flight.load(Ordering::SeqCst), 1);
    assert_eq!(worker.seen.connections.load(Ordering::SeqCst), 1);
}
