//! Soak (issue 8 §4): the `esb-agent` binary on the dev containerd runs `ESB_SOAK_CYCLES`
//! (default 300) ensure → invoke → destroy cycles, 8 at a time, while its RSS, open fds and
//! threads are sampled from /proc. After a warm-up, none may grow beyond a stated bound, and
//! nothing is left at the end.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use esb_proto::v1::agent_service_client::AgentServiceClient;
use esb_proto::v1::{DestroyContainerRequest, EnsureContainerRequest, InvokeWorkerRequest};
use tonic::transport::Channel;

#[path = "support/world.rs"]
mod support;
use support::{Net, World};

const NET: Net = Net {
    namespace: "esbtsk",
    env: "sk",
    bridge: "esbt-sk",
    subnet: "10.199.205.0/24",
    scratch_prefix: "scratch-agent-sk-",
};
const OWNER: &str = "owner-soak";
const PARALLEL: usize = 8;
/// Growth allowed after the warm-up: allocator high-water marks and pools settle early;
/// a per-cycle leak of even 64 KiB over 250 cycles would exceed it.
const RSS_GROWTH_MAX_KIB: u64 = 16 * 1024;
const FD_GROWTH_MAX: u64 = 16;
const THREAD_GROWTH_MAX: u64 = 8;

#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: u64,
    threads: u64,
}

fn sample(pid: u32) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
    };
    Sample {
        rss_kib: field("VmRSS:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count() as u64,
        threads: field("Threads:"),
    }
}

async fn cycle(mut c: AgentServiceClient<Channel>, image: String, n: usize) {
    let w = c
        .ensure_container(EnsureContainerRequest {
            function_name: format!("soak-{}", n % 16),
            image,
            env: Default::default(),
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let r = c
        .invoke_worker(InvokeWorkerRequest {
            container_id: w.id.clone(),
            path: String::new(),
            payload: b"{}".to_vec(),
            headers: Default::default(),
            timeout_ms: 10_000,
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status_code, 200);
    let ok = c
        .destroy_container(DestroyContainerRequest {
            function_name: String::new(),
            container_id: w.id,
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .success;
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_ensure_invoke_destroy_stays_flat() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let cycles: usize = std::env::var("ESB_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let warmup = (cycles / 6).max(PARALLEL);
    let world = World::new(&env, NET);
    let image = world.image.clone();
    let mut agent = world.spawn("e2e-soak", "keep");
    let c = agent.client(Duration::from_secs(30)).await.unwrap();
    let pid = agent.pid();

    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..PARALLEL)
        .map(|_| {
            let (c, image, next, done) = (c.clone(), image.clone(), next.clone(), done.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= cycles {
                        break;
                    }
                    cycle(c.clone(), image.clone(), n).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut after_warmup: Option<Sample> = None;
    let mut peak = sample(pid);
    let mut samples = 0;
    while done.load(Ordering::Relaxed) < cycles && workers.iter().any(|w| !w.is_finished()) {
        let s = sample(pid);
        samples += 1;
        if after_warmup.is_none() && done.load(Ordering::Relaxed) >= warmup {
            after_warmup = Some(s);
        }
        if after_warmup.is_some() {
            peak.rss_kib = peak.rss_kib.max(s.rss_kib);
            peak.fds = peak.fds.max(s.fds);
            peak.threads = peak.threads.max(s.threads);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = started.elapsed();
    let end = sample(pid);
    let base = after_warmup.unwrap_or(end);
    println!(
        "soak: {cycles} cycles x{PARALLEL} in {elapsed:?} ({:.1} cycles/s), {samples} samples; \
         after warm-up ({warmup} cycles) {base:?}; peak after warm-up {peak:?}; end {end:?}",
        cycles as f64 / elapsed.as_secs_f64()
    );
    assert!(
        end.rss_kib <= base.rss_kib + RSS_GROWTH_MAX_KIB,
        "RSS grew {} KiB after warm-up (max {RSS_GROWTH_MAX_KIB})",
        end.rss_kib.saturating_sub(base.rss_kib)
    );
    assert!(
        end.fds <= base.fds + FD_GROWTH_MAX,
        "fds {} -> {}",
        base.fds,
        end.fds
    );
    assert!(
        end.threads <= base.threads + THREAD_GROWTH_MAX,
        "threads {} -> {}",
        base.threads,
        end.threads
    );
    assert_eq!(
        agent
            .terminate(Duration::from_secs(30))
            .and_then(|s| s.code()),
        Some(0),
        "{}",
        agent.log_tail(20)
    );
    let left = world.leftovers();
    assert!(left.is_empty(), "leftovers: {left:?}");
}
