//! Chaos of the state dir (issue 8 §4), `esb-agent` binary on the dev containerd:
//! - on a small tmpfs that fills up: Ensure fails with RESOURCE_EXHAUSTED naming the cause and
//!   leaves nothing half-made, running workers keep answering, Ensure works again once space
//!   returns; on a read-only one the agent refuses to start with one line naming the cause;
//! - corrupted journal and last-used files at start: the agent starts, warns, adopts the live
//!   worker and can still destroy it without leftovers.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::process::Command;
use std::time::Duration;

use esb_proto::v1::agent_service_client::AgentServiceClient;
use esb_proto::v1::{
    DestroyContainerRequest, EnsureContainerRequest, InvokeWorkerRequest, WorkerInfo,
};
use tonic::transport::Channel;

#[path = "support/world.rs"]
mod support;
use support::{Net, World};

const FULL: Net = Net {
    namespace: "esbtsf",
    env: "sf",
    bridge: "esbt-sf",
    subnet: "10.199.207.0/24",
    scratch_prefix: "scratch-agent-sf-",
};
const CORRUPT: Net = Net {
    namespace: "esbtsc",
    env: "sc",
    bridge: "esbt-sc",
    subnet: "10.199.208.0/24",
    scratch_prefix: "scratch-agent-sc-",
};
const OWNER: &str = "owner-statedir";

type Client = AgentServiceClient<Channel>;

async fn ensure(c: &mut Client, image: &str, f: &str) -> Result<WorkerInfo, tonic::Status> {
    let mut req = tonic::Request::new(EnsureContainerRequest {
        function_name: f.into(),
        image: image.into(),
        env: Default::default(),
        owner_id: OWNER.into(),
    });
    req.set_timeout(Duration::from_secs(60));
    c.ensure_container(req).await.map(|r| r.into_inner())
}

async fn invoke(c: &mut Client, id: &str) -> Result<i32, tonic::Status> {
    let mut req = tonic::Request::new(InvokeWorkerRequest {
        container_id: id.into(),
        path: String::new(),
        payload: b"{}".to_vec(),
        headers: Default::default(),
        timeout_ms: 5_000,
        owner_id: OWNER.into(),
    });
    req.set_timeout(Duration::from_secs(10));
    c.invoke_worker(req)
        .await
        .map(|r| r.into_inner().status_code)
}

async fn list(c: &mut Client) -> Vec<String> {
    esb_testkit::agent::listed_ids(c, OWNER).await
}

