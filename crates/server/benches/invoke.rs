//! InvokeWorker through the agent (FakeRuntime + real server on loopback, plaintext) vs a
//! direct keep-alive HTTP POST to the same in-process worker, 1 and 16 concurrent callers.
//! Run: `cargo bench -p esb-server --bench invoke` (ESB_BENCH_SECS sets the duration per case).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use esb_proto::v1;
use esb_proto::v1::agent_service_client::AgentServiceClient;
use esb_runtime::fake::FakeRuntime;
use esb_server::{InvokeSettings, ServerSettings, ShutdownPolicy, TlsSettings};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;

const PAYLOAD: &[u8] = br#"{"key":"value","n":1}"#;

async fn start_worker() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        Ok::<_, Infallible>(http::Response::new(Full::new(body)))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

struct Stats {
    lat: Vec<u64>,
    elapsed: Duration,
    /// Process CPU (user+system) per request, µs: a load-independent cost figure.
    cpu_us: f64,
    /// CPU of the agent's own threads per request, µs.
    agent_cpu_us: f64,
}

/// User+system CPU of this process's threads whose name starts with `prefix`, seconds.
fn thread_cpu_seconds(prefix: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    dir.flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let f: Vec<&str> = rest.split_whitespace().collect();
            let v = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (v(11) + v(12)) / 100.0
        })
        .sum()
}

/// User+system CPU of this process, seconds (USER_HZ = 100).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        let i = ((self.lat.len() as f64 - 1.0) * p).round() as usize;
        self.lat[i] as f64 / 1000.0
    }
    fn rps(&self) -> f64 {
        self.lat.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `callers` loops of `call(i)` for `dur` after a warm-up; latencies in ns.
async fn run<F, Fut>(callers: usize, dur: Duration, call: F) -> Stats
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let warm = Instant::now() + Duration::from_millis(500);
    let cpu = Arc::new(std::sync::Mutex::new((0.0f64, 0.0f64)));
    let cpu2 = cpu.clone();
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(warm.into()).await;
        *cpu2.lock().unwrap() = (cpu_seconds(), thread_cpu_seconds("agent"));
    });
    let end = warm + dur;
    let mut tasks = Vec::new();
    for i in 0..callers {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                call(i).await;
                if t >= warm {
                    lat.push(t.elapsed().as_nanos() as u64);
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let (cpu0, agent0) = *cpu.lock().unwrap();
    let used = cpu_seconds() - cpu0;
    let agent_used = thread_cpu_seconds("agent") - agent0;
    sampler.await.unwrap();
    lat.sort_unstable();
    let n = lat.len().max(1) as f64;
    Stats {
        lat,
        elapsed: dur,
        cpu_us: used * 1e6 / n,
        agent_cpu_us: agent_used * 1e6 / n,
    }
}

async fn direct_sender(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

fn settings(dir: &std::path::Path) -> ServerSettings {
    ServerSettings {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: None,
        tls: TlsSettings::Disabled,
        auth_token: None,
        reflection: false,
        max_request_bytes: 12 << 20,
        max_response_bytes: 12 << 20,
        invoke: InvokeSettings::default(),
        state_dir: dir.to_owned(),
        drain_timeout: Duration::from_secs(1),
        agent_version: "bench".into(),
        shutdown_policy: ShutdownPolicy::Keep,
        gc_interval: Duration::from_secs(3600),
        health_interval: Duration::from_secs(5),
        ensure_ready_timeout: Duration::ZERO,
        admission: Default::default(),
        conn: esb_server::ConnSettings::default(),
        standby: Default::default(),
    }
}

fn main() {
    // Separate runtimes (named threads) so the agent's own CPU can be told apart from the
    // benchmark client's and the worker's.
    let worker_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("worker")
        .enable_all()
        .build()
        .unwrap();
    let agent_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("agent")
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client")
        .enable_all()
        .build()
        .unwrap();
    let worker = worker_rt.block_on(start_worker());
    let agent = agent_rt.handle().clone();
    client_rt.block_on(bench(worker, agent));
}

async fn bench(worker: SocketAddr, agent_rt: tokio::runtime::Handle) {
    let secs: u64 = std::env::var("ESB_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dur = Duration::from_secs(secs);
    let rt = Arc::new(FakeRuntime::new());
    rt.set_worker_port(worker.port());
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let rt2 = rt.clone();
    let bound = agent_rt
        .spawn(async move { esb_server::bind(settings, rt2).await })
        .await
        .unwrap()
        .unwrap();
    let agent = bound.grpc_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = agent_rt.spawn(bound.run(async {
        let _ = stop_rx.await;
    }));
    let ch = Channel::from_shared(format!("http://{agent}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = AgentServiceClient::new(ch);
    // One worker per caller: a worker runs one invocation at a time (SPEC §4).
    let mut ids = Vec::new();
    for _ in 0..16 {
        let w = client
            .clone()
            .ensure_container(v1::EnsureContainerRequest {
                function_name: "bench".into(),
                image: "img".into(),
                env: Default::default(),
                owner_id: "bench".into(),
            })
            .await
            .unwrap()
            .into_inner();
        ids.push(w.id);
    }
    let ids = Arc::new(ids);

    println!(
        "{:<8} {:>7} {:>10} {:>10} {:>10}",
        "path", "callers", "p50 µs", "p99 µs", "req/s"
    );
    let mut rows = Vec::new();
    for callers in [1usize, 16] {
        let mut senders = Vec::new();
        for _ in 0..callers {
            senders.push(Arc::new(tokio::sync::Mutex::new(
                direct_sender(worker).await,
            )));
        }
        let senders = Arc::new(senders);
        let direct = run(callers, dur, move |i| {
            let senders = senders.clone();
            async move {
                let mut tx = senders[i].lock().await;
                let req = http::Request::post("/2015-03-31/functions/function/invocations")
                    .header("host", "worker")
                    .body(Full::new(Bytes::from_static(PAYLOAD)))
                    .unwrap();
                let resp = tx.send_request(req).await.unwrap();
                let _ = resp.into_body().collect().await.unwrap();
            }
        })
        .await;
        let ids2 = ids.clone();
        let c = client.clone();
        let via = run(callers, dur, move |i| {
            let mut c = c.clone();
            let id = ids2[i].clone();
            async move {
                let r = c
                    .invoke_worker(v1::InvokeWorkerRequest {
                        container_id: id,
                        owner_id: "bench".into(),
                        payload: PAYLOAD.to_vec(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(r.status_code, 200);
            }
        })
        .await;
        // The floor: a gRPC round trip that does no proxying (client + server cost only).
        let c = client.clone();
        let noop = run(callers, dur, move |_| {
            let mut c = c.clone();
            async move {
                c.get_capabilities(v1::GetCapabilitiesRequest {})
                    .await
                    .unwrap();
            }
        })
        .await;
        for (name, s) in [("direct", &direct), ("agent", &via), ("grpc-nop", &noop)] {
            println!(
                "{name:<8} {callers:>7} {:>10.1} {:>10.1} {:>10.0} {:>12.1} {:>14.1}",
                s.pct(0.5),
                s.pct(0.99),
                s.rps(),
                s.cpu_us,
                s.agent_cpu_us
            );
        }
        rows.push((
            callers,
            via.pct(0.5) - direct.pct(0.5),
            via.rps() / direct.rps() * 100.0,
        ));
    }
    println!();
    for (callers, added, ratio) in rows {
        println!(
            "callers={callers:<3} added p50 = {added:.1} µs, agent throughput = {ratio:.0}% of direct"
        );
    }
    let _ = stop_tx.send(());
    let _ = server.await;
}
