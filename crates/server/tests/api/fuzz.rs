//! Random requests over real gRPC against the fake runtime (issue 8 §5): every RPC with
//! random ids, owners, names, images, env maps, paths, headers, payloads and timeouts — valid,
//! malformed, oversized, control characters, other owners' real ids. Only client-error codes
//! (or OK) may come back, never INTERNAL/UNKNOWN, and the agent answers normally afterwards.
//! `ESB_FUZZ_REQUESTS` (default 10 000) and `ESB_FUZZ_SEED` (default: time-based, printed)
//! make a failure reproducible.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use esb_proto::v1::agent_service_client::AgentServiceClient;
use esb_proto::v1::{
    DestroyContainerRequest, EnsureContainerRequest, GetCapabilitiesRequest,
    GetContainerMetricsRequest, InvokeWorkerRequest, ListContainersRequest, PauseContainerRequest,
    ResumeContainerRequest,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;
use tonic::transport::Channel;

use super::harness::{Agent, OTHER, OWNER};

const TASKS: usize = 8;

/// Codes a client can cause; anything else is a server defect.
fn client_code(c: Code) -> bool {
    matches!(
        c,
        Code::Ok
            | Code::InvalidArgument
            | Code::NotFound
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::ResourceExhausted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DeadlineExceeded
            | Code::AlreadyExists
            | Code::Cancelled
    )
}

/// Random text of a random shape: empty, plausible, hostile, huge.
fn text(r: &mut StdRng) -> String {
    match r.random_range(0..12) {
        0 => String::new(),
        1 => " ".repeat(r.random_range(1..4)),
        2 => "a".repeat(r.random_range(200..70_000)),
        3 => (0..r.random_range(1..40))
            .map(|_| char::from(r.random_range(0u8..0x80)))
            .collect(),
        4 => (0..r.random_range(1..20))
            .filter_map(|_| char::from_u32(r.random_range(0..0x11_0000)))
            .collect(),
        5 => [
            "../../etc/passwd",
            "/",
            "a/b",
            "%2e%2e",
            "\u{202e}x",
            "\0",
            "a\nb",
        ][r.random_range(0..7)]
        .to_string(),
        6 => format!("{:064x}", r.random::<u128>()),
        7 => format!("fn-{}", r.random_range(0..50)),
        _ => (0..r.random_range(1..30))
            .map(|_| {
                char::from(b"abcdefghijklmnopqrstuvwxyz0123456789-_.:/@"[r.random_range(0..42)])
            })
            .collect(),
    }
}

fn image(r: &mut StdRng) -> String {
    match r.random_range(0..6) {
        0 => "registry.local:5000/esb/test-worker:latest".into(),
        1 => format!("img-{}:v{}", r.random_range(0..5), r.random_range(0..3)),
        2 => format!("repo@sha256:{:064x}", r.random::<u128>()),
        3 => "UPPER/Case:tag".into(),
        _ => text(r),
    }
}

fn map(r: &mut StdRng) -> HashMap<String, String> {
    let n = match r.random_range(0..10) {
        0 => r.random_range(100..400),
        _ => r.random_range(0..5),
    };
    (0..n)
        .map(|i| {
            let k = if r.random_bool(0.7) {
                format!("K_{i}")
            } else {
                text(r)
            };
            let v = if r.random_bool(0.05) {
                "v".repeat(r.random_range(100_000..300_000))
            } else {
                text(r)
            };
            (k, v)
        })
        .collect()
}

fn owner(r: &mut StdRng) -> String {
    match r.random_range(0..4) {
        0 => OWNER.into(),
        1 => OTHER.into(),
        _ => text(r),
    }
}

/// A real id (created by an earlier Ensure) half of the time.
fn id(r: &mut StdRng, known: &Mutex<Vec<String>>) -> String {
    let known = known.lock().unwrap();
    if !known.is_empty() && r.random_bool(0.5) {
        known[r.random_range(0..known.len())].clone()
    } else {
        drop(known);
        text(r)
    }
}

async fn one(
    c: &mut AgentServiceClient<Channel>,
    r: &mut StdRng,
    known: &Mutex<Vec<String>>,
) -> (&'static str, Result<(), tonic::Status>) {
    let rpc = r.random_range(0..8);
    match rpc {
        0 => {
            let req = EnsureContainerRequest {
                function_name: text(r),
                image: image(r),
                env: map(r),
                owner_id: owner(r),
            };
            let res = c.ensure_container(req).await;
            if let Ok(w) = &res {
                known.lock().unwrap().push(w.get_ref().id.clone());
            }
            ("ensure", res.map(|_| ()))
        }
        1 => {
            let req = DestroyContainerRequest {
                function_name: text(r),
                container_id: id(r, known),
                owner_id: owner(r),
            };
            ("destroy", c.destroy_container(req).await.map(|_| ()))
        }
        2 => {
            let req = PauseContainerRequest {
                container_id: id(r, known),
                owner_id: owner(r),
            };
            ("pause", c.pause_container(req).await.map(|_| ()))
        }
        3 => {
            let req = ResumeContainerRequest {
                container_id: id(r, known),
                owner_id: owner(r),
            };
            ("resume", c.resume_container(req).await.map(|_| ()))
        }
        4 => {
            let req = ListContainersRequest { owner_id: owner(r) };
            ("list", c.list_containers(req).await.map(|_| ()))
        }
        5 => {
            let req = GetContainerMetricsRequest {
                container_id: id(r, known),
                owner_id: owner(r),
            };
            ("metrics", c.get_container_metrics(req).await.map(|_| ()))
        }
        6 => {
            let payload_len = match r.random_range(0..20) {
                0 => r.random_range(1 << 20..4 << 20),
                _ => r.random_range(0..512),
            };
            let mut payload = vec![0u8; payload_len];
            r.fill(&mut payload[..]);
            let mut req = tonic::Request::new(InvokeWorkerRequest {
                path: text(r),
                payload,
                headers: map(r),
                timeout_ms: match r.random_range(0..4) {
                    0 => r.random(),
                    1 => -r.random_range(0..1000),
                    _ => r.random_range(0..50),
                },
                container_id: id(r, known),
                owner_id: owner(r),
            });
            // The fake workers do not listen: bound a call that reaches one.
            req.set_timeout(Duration::from_millis(300));
            let g = req.get_ref();
            let shape = format!(
                "path {} payload {} headers {}/{} timeout {} id {} owner {}",
                g.path.len(),
                g.payload.len(),
                g.headers.len(),
                g.headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>(),
                g.timeout_ms,
                g.container_id.len(),
                g.owner_id.len()
            );
            let res = c.invoke_worker(req).await.map(|_| ());
            if let Err(e) = &res
                && !client_code(e.code())
            {
                eprintln!("invoke shape: {shape}");
            }
            ("invoke", res)
        }
        _ => (
            "capabilities",
            c.get_capabilities(GetCapabilitiesRequest {})
                .await
                .map(|_| ()),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_get_client_errors_only_and_the_agent_keeps_answering() {
    let total: usize = std::env::var("ESB_FUZZ_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let seed: u64 = std::env::var("ESB_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("ESB_FUZZ_SEED={seed} ESB_FUZZ_REQUESTS={total}");
    let agent = Agent::start().await;
    let known = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let mut c = agent.client().await;
        let known = known.clone();
        let n = total / TASKS + usize::from(t < total % TASKS);
        tasks.push(tokio::spawn(async move {
            let mut r = StdRng::seed_from_u64(seed.wrapping_add(t as u64));
            let mut codes: HashMap<(&'static str, Code), usize> = HashMap::new();
            for _ in 0..n {
                let (rpc, res) = one(&mut c, &mut r, &known).await;
                let code = res.as_ref().map_or_else(|s| s.code(), |_| Code::Ok);
                if !client_code(code) {
                    let msg = res
                        .err()
                        .map(|s| s.message().to_string())
                        .unwrap_or_default();
                    panic!("{rpc}: {code:?} {msg:.300} (seed {seed}, task {t})");
                }
                *codes.entry((rpc, code)).or_default() += 1;
            }
            codes
        }));
    }
    let mut all: HashMap<(&'static str, Code), usize> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *all.entry(k).or_default() += v;
        }
    }
    let mut summary: Vec<_> = all.iter().collect();
    summary.sort_by_key(|((rpc, code), _)| (*rpc, format!("{code:?}")));
    for ((rpc, code), n) in &summary {
        println!("{rpc:>12} {code:?}: {n}");
    }
    assert_eq!(all.values().sum::<usize>(), total);
    // The mix must have exercised both sides: accepted requests and rejected ones.
    assert!(
        all.keys()
            .any(|(rpc, c)| *rpc == "ensure" && *c == Code::Ok)
    );
    assert!(all.keys().any(|(_, c)| *c == Code::InvalidArgument));

    // The agent still answers a well-formed client.
    let mut c = agent.client().await;
    c.get_capabilities(GetCapabilitiesRequest {}).await.unwrap();
    let w = c
        .ensure_container(EnsureContainerRequest {
            function_name: "after-fuzz".into(),
            image: "img:1".into(),
            env: Default::default(),
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let listed = c
        .list_containers(ListContainersRequest {
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.containers.iter().any(|s| s.container_id == w.id));
    agent.stop().await.unwrap();
}
