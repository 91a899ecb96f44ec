//! What a user of InvokeWorker gets (`cargo bench -p esb-agent --bench invoke_e2e`; needs the
//! dev containerd, run it under the daemon lock): the release `esb-agent` binary on the
//! containerd backend, real worker containers on the CNI bridge, one tonic channel.
//! - floor: a bare tonic unary round trip (GetCapabilities) to the same agent;
//! - 1 caller: InvokeWorker vs a direct keep-alive POST to the same worker, `{"echo":true}`,
//!   interleaved ABBA blocks; added p50/p99 = agent − direct;
//! - 16 callers over 16 workers: req/s through the agent vs direct, ABBA phases.
//! - floor proxy (`support/floor_proxy.rs`): the least a tonic → hyper proxy does, measured
//!   beside the agent in both views; how close the agent is to what any proxy of this shape
//!   gets on this machine.
//!
//! Env: `BENCH_CALLS` (1-caller calls per side, default 5000), `BENCH_SECS` (seconds per
//! 16-caller phase, default 3), `BENCH_AGENT_LOG_LEVEL` (the agent's `AGENT_LOG_LEVEL`, default
//! `info`; `warn` turns the per-RPC spans and log lines off: the span A/B).

#![allow(clippy::unwrap_used)] // the shared test world panics as its failure report

#[path = "support/floor_proxy.rs"]
mod floor_proxy;
#[path = "../tests/support/world.rs"]
mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use esb_proto::v1::agent_service_client::AgentServiceClient;
use esb_proto::v1::{
    DestroyContainerRequest, EnsureContainerRequest, GetCapabilitiesRequest, InvokeWorkerRequest,
};
use support::{Net, World};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;

