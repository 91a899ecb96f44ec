//! The invocation report: `x-esb-report-*` gRPC trailing metadata on every invocation that
//! reached the worker (success and error), and the outcome counter.

use std::sync::Arc;

use esb_proto::v1;
use esb_runtime::fake::FakeRuntime;
use tonic::Code;
use tonic::metadata::MetadataMap;

use super::harness::{Agent, OWNER};
use super::service::ensure;
use super::worker::Worker;

async fn setup(worker: &Worker) -> (Agent, String) {
    let rt = Arc::new(FakeRuntime::new());
    rt.set_worker_port(worker.addr.port());
    let agent = Agent::start_with(rt, |s| s.invoke.max_response_bytes = 1000).await;
    let id = ensure(&agent, OWNER).await.id;
    (agent, id)
}

fn req(id: &str, payload: serde_json::Value, timeout_ms: i32) -> v1::InvokeWorkerRequest {
    v1::InvokeWorkerRequest {
        container_id: id.into(),
        owner_id: OWNER.into(),
        payload: serde_json::to_vec(&payload).unwrap(),
        timeout_ms,
        ..Default::default()
    }
}

fn get<'a>(m: &'a MetadataMap, key: &str) -> Option<&'a str> {
    m.get(key).map(|v| v.to_str().unwrap())
}

fn micros(m: &MetadataMap, key: &str) -> u64 {
    get(m, key)
        .unwrap_or_else(|| panic!("{key} missing: {m:?}"))
        .parse()
        .unwrap()
}

/// The report travels in the trailers frame, not the leading headers: read it the way a
/// streaming client sees both separately.
async fn call_raw(agent: &Agent, r: v1::InvokeWorkerRequest) -> (MetadataMap, MetadataMap) {
    let mut grpc = tonic::client::Grpc::new(agent.channel().await);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/esb.agent.v1.AgentService/InvokeWorker");
    let codec =
        tonic_prost::ProstCodec::<v1::InvokeWorkerRequest, v1::InvokeWorkerResponse>::default();
    let resp = grpc
        .server_streaming(tonic::Request::new(r), path, codec)
        .await
        .unwrap();
    let headers = resp.metadata().clone();
    let mut stream = resp.into_inner();
    let msg = stream.message().await.unwrap().unwrap();
    assert_eq!(msg.status_code, 200);
    let trailers = stream.trailers().await.unwrap().unwrap();
    (headers, trailers)
}

#[tokio::test]
async fn report_is_in_the_trailers_with_duration_and_init_only_on_the_first_call() {
    let worker = Worker::start().await;
    let (agent, id) = setup(&worker).await;
    let (headers, trailers) =
        call_raw(&agent, req(&id, serde_json::json!({"sleep_ms": 120}), 0)).await;
    assert!(
        get(&headers, "x-esb-report-outcome").is_none(),
        "{headers:?}"
    );
    assert_eq!(get(&trailers, "x-esb-report-outcome"), Some("ok"));
    assert_eq!(get(&trailers, "x-esb-report-init"), Some("true"));
    let duration = micros(&trailers, "x-esb-report-duration-us");
    assert!((120_000..5_000_000).contains(&duration), "{duration}");
    let init = micros(&trailers, "x-esb-report-init-duration-us");
    assert!(init >= duration, "init {init} < duration {duration}");
    // No peak-memory file on the fake runtime: the key is omitted, not zero.
    assert!(get(&trailers, "x-esb-report-max-memory-bytes").is_none());
    // The second call is not an init; the plain client sees the report as metadata too.
    let mut c = agent.client().await;
    let resp = c
        .invoke_worker(req(&id, serde_json::json!({}), 0))
        .await
        .unwrap();
    let m = resp.metadata();
    assert_eq!(get(m, "x-esb-report-init"), Some("false"));
    assert!(get(m, "x-esb-report-init-duration-us").is_none());
    assert!(micros(m, "x-esb-report-duration-us") < duration);
    assert_eq!(resp.into_inner().status_code, 200);
}

#[tokio::test]
async fn outcome_classes_for_function_errors_timeouts_and_oversize() {
    let worker = Worker::start().await;
    let (agent, id) = setup(&worker).await;
    let mut c = agent.client().await;
    let outcome = |m: &MetadataMap| get(m, "x-esb-report-outcome").map(str::to_owned);
    let r = c
        .invoke_worker(req(&id, serde_json::json!({"status": 503}), 0))
        .await
        .unwrap();
    assert_eq!(outcome(r.metadata()).as_deref(), Some("function_error"));
    let r = c
        .invoke_worker(req(
            &id,
            serde_json::json!({"headers": {"X-Amz-Function-Error": "Unhandled"}}),
            0,
        ))
        .await
        .unwrap();
    assert_eq!(outcome(r.metadata()).as_deref(), Some("function_error"));
    let r = c
        .invoke_worker(req(&id, serde_json::json!({"status": 404}), 0))
        .await
        .unwrap();
    assert_eq!(outcome(r.metadata()).as_deref(), Some("ok"));
    // Errors carry the report in their (trailers-only) status metadata.
    let s = c
        .invoke_worker(req(&id, serde_json::json!({"sleep_ms": 2000}), 300))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::DeadlineExceeded);
    assert_eq!(outcome(s.metadata()).as_deref(), Some("timeout"));
    assert!(micros(s.metadata(), "x-esb-report-duration-us") >= 250_000);
    let s = c
        .invoke_worker(req(&id, serde_json::json!({"body_bytes": 1001}), 0))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert_eq!(outcome(s.metadata()).as_deref(), Some("too_large"));
    let (_, text) = agent.scrape("/metrics").await;
    for (class, n) in [
        ("ok", 1),
        ("function_error", 2),
        ("timeout", 1),
        ("too_large", 1),
    ] {
        let line = format!("esb_agent_invoke_total{{outcome=\"{class}\"}} {n}\n");
        assert!(text.contains(&line), "{line} in {text}");
    }
}

#[tokio::test]
async fn a_worker_that_exits_during_the_call_is_crashed_and_unavailable() {
    let worker = Worker::start().await;
    let (agent, id) = setup(&worker).await;
    let mut c = agent.client().await;
    let r = req(
        &id,
        serde_json::json!({"sleep_ms": 300, "drop": true}),
        5000,
    );
    let call = tokio::spawn(async move { c.invoke_worker(r).await });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // The process exits while the call runs (its connection breaks at 300 ms).
    agent.rt.set_status(&id, esb_runtime::WorkerStatus::Stopped);
    let s = call.await.unwrap().unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().contains("exited with code"), "{}", s.message());
    assert_eq!(get(s.metadata(), "x-esb-report-outcome"), Some("crashed"));
    let (_, text) = agent.scrape("/metrics").await;
    assert!(
        text.contains("esb_agent_invoke_total{outcome=\"crashed\"} 1\n"),
        "{text}"
    );
}