async fn destroy(c: &mut Client, id: &str) {
    let ok = c
        .destroy_container(DestroyContainerRequest {
            function_name: String::new(),
            container_id: id.into(),
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .success;
    assert!(ok, "destroy {id}");
}

fn sh(cmd: &str) {
    let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// Waits until the world holds only what `live` workers (id, IP) own: their container, task,
/// snapshot, IP reservation, netns pin, log and one veth each (plus the agent's spare netns
/// pool, the tmpfs mount and `extra` names).
async fn eventually_only(world: &World, live: &[&WorkerInfo], extra: &[&str]) {
    let mut left = Vec::new();
    for _ in 0..200 {
        left = world.leftovers();
        let veths = left.iter().filter(|l| l.starts_with("veth ")).count();
        left.retain(|l| {
            !l.starts_with("veth ")
                && !l.contains("/state/cni/pool/")
                && !l.ends_with("/state")
                && !extra.iter().any(|a| l.contains(a))
                && !live
                    .iter()
                    .any(|w| l.contains(&w.id) || l.ends_with(&format!(" {}", w.ip_address)))
        });
        if left.is_empty() && veths == live.len() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("half-made (beyond {} live workers): {left:?}", live.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_then_read_only_state_dir_fails_clearly_and_recovers() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(&env, FULL);
    let image = world.image.clone();
    let state = world.path("state");
    std::fs::create_dir_all(&state).unwrap();
    sh(&format!("mount -t tmpfs -o size=8m esbt-state {state}"));
    let mut agent = world.spawn_with("e2e-statedir-full", "keep", &[("AGENT_GC_INTERVAL", "1s")]);
    let mut c = agent.client(Duration::from_secs(30)).await.unwrap();
    let w1 = ensure(&mut c, &image, "sf-one").await.unwrap();
    assert_eq!(invoke(&mut c, &w1.id).await.unwrap(), 200);

    // Full: fill the tmpfs (dd stops at ENOSPC).
    let _ = Command::new("dd")
        .args(["if=/dev/zero", &format!("of={state}/filler"), "bs=64k"])
        .output()
        .unwrap();
    let e = ensure(&mut c, &image, "sf-full").await.unwrap_err();
    println!("ensure on a full state dir: {:?} {}", e.code(), e.message());
    assert!(
        e.message().to_lowercase().contains("space"),
        "the error names the cause: {e:?}"
    );
    eventually_only(&world, &[&w1], &["filler"]).await;
    assert_eq!(
        invoke(&mut c, &w1.id).await.unwrap(),
        200,
        "w1 still serves"
    );
    assert_eq!(list(&mut c).await, vec![w1.id.clone()]);
    std::fs::remove_file(format!("{state}/filler")).unwrap();
    let w2 = ensure(&mut c, &image, "sf-after-full").await.unwrap();
    assert_eq!(invoke(&mut c, &w2.id).await.unwrap(), 200);

    for id in [&w1.id, &w2.id] {
        destroy(&mut c, id).await;
    }
    eventually_only(&world, &[], &[]).await;
    agent.stop_cleanly();

    // Read-only (a busy state dir cannot be remounted, so this is a start on a read-only one):
    // the agent refuses to start with a line naming the cause, then starts once it is writable.
    sh(&format!("mount -o remount,ro {state}"));
    let mut ro = world.spawn_with("e2e-statedir-ro", "keep", &[]);
    let st = ro.wait_exit(Duration::from_secs(30));
    let tail = ro.log_tail(5);
    println!("start on a read-only state dir: {st:?}: {tail}");
    assert_eq!(st.and_then(|s| s.code()), Some(1), "{tail}");
    assert!(tail.to_lowercase().contains("read-only"), "{tail}");
    drop(ro);
    sh(&format!("mount -o remount,rw {state}"));
    let mut agent = world.spawn_with("e2e-statedir-rw", "keep", &[]);
    let mut c = agent.client(Duration::from_secs(30)).await.unwrap();
    let w3 = ensure(&mut c, &image, "sf-after-ro").await.unwrap();
    assert_eq!(invoke(&mut c, &w3.id).await.unwrap(), 200);
    destroy(&mut c, &w3.id).await;
    eventually_only(&world, &[], &[]).await;
    agent.stop_cleanly();
    let mut left = world.leftovers();
    left.retain(|l| !l.ends_with("/state"));
    assert!(left.is_empty(), "leftovers: {left:?}");
    sh(&format!("umount {state}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_state_files_at_start_are_survived() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(&env, CORRUPT);
    let image = world.image.clone();
    let mut a = world.spawn("e2e-statedir-corrupt-a", "keep");
    let mut c = a.client(Duration::from_secs(30)).await.unwrap();
    let w = ensure(&mut c, &image, "sc-one").await.unwrap();
    assert_eq!(invoke(&mut c, &w.id).await.unwrap(), 200);
    assert_eq!(
        a.terminate(Duration::from_secs(30)).and_then(|s| s.code()),
        Some(0)
    );

    // Garbage in every state file the agent reads at start.
    let state = world.path("state");
    std::fs::write(format!("{state}/last-used.json"), b"{\"truncated\": [1, 2").unwrap();
    let journal = format!("{state}/cni/attachments");
    let entry = format!("{journal}/{}.json", w.id);
    assert!(
        std::path::Path::new(&entry).exists(),
        "journal entry {entry}"
    );
    std::fs::write(&entry, b"\x00\x01 not json").unwrap();
    std::fs::write(format!("{journal}/bogus.json"), b"[]").unwrap();

    let mut b = world.spawn("e2e-statedir-corrupt-b", "keep");
    let mut c = b.client(Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        list(&mut c).await,
        vec![w.id.clone()],
        "the live worker is adopted"
    );
    let log = std::fs::read_to_string(&b.log).unwrap();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && (l.contains("journal") || l.contains("last-used") || l.contains("attachment"))),
        "a warning names the corrupt file:\n{log}"
    );
    destroy(&mut c, &w.id).await;
    eventually_only(&world, &[], &[]).await;
    assert_eq!(
        b.terminate(Duration::from_secs(30)).and_then(|s| s.code()),
        Some(0)
    );
    let left = world.leftovers();
    assert!(left.is_empty(), "leftovers: {left:?}");
}