const NET: Net = Net {
    namespace: "esbthpb",
    env: "hpb",
    bridge: "esbt-hpb",
    subnet: "10.199.197.0/24",
    scratch_prefix: "scratch-hotpath-bench-",
};
const OWNER: &str = "owner-bench";
const PAYLOAD: &[u8] = br#"{"echo":true}"#;
const WORKERS: usize = 16;
const BLOCK: usize = 250;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A direct keep-alive HTTP/1.1 client to one worker: the request in one write, the response
/// read until its Content-Length (the test worker always sends one).
struct Direct {
    stream: TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl Direct {
    async fn connect(ip: IpAddr) -> anyhow::Result<Self> {
        let addr = SocketAddr::new(ip, 8080);
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut request = format!(
            "POST /2015-03-31/functions/function/invocations HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\n\r\n",
            PAYLOAD.len()
        )
        .into_bytes();
        request.extend_from_slice(PAYLOAD);
        Ok(Self {
            stream,
            request,
            buf: Vec::with_capacity(8192),
        })
    }

    async fn call(&mut self) -> anyhow::Result<()> {
        self.stream.write_all(&self.request).await?;
        self.buf.clear();
        loop {
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("worker closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .context("no content-length")?;
                while self.buf.len() < end + 4 + len {
                    let n = self.stream.read(&mut chunk).await?;
                    if n == 0 {
                        bail!("worker closed the connection");
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                if !head.starts_with("http/1.1 200") {
                    bail!("worker answered {}", head.lines().next().unwrap_or(""));
                }
                return Ok(());
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Agent,
    Direct,
    Proxy,
}

fn invoke_req(id: &str) -> InvokeWorkerRequest {
    InvokeWorkerRequest {
        container_id: id.into(),
        owner_id: OWNER.into(),
        payload: PAYLOAD.to_vec(),
        timeout_ms: 10_000,
        ..Default::default()
    }
}

async fn agent_call(c: &mut AgentServiceClient<Channel>, id: &str) -> anyhow::Result<()> {
    let r = c.invoke_worker(invoke_req(id)).await?.into_inner();
    if r.status_code != 200 {
        bail!("worker answered {}", r.status_code);
    }
    Ok(())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Calls/s of `callers` tasks, task `i` running `call(i)` (which returns its call count).
async fn throughput<F, Fut>(callers: usize, call: F) -> anyhow::Result<f64>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let call = call.clone();
            tokio::spawn(async move { call(i).await })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

async fn bench(world: &World) -> anyhow::Result<()> {
    let calls = env_usize("BENCH_CALLS", 5000);
    let secs = env_usize("BENCH_SECS", 3) as u64;
    let level = std::env::var("BENCH_AGENT_LOG_LEVEL").unwrap_or_else(|_| "info".into());
    let mut agent = world.spawn_with(
        "bench-invoke-e2e",
        "destroy",
        &[("AGENT_LOG_LEVEL", level.as_str())],
    );
    println!("agent log level: {level}");
    let mut c = agent.client(Duration::from_secs(30)).await?;
    let mut workers = Vec::new();
    for i in 0..WORKERS {
        let w = c
            .ensure_container(EnsureContainerRequest {
                function_name: format!("bench-{i}"),
                image: world.image.clone(),
                env: Default::default(),
                owner_id: OWNER.into(),
            })
            .await?
            .into_inner();
        workers.push((w.id, w.ip_address.parse::<IpAddr>()?));
    }
    let result = measure(&mut c, &workers, calls, secs).await;
    for (id, _) in &workers {
        let _ = c
            .destroy_container(DestroyContainerRequest {
                container_id: id.clone(),
                owner_id: OWNER.into(),
                ..Default::default()
            })
            .await;
    }
    agent.terminate(Duration::from_secs(20));
    result
}

async fn measure(
    c: &mut AgentServiceClient<Channel>,
    workers: &[(String, IpAddr)],
    calls: usize,
    secs: u64,
) -> anyhow::Result<()> {
    let (id, ip) = workers[0].clone();
    let mut direct = Direct::connect(ip).await?;
    for _ in 0..200 {
        agent_call(c, &id).await?;
        direct.call().await?;
        c.get_capabilities(GetCapabilitiesRequest {}).await?;
    }
    // Floor: a bare tonic unary round trip to the same agent.
    let mut floor = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        c.get_capabilities(GetCapabilitiesRequest {}).await?;
        floor.push(t.elapsed().as_secs_f64() * 1e6);
    }
    // The floor proxy, on its own runtime, and a channel to it.
    let floor_proxy = floor_proxy::Floor::start(workers)?;
    let mut p = AgentServiceClient::new(
        Channel::from_shared(format!("http://{}", floor_proxy.addr))?
            .connect()
            .await?,
    );
    for _ in 0..200 {
        agent_call(&mut p, &id).await?;
    }
    // 1 caller: blocks of agent, direct, proxy, then the reverse order.
    let (mut a, mut b, mut fp) = (
        Vec::with_capacity(calls),
        Vec::with_capacity(calls),
        Vec::with_capacity(calls),
    );
    let blocks = calls.div_ceil(BLOCK);
    for blk in 0..blocks {
        let order = if blk % 2 == 0 {
            [Side::Agent, Side::Direct, Side::Proxy]
        } else {
            [Side::Proxy, Side::Direct, Side::Agent]
        };
        for side in order {
            for _ in 0..BLOCK {
                let t = Instant::now();
                match side {
                    Side::Agent => agent_call(c, &id).await?,
                    Side::Direct => direct.call().await?,
                    Side::Proxy => agent_call(&mut p, &id).await?,
                }
                let us = t.elapsed().as_secs_f64() * 1e6;
                match side {
                    Side::Agent => a.push(us),
                    Side::Direct => b.push(us),
                    Side::Proxy => fp.push(us),
                }
            }
        }
    }
    let (floor, a, b, fp) = (sorted(floor), sorted(a), sorted(b), sorted(fp));
    // 16 callers over 16 workers: agent, direct and proxy phases, ABCCBA.
    let (mut agent_rps, mut direct_rps, mut proxy_rps) = (Vec::new(), Vec::new(), Vec::new());
    let ws: Arc<Vec<(String, IpAddr)>> = Arc::new(workers.to_vec());
    for side in [
        Side::Agent,
        Side::Direct,
        Side::Proxy,
        Side::Proxy,
        Side::Direct,
        Side::Agent,
    ] {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let ws = ws.clone();
        let rps = if side == Side::Direct {
            throughput(workers.len(), move |i| {
                let ip = ws[i].1;
                async move {
                    let mut d = Direct::connect(ip).await?;
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        d.call().await?;
                        n += 1;
                    }
                    Ok(n)
                }
            })
            .await?
        } else {
            let ch = if side == Side::Agent {
                c.clone()
            } else {
                p.clone()
            };
            throughput(workers.len(), move |i| {
                let (mut c, id) = (ch.clone(), ws[i].0.clone());
                async move {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        agent_call(&mut c, &id).await?;
                        n += 1;
                    }
                    Ok(n)
                }
            })
            .await?
        };
        match side {
            Side::Agent => agent_rps.push(rps),
            Side::Direct => direct_rps.push(rps),
            Side::Proxy => proxy_rps.push(rps),
        }
    }
    drop(p);
    drop(floor_proxy);
    // Floor of the ratio: the same 16 callers on the same channel doing bare tonic unary
    // round trips (no worker behind them).
    let floor_deadline = Instant::now() + Duration::from_secs(secs);
    let ch = c.clone();
    let floor_rps = throughput(workers.len(), move |_| {
        let mut c = ch.clone();
        async move {
            let mut n = 0u64;
            while Instant::now() < floor_deadline {
                c.get_capabilities(GetCapabilitiesRequest {}).await?;
                n += 1;
            }
            Ok(n)
        }
    })
    .await?;
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (ar, dr, pr) = (avg(&agent_rps), avg(&direct_rps), avg(&proxy_rps));
    println!();
    println!(
        "## InvokeWorker through the release agent (containerd, real workers, {} calls/side)",
        a.len()
    );
    println!();
    println!("| 1 caller | p50 µs | p99 µs |");
    println!("|---|---|---|");
    println!(
        "| bare tonic unary (GetCapabilities) | {:.0} | {:.0} |",
        pct(&floor, 0.5),
        pct(&floor, 0.99)
    );
    println!(
        "| InvokeWorker via agent | {:.0} | {:.0} |",
        pct(&a, 0.5),
        pct(&a, 0.99)
    );
    println!(
        "| direct keep-alive POST | {:.0} | {:.0} |",
        pct(&b, 0.5),
        pct(&b, 0.99)
    );
    println!(
        "| floor proxy (tonic + hyper, nothing else) | {:.0} | {:.0} |",
        pct(&fp, 0.5),
        pct(&fp, 0.99)
    );
    println!(
        "| **added by the agent** | **{:.0}** | **{:.0}** |",
        pct(&a, 0.5) - pct(&b, 0.5),
        pct(&a, 0.99) - pct(&b, 0.99)
    );
    println!(
        "| added by the floor proxy | {:.0} | {:.0} |",
        pct(&fp, 0.5) - pct(&b, 0.5),
        pct(&fp, 0.99) - pct(&b, 0.99)
    );
    println!();
    println!("| {WORKERS} callers over {WORKERS} workers, {secs} s × 2 phases each | req/s |");
    println!("|---|---|");
    println!("| via agent (one channel) | {ar:.0} |");
    println!("| direct | {dr:.0} |");
    println!("| **agent / direct** | **{:.2}** |", ar / dr);
    println!("| floor: bare tonic unary, same callers and channel, {secs} s | {floor_rps:.0} |");
    println!("| floor / direct | {:.2} |", floor_rps / dr);
    println!("| floor proxy (tonic + hyper, own 2-thread runtime) | {pr:.0} |");
    println!("| **floor proxy / direct** | **{:.2}** |", pr / dr);
    println!("| agent / floor proxy | {:.2} |", ar / pr);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::containerd() else {
        eprintln!("invoke_e2e: no dev containerd (ESB_TEST_CONTAINERD_SOCKET); skipped");
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
