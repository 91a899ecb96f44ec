//! Bad input, table-driven, for every field of every RPC: empty, whitespace, 1 MiB strings,
//! control characters, huge maps, odd timeouts. Always INVALID_ARGUMENT or RESOURCE_EXHAUSTED
//! (or a normal answer where the input is legal) — never INTERNAL, UNKNOWN or a panic.

use std::collections::HashMap;

use esb_proto::v1;
use tonic::Code;

use super::harness::{Agent, OWNER};
use super::service::{ensure, ensure_req};

const MIB: usize = 1 << 20;

fn strings() -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        ("whitespace", " \t\r\n ".into()),
        ("1 MiB", "a".repeat(MIB)),
        ("control", "a\u{0}b\u{7}c".into()),
        ("newline", "a\nb".into()),
        ("unicode", "функция-λ".into()),
    ]
}

fn assert_rejected(label: &str, res: Result<(), tonic::Status>, allow_ok: bool) {
    match res {
        Ok(()) => assert!(allow_ok, "{label}: accepted"),
        Err(s) => {
            assert!(
                matches!(
                    s.code(),
                    Code::InvalidArgument
                        | Code::ResourceExhausted
                        | Code::NotFound
                        | Code::PermissionDenied
                ),
                "{label}: {:?} {}",
                s.code(),
                s.message()
            );
            assert!(!s.message().is_empty(), "{label}: a clear message");
        }
    }
}

#[tokio::test]
async fn every_string_field_of_every_rpc() {
    let agent = Agent::start().await;
    let mut c = agent.client().await;
    let w = ensure(&agent, OWNER).await;
    for (what, bad) in strings() {
        let l = |f: &str| format!("{f} = {what}");
        let unicode = what == "unicode";
        // Ensure: each field in turn.
        let r = c
            .ensure_container(ensure_req(&bad, OWNER, "img"))
            .await
            .map(|_| ());
        assert_rejected(&l("ensure.function_name"), r, unicode);
        let r = c
            .ensure_container(ensure_req("f", &bad, "img"))
            .await
            .map(|_| ());
        assert_rejected(&l("ensure.owner_id"), r, unicode);
        let r = c
            .ensure_container(ensure_req("f", OWNER, &bad))
            .await
            .map(|_| ());
        assert_rejected(&l("ensure.image"), r, unicode);
        // Id-based RPCs: container_id, then owner_id.
        for (cid, owner, field) in [
            (bad.as_str(), OWNER, "container_id"),
            (w.id.as_str(), bad.as_str(), "owner_id"),
        ] {
            let r = c
                .destroy_container(v1::DestroyContainerRequest {
                    function_name: bad.clone(),
                    container_id: cid.into(),
                    owner_id: owner.into(),
                })
                .await
                .map(|_| ());
            // Destroy of an unknown (odd) id is an idempotent success.
            assert_rejected(
                &l(&format!("destroy.{field}")),
                r,
                field == "container_id" || unicode,
            );
            let r = c
                .pause_container(v1::PauseContainerRequest {
                    container_id: cid.into(),
                    owner_id: owner.into(),
                })
                .await
                .map(|_| ());
            assert_rejected(&l(&format!("pause.{field}")), r, false);
            let r = c
                .resume_container(v1::ResumeContainerRequest {
                    container_id: cid.into(),
                    owner_id: owner.into(),
                })
                .await
                .map(|_| ());
            assert_rejected(&l(&format!("resume.{field}")), r, false);
            let r = c
                .get_container_metrics(v1::GetContainerMetricsRequest {
                    container_id: cid.into(),
                    owner_id: owner.into(),
                })
                .await
                .map(|_| ());
            assert_rejected(&l(&format!("metrics.{field}")), r, false);
            let r = c
                .invoke_worker(v1::InvokeWorkerRequest {
                    container_id: cid.into(),
                    owner_id: owner.into(),
                    timeout_ms: 200,
                    ..Default::default()
                })
                .await
                .map(|_| ());
            assert_rejected(&l(&format!("invoke.{field}")), r, false);
        }
        let r = c
            .list_containers(v1::ListContainersRequest {
                owner_id: bad.clone(),
            })
            .await
            .map(|_| ());
        assert_rejected(&l("list.owner_id"), r, unicode);
        // Invoke path (a worker that does not listen: legal paths end in a deadline).
        let r = c
            .invoke_worker(v1::InvokeWorkerRequest {
                container_id: w.id.clone(),
                owner_id: OWNER.into(),
                path: bad.clone(),
                timeout_ms: 1,
                ..Default::default()
            })
            .await;
        if let Err(s) = r {
            assert!(
                matches!(
                    s.code(),
                    Code::InvalidArgument | Code::DeadlineExceeded | Code::Unavailable
                ),
                "invoke.path = {what}: {s:?}"
            );
        }
    }
}

