//! End to end on the containerd backend: the invocation report's peak memory (a cgroup v1
//! reset per call, or the v2 peak since start) grows with what the call allocates, and a
//! worker that exits or is OOM-killed answers UNAVAILABLE at once with its exit code, the
//! report saying `crashed` / `oom`.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::{Duration, Instant};

use esb_proto::v1::agent_service_client::AgentServiceClient;
use esb_proto::v1::{DestroyContainerRequest, EnsureContainerRequest, InvokeWorkerRequest};
use tonic::Code;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

#[path = "support/world.rs"]
mod support;
use support::{Net, World};

const NET: Net = Net {
    namespace: "esbthp",
    env: "hp",
    bridge: "esbt-hp",
    subnet: "10.199.196.0/24",
    scratch_prefix: "scratch-agent-report-",
};
const OWNER: &str = "owner-report";

async fn ensure(
    c: &mut AgentServiceClient<Channel>,
    image: &str,
    function: &str,
    mib: u32,
) -> String {
    c.ensure_container(EnsureContainerRequest {
        function_name: function.into(),
        image: image.into(),
        env: [(
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".to_string(),
            mib.to_string(),
        )]
        .into(),
        owner_id: OWNER.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .id
}

async fn invoke(
    c: &mut AgentServiceClient<Channel>,
    id: &str,
    payload: &str,
) -> Result<MetadataMap, tonic::Status> {
    let r = c
        .invoke_worker(InvokeWorkerRequest {
            container_id: id.into(),
            payload: payload.as_bytes().to_vec(),
            timeout_ms: 10_000,
            owner_id: OWNER.into(),
            ..Default::default()
        })
        .await?;
    assert_eq!(r.get_ref().status_code, 200);
    Ok(r.metadata().clone())
}

fn peak(m: &MetadataMap) -> u64 {
    m.get("x-esb-report-max-memory-bytes")
        .or_else(|| m.get("x-esb-report-max-memory-since-start-bytes"))
        .unwrap_or_else(|| panic!("no peak memory in {m:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn outcome(m: &MetadataMap) -> &str {
    m.get("x-esb-report-outcome").unwrap().to_str().unwrap()
}

#[tokio::test]
async fn peak_memory_exit_and_oom_in_the_report() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(&env, NET);
    let mut agent = world.spawn("e2e-report", "destroy");
    let mut c = agent.client(Duration::from_secs(30)).await.unwrap();

    // Peak memory grows with what the call allocates.
    let id = ensure(&mut c, &world.image, "report-mem", 256).await;
    let first = invoke(&mut c, &id, "{}").await.unwrap();
    assert_eq!(first.get("x-esb-report-init").unwrap(), "true");
    let base = peak(&first);
    let grown = peak(&invoke(&mut c, &id, r#"{"alloc_mib": 48}"#).await.unwrap());
    assert!(
        grown >= base + (40 << 20),
        "peak {grown} after 48 MiB, {base} before"
    );

    // A worker that exits after answering: the next call is UNAVAILABLE at once, with the code.
    let m = invoke(&mut c, &id, r#"{"exit": 3}"#).await.unwrap();
    assert_eq!(outcome(&m), "ok");
    let started = Instant::now();
    let s = invoke(&mut c, &id, "{}").await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(
        s.message().contains("exited with code 3"),
        "{}",
        s.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // A worker OOM-killed during the call.
    let oom = ensure(&mut c, &world.image, "report-oom", 128).await;
    invoke(&mut c, &oom, "{}").await.unwrap();
    let s = invoke(&mut c, &oom, r#"{"alloc_mib": 512}"#)
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().contains("OOM-killed"), "{}", s.message());
    assert_eq!(outcome(s.metadata()), "oom", "{s:?}");

    for id in [id, oom] {
        c.destroy_container(DestroyContainerRequest {
            container_id: id,
            owner_id: OWNER.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // Our channel closed first: the drain then has nothing to wait for, and the stop (with
    // its firewall release) completes well within the bound instead of racing a SIGKILL.
    drop(c);
    agent.stop_cleanly();
    // Netns pool pins (state/cni/pool) outlive the agent process by design of the pool; the
    // world's cleanup unmounts them. Everything else must be gone.
    let left: Vec<String> = world
        .leftovers()
        .into_iter()
        .filter(|l| !l.contains("/state/cni/pool/"))
        .collect();
    assert!(left.is_empty(), "leftovers: {left:?}");
}
