//! Chaos, end to end (issue 8 §4): the `esb-agent` binary on a private containerd of this
//! test, which is stopped and restarted while 8 Ensures and a stream of invokes run. Health
//! turns NOT_SERVING and back; every Ensure answers (a worker, or an error the gateway retries
//! elsewhere: UNAVAILABLE, DEADLINE_EXCEEDED); the workers
//! that lived through it are still listed and served; after destroying everything and a GC
//! pass nothing is left, on the daemon or the host.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use esb_proto::v1::agent_service_client::AgentServiceClient;
use esb_proto::v1::{
    DestroyContainerRequest, EnsureContainerRequest, InvokeWorkerRequest, WorkerInfo,
};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/world.rs"]
mod support;
use daemon::Daemon;
use support::{Net, World};

const NET: Net = Net {
    namespace: "esbtch",
    env: "ch",
    bridge: "esbt-ch",
    subnet: "10.199.204.0/24",
    scratch_prefix: "scratch-agent-ch-",
};
const OWNER: &str = "owner-chaos";
const SERVING: i32 = 1;

type Client = AgentServiceClient<Channel>;

async fn health(addr: &str) -> Option<i32> {
    let ch = Channel::from_shared(addr.to_string())
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .ok()?;
    let mut h = HealthClient::new(ch);
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    req.set_timeout(Duration::from_secs(2));
    h.check(req).await.ok().map(|r| r.into_inner().status)
}

async fn ensure(
    mut c: Client,
    image: String,
    function: String,
) -> Result<WorkerInfo, tonic::Status> {
    let mut req = tonic::Request::new(EnsureContainerRequest {
        function_name: function,
        image,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_restart_under_load() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let daemon_dir = esb_testkit::agent::scratch_dir("scratch-agent-chd-").unwrap();
    let mut daemon = Daemon::start(daemon_dir.path());
    let socket = daemon.socket();
    esb_testkit::eventually("private containerd up", Duration::from_secs(20), || async {
        Path::new(&socket).exists().then_some(())
    })
    .await;
    let world = World::on_socket(&env, NET, &socket);
    let image = world.image.clone();
    let mut agent = world.spawn_with(
        "e2e-chaos",
        "keep",
        &[
            ("AGENT_HEALTH_INTERVAL", "200ms"),
            ("AGENT_GC_INTERVAL", "1s"),
        ],
    );
    let mut c = agent.client(Duration::from_secs(30)).await.unwrap();
    let addr = agent.addr.clone();

    // Two workers that must live through the outage.
    let mut survivors = Vec::new();
    for f in ["chaos-keep-1", "chaos-keep-2"] {
        let w = ensure(c.clone(), image.clone(), f.into()).await.unwrap();
        assert_eq!(invoke(&mut c, &w.id).await.unwrap(), 200);
        survivors.push(w.id);
    }

    // A stream of invokes to them for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stream = tokio::spawn({
        let (mut c, ids, stop, ok, failed) = (
            c.clone(),
            survivors.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        async move {
            while !stop.load(Ordering::Relaxed) {
                for id in &ids {
                    match invoke(&mut c, id).await {
                        Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    // 8 Ensures in flight while containerd stops.
    let ensures: Vec<_> = (0..8)
        .map(|i| tokio::spawn(ensure(c.clone(), image.clone(), format!("chaos-burst-{i}"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    daemon.stop();
    esb_testkit::eventually("health NOT_SERVING", Duration::from_secs(20), || async {
        (health(&addr).await.is_some_and(|s| s != SERVING)).then_some(())
    })
    .await;
    daemon.restart();
    esb_testkit::eventually("health SERVING again", Duration::from_secs(60), || async {
        (health(&addr).await == Some(SERVING)).then_some(())
    })
    .await;

    // Every Ensure answered: a worker, or a clean error a gateway can act on.
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut made = Vec::new();
    for e in ensures {
        match e.await.unwrap() {
            Ok(w) => {
                *outcomes.entry("OK".into()).or_default() += 1;
                made.push(w.id);
            }
            Err(s) => {
                assert!(
                    matches!(
                        s.code(),
                        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted
                    ),
                    "the gateway retries elsewhere only on UNAVAILABLE/DEADLINE_EXCEEDED: {s:?}"
                );
                *outcomes.entry(format!("{:?}", s.code())).or_default() += 1;
            }
        }
    }
    println!("ensure outcomes during the restart: {outcomes:?}");
    stop.store(true, Ordering::Relaxed);
    stream.await.unwrap();
    println!(
        "invokes during the run: {} ok, {} failed",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );

    // After the restart, Ensures work again at once.
    for f in ["chaos-after-1", "chaos-after-2"] {
        made.push(ensure(c.clone(), image.clone(), f.into()).await.unwrap().id);
    }

    // The survivors and the Ensures that succeeded are listed and answer.
    let listed = list(&mut c).await;
    for id in survivors.iter().chain(&made) {
        assert!(
            listed.contains(id),
            "{id} not listed after the restart: {listed:?}"
        );
        assert_eq!(invoke(&mut c, id).await.unwrap(), 200, "{id}");
    }

    // Destroy everything listed; GC passes take what half-made Ensures left; nothing remains.
    for id in &listed {
        let ok = c
            .destroy_container(DestroyContainerRequest {
                function_name: String::new(),
                container_id: id.clone(),
                owner_id: OWNER.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .success;
        assert!(ok, "destroy {id}");
    }
    // (The agent's pool of spare netns stays until it stops.)
    let mut last = Vec::new();
    for _ in 0..300 {
        last = world.leftovers();
        last.retain(|l| !l.contains("/state/cni/pool/"));
        if last.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last.is_empty(), "left after destroy + GC passes: {last:?}");
    assert!(list(&mut c).await.is_empty());
    agent.stop_cleanly();
    let left = world.leftovers();
    assert!(left.is_empty(), "left after the agent stopped: {left:?}");
    drop(world);
    drop(daemon);
}
