//! A client of the upstream proto keeps working: the messages of the seven upstream RPCs are
//! declared here by hand exactly as SPEC §2 lists them (no field this agent added), and a
//! plain tonic client built on them ensures, lists, invokes and destroys — with standbys on,
//! so the additions (SetStandby, Capabilities fields, the invocation report's trailers) are
//! shown not to disturb it. The RPC paths are the upstream ones.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use esb_runtime::fake::FakeRuntime;
use esb_server::StandbySettings;
use tonic::transport::Channel;

use super::harness::{Agent, OWNER};

#[derive(Clone, PartialEq, prost::Message)]
struct EnsureContainerRequest {
    #[prost(string, tag = "1")]
    function_name: String,
    #[prost(string, tag = "2")]
    image: String,
    #[prost(map = "string, string", tag = "3")]
    env: HashMap<String, String>,
    #[prost(string, tag = "4")]
    owner_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WorkerInfo {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(string, tag = "3")]
    ip_address: String,
    #[prost(int32, tag = "4")]
    port: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ListContainersRequest {
    #[prost(string, tag = "1")]
    owner_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ContainerState {
    #[prost(string, tag = "1")]
    container_id: String,
    #[prost(string, tag = "2")]
    function_name: String,
    #[prost(string, tag = "3")]
    status: String,
    #[prost(int64, tag = "4")]
    last_used_at: i64,
    #[prost(string, tag = "5")]
    container_name: String,
    #[prost(int64, tag = "6")]
    created_at: i64,
    #[prost(string, tag = "7")]
    owner_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ListContainersResponse {
    #[prost(message, repeated, tag = "1")]
    containers: Vec<ContainerState>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct InvokeWorkerRequest {
    #[prost(string, tag = "7")]
    container_id: String,
    #[prost(string, tag = "3")]
    path: String,
    #[prost(bytes = "vec", tag = "4")]
    payload: Vec<u8>,
    #[prost(map = "string, string", tag = "5")]
    headers: HashMap<String, String>,
    #[prost(int32, tag = "6")]
    timeout_ms: i32,
    #[prost(string, tag = "8")]
    owner_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct InvokeWorkerResponse {
    #[prost(int32, tag = "1")]
    status_code: i32,
    #[prost(map = "string, string", tag = "2")]
    headers: HashMap<String, String>,
    #[prost(bytes = "vec", tag = "3")]
    body: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DestroyContainerRequest {
    #[prost(string, tag = "1")]
    function_name: String,
    #[prost(string, tag = "2")]
    container_id: String,
    #[prost(string, tag = "3")]
    owner_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DestroyContainerResponse {
    #[prost(bool, tag = "1")]
    success: bool,
}

async fn unary<Req, Resp>(ch: &Channel, method: &'static str, req: Req) -> Resp
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut g = tonic::client::Grpc::new(ch.clone());
    g.ready().await.unwrap();
    let path =
        http::uri::PathAndQuery::try_from(format!("/esb.agent.v1.AgentService/{method}")).unwrap();
    g.unary(
        tonic::Request::new(req),
        path,
        tonic_prost::ProstCodec::<Req, Resp>::default(),
    )
    .await
    .unwrap_or_else(|s| panic!("{method}: {s:?}"))
    .into_inner()
}

#[tokio::test]
async fn an_upstream_proto_client_works_unchanged() {
    let worker = super::worker::Worker::start().await;
    let rt = Arc::new(FakeRuntime::new());
    rt.set_worker_port(worker.addr.port());
    let agent = Agent::start_with(rt, |s| {
        s.standby = StandbySettings {
            per_spec: 1,
            ttl: Duration::from_secs(600),
            max: 4,
        };
    })
    .await;
    let ch = agent.channel().await;
    let req = EnsureContainerRequest {
        function_name: "up".into(),
        image: "img:1".into(),
        env: HashMap::new(),
        owner_id: OWNER.into(),
    };
    let first: WorkerInfo = unary(&ch, "EnsureContainer", req.clone()).await;
    assert!(!first.id.is_empty() && !first.ip_address.is_empty() && first.port > 0);
    let rt = agent.rt.clone();
    super::harness::eventually(move || rt.workers().len() == 2).await;
    // The second Ensure claims the standby: the answer has the same shape.
    let second: WorkerInfo = unary(&ch, "EnsureContainer", req).await;
    assert_ne!(second.id, first.id);
    assert!(!second.ip_address.is_empty() && second.port == first.port);

    let listed: ListContainersResponse = unary(
        &ch,
        "ListContainers",
        ListContainersRequest {
            owner_id: OWNER.into(),
        },
    )
    .await;
    let mut ids: Vec<String> = listed
        .containers
        .iter()
        .map(|c| c.container_id.clone())
        .collect();
    ids.sort();
    let mut want = vec![first.id.clone(), second.id.clone()];
    want.sort();
    assert_eq!(ids, want, "standbys never reach an upstream List");
    assert!(listed.containers.iter().all(|c| c.status == "RUNNING"));

    let inv: InvokeWorkerResponse = unary(
        &ch,
        "InvokeWorker",
        InvokeWorkerRequest {
            container_id: second.id.clone(),
            path: String::new(),
            payload: b"{}".to_vec(),
            headers: HashMap::new(),
            timeout_ms: 5_000,
            owner_id: OWNER.into(),
        },
    )
    .await;
    assert_eq!(inv.status_code, 200, "{inv:?}");
    assert_eq!(worker.deliveries(), 1);

    for id in [first.id, second.id] {
        let d: DestroyContainerResponse = unary(
            &ch,
            "DestroyContainer",
            DestroyContainerRequest {
                function_name: String::new(),
                container_id: id,
                owner_id: OWNER.into(),
            },
        )
        .await;
        assert!(d.success);
    }
}
