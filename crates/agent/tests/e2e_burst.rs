//! Burst (review M4, issue 8 §1): 200 concurrent Ensures against the `esb-agent` binary on
//! the dev containerd, with a node cap of 40 workers. Before admission this drove containerd
//! into timeouts, starved a well-behaved client and left workers half made. Now: every Ensure
//! is answered (a worker, or RESOURCE_EXHAUSTED once the cap is reached, nothing else), the
//! other client's invokes and Lists keep being served meanwhile, GetCapabilities tells the
//! usage, and after the destroys nothing is left.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use esb_proto::v1::{
    EnsureContainerRequest, GetCapabilitiesRequest, InvokeWorkerRequest, ListContainersRequest,
};
use tonic::Code;

#[path = "support/world.rs"]
mod support;
use support::{Net, World};

const NET: Net = Net {
    namespace: "esbtbu",
    env: "bu",
    bridge: "esbt-bu",
    subnet: "10.199.209.0/24",
    scratch_prefix: "scratch-agent-bu-",
};
const NET_UNCAPPED: Net = Net {
    namespace: "esbtbv",
    env: "bv",
    bridge: "esbt-bv",
    subnet: "10.199.210.0/24",
    scratch_prefix: "scratch-agent-bv-",
};
const OWNER: &str = "owner-burst";
const CALM: &str = "owner-calm";
const BURST: usize = 200;
const MAX_WORKERS: usize = 40;

fn ensure_req(image: &str, owner: &str, n: usize) -> EnsureContainerRequest {
    EnsureContainerRequest {
        function_name: format!("burst-{}", n % 10),
        image: image.to_string(),
        env: Default::default(),
        owner_id: owner.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_ensure_burst_over_the_node_cap_is_admitted_or_refused_cleanly() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(&env, NET);
    burst(&world, "40", MAX_WORKERS - 1).await;
}

/// Without a worker cap: all 200 queue (8 at a time) and all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_ensure_burst_without_a_cap_queues_and_all_succeed() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(&env, NET_UNCAPPED);
    burst(&world, "unlimited", BURST).await;
}

async fn burst(world: &World, max_workers: &str, expect_workers: usize) {
    let image = world.image.clone();
    let mut agent = world.spawn_with(
        "e2e-burst",
        "keep",
        &[
            ("AGENT_MAX_WORKERS", max_workers),
            ("AGENT_MEMORY_BUDGET", "unlimited"),
            ("AGENT_MAX_CONCURRENT_ENSURES", "8"),
        ],
    );
    // The burst and the calm client use separate connections, like separate gateways.
    let mut calm = agent.client(Duration::from_secs(30)).await.unwrap();
    let burst = agent.client(Duration::from_secs(30)).await.unwrap();

    let mine = calm
        .ensure_container(ensure_req(&image, CALM, 0))
        .await
        .unwrap()
        .into_inner();

    // The calm client: an invoke and a List every 50 ms, each within 5 s, all through the burst.
    let stop = Arc::new(AtomicBool::new(false));
    let calm_task = {
        let (mut c, stop, id) = (calm.clone(), stop.clone(), mine.id.clone());
        tokio::spawn(async move {
            let (mut calls, mut worst) = (0u32, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let mut inv = tonic::Request::new(InvokeWorkerRequest {
                    container_id: id.clone(),
                    path: String::new(),
                    payload: b"{}".to_vec(),
                    headers: Default::default(),
                    timeout_ms: 5_000,
                    owner_id: CALM.into(),
                });
                inv.set_timeout(Duration::from_secs(5));
                let r = c.invoke_worker(inv).await.unwrap().into_inner();
                assert_eq!(r.status_code, 200);
                let mut ls = tonic::Request::new(ListContainersRequest {
                    owner_id: CALM.into(),
                });
                ls.set_timeout(Duration::from_secs(5));
                let listed = c.list_containers(ls).await.unwrap().into_inner().containers;
                assert_eq!(listed.len(), 1);
                worst = worst.max(t.elapsed());
                calls += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (calls, worst)
        })
    };

    let started = Instant::now();
    let calls: Vec<_> = (0..BURST)
        .map(|n| {
            let (mut c, image) = (burst.clone(), image.clone());
            tokio::spawn(async move {
                let mut req = tonic::Request::new(ensure_req(&image, OWNER, n));
                req.set_timeout(Duration::from_secs(120));
                let t = Instant::now();
                (c.ensure_container(req).await, t.elapsed())
            })
        })
        .collect();
    let mut ids = Vec::new();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut slowest_ok = Duration::ZERO;
    for call in calls {
        let (r, took) = call.await.unwrap();
        match r {
            Ok(w) => {
                ids.push(w.into_inner().id);
                slowest_ok = slowest_ok.max(took);
            }
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(s.message().contains("AGENT_MAX_WORKERS"), "{s:?}");
                *codes.entry(format!("{:?}", s.code())).or_default() += 1;
            }
        }
    }
    let burst_took = started.elapsed();
    let caps = calm
        .get_capabilities(GetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    stop.store(true, Ordering::Relaxed);
    let (calm_calls, calm_worst) = calm_task.await.unwrap();
    println!(
        "burst (max workers {max_workers}): {BURST} Ensures in {burst_took:?}: {} workers (slowest {slowest_ok:?}), refused {codes:?}; \
         calm client {calm_calls} invoke+List rounds, worst {calm_worst:?}",
        ids.len()
    );
    assert_eq!(ids.len(), expect_workers);
    assert_eq!(codes.values().sum::<usize>(), BURST - ids.len());
    assert!(calm_calls > 0);
    assert_eq!(caps.max_workers, max_workers.parse().unwrap_or(0));
    // The calm client's worker takes one place.
    assert_eq!(caps.workers_used, expect_workers as u64 + 1);
    assert_eq!(caps.max_concurrent_ensures, 8);

    // Every worker made is whole: listed and answering.
    let listed = calm
        .list_containers(ListContainersRequest {
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), ids.len());

    for id in ids.iter().chain(std::iter::once(&mine.id)) {
        let owner = if *id == mine.id { CALM } else { OWNER };
        esb_testkit::agent::destroy_ok(&mut calm, id, owner).await;
    }
    agent.stop_cleanly();
    let left = world.leftovers();
    assert!(left.is_empty(), "leftovers: {left:?}");
}
