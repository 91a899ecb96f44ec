//! The gateway's cold path (`cargo bench -p esb-agent --bench coldpath_e2e`; needs the dev
//! containerd, run it under the daemon lock): the release `esb-agent` binary on containerd,
//! real workers on the CNI bridge, measured as the upstream gateway sees it:
//! - Ensure alone;
//! - "gateway view": Ensure, then TCP connects to ip:8080 with a 100 ms sleep after each
//!   refused one (what the gateway does) until one succeeds;
//! - Ensure → first InvokeWorker answered;
//!
//! each with `AGENT_ENSURE_READY_TIMEOUT=0` (answer when the process runs, the old behaviour)
//! and with the default 2 s (answer when the worker accepts connections), and then the same
//! with `AGENT_STANDBY_PER_SPEC=1`: every Ensure claims a standby (the pool refilled between
//! Ensures, outside the figures). The floor is the same agent's warm invoke (the worker
//! already running).
//!
//! Env: `BENCH_ENSURES` (cold starts per row, default 20), `BENCH_READY_FIRST=1` (run the
//! ready-wait row first).

#![allow(clippy::unwrap_used)] // the shared test world panics as its failure report

#[path = "../tests/support/world.rs"]
mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::bail;
use esb_proto::v1::agent_service_client::AgentServiceClient;
use esb_proto::v1::{
    DestroyContainerRequest, EnsureContainerRequest, GetCapabilitiesRequest,
    GetContainerMetricsRequest, InvokeWorkerRequest, PauseContainerRequest, ResumeContainerRequest,
};
use support::{Net, World};
use tonic::transport::Channel;

const NET: Net = Net {
    namespace: "esbtcpb",
    env: "cpb",
    bridge: "esbt-cpb",
    subnet: "10.199.198.0/24",
    scratch_prefix: "scratch-coldpath-bench-",
};
const OWNER: &str = "owner-bench";

