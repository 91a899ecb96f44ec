//! End to end, containerd: worker logs through the built `esb-agent` binary. The agent binary
//! is each task's log writer (`log-writer` mode, started by the shim): it stays small, survives
//! an agent restart, and the log tail (`X-Amz-Log-Type: Tail`) holds exactly one call's output.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use esb_proto::v1::{DestroyContainerRequest, EnsureContainerRequest};

#[path = "support/logtail.rs"]
mod logtail;
#[path = "support/world.rs"]
mod support;
use support::{Net, World};

const NET: Net = Net {
    namespace: "esbtlogs",
    env: "e2e",
    bridge: "esbt-lg",
    subnet: "10.199.45.0/24",
    scratch_prefix: "scratch-agent-logs-",
};
const OWNER: &str = "owner-logs";

/// (pid, VmRSS KiB, RssAnon KiB) of processes whose arguments name `needle`.
fn processes_naming(needle: &str) -> Vec<(u32, u64, u64)> {
    esb_testkit::procs::with_arg(|a| a == needle)
        .into_iter()
        .map(|p| {
            let [rss, anon] =
                esb_testkit::procs::status(p.pid, ["VmRSS:", "RssAnon:"]).unwrap_or_default();
            (p.pid, rss, anon)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_tail_and_the_agent_as_log_writer() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(&env, NET);
    let mut a = world.spawn("e2e-logs-a", "keep");
    let c = a.client(Duration::from_secs(30)).await.unwrap();
    let w = c
        .clone()
        .ensure_container(EnsureContainerRequest {
            function_name: "logs".into(),
            image: world.image.clone(),
            env: Default::default(),
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let call = |c: &esb_proto::v1::agent_service_client::AgentServiceClient<_>| {
        let c = c.clone();
        move |r| -> logtail::Reply {
            let mut c = c.clone();
            Box::pin(async move { c.invoke_worker(r).await.map(|r| r.into_inner()) })
        }
    };
    logtail::check(call(&c), &w.id, OWNER).await;

    // The writer is this agent binary, one small process per worker.
    let log = world.path(&format!("state/logs/{}.log", w.id));
    let writers = processes_naming(&log);
    assert_eq!(writers.len(), 1, "{writers:?}");
    let exe = std::fs::read_link(format!("/proc/{}/exe", writers[0].0)).unwrap();
    assert_eq!(exe, std::path::Path::new(env!("CARGO_BIN_EXE_esb-agent")));
    // Private memory is the per-worker cost; the binary's file pages are shared by all.
    let (_, rss, anon) = writers[0];
    eprintln!("log writer (esb-agent) rss {rss} KiB, private (RssAnon) {anon} KiB");
    assert!(
        anon > 0 && anon < 4 * 1024,
        "log writer private memory {anon} KiB"
    );

    // An agent restart leaves the writer running; the new agent reads the same log.
    a.terminate(Duration::from_secs(20)).unwrap();
    let mut b = world.spawn("e2e-logs-b", "destroy");
    let c = b.client(Duration::from_secs(30)).await.unwrap();
    let after: Vec<u32> = processes_naming(&log).iter().map(|p| p.0).collect();
    assert_eq!(after, [writers[0].0], "writer survived the restart");
    logtail::check(call(&c), &w.id, OWNER).await;

    let d = c
        .clone()
        .destroy_container(DestroyContainerRequest {
            function_name: String::new(),
            container_id: w.id.clone(),
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.success);
    esb_testkit::eventually("log writer exits", Duration::from_secs(15), || async {
        processes_naming(&log).is_empty().then_some(())
    })
    .await;
    assert_eq!(
        b.terminate(Duration::from_secs(30)).and_then(|s| s.code()),
        Some(0)
    );
    let left = world.leftovers();
    assert!(left.is_empty(), "leftovers: {left:?}");
}
