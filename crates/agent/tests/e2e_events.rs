//! End to end on both backends (the built `esb-agent` binary against the private dev daemons):
//! - ready-on-return: right after Ensure a single TCP connect to the worker succeeds (20 of
//!   20); a worker that listens after 1 s makes Ensure take ~1 s; one that never listens is
//!   returned at `AGENT_ENSURE_READY_TIMEOUT`; one that exits at start fails the Ensure with
//!   `UNAVAILABLE` and its exit code, and nothing is left;
//! - events drive state: a worker that exits, is paused/resumed or removed outside the agent
//!   shows in the agent's worker table (the `esb_agent_workers` gauge, what invokes read)
//!   within 1 s, without any RPC about it; an outside removal's netns/IP/log are released at
//!   once. The latencies are printed;
//! - containerd restart (a containerd of the test's own, never the shared one): resubscribe
//!   and relist.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use esb_proto::v1::agent_service_client::AgentServiceClient;
use esb_proto::v1::{
    DestroyContainerRequest, EnsureContainerRequest, GetContainerMetricsRequest,
    InvokeWorkerRequest, ListContainersRequest, WorkerInfo,
};
use esb_testkit::agent::AgentProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/world.rs"]
mod support;
use daemon::Daemon;
use support::{Net, World};

const NET: Net = Net {
    namespace: "esbtev",
    env: "ev",
    bridge: "esbt-ev",
    subnet: "10.199.131.0/24",
    scratch_prefix: "scratch-agent-events-",
};
const DOCKER_BRAND: &str = "esbtdkev";
const OWNER: &str = "owner-ev";
/// What "within a second" is held to.
const EVENT_BOUND: Duration = Duration::from_secs(1);

type Client = AgentServiceClient<Channel>;

/// How the test acts on a worker behind the agent's back, and what it counts as leftovers.
enum Outside<'a> {
    Containerd(&'a World),
    Docker { host: String, image: String },
}

impl Outside<'_> {
    fn docker(host: &str, args: &[&str]) -> String {
        let out = Command::new("docker")
            .args(["-H", host])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Docker: a container without the agent's labels starts, dies and is removed — events
    /// the agent's label-filtered subscription must not receive. (containerd: the
    /// namespace scope is checked by esb-containerd's events_restart test.)
    fn foreign_churn(&self) {
        if let Self::Docker { host, image } = self {
            let id = Self::docker(
                host,
                &[
                    "run",
                    "-d",
                    "--network",
                    "none",
                    "--label",
                    "esb-test=foreign",
                    image,
                ],
            );
            assert_eq!(id.trim().len(), 64, "foreign container not started: {id:?}");
            Self::docker(host, &["rm", "-f", id.trim()]);
        }
    }

    fn pause(&self, id: &str) {
        match self {
            Self::Containerd(w) => drop(w.ctr(&["tasks", "pause", id])),
            Self::Docker { host, .. } => drop(Self::docker(host, &["pause", id])),
        }
    }

    fn unpause(&self, id: &str) {
        match self {
            Self::Containerd(w) => drop(w.ctr(&["tasks", "resume", id])),
            Self::Docker { host, .. } => drop(Self::docker(host, &["unpause", id])),
        }
    }

    /// Removes the worker's container the way an operator would (the task killed first).
    fn remove(&self, id: &str) {
        match self {
            Self::Containerd(w) => {
                w.ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", id]);
                let until = Instant::now() + Duration::from_secs(10);
                while !w.task_stopped(id) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
                w.ctr(&["tasks", "rm", "-f", id]);
                w.ctr(&["containers", "rm", id]);
            }
            Self::Docker { host, .. } => drop(Self::docker(host, &["rm", "-f", id])),
        }
    }

    fn leftovers(&self) -> Vec<String> {
        match self {
            // The agent's idle netns pool (`state/cni/pool/`) is its own until it stops;
            // the final check after the agent stopped covers it.
            Self::Containerd(w) => w
                .leftovers()
                .into_iter()
                .filter(|l| !(l.starts_with("mount ") && l.contains("/state/cni/pool/")))
                .collect(),
            Self::Docker { host, .. } => Self::docker(
                host,
                &[
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=created_by={DOCKER_BRAND}-agent"),
                ],
            )
            .split_whitespace()
            .map(|c| format!("container {c}"))
            .collect(),
        }
    }
}