#[derive(Default)]
struct Row {
    ensure: Vec<f64>,
    gateway: Vec<f64>,
    first_invoke: Vec<f64>,
    warm_invoke: Vec<f64>,
    /// Resume of the paused worker, then an invoke: what a paused standby would add to a
    /// claim (standby row only).
    resume_invoke: Vec<f64>,
    /// The claimed worker's memory while idle, bytes (standby row only).
    idle_memory: Vec<f64>,
    probe_retries: u32,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

async fn ensure(c: &mut AgentServiceClient<Channel>, image: &str, n: usize) -> (String, IpAddr) {
    let w = c
        .ensure_container(EnsureContainerRequest {
            function_name: format!("cold-{n}"),
            image: image.to_string(),
            env: Default::default(),
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    (w.id, w.ip_address.parse().unwrap())
}

async fn invoke(c: &mut AgentServiceClient<Channel>, id: &str) {
    let r = c
        .invoke_worker(InvokeWorkerRequest {
            container_id: id.to_string(),
            payload: b"{}".to_vec(),
            timeout_ms: 10_000,
            owner_id: OWNER.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status_code, 200);
}

async fn destroy(c: &mut AgentServiceClient<Channel>, id: String) {
    c.destroy_container(DestroyContainerRequest {
        container_id: id,
        owner_id: OWNER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// The gateway's probe: connect; on failure sleep 100 ms and retry. Returns the retries.
async fn gateway_probe(ip: IpAddr) -> u32 {
    let addr = SocketAddr::new(ip, 8080);
    for retries in 0.. {
        match tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(_)) => return retries,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    unreachable!()
}

async fn row(world: &World, ready_timeout: &str, n: usize) -> anyhow::Result<Row> {
    let mut agent = world.spawn_with(
        "bench-coldpath",
        "destroy",
        &[("AGENT_ENSURE_READY_TIMEOUT", ready_timeout)],
    );
    let mut c = agent.client(Duration::from_secs(30)).await?;
    let image = world.image.clone();
    // Warm-up: the image is pulled and unpacked once, outside the figures.
    let (id, _) = ensure(&mut c, &image, 0).await;
    invoke(&mut c, &id).await;
    destroy(&mut c, id).await;
    let mut r = Row::default();
    for i in 0..n {
        // Ensure + the gateway's probe.
        let t = Instant::now();
        let (id, ip) = ensure(&mut c, &image, i).await;
        r.ensure.push(ms(t.elapsed()));
        r.probe_retries += gateway_probe(ip).await;
        r.gateway.push(ms(t.elapsed()));
        destroy(&mut c, id).await;
        // Ensure → first invoke answered (the agent's own connect retries cover a worker
        // that is not listening yet).
        let t = Instant::now();
        let (id, _) = ensure(&mut c, &image, i).await;
        invoke(&mut c, &id).await;
        r.first_invoke.push(ms(t.elapsed()));
        let t = Instant::now();
        invoke(&mut c, &id).await;
        r.warm_invoke.push(ms(t.elapsed()));
        destroy(&mut c, id).await;
    }
    agent.terminate(Duration::from_secs(20));
    Ok(r)
}

/// Until the agent reports a ready standby (the refill after the last Ensure).
async fn standby_ready(c: &mut AgentServiceClient<Channel>) {
    let until = Instant::now() + Duration::from_secs(30);
    while c
        .get_capabilities(GetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .standby_ready
        == 0
    {
        assert!(Instant::now() < until, "no standby within 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every Ensure of one spec claims a standby (`AGENT_STANDBY_PER_SPEC=1`, ready wait 2 s).
async fn standby_row(world: &World, n: usize) -> anyhow::Result<Row> {
    let mut agent = world.spawn_with(
        "bench-coldpath-standby",
        "destroy",
        &[("AGENT_STANDBY_PER_SPEC", "1")],
    );
    let mut c = agent.client(Duration::from_secs(30)).await?;
    let image = world.image.clone();
    // Warm-up: the pull, and the first Ensure that seeds the pool.
    let (id, _) = ensure(&mut c, &image, 0).await;
    invoke(&mut c, &id).await;
    destroy(&mut c, id).await;
    let mut r = Row::default();
    for _ in 0..n {
        standby_ready(&mut c).await;
        let t = Instant::now();
        let (id, ip) = ensure(&mut c, &image, 0).await;
        r.ensure.push(ms(t.elapsed()));
        r.probe_retries += gateway_probe(ip).await;
        r.gateway.push(ms(t.elapsed()));
        destroy(&mut c, id).await;
        standby_ready(&mut c).await;
        let t = Instant::now();
        let (id, _) = ensure(&mut c, &image, 0).await;
        invoke(&mut c, &id).await;
        r.first_invoke.push(ms(t.elapsed()));
        let t = Instant::now();
        invoke(&mut c, &id).await;
        r.warm_invoke.push(ms(t.elapsed()));
        let m = c
            .get_container_metrics(GetContainerMetricsRequest {
                container_id: id.clone(),
                owner_id: OWNER.into(),
            })
            .await?
            .into_inner()
            .metrics
            .unwrap_or_default();
        r.idle_memory.push(m.memory_current as f64);
        // What keeping standbys paused would add to a claim: a resume before the invoke.
        c.pause_container(PauseContainerRequest {
            container_id: id.clone(),
            owner_id: OWNER.into(),
        })
        .await?;
        let t = Instant::now();
        c.resume_container(ResumeContainerRequest {
            container_id: id.clone(),
            owner_id: OWNER.into(),
        })
        .await?;
        invoke(&mut c, &id).await;
        r.resume_invoke.push(ms(t.elapsed()));
        destroy(&mut c, id).await;
    }
    agent.terminate(Duration::from_secs(20));
    Ok(r)
}

async fn bench(world: &World) -> anyhow::Result<()> {
    let n = std::env::var("BENCH_ENSURES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    // `BENCH_READY_FIRST=1` swaps the order, to tell the setting from drift over the run.
    let (off, on) = if std::env::var("BENCH_READY_FIRST").is_ok_and(|v| v == "1") {
        let on = row(world, "2s", n).await?;
        (row(world, "0", n).await?, on)
    } else {
        let off = row(world, "0", n).await?;
        (off, row(world, "2s", n).await?)
    };
    println!();
    println!("## The gateway's cold path (release agent, containerd, {n} cold starts per row)");
    println!();
    println!("| | ready wait off: p50 ms | p90 ms | ready wait 2 s: p50 ms | p90 ms |");
    println!("|---|---|---|---|---|");
    let line = |name: &str, a: &mut Vec<f64>, b: &mut Vec<f64>| {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
            pct(a, 0.5),
            pct(a, 0.9),
            pct(b, 0.5),
            pct(b, 0.9)
        );
    };
    let (mut off, mut on) = (off, on);
    line("Ensure", &mut off.ensure, &mut on.ensure);
    line(
        "gateway view (Ensure + TCP probe, 100 ms sleeps)",
        &mut off.gateway,
        &mut on.gateway,
    );
    line(
        "Ensure → first invoke answered",
        &mut off.first_invoke,
        &mut on.first_invoke,
    );
    line(
        "floor: warm invoke of the same worker",
        &mut off.warm_invoke,
        &mut on.warm_invoke,
    );
    println!();
    println!(
        "Gateway probe retries (100 ms each): {} with the wait off, {} with it on.",
        off.probe_retries, on.probe_retries
    );
    let mut sb = standby_row(world, n).await?;
    println!();
    println!("## Standby claim (`AGENT_STANDBY_PER_SPEC=1`, ready wait 2 s, {n} claims per row)");
    println!();
    println!("| | p50 ms | p90 ms | cold (ready wait 2 s) p50 ms |");
    println!("|---|---|---|---|");
    let claim = |name: &str, a: &mut Vec<f64>, cold: &mut Vec<f64>| {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            pct(a, 0.5),
            pct(a, 0.9),
            pct(cold, 0.5)
        );
    };
    claim("Ensure (claim)", &mut sb.ensure, &mut on.ensure);
    claim(
        "gateway view (Ensure + TCP probe)",
        &mut sb.gateway,
        &mut on.gateway,
    );
    claim(
        "Ensure → first invoke answered",
        &mut sb.first_invoke,
        &mut on.first_invoke,
    );
    claim(
        "floor: warm invoke of the same worker",
        &mut sb.warm_invoke,
        &mut on.warm_invoke,
    );
    println!(
        "| a paused standby instead: Resume + invoke | {:.1} | {:.1} | |",
        pct(&mut sb.resume_invoke, 0.5),
        pct(&mut sb.resume_invoke, 0.9)
    );
    println!();
    println!(
        "Gateway probe retries after a claim: {}. An idle worker's memory (memory.current): \
         p50 {:.1} MiB (what a standby holds, running or paused).",
        sb.probe_retries,
        pct(&mut sb.idle_memory, 0.5) / (1024.0 * 1024.0)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::containerd() else {
        eprintln!("coldpath_e2e: no dev containerd (ESB_TEST_CONTAINERD_SOCKET); skipped");
        return Ok(());
    };
    let world = World::new(&env, NET);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let res = rt.block_on(bench(&world));
    let left = world.leftovers();
    drop(world);
    res?;
    if !left.is_empty() {
        bail!("leftovers after the benchmark: {left:?}");
    }
    Ok(())
}
