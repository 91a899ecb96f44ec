//! M2: client identity → owner binding over real mTLS. Each owner-scoped RPC is refused with
//! PERMISSION_DENIED for an owner the client's certificate is not bound to — before the runtime
//! sees anything — and works for the client's own owners.

use std::sync::Arc;

use esb_proto::v1;
use esb_proto::v1::agent_service_client::AgentServiceClient;
use esb_runtime::fake::{FakeRuntime, Op};
use esb_server::{OwnerMap, TlsSettings};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::harness::Agent;
use super::pki::{Pki, caps, dns, leaf, tls_client, uri};
use super::service::ensure_req;
use super::worker::Worker;

type Client = AgentServiceClient<Channel>;

/// Runtime calls made for requests (the health probe pings in the background).
fn runtime_calls(rt: &FakeRuntime) -> usize {
    rt.calls().iter().filter(|c| c.op != Op::Ping).count()
}

const MAP: &str = "gw-a.local=owner-a,spiffe://esb/gw-b=owner-b|team-*,admin.local=*";

/// The owner-scoped RPCs (Ensure is separate: it creates).
#[derive(Debug, Clone, Copy)]
enum Kind {
    Pause,
    Resume,
    Metrics,
    Invoke,
    List,
    Destroy,
}

const KINDS: [Kind; 6] = [
    Kind::Pause,
    Kind::Resume,
    Kind::Metrics,
    Kind::Invoke,
    Kind::List,
    Kind::Destroy,
];

async fn call(c: &mut Client, kind: Kind, id: &str, owner: &str) -> Result<(), Status> {
    let (container_id, owner_id) = (id.to_owned(), owner.to_owned());
    match kind {
        Kind::Pause => c
            .pause_container(v1::PauseContainerRequest {
                container_id,
                owner_id,
            })
            .await
            .map(drop),
        Kind::Resume => c
            .resume_container(v1::ResumeContainerRequest {
                container_id,
                owner_id,
            })
            .await
            .map(drop),
        Kind::Metrics => c
            .get_container_metrics(v1::GetContainerMetricsRequest {
                container_id,
                owner_id,
            })
            .await
            .map(drop),
        Kind::Invoke => c
            .invoke_worker(v1::InvokeWorkerRequest {
                container_id,
                owner_id,
                payload: b"{}".to_vec(),
                timeout_ms: 5_000,
                ..Default::default()
            })
            .await
            .map(drop),
        Kind::List => c
            .list_containers(v1::ListContainersRequest { owner_id })
            .await
            .map(|r| {
                assert!(
                    r.into_inner()
                        .containers
                        .iter()
                        .any(|w| w.container_id == id)
                )
            }),
        Kind::Destroy => c
            .destroy_container(v1::DestroyContainerRequest {
                container_id,
                owner_id,
                ..Default::default()
            })
            .await
            .map(drop),
    }
}

async fn client(agent: &Agent, pki: &Pki, cn: &str, san: rcgen::SanType) -> Client {
    tls_client(
        agent.addr,
        &pki.ca.pem,
        Some(leaf(&pki.ca, cn, vec![san], false)),
    )
    .await
    .unwrap()
}

async fn ensure(c: &mut Client, owner: &str) -> Result<v1::WorkerInfo, Status> {
    c.ensure_container(ensure_req("fn-a", owner, "img:1"))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn each_owner_rpc_is_bound_to_the_client_identity() {
    let pki = Pki::new();
    let worker = Worker::start().await;
    let rt = Arc::new(FakeRuntime::new());
    rt.set_worker_port(worker.addr.port());
    let mut m = pki.mutual();
    m.owner_map = OwnerMap::parse(MAP).unwrap();
    // viewer.local may connect but is bound to no owner.
    m.allowed_client_identities = ["viewer.local", "gw-a.local", "spiffe://esb/gw-b"]
        .map(String::from)
        .to_vec();
    let agent = Agent::start_with(rt.clone(), |s| s.tls = TlsSettings::Mutual(m)).await;
    const A: usize = 0;
    const B: usize = 1;
    const VIEWER: usize = 2;
    let mut c = [
        client(&agent, &pki, "gateway-a", dns("gw-a.local")).await,
        client(&agent, &pki, "gateway-b", uri("spiffe://esb/gw-b")).await,
        client(&agent, &pki, "viewer", dns("viewer.local")).await,
    ];

    // Ensure: own owner and a bound prefix work; another owner is refused without a runtime call.
    let wa = ensure(&mut c[A], "owner-a").await.unwrap();
    let wb = ensure(&mut c[B], "owner-b").await.unwrap();
    ensure(&mut c[B], "team-blue").await.unwrap();
    for (who, owner) in [
        (A, "owner-b"),
        (B, "owner-a"),
        (B, "team"),
        (VIEWER, "owner-a"),
    ] {
        let before = runtime_calls(&rt);
        let s = ensure(&mut c[who], owner).await.unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied, "ensure {owner}: {s:?}");
        assert_eq!(
            runtime_calls(&rt),
            before,
            "ensure {owner} reached the runtime"
        );
    }

    // Every other RPC: naming someone else's owner is refused before any runtime call, whether
    // the container is theirs or not; the owner itself succeeds.
    for kind in KINDS {
        for (who, id, owner) in [
            (A, &wb.id, "owner-b"),
            (A, &wa.id, "owner-b"),
            (B, &wa.id, "owner-a"),
            (VIEWER, &wa.id, "owner-a"),
        ] {
            let before = runtime_calls(&rt);
            let s = call(&mut c[who], kind, id, owner).await.unwrap_err();
            assert_eq!(s.code(), Code::PermissionDenied, "{kind:?} {owner}: {s:?}");
            assert_eq!(
                runtime_calls(&rt),
                before,
                "{kind:?} {owner} reached the runtime"
            );
        }
        call(&mut c[A], kind, &wa.id, "owner-a")
            .await
            .unwrap_or_else(|s| panic!("{kind:?} own owner-a: {s:?}"));
        call(&mut c[B], kind, &wb.id, "owner-b")
            .await
            .unwrap_or_else(|s| panic!("{kind:?} own owner-b: {s:?}"));
    }
    assert!(rt.worker(&wa.id).is_none() && rt.worker(&wb.id).is_none());
    assert_eq!(worker.deliveries(), 2, "only the owners' own invocations");
    // Not owner-scoped: still fine for a bound-to-nothing client.
    let [_, _, viewer] = c;
    assert!(caps(Ok(viewer)).await.is_ok());
}

/// `*` binds an identity to every owner; identities outside the map (and any explicit
/// allow-list) do not even connect, since the map's identities are the allow-list.
#[tokio::test]
async fn wildcard_identity_and_implied_allow_list() {
    let pki = Pki::new();
    let rt = Arc::new(FakeRuntime::new());
    let mut m = pki.mutual();
    m.owner_map = OwnerMap::parse(MAP).unwrap();
    let agent = Agent::start_with(rt.clone(), |s| s.tls = TlsSettings::Mutual(m)).await;
    let mut admin = client(&agent, &pki, "admin", dns("admin.local")).await;
    let w = ensure(&mut admin, "owner-z").await.unwrap();
    call(&mut admin, Kind::List, &w.id, "owner-z")
        .await
        .unwrap();
    let stranger = leaf(&pki.ca, "gw-a.local", vec![dns("stranger.local")], false);
    assert!(
        caps(tls_client(agent.addr, &pki.ca.pem, Some(stranger)).await)
            .await
            .is_err()
    );
}