async fn ensure(
    c: &mut Client,
    image: &str,
    env: &[(&str, &str)],
) -> Result<WorkerInfo, tonic::Status> {
    c.ensure_container(EnsureContainerRequest {
        function_name: "events".into(),
        image: image.into(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        owner_id: OWNER.into(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn destroy(c: &mut Client, id: &str) {
    c.destroy_container(DestroyContainerRequest {
        container_id: id.into(),
        owner_id: OWNER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn list(c: &mut Client) -> HashMap<String, String> {
    c.list_containers(ListContainersRequest {
        owner_id: OWNER.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .containers
    .into_iter()
    .map(|s| (s.container_id, s.status))
    .collect()
}

async fn scrape(addr: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of the metric line starting with `key ` (0 when absent).
fn value(text: &str, key: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Polls the agent's workers gauge (the worker table) every 5 ms until `state` counts `n`;
/// returns how long that took. Panics after 5 s.
async fn table_shows(agent: &AgentProcess, state: &str, n: f64) -> Duration {
    let started = Instant::now();
    let key = format!("esb_agent_workers{{state=\"{state}\"}}");
    loop {
        if value(&scrape(&agent.metrics_addr).await, &key) == n {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "worker table never showed {state}={n}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// From the lag histogram (daemon timestamp → table): the mean, and the smallest bucket
/// bound that holds every event.
fn event_lag(text: &str) -> (Duration, Duration) {
    let name = "esb_agent_worker_event_lag_seconds";
    let count = value(text, &format!("{name}_count"));
    assert!(count >= 4.0, "too few events timed: {count}");
    let mean = value(text, &format!("{name}_sum")) / count;
    let prefix = format!("{name}_bucket{{le=\"");
    let max = text
        .lines()
        .filter_map(|l| {
            let (le, n) = l.strip_prefix(prefix.as_str())?.split_once("\"} ")?;
            Some((le.parse::<f64>().ok()?, n.trim().parse::<f64>().ok()?))
        })
        .find(|(_, n)| *n >= count)
        .map_or(f64::INFINITY, |(le, _)| le);
    (
        Duration::from_secs_f64(mean),
        Duration::try_from_secs_f64(max).unwrap_or(Duration::MAX),
    )
}

/// One connect attempt, bounded.
async fn connects(w: &WorkerInfo) -> bool {
    let addr = format!("{}:{}", w.ip_address, w.port);
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(addr.as_str())
        )
        .await,
        Ok(Ok(_))
    )
}

/// Waits until nothing the agent made is left; panics naming what is left after `within`.
async fn no_leftovers(outside: &Outside<'_>, within: Duration) {
    until_empty(|| outside.leftovers(), within).await;
}

/// Polls `left` until it is empty; panics with its last answer after `within`.
async fn until_empty(left: impl Fn() -> Vec<String>, within: Duration) {
    let until = Instant::now() + within;
    loop {
        let left = left();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < until, "left after {within:?}: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ready_on_return(c: &mut Client, agent: &AgentProcess, image: &str, outside: &Outside<'_>) {
    // The first Ensure may pull; not counted.
    let w = ensure(c, image, &[]).await.unwrap();
    destroy(c, &w.id).await;
    let mut ok = 0;
    for _ in 0..20 {
        let w = ensure(c, image, &[]).await.unwrap();
        if connects(&w).await {
            ok += 1;
        }
        destroy(c, &w.id).await;
    }
    eprintln!("ready: {ok}/20 workers accepted the first connect right after Ensure");
    assert_eq!(ok, 20);

    let started = Instant::now();
    let w = ensure(c, image, &[("WORKER_START_DELAY_MS", "1000")])
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!("ready: Ensure of a worker listening after 1 s took {took:?}");
    assert!(took >= Duration::from_secs(1), "{took:?}");
    // It answered because the worker got ready, not because the 2 s wait ran out (a bound
    // on `took` would also measure how busy the machine is).
    let text = scrape(&agent.metrics_addr).await;
    assert_eq!(
        value(&text, "esb_agent_ensure_ready_total{outcome=\"timeout\"}"),
        0.0,
        "{took:?}"
    );
    assert!(value(&text, "esb_agent_ensure_ready_total{outcome=\"ready\"}") >= 22.0);
    assert!(connects(&w).await);
    destroy(c, &w.id).await;

    let started = Instant::now();
    let w = ensure(c, image, &[("WORKER_PORT", "9999")]).await.unwrap();
    let took = started.elapsed();
    eprintln!("ready: Ensure of a worker that never listens took {took:?} (timeout 2 s)");
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let text = scrape(&agent.metrics_addr).await;
    assert_eq!(
        value(&text, "esb_agent_ensure_ready_total{outcome=\"timeout\"}"),
        1.0
    );
    destroy(c, &w.id).await;

    // A bind address no interface has (TEST-NET-1): the worker prints why and exits 2 at
    // start. (Not a host name: its lookup through Docker's embedded DNS takes ~10 s, so the
    // worker would exit only after the ready wait.)
    let started = Instant::now();
    let err = ensure(c, image, &[("WORKER_BIND", "192.0.2.1")])
        .await
        .unwrap_err();
    eprintln!(
        "ready: Ensure of a worker exiting at start failed after {:?}: {}",
        started.elapsed(),
        err.message()
    );
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("with code 2"), "{}", err.message());
    assert!(
        err.message()
            .contains("last output: esb-test-worker: cannot listen"),
        "{}",
        err.message()
    );
    assert!(list(c).await.is_empty(), "destroyed");
    // The backend's destroy finishes its teardown (CNI, logs) in a detached task.
    no_leftovers(outside, Duration::from_secs(5)).await;
    let text = scrape(&agent.metrics_addr).await;
    assert_eq!(
        value(&text, "esb_agent_ensure_ready_total{outcome=\"exited\"}"),
        1.0
    );
    // 23 successful Ensures waited; the exiting one too unless Docker's start saw the exit.
    assert!(
        value(
            &text,
            "esb_agent_ensure_phase_duration_seconds_count{phase=\"ready\"}"
        ) >= 23.0
    );
}

async fn events_drive_state(
    c: &mut Client,
    agent: &AgentProcess,
    image: &str,
    outside: &Outside<'_>,
) {
    // Exit: the worker answers, then its process exits 3.
    let w = ensure(c, image, &[]).await.unwrap();
    table_shows(agent, "RUNNING", 1.0).await;
    c.invoke_worker(InvokeWorkerRequest {
        container_id: w.id.clone(),
        payload: br#"{"exit":3}"#.to_vec(),
        timeout_ms: 10_000,
        owner_id: OWNER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let exit_latency = table_shows(agent, "STOPPED", 1.0).await;
    eprintln!("events: exit seen in the worker table after {exit_latency:?}");
    assert!(exit_latency < EVENT_BOUND, "{exit_latency:?}");
    assert_eq!(
        list(c).await.get(&w.id).map(String::as_str),
        Some("STOPPED")
    );
    let m = c
        .get_container_metrics(GetContainerMetricsRequest {
            container_id: w.id.clone(),
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.metrics.unwrap().exit_code, 3);
    // The table says stopped: an invoke fails at once.
    let started = Instant::now();
    let err = c
        .invoke_worker(InvokeWorkerRequest {
            container_id: w.id.clone(),
            payload: b"{}".to_vec(),
            timeout_ms: 10_000,
            owner_id: OWNER.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    eprintln!(
        "events: invoke of the exited worker failed after {:?}: {err:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    // Retryable for the gateway, with the exit code.
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("with code 3"), "{}", err.message());
    destroy(c, &w.id).await;
    table_shows(agent, "STOPPED", 0.0).await;

    // Pause and resume from outside (after foreign churn: the pause event comes after its
    // events, so once the pause shows they were delivered or filtered).
    let w = ensure(c, image, &[]).await.unwrap();
    table_shows(agent, "RUNNING", 1.0).await;
    let counted = |text: &str| {
        ["exited", "deleted"].map(|k| {
            value(
                text,
                &format!("esb_agent_worker_events_total{{kind=\"{k}\"}}"),
            )
        })
    };
    let before = counted(&scrape(&agent.metrics_addr).await);
    outside.foreign_churn();
    outside.pause(&w.id);
    let pause_latency = table_shows(agent, "PAUSED", 1.0).await;
    assert_eq!(
        counted(&scrape(&agent.metrics_addr).await),
        before,
        "events of unmanaged containers reached the agent"
    );
    eprintln!("events: outside pause seen after {pause_latency:?}");
    assert!(pause_latency < EVENT_BOUND, "{pause_latency:?}");
    outside.unpause(&w.id);
    let resume_latency = table_shows(agent, "RUNNING", 1.0).await;
    eprintln!("events: outside resume seen after {resume_latency:?}");
    assert!(resume_latency < EVENT_BOUND, "{resume_latency:?}");

    // Removed from outside: gone from the table and from List.
    outside.remove(&w.id);
    let remove_latency = table_shows(agent, "RUNNING", 0.0).await;
    eprintln!(
        "events: outside removal seen after {remove_latency:?} (from the end of the removal)"
    );
    assert!(remove_latency < EVENT_BOUND, "{remove_latency:?}");
    assert!(list(c).await.is_empty());
    // The agent releases what the removal left (containerd: netns, IP, veth, log) on the
    // event, not at the next GC pass (60 s by default).
    let started = Instant::now();
    no_leftovers(outside, Duration::from_secs(5)).await;
    eprintln!(
        "events: resources of the removed worker released {:?} after the table change",
        started.elapsed()
    );

    let text = scrape(&agent.metrics_addr).await;
    let (mean, max) = event_lag(&text);
    eprintln!("events: daemon timestamp → worker table: mean {mean:?}, all within {max:?}");
    assert!(max <= EVENT_BOUND, "{max:?}");
    for kind in ["exited", "paused", "resumed", "deleted"] {
        let n = value(
            &text,
            &format!("esb_agent_worker_events_total{{kind=\"{kind}\"}}"),
        );
        assert!(n >= 1.0, "no {kind} event counted:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_ready_on_return_and_events() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(&env, NET);
    let image = world.image.clone();
    let mut agent = world.spawn_with("e2e-events-containerd", "destroy", &[]);
    let mut c = agent.client(Duration::from_secs(30)).await.unwrap();
    let outside = Outside::Containerd(&world);
    ready_on_return(&mut c, &agent, &image, &outside).await;
    events_drive_state(&mut c, &agent, &image, &outside).await;
    assert!(agent.terminate(Duration::from_secs(30)).is_some());
    until_empty(|| world.leftovers(), Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_ready_on_return_and_events() {
    let Some(env) = esb_testkit::docker() else {
        return;
    };
    let host = env.docker_host.clone().unwrap();
    let network = env.docker_network.clone().unwrap();
    let image = env.worker_image.clone().unwrap();
    let outside = Outside::Docker {
        host: host.clone(),
        image: image.clone(),
    };
    for c in outside.leftovers() {
        let id = c.trim_start_matches("container ").to_string();
        Outside::docker(&host, &["rm", "-f", &id]);
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state").to_str().unwrap().to_string();
    let mut agent = AgentProcess::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_esb-agent")),
        "e2e-events-docker",
        &[
            ("AGENT_RUNTIME", "docker"),
            ("CONTAINER_REGISTRY", env.registry.as_deref().unwrap()),
            ("ENV", "ev"),
            ("ESB_BRAND_SLUG", DOCKER_BRAND),
            ("CONTAINERS_NETWORK", network.as_str()),
            ("DOCKER_HOST", host.as_str()),
            ("AGENT_STATE_DIR", state.as_str()),
            ("AGENT_SHUTDOWN_POLICY", "destroy"),
        ],
    )
    .unwrap();
    let mut c = agent.client(Duration::from_secs(30)).await.unwrap();
    ready_on_return(&mut c, &agent, &image, &outside).await;
    events_drive_state(&mut c, &agent, &image, &outside).await;
    assert!(agent.terminate(Duration::from_secs(30)).is_some());
    assert!(outside.leftovers().is_empty(), "{:?}", outside.leftovers());
}

/// The restart test's names (its own containerd, namespace, bridge and subnet).
const NET_RESTART: Net = Net {
    namespace: "esbtevr",
    env: "evr",
    bridge: "esbt-evr",
    subnet: "10.199.132.0/24",
    scratch_prefix: "scratch-agent-events-r-",
};

/// containerd crashes and comes back: a worker that died while it was down shows STOPPED —
/// learnt by the relist that follows the new subscription (on this host ~0.1 s after the
/// restart; the shim's republished exit event comes ~1 s later, so either satisfies the
/// bound) — and the new subscription delivers events again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_restart_resubscribes_and_relists() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let daemon_dir = esb_testkit::agent::scratch_dir("scratch-events-daemon-").unwrap();
    // Declared before the world: dropped after it, so the world's cleanup still has a daemon.
    let mut daemon = Daemon::start(daemon_dir.path());
    esb_testkit::eventually("private containerd up", Duration::from_secs(20), || async {
        daemon.answers().then_some(())
    })
    .await;
    let world = World::on_socket(&env, NET_RESTART, &daemon.socket());
    let image = world.image.clone();
    let mut agent = world.spawn("e2e-events-restart", "destroy");
    let mut c = agent.client(Duration::from_secs(30)).await.unwrap();
    let w1 = ensure(&mut c, &image, &[]).await.unwrap();
    let w2 = ensure(&mut c, &image, &[]).await.unwrap();
    table_shows(&agent, "RUNNING", 2.0).await;
    let pid = world
        .ctr(&["tasks", "ls"])
        .iter()
        .find(|l| l.starts_with(&w1.id))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .unwrap();

    // Down: w1's process is killed meanwhile (our own worker, by its pid).
    daemon.kill();
    assert!(
        Command::new("kill")
            .args(["-9", &pid])
            .status()
            .unwrap()
            .success()
    );
    esb_testkit::eventually("w1 reaped", Duration::from_secs(10), || async {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    })
    .await;
    daemon.restart();
    // Bounded by table_shows (5 s): the resubscription backoff plus the daemon's start.
    let seen = table_shows(&agent, "STOPPED", 1.0).await;
    eprintln!(
        "restart: worker that died while containerd was down seen STOPPED {seen:?} after the restart"
    );
    assert_eq!(
        list(&mut c).await.get(&w1.id).map(String::as_str),
        Some("STOPPED")
    );
    assert_eq!(
        list(&mut c).await.get(&w2.id).map(String::as_str),
        Some("RUNNING")
    );

    // The new subscription delivers: w2 exits → STOPPED within the bound.
    c.invoke_worker(InvokeWorkerRequest {
        container_id: w2.id.clone(),
        payload: br#"{"exit":3}"#.to_vec(),
        timeout_ms: 10_000,
        owner_id: OWNER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let exit_latency = table_shows(&agent, "STOPPED", 2.0).await;
    eprintln!("restart: exit after the restart seen after {exit_latency:?}");
    assert!(exit_latency < EVENT_BOUND, "{exit_latency:?}");
    let text = scrape(&agent.metrics_addr).await;
    assert!(value(&text, "esb_agent_event_resubscriptions_total") >= 1.0);

    destroy(&mut c, &w1.id).await;
    destroy(&mut c, &w2.id).await;
    assert!(agent.terminate(Duration::from_secs(30)).is_some());
    until_empty(|| world.leftovers(), Duration::from_secs(10)).await;
}
