//! `X-Amz-Log-Type: Tail` (Lambda's log tail) over FakeRuntime logs: the reply carries base64
//! of the last 4 KiB written during the call (late output included), nothing without the
//! header (and no log work), and a failed log read never fails the invocation.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use esb_proto::v1;
use esb_runtime::ErrorKind;
use esb_runtime::fake::{FakeRuntime, Op};

use super::harness::{Agent, OWNER};
use super::service::ensure;
use super::worker::Worker;

fn req(id: &str, tail: Option<&str>) -> v1::InvokeWorkerRequest {
    v1::InvokeWorkerRequest {
        container_id: id.into(),
        owner_id: OWNER.into(),
        payload: b"{}".to_vec(),
        headers: tail
            .map(|v| HashMap::from([("X-Amz-Log-Type".to_owned(), v.to_owned())]))
            .unwrap_or_default(),
        ..Default::default()
    }
}

fn decode(resp: &v1::InvokeWorkerResponse) -> Vec<u8> {
    let v = resp
        .headers
        .get("x-amz-log-result")
        .expect("log result header");
    base64::engine::general_purpose::STANDARD
        .decode(v)
        .expect("valid base64")
}

async fn setup(worker: &Worker) -> (Arc<FakeRuntime>, Agent, String) {
    let rt = Arc::new(FakeRuntime::new());
    rt.set_worker_port(worker.addr.port());
    let agent = Agent::start_with(rt.clone(), |_| {}).await;
    let id = ensure(&agent, OWNER).await.id;
    (rt, agent, id)
}

#[tokio::test]
async fn tail_has_this_calls_output_only_and_waits_for_late_output() {
    let worker = Worker::start().await;
    let (rt, agent, id) = setup(&worker).await;
    let mut c = agent.client().await;
    rt.write_log(&id, b"previous call\n");
    // Written while the call runs, and a little after the answer.
    rt.write_log_on_read(&id, &[b"during the call\n", b"late\n"]);
    let resp = c
        .invoke_worker(req(&id, Some("Tail")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status_code, 200);
    assert_eq!(decode(&resp), b"during the call\nlate\n");

    // At most the last 4 KiB; the header value is case-insensitive.
    let big: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    rt.write_log_on_read(&id, &[&big]);
    let resp = c
        .invoke_worker(req(&id, Some("tail")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(decode(&resp), big[big.len() - 4096..]);
}

#[tokio::test]
async fn no_header_means_no_tail_and_no_log_work() {
    let worker = Worker::start().await;
    let (rt, agent, id) = setup(&worker).await;
    let mut c = agent.client().await;
    rt.write_log(&id, b"something\n");
    for tail in [None, Some("None")] {
        let resp = c.invoke_worker(req(&id, tail)).await.unwrap().into_inner();
        assert_eq!(resp.status_code, 200);
        assert!(!resp.headers.contains_key("x-amz-log-result"));
    }
    assert_eq!(rt.count(Op::LogPosition), 0);
    assert_eq!(rt.count(Op::ReadLog), 0);
}

#[tokio::test]
async fn a_failing_log_read_leaves_the_invocation_alone() {
    let worker = Worker::start().await;
    let (rt, agent, id) = setup(&worker).await;
    let mut c = agent.client().await;
    rt.fail_always(Op::ReadLog, ErrorKind::Unavailable);
    let resp = c
        .invoke_worker(req(&id, Some("Tail")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status_code, 200);
    assert!(!resp.headers.contains_key("x-amz-log-result"));
    rt.clear_failures();
    rt.fail_always(Op::LogPosition, ErrorKind::Unimplemented);
    let resp = c
        .invoke_worker(req(&id, Some("Tail")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status_code, 200);
    assert!(!resp.headers.contains_key("x-amz-log-result"));
    assert_eq!(rt.count(Op::ReadLog), 1, "no read without a position");
}
