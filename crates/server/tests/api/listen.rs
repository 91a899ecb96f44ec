//! Bounds before authentication (review H6), container ids (M3), env entry size (L2) and the
//! /metrics format negotiation: raw TCP and HTTP/2 bytes against the real listeners.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use esb_proto::v1;
use esb_runtime::fake::FakeRuntime;
use esb_server::ConnSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

use super::harness::{Agent, OWNER};
use super::service::ensure_req;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn agent(conn: ConnSettings) -> Agent {
    Agent::start_with(Arc::new(FakeRuntime::new()), |s| s.conn = conn).await
}

/// True when the server closed the connection within `within` (EOF or reset).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let until = Instant::now() + within;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // The server's SETTINGS etc.: keep reading.
            Ok(Ok(_)) => {}
        }
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

#[tokio::test]
async fn idle_and_half_sent_connections_are_closed_at_the_first_request_timeout() {
    let agent = agent(ConnSettings {
        first_request_timeout: Duration::from_millis(400),
        ..Default::default()
    })
    .await;
    let metrics = agent.metrics_addr.unwrap();
    let mut idle_grpc = Vec::new();
    for _ in 0..20 {
        idle_grpc.push(connect(agent.addr).await);
    }
    // Preface and SETTINGS, never a request.
    let mut half = connect(agent.addr).await;
    half.write_all(PREFACE).await.unwrap();
    half.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    // Metrics: nothing, and headers that never end.
    let mut idle_metrics = connect(metrics).await;
    let mut slow_metrics = connect(metrics).await;
    slow_metrics
        .write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        .await
        .unwrap();
    // A real client keeps its connection past the timeout once it made a request.
    let mut client = agent.client().await;
    client
        .get_capabilities(v1::GetCapabilitiesRequest {})
        .await
        .unwrap();

    let started = Instant::now();
    for s in idle_grpc.iter_mut() {
        assert!(closed_within(s, Duration::from_secs(3)).await);
    }
    assert!(closed_within(&mut half, Duration::from_secs(3)).await);
    assert!(closed_within(&mut idle_metrics, Duration::from_secs(3)).await);
    assert!(closed_within(&mut slow_metrics, Duration::from_secs(3)).await);
    assert!(started.elapsed() < Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(500)).await;
    client
        .get_capabilities(v1::GetCapabilitiesRequest {})
        .await
        .unwrap();
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once_and_the_cap_frees() {
    let agent = agent(ConnSettings {
        max_connections: 8,
        first_request_timeout: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(connect(agent.addr).await);
    }
    // Let the accept loop take all eight.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The metrics port shares the cap.
    let mut over = connect(agent.metrics_addr.unwrap()).await;
    assert!(closed_within(&mut over, Duration::from_secs(2)).await);
    let mut over = connect(agent.addr).await;
    assert!(closed_within(&mut over, Duration::from_secs(2)).await);
    for s in held.iter_mut().take(2) {
        assert!(
            !closed_within(s, Duration::from_millis(50)).await,
            "held ones stay open"
        );
    }
    drop(held);
    // Places free as soon as connections close: a client is served again.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let ok = async {
            let mut c = agent.client().await;
            c.get_capabilities(v1::GetCapabilitiesRequest {})
                .await
                .is_ok()
        };
        if tokio::time::timeout(Duration::from_secs(1), ok)
            .await
            .unwrap_or(false)
        {
            break;
        }
        assert!(Instant::now() < until, "the cap never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server's first SETTINGS frame advertises MAX_CONCURRENT_STREAMS (tonic's default sends
/// none, i.e. unlimited).
#[tokio::test]
async fn settings_advertise_max_concurrent_streams() {
    let agent = agent(ConnSettings {
        max_concurrent_streams: 77,
        ..Default::default()
    })
    .await;
    let mut s = connect(agent.addr).await;
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head[3], 4, "first frame is SETTINGS");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    let settings: HashMap<u16, u32> = payload
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    assert_eq!(settings.get(&3), Some(&77), "{settings:?}");
}

#[tokio::test]
async fn container_ids_that_are_not_ids_never_reach_the_runtime() {
    let agent = Agent::start().await;
    let mut c = agent.client().await;
    let bad = [
        ".",
        "..",
        "x/../../version?",
        "../../events?",
        "name/logs?follow=1&",
        "-flag",
        "a b",
        "%2e%2e",
        &"a".repeat(129),
    ];
    for id in bad {
        let target = || (id.to_string(), OWNER.to_string());
        let (container_id, owner_id) = target();
        let errs = [
            c.destroy_container(v1::DestroyContainerRequest {
                function_name: String::new(),
                container_id: container_id.clone(),
                owner_id: owner_id.clone(),
            })
            .await
            .map(|_| ())
            .unwrap_err(),
            c.pause_container(v1::PauseContainerRequest {
                container_id: container_id.clone(),
                owner_id: owner_id.clone(),
            })
            .await
            .map(|_| ())
            .unwrap_err(),
            c.get_container_metrics(v1::GetContainerMetricsRequest {
                container_id: container_id.clone(),
                owner_id: owner_id.clone(),
            })
            .await
            .map(|_| ())
            .unwrap_err(),
            c.invoke_worker(v1::InvokeWorkerRequest {
                container_id,
                owner_id,
                ..Default::default()
            })
            .await
            .map(|_| ())
            .unwrap_err(),
        ];
        for e in errs {
            assert_eq!(e.code(), Code::InvalidArgument, "{id:?}: {e:?}");
        }
    }
    // Only the start-up reconcile and health pings: no call names any of those ids.
    let named: Vec<_> = agent
        .rt
        .calls()
        .into_iter()
        .filter(|c| c.id.is_some())
        .collect();
    assert!(named.is_empty(), "{named:?}");
    // A real id is still fine (unknown → the compat answers).
    let ok = c
        .destroy_container(v1::DestroyContainerRequest {
            function_name: String::new(),
            container_id: "esb-dev-fn-a-0123abcd".into(),
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.success);
}

#[tokio::test]
async fn an_env_entry_execve_would_refuse_is_invalid() {
    let agent = Agent::start().await;
    let mut c = agent.client().await;
    let mut req = ensure_req("fn-a", OWNER, "img:1");
    req.env.insert("BIG".into(), "x".repeat(128 * 1024));
    let e = c.ensure_container(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("BIG"), "{e:?}");
    assert!(!e.message().contains("xxxx"), "never the value: {e:?}");
    let mut req = ensure_req("fn-a", OWNER, "img:1");
    req.env.insert("BIG".into(), "x".repeat(100 * 1024));
    c.ensure_container(req).await.unwrap();
}

async fn scrape_with(addr: SocketAddr, accept: Option<&str>) -> String {
    let mut s = connect(addr).await;
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn metrics_speak_the_classic_text_format_unless_openmetrics_is_asked_for() {
    let agent = Agent::start().await;
    let m = agent.metrics_addr.unwrap();
    for accept in [None, Some("text/plain"), Some("*/*")] {
        let out = scrape_with(m, accept).await;
        assert!(
            out.contains("content-type: text/plain; version=0.0.4"),
            "{accept:?}: {}",
            &out[..out.len().min(300)]
        );
        assert!(!out.contains("# EOF"), "{accept:?}");
        assert!(out.contains("# TYPE esb_agent_"), "{accept:?}");
    }
    let out = scrape_with(
        m,
        Some("application/openmetrics-text; version=1.0.0,text/plain;q=0.5"),
    )
    .await;
    assert!(
        out.contains("content-type: application/openmetrics-text"),
        "{}",
        &out[..out.len().min(300)]
    );
    assert!(out.trim_end().ends_with("# EOF"));
}
