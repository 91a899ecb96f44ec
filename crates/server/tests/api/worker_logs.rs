//! WorkerLogs (additive server-streaming RPC): the kept tail, follow with new output,
//! owner scoping, and the end of the stream when the worker is destroyed.

use std::time::Duration;

use esb_proto::v1;
use tokio_stream::StreamExt;
use tonic::Code;

use super::harness::{Agent, OTHER, OWNER};
use super::service::ensure;

fn req(id: &str, owner: &str, tail: u32, follow: bool) -> v1::WorkerLogsRequest {
    v1::WorkerLogsRequest {
        container_id: id.into(),
        owner_id: owner.into(),
        tail_bytes: tail,
        follow,
    }
}

#[tokio::test]
async fn logs_tail_follow_scope_and_end() {
    let agent = Agent::start().await;
    let w = ensure(&agent, OWNER).await;
    agent.rt.write_log(&w.id, b"line one\nline two\n");
    let mut c = agent.client().await;

    // Without follow: the tail, then the end.
    let mut s = c
        .worker_logs(req(&w.id, OWNER, 9, false))
        .await
        .unwrap()
        .into_inner();
    let first = s.next().await.unwrap().unwrap();
    assert_eq!(first.data, b"line two\n");
    assert!(s.next().await.is_none());

    // Another owner's worker: refused, like every id RPC.
    let e = c
        .worker_logs(req(&w.id, OTHER, 0, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = c
        .worker_logs(req("../../x", OWNER, 0, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // Follow: everything kept, then what is written afterwards.
    let mut s = c
        .worker_logs(req(&w.id, OWNER, 0, true))
        .await
        .unwrap()
        .into_inner();
    let first = s.next().await.unwrap().unwrap();
    assert_eq!(first.data, b"line one\nline two\n");
    agent.rt.write_log(&w.id, b"line three\n");
    let next = tokio::time::timeout(Duration::from_secs(3), s.next())
        .await
        .expect("new output within 3 s")
        .unwrap()
        .unwrap();
    assert_eq!(next.data, b"line three\n");

    // Destroyed: the stream ends.
    c.destroy_container(v1::DestroyContainerRequest {
        function_name: String::new(),
        container_id: w.id.clone(),
        owner_id: OWNER.into(),
    })
    .await
    .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(3), s.next())
        .await
        .expect("stream ends after destroy");
    assert!(end.is_none(), "{end:?}");
}