#[tokio::test]
async fn huge_and_odd_maps() {
    let agent = Agent::start().await;
    let mut c = agent.client().await;
    let w = ensure(&agent, OWNER).await;
    let many: HashMap<String, String> = (0..5000).map(|i| (format!("K{i}"), "v".into())).collect();
    let big: HashMap<String, String> = HashMap::from([("K".into(), "v".repeat(2 * MIB))]);
    let env_cases: Vec<(&str, HashMap<String, String>, Code)> = vec![
        ("many env", many.clone(), Code::ResourceExhausted),
        ("big env", big.clone(), Code::ResourceExhausted),
        (
            "empty key",
            HashMap::from([(String::new(), "v".into())]),
            Code::InvalidArgument,
        ),
        (
            "= in key",
            HashMap::from([("A=B".into(), "v".into())]),
            Code::InvalidArgument,
        ),
        (
            "ctl in key",
            HashMap::from([("A\u{1}".into(), "v".into())]),
            Code::InvalidArgument,
        ),
        (
            "nul in value",
            HashMap::from([("A".into(), "v\0".into())]),
            Code::InvalidArgument,
        ),
    ];
    for (label, env, code) in env_cases {
        let mut r = ensure_req("f", OWNER, "img");
        r.env = env;
        let s = c.ensure_container(r).await.unwrap_err();
        assert_eq!(s.code(), code, "{label}: {}", s.message());
        assert!(!s.message().contains("v\0"), "values are never echoed");
    }
    let header_cases: Vec<(&str, HashMap<String, String>, Code)> = vec![
        ("many headers", many, Code::ResourceExhausted),
        ("big headers", big, Code::ResourceExhausted),
        (
            "bad name",
            HashMap::from([("a b".into(), "v".into())]),
            Code::InvalidArgument,
        ),
        (
            "bad value",
            HashMap::from([("x-a".into(), "v\r\nx".into())]),
            Code::InvalidArgument,
        ),
    ];
    for (label, headers, code) in header_cases {
        let s = c
            .invoke_worker(v1::InvokeWorkerRequest {
                container_id: w.id.clone(),
                owner_id: OWNER.into(),
                headers,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), code, "{label}: {}", s.message());
    }
}

#[tokio::test]
async fn odd_timeouts_and_payloads() {
    let worker = super::worker::Worker::start().await;
    let rt = std::sync::Arc::new(esb_runtime::fake::FakeRuntime::new());
    rt.set_worker_port(worker.addr.port());
    let agent = Agent::start_with(rt, |_| {}).await;
    let mut c = agent.client().await;
    let w = ensure(&agent, OWNER).await;
    for t in [i32::MIN, -1, 0, 1, i32::MAX] {
        let r = c
            .invoke_worker(v1::InvokeWorkerRequest {
                container_id: w.id.clone(),
                owner_id: OWNER.into(),
                payload: b"{}".to_vec(),
                timeout_ms: t,
                ..Default::default()
            })
            .await;
        match r {
            Ok(resp) => assert_eq!(resp.into_inner().status_code, 200, "timeout {t}"),
            Err(s) => assert_eq!(s.code(), Code::DeadlineExceeded, "timeout {t}: {s:?}"),
        }
    }
    // Bytes that are not UTF-8 are a legal payload.
    let r = c
        .invoke_worker(v1::InvokeWorkerRequest {
            container_id: w.id.clone(),
            owner_id: OWNER.into(),
            payload: vec![0xff, 0xfe, 0x00, 0x80],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().status_code, 200);
    // A payload over the request limit: RESOURCE_EXHAUSTED, not OUT_OF_RANGE.
    let s = c
        .invoke_worker(v1::InvokeWorkerRequest {
            container_id: w.id.clone(),
            owner_id: OWNER.into(),
            payload: vec![b'x'; 13 * MIB],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    // Up to the response limit must be accepted (10 MiB payload).
    let r = c
        .invoke_worker(v1::InvokeWorkerRequest {
            container_id: w.id.clone(),
            owner_id: OWNER.into(),
            payload: vec![b' '; 10 * MIB],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().status_code, 200);
}
