//! Health, reflection on/off and the Prometheus endpoint.

use std::sync::Arc;

use esb_proto::v1;
use esb_runtime::ErrorKind;
use esb_runtime::fake::{FakeRuntime, Op};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use super::harness::{Agent, OWNER, eventually};

async fn status(h: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
    h.check(HealthCheckRequest {
        service: service.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .status
}

#[tokio::test]
async fn health_follows_the_runtime_and_shutdown() {
    let rt = Arc::new(FakeRuntime::new());
    let agent = Agent::start_with(rt.clone(), |_| {}).await;
    let mut h = HealthClient::new(agent.channel().await);
    for svc in ["", "esb.agent.v1.AgentService", "agent.v1.AgentService"] {
        assert_eq!(
            status(&mut h, svc).await,
            ServingStatus::Serving as i32,
            "{svc:?}"
        );
    }
    rt.fail_always(Op::Ping, ErrorKind::Unavailable);
    let mut ok = false;
    for _ in 0..100 {
        if status(&mut h, "agent.v1.AgentService").await == ServingStatus::NotServing as i32 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok, "NOT_SERVING while the runtime is unreachable");
    rt.clear_failures();
    let mut ok = false;
    for _ in 0..100 {
        if status(&mut h, "").await == ServingStatus::Serving as i32 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok, "SERVING again once the runtime answers");
}

#[tokio::test]
async fn shutdown_drains_in_flight_rpcs() {
    let worker = super::worker::Worker::start().await;
    let rt = Arc::new(FakeRuntime::new());
    rt.set_worker_port(worker.addr.port());
    let agent = Agent::start_with(rt, |_| {}).await;
    let id = super::service::ensure(&agent, OWNER).await.id;
    let mut c = agent.client().await;
    let call = tokio::spawn(async move {
        c.invoke_worker(v1::InvokeWorkerRequest {
            container_id: id,
            owner_id: OWNER.into(),
            payload: br#"{"sleep_ms": 400}"#.to_vec(),
            ..Default::default()
        })
        .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let addr = agent.addr;
    agent.stop().await.unwrap();
    assert_eq!(call.await.unwrap().unwrap().into_inner().status_code, 200);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

/// A shutdown waits for the RPCs in flight, not for open-ended streams nor for a connection
/// whose client stopped answering (it would otherwise hold every restart for the drain bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_rpcs_not_for_open_streams_or_frozen_clients() {
    let worker = super::worker::Worker::start().await;
    let rt = Arc::new(FakeRuntime::new());
    rt.set_worker_port(worker.addr.port());
    let agent = Agent::start_with(rt, |s| {
        s.drain_timeout = std::time::Duration::from_secs(20);
    })
    .await;
    let id = super::service::ensure(&agent, OWNER).await.id;
    // A health watch held open.
    let mut h = HealthClient::new(agent.channel().await);
    let mut watch = h
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();
    // A client that stops answering: the only thread of its runtime sleeps with the channel
    // open, so nothing acknowledges the server's GOAWAY.
    let addr = agent.addr;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let frozen = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let c = rt.block_on(async move {
            let mut c =
                v1::agent_service_client::AgentServiceClient::connect(format!("http://{addr}"))
                    .await
                    .unwrap();
            c.get_capabilities(v1::GetCapabilitiesRequest::default())
                .await
                .unwrap();
            c
        });
        ready_tx.send(()).unwrap();
        std::thread::sleep(std::time::Duration::from_secs(4));
        drop(c);
    });
    ready_rx.await.unwrap();
    // An invocation in flight is still answered.
    let mut c = agent.client().await;
    let call = tokio::spawn(async move {
        c.invoke_worker(v1::InvokeWorkerRequest {
            container_id: id,
            owner_id: OWNER.into(),
            payload: br#"{"sleep_ms": 600}"#.to_vec(),
            ..Default::default()
        })
        .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    agent.stop().await.unwrap();
    let took = started.elapsed();
    assert_eq!(call.await.unwrap().unwrap().into_inner().status_code, 200);
    assert!(
        took >= std::time::Duration::from_millis(400),
        "the drain waited for the invocation: {took:?}"
    );
    assert!(
        took < std::time::Duration::from_secs(3),
        "the drain waited for the watch or the frozen client: {took:?}"
    );
    frozen.join().unwrap();
}

async fn list_services(agent: &Agent) -> Result<Vec<String>, tonic::Status> {
    let mut c = ServerReflectionClient::new(agent.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = c
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await?
        .into_inner();
    let msg = stream.message().await?.expect("a response");
    match msg.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            Ok(l.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn reflection_only_when_enabled() {
    let off = Agent::start().await;
    let err = list_services(&off).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    let on = Agent::start_with(Arc::new(FakeRuntime::new()), |s| s.reflection = true).await;
    let services = list_services(&on).await.unwrap();
    assert!(
        services.iter().any(|s| s == "esb.agent.v1.AgentService"),
        "{services:?}"
    );
}

#[tokio::test]
async fn metrics_endpoint_counts_rpcs_by_method_and_code() {
    let agent = Agent::start().await;
    let mut c = agent.client().await;
    super::service::ensure(&agent, OWNER).await;
    let _ = c
        .pause_container(v1::PauseContainerRequest {
            container_id: "nope".into(),
            owner_id: OWNER.into(),
        })
        .await;
    let _ = c
        .list_containers(v1::ListContainersRequest {
            owner_id: String::new(),
        })
        .await;
    let (code, text) = agent.scrape("/metrics").await;
    assert_eq!(code, 200);
    for line in [
        r#"grpc_server_handled_total{grpc_service="esb.agent.v1.AgentService",grpc_method="EnsureContainer",grpc_code="OK"} 1"#,
        r#"grpc_server_handled_total{grpc_service="esb.agent.v1.AgentService",grpc_method="PauseContainer",grpc_code="NotFound"} 1"#,
        r#"grpc_server_handled_total{grpc_service="esb.agent.v1.AgentService",grpc_method="ListContainers",grpc_code="InvalidArgument"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
    for name in [
        "grpc_server_handling_seconds_bucket",
        "esb_agent_ensure_duration_seconds_count 1",
        "esb_agent_workers{state=\"RUNNING\"} 1",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(text.contains(name), "missing {name}\n{text}");
    }
    assert!(!text.contains("secret"), "env values never reach metrics");
    let (code, _) = agent.scrape("/").await;
    assert_eq!(code, 404);
    let (code, _) = agent.scrape("/metricsx").await;
    assert_eq!(code, 404);
    eventually(|| true).await;
}

#[tokio::test]
async fn backend_observations_reach_metrics() {
    let rt = Arc::new(FakeRuntime::new());
    let agent = Agent::start_with(rt.clone(), |_| {}).await;
    super::service::ensure(&agent, OWNER).await;
    rt.fail_nth(Op::Ensure, 2, ErrorKind::Unavailable);
    let mut c = agent.client().await;
    let err = c
        .ensure_container(super::service::ensure_req("fn-a", OWNER, "img:1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let (code, text) = agent.scrape("/metrics").await;
    assert_eq!(code, 200);
    for line in [
        r#"esb_agent_ensure_phase_duration_seconds_count{phase="create"} 1"#,
        r#"esb_agent_ensure_phase_duration_seconds_count{phase="start"} 1"#,
        r#"esb_agent_image_pulls_total{outcome="cached"} 1"#,
        r#"esb_agent_rollbacks_total{operation="ensure"} 1"#,
        "esb_agent_cni_ipam_reservations 0",
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
}

/// A `MakeWriter` collecting log output in memory.
#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Log capture needs tracing's process-wide callsite state to itself: runs in a child process
/// (in the shared test process another thread could cache the rpc callsite as disabled).
#[test]
fn one_log_line_per_rpc_without_secrets() {
    super::harness::run_alone("api::observability::one_log_line_child");
}

#[tokio::test]
#[ignore = "run by one_log_line_per_rpc_without_secrets in its own process"]
async fn one_log_line_child() {
    if std::env::var_os(super::harness::CHILD).is_none() {
        return;
    }
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        // The agent's own DEBUG filter (crates/agent config): the HTTP/2 and TLS stacks stay
        // at info, so their frame-level debug lines cannot land in this capture.
        .with_env_filter("debug,h2=info,hyper=info,hyper_util=info,tower=info,rustls=info")
        .with_ansi(false)
        .finish();
    // The current-thread test runtime runs the server's tasks on this thread too.
    let _guard = tracing::subscriber::set_default(subscriber);
    let worker = super::worker::Worker::start().await;
    let rt = Arc::new(FakeRuntime::new());
    rt.set_worker_port(worker.addr.port());
    let agent = Agent::start_with(rt, |s| s.auth_token = Some("tok-SECRET-3".into())).await;
    let mut c = agent.client().await;
    let mut req = tonic::Request::new(super::service::ensure_req("fn-a", OWNER, "img"));
    req.metadata_mut()
        .insert("authorization", "Bearer tok-SECRET-3".parse().unwrap());
    let w = c.ensure_container(req).await.unwrap().into_inner();
    let mut req = tonic::Request::new(v1::InvokeWorkerRequest {
        container_id: w.id.clone(),
        owner_id: OWNER.into(),
        payload: br#"{"PAYLOAD-SECRET": 1}"#.to_vec(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", "Bearer tok-SECRET-3".parse().unwrap());
    c.invoke_worker(req).await.unwrap();
    let _ = c.get_capabilities(v1::GetCapabilitiesRequest {}).await; // no token: UNAUTHENTICATED
    // The per-RPC line is written when the server drops the call's response body, which can
    // happen after the client already has the reply: wait (bounded) for all three lines.
    let text = {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
            let done = text.lines().filter(|l| l.contains(" rpc ")).count() >= 3;
            if done || std::time::Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    drop(agent);
    let rpc_lines: Vec<&str> = text.lines().filter(|l| l.contains(" rpc ")).collect();
    assert_eq!(rpc_lines.len(), 3, "{text}");
    // Lines are written as each call's response is dropped, so their order is not fixed.
    let line = |method: &str| {
        rpc_lines
            .iter()
            .find(|l| l.contains(&format!("method=\"{method}\"")))
            .copied()
            .unwrap_or_else(|| panic!("no rpc line for {method}:\n{text}"))
    };
    let ensure = line("EnsureContainer");
    assert!(ensure.contains("code=\"OK\""), "{text}");
    assert!(
        ensure.contains(&format!("container_id=\"{}\"", w.id)),
        "{text}"
    );
    assert!(line("InvokeWorker").contains("owner=\"owner-a\""), "{text}");
    assert!(
        line("GetCapabilities").contains("code=\"Unauthenticated\""),
        "{text}"
    );
    assert!(
        rpc_lines.iter().all(|l| l.contains("duration_us=")),
        "{text}"
    );
    for secret in ["secret", "SECRET"] {
        assert!(!text.contains(secret), "a secret reached the logs:\n{text}");
    }
}

#[tokio::test]
async fn health_is_not_serving_once_shutdown_begins() {
    let agent = Agent::start_with(Arc::new(FakeRuntime::new()), |s| {
        s.drain_timeout = std::time::Duration::from_millis(500);
    })
    .await;
    let mut h = HealthClient::new(agent.channel().await);
    let mut watch = h
        .watch(HealthCheckRequest {
            service: "esb.agent.v1.AgentService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let stopping = tokio::spawn(agent.stop());
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), watch.message())
        .await
        .expect("a status update")
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    // The open watch stream does not hold shutdown (open-ended streams are not drained).
    tokio::time::timeout(std::time::Duration::from_secs(5), stopping)
        .await
        .expect("shutdown within the drain bound")
        .unwrap()
        .unwrap();
}
