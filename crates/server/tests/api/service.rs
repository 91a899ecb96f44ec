//! SPEC §3, row by row, over FakeRuntime through a real tonic server.

use std::collections::HashMap;
use std::sync::Arc;

use esb_proto::v1;
use esb_runtime::fake::{FakeRuntime, Op};
use esb_runtime::{ErrorKind, WorkerState, WorkerStatus};
use tonic::Code;

use super::harness::{Agent, OTHER, OWNER};

pub fn ensure_req(function: &str, owner: &str, image: &str) -> v1::EnsureContainerRequest {
    v1::EnsureContainerRequest {
        function_name: function.into(),
        image: image.into(),
        env: HashMap::from([("A".to_owned(), "secret".to_owned())]),
        owner_id: owner.into(),
    }
}

pub async fn ensure(agent: &Agent, owner: &str) -> v1::WorkerInfo {
    let mut c = agent.client().await;
    c.ensure_container(ensure_req("fn-a", owner, "img:1"))
        .await
        .unwrap()
        .into_inner()
}

fn state(id: &str, owner: &str, status: WorkerStatus) -> WorkerState {
    WorkerState {
        id: id.into(),
        name: format!("name-{id}"),
        function_name: "fn-x".into(),
        owner_id: owner.into(),
        status,
        ip: Some("127.0.0.1".parse().unwrap()),
        created_at: 1_000,
    }
}

#[tokio::test]
async fn ensure_validation_order() {
    let agent = Agent::start().await;
    let mut c = agent.client().await;
    let cases = [
        (ensure_req("", "", ""), "function_name is required"),
        (ensure_req("  ", "", ""), "function_name is required"),
        (ensure_req("f", "", ""), "owner_id is required"),
        (ensure_req("f", " \t ", ""), "owner_id is required"),
        (ensure_req("f", "o", ""), "image is required"),
        (ensure_req("f", "o", "   "), "image is required"),
    ];
    for (req, msg) in cases {
        let s = c.ensure_container(req).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), msg);
    }
    assert_eq!(agent.rt.count(Op::Ensure), 0);
}

#[tokio::test]
async fn ensure_success_and_trimmed_owner() {
    let agent = Agent::start().await;
    let mut c = agent.client().await;
    let w = c
        .ensure_container(ensure_req("fn-a", "  owner-a ", " img:1 "))
        .await
        .unwrap()
        .into_inner();
    assert!(!w.id.is_empty());
    assert_eq!(w.name, w.id);
    assert_eq!(w.ip_address, "127.0.0.1");
    assert_eq!(w.port, 8080);
    let fw = agent.rt.worker(&w.id).unwrap();
    assert_eq!(fw.owner_id, OWNER);
}

#[tokio::test]
async fn ensure_error_codes() {
    let cases = [
        (ErrorKind::InvalidArgument, Code::InvalidArgument),
        (ErrorKind::ImageNotFound, Code::NotFound),
        (ErrorKind::Unavailable, Code::Unavailable),
        (ErrorKind::ResourceExhausted, Code::ResourceExhausted),
        (ErrorKind::Internal, Code::Internal),
        (ErrorKind::Unimplemented, Code::Unimplemented),
    ];
    let agent = Agent::start().await;
    let mut c = agent.client().await;
    for (kind, code) in cases {
        agent.rt.clear_failures();
        agent.rt.fail_always(Op::Ensure, kind);
        let s = c
            .ensure_container(ensure_req("f", OWNER, "img"))
            .await
            .unwrap_err();
        assert_eq!(s.code(), code, "{kind:?}");
    }
}

#[tokio::test]
async fn id_rpcs_validate_container_id_then_owner() {
    let agent = Agent::start().await;
    let mut c = agent.client().await;
    macro_rules! check {
        ($call:ident, $req:expr, $msg:expr) => {{
            let s = c.$call($req).await.unwrap_err();
            assert_eq!(s.code(), Code::InvalidArgument, "{}", stringify!($call));
            assert_eq!(s.message(), $msg, "{}", stringify!($call));
        }};
    }
    for (cid, owner, msg) in [
        ("", "", "container_id is required"),
        (" ", "o", "container_id is required"),
        ("c", "", "owner_id is required"),
        ("c", "  ", "owner_id is required"),
    ] {
        check!(
            destroy_container,
            v1::DestroyContainerRequest {
                function_name: String::new(),
                container_id: cid.into(),
                owner_id: owner.into()
            },
            msg
        );
        check!(
            pause_container,
            v1::PauseContainerRequest {
                container_id: cid.into(),
                owner_id: owner.into()
            },
            msg
        );
        check!(
            resume_container,
            v1::ResumeContainerRequest {
                container_id: cid.into(),
                owner_id: owner.into()
            },
            msg
        );
        check!(
            get_container_metrics,
            v1::GetContainerMetricsRequest {
                container_id: cid.into(),
                owner_id: owner.into()
            },
            msg
        );
        check!(
            invoke_worker,
            v1::InvokeWorkerRequest {
                container_id: cid.into(),
                owner_id: owner.into(),
                ..Default::default()
            },
            msg
        );
    }
    let s = c
        .list_containers(v1::ListContainersRequest {
            owner_id: " ".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), s.message()),
        (Code::InvalidArgument, "owner_id is required")
    );
}

#[tokio::test]
async fn foreign_owner_is_permission_denied_and_unknown_is_not_found() {
    let agent = Agent::start().await;
    let w = ensure(&agent, OWNER).await;
    let mut c = agent.client().await;
    for (id, owner, code) in [
        (w.id.as_str(), OTHER, Code::PermissionDenied),
        ("nope", OWNER, Code::NotFound),
    ] {
        let s = c
            .pause_container(v1::PauseContainerRequest {
                container_id: id.into(),
                owner_id: owner.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), code);
        let s = c
            .resume_container(v1::ResumeContainerRequest {
                container_id: id.into(),
                owner_id: owner.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), code);
        let s = c
            .get_container_metrics(v1::GetContainerMetricsRequest {
                container_id: id.into(),
                owner_id: owner.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), code);
        let s = c
            .invoke_worker(v1::InvokeWorkerRequest {
                container_id: id.into(),
                owner_id: owner.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), code);
    }
    let s = c
        .destroy_container(v1::DestroyContainerRequest {
            function_name: String::new(),
            container_id: w.id.clone(),
            owner_id: OTHER.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    assert!(
        agent.rt.worker(&w.id).is_some(),
        "a foreign destroy must not remove it"
    );
    assert_eq!(agent.rt.count(Op::Pause), 0);
}

#[tokio::test]
async fn destroy_is_idempotent() {
    let agent = Agent::start().await;
    let w = ensure(&agent, OWNER).await;
    let mut c = agent.client().await;
    let req = v1::DestroyContainerRequest {
        function_name: "ignored".into(),
        container_id: w.id.clone(),
        owner_id: OWNER.into(),
    };
    assert!(
        c.destroy_container(req.clone())
            .await
            .unwrap()
            .into_inner()
            .success
    );
    assert!(agent.rt.worker(&w.id).is_none());
    assert!(c.destroy_container(req).await.unwrap().into_inner().success);
    let unknown = v1::DestroyContainerRequest {
        function_name: String::new(),
        container_id: "never-existed".into(),
        owner_id: OWNER.into(),
    };
    assert!(
        c.destroy_container(unknown)
            .await
            .unwrap()
            .into_inner()
            .success
    );
    assert_eq!(
        agent.rt.count(Op::Destroy),
        1,
        "unknown ids never reach the runtime"
    );
    // A runtime that lost the worker between lookup and destroy: still success.
    let w2 = ensure(&agent, OWNER).await;
    agent.rt.fail_nth(Op::Destroy, 2, ErrorKind::NotFound);
    let req = v1::DestroyContainerRequest {
        function_name: String::new(),
        container_id: w2.id,
        owner_id: OWNER.into(),
    };
    assert!(c.destroy_container(req).await.unwrap().into_inner().success);
}

#[tokio::test]
async fn pause_resume_idempotent_and_stopped_cannot_resume() {
    let agent = Agent::start().await;
    let w = ensure(&agent, OWNER).await;
    let mut c = agent.client().await;
    let p = v1::PauseContainerRequest {
        container_id: w.id.clone(),
        owner_id: OWNER.into(),
    };
    let r = v1::ResumeContainerRequest {
        container_id: w.id.clone(),
        owner_id: OWNER.into(),
    };
    assert!(
        c.pause_container(p.clone())
            .await
            .unwrap()
            .into_inner()
            .success
    );
    assert!(c.pause_container(p).await.unwrap().into_inner().success);
    assert!(
        c.resume_container(r.clone())
            .await
            .unwrap()
            .into_inner()
            .success
    );
    assert!(
        c.resume_container(r.clone())
            .await
            .unwrap()
            .into_inner()
            .success
    );
    agent.rt.set_status(&w.id, WorkerStatus::Stopped);
    let s = c.resume_container(r).await.unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn unimplemented_passes_through() {
    let agent = Agent::start().await;
    let w = ensure(&agent, OWNER).await;
    let mut c = agent.client().await;
    agent.rt.fail_always(Op::Pause, ErrorKind::Unimplemented);
    agent.rt.fail_always(Op::Metrics, ErrorKind::Unimplemented);
    let s = c
        .pause_container(v1::PauseContainerRequest {
            container_id: w.id.clone(),
            owner_id: OWNER.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unimplemented);
    let s = c
        .get_container_metrics(v1::GetContainerMetricsRequest {
            container_id: w.id,
            owner_id: OWNER.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unimplemented);
    assert!(
        s.message().contains("metrics not implemented"),
        "{}",
        s.message()
    );
}

#[tokio::test]
async fn metrics_of_running_and_stopped_workers() {
    let agent = Agent::start().await;
    let w = ensure(&agent, OWNER).await;
    let mut c = agent.client().await;
    let req = v1::GetContainerMetricsRequest {
        container_id: w.id.clone(),
        owner_id: OWNER.into(),
    };
    let m = c
        .get_container_metrics(req.clone())
        .await
        .unwrap()
        .into_inner()
        .metrics
        .unwrap();
    assert_eq!(m.container_id, w.id);
    assert_eq!(m.state, "RUNNING");
    assert_eq!(m.memory_max, 128 << 20);
    agent.rt.set_status(&w.id, WorkerStatus::Stopped);
    let m = c
        .get_container_metrics(req)
        .await
        .unwrap()
        .into_inner()
        .metrics
        .unwrap();
    assert_eq!(m.state, "STOPPED");
    assert_eq!((m.memory_current, m.cpu_usage_ns), (0, 0));
}

#[tokio::test]
async fn list_is_owner_filtered_with_true_times() {
    let rt = Arc::new(FakeRuntime::new());
    rt.insert_worker(state("mine", OWNER, WorkerStatus::Running));
    rt.insert_worker(state("theirs", OTHER, WorkerStatus::Paused));
    let agent = Agent::start_with(rt, |_| {}).await;
    let mut c = agent.client().await;
    let list = c
        .list_containers(v1::ListContainersRequest {
            owner_id: format!(" {OWNER} "),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(list.len(), 1);
    let s = &list[0];
    assert_eq!(s.container_id, "mine");
    assert_eq!(s.container_name, "name-mine");
    assert_eq!(s.status, "RUNNING");
    assert_eq!(s.owner_id, OWNER);
    assert_eq!(s.created_at, 1_000);
    assert_eq!(s.last_used_at, 1_000, "never used: last_used = created_at");
    // Resume counts as a use.
    c.resume_container(v1::ResumeContainerRequest {
        container_id: "mine".into(),
        owner_id: OWNER.into(),
    })
    .await
    .unwrap();
    let list = c
        .list_containers(v1::ListContainersRequest {
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(list[0].last_used_at > 1_000);
}

#[tokio::test]
async fn lookup_miss_is_one_targeted_inspect() {
    let rt = Arc::new(FakeRuntime::new());
    let agent = Agent::start_with(rt.clone(), |_| {}).await;
    rt.insert_worker(state("late", OWNER, WorkerStatus::Running));
    let mut c = agent.client().await;
    let p = v1::PauseContainerRequest {
        container_id: "late".into(),
        owner_id: OWNER.into(),
    };
    c.pause_container(p.clone()).await.unwrap();
    c.pause_container(p).await.unwrap();
    assert_eq!(rt.count(Op::Inspect), 1);
    assert_eq!(rt.count(Op::List), 0);
}

#[tokio::test]
async fn ensure_racing_list_loses_nothing() {
    let rt = Arc::new(FakeRuntime::new());
    rt.set_ensure_delay(std::time::Duration::from_millis(100));
    let agent = Agent::start_with(rt.clone(), |_| {}).await;
    let mut c1 = agent.client().await;
    let mut c2 = agent.client().await;
    let ensure = tokio::spawn(async move {
        c1.ensure_container(ensure_req("f", OWNER, "img"))
            .await
            .unwrap()
            .into_inner()
    });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // The list starts before the worker exists and ends... whenever; it must not drop it.
    c2.list_containers(v1::ListContainersRequest {
        owner_id: OWNER.into(),
    })
    .await
    .unwrap();
    let w = ensure.await.unwrap();
    c2.list_containers(v1::ListContainersRequest {
        owner_id: OWNER.into(),
    })
    .await
    .unwrap();
    let inspects = rt.count(Op::Inspect);
    c2.pause_container(v1::PauseContainerRequest {
        container_id: w.id,
        owner_id: OWNER.into(),
    })
    .await
    .unwrap();
    assert_eq!(
        rt.count(Op::Inspect),
        inspects,
        "the table still knew the worker"
    );
}

#[tokio::test]
async fn capabilities_need_no_owner_and_warn_without_tls() {
    let agent = Agent::start().await;
    let mut c = agent.client().await;
    let caps = c
        .get_capabilities(v1::GetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.runtime, "containerd");
    assert!(caps.pause_resume && caps.metrics && caps.invoke);
    assert_eq!(caps.max_invoke_response_bytes, 10 << 20);
    assert_eq!(caps.agent_version, "test");
    assert!(!caps.tls_enabled);
    assert!(caps.warnings.iter().any(|w| w.contains("TLS is disabled")));
}

#[tokio::test]
async fn last_used_survives_restart_and_reconcile_adopts() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let rt = Arc::new(FakeRuntime::new());
    let agent = Agent::start_in(dir.clone(), rt.clone(), |_| {}).await;
    let w = ensure(&agent, OWNER).await;
    agent.stop().await.unwrap();
    let adopted = rt.worker(&w.id).unwrap();
    let mut old = adopted.clone();
    old.created_at = 1_000;
    rt.insert_worker(old.clone());
    rt.set_reconcile_result(vec![old]);
    let agent = Agent::start_in(dir, rt.clone(), |_| {}).await;
    let mut c = agent.client().await;
    let list = c
        .list_containers(v1::ListContainersRequest {
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(list.len(), 1);
    assert!(
        list[0].last_used_at > 1_000,
        "ensure time survived the restart"
    );
    // Adopted before serving: no inspect needed.
    c.pause_container(v1::PauseContainerRequest {
        container_id: w.id,
        owner_id: OWNER.into(),
    })
    .await
    .unwrap();
    assert_eq!(rt.count(Op::Inspect), 0);
}

#[tokio::test]
async fn shutdown_policy_destroy_removes_workers() {
    let rt = Arc::new(FakeRuntime::new());
    let agent = Agent::start_with(rt.clone(), |s| {
        s.shutdown_policy = esb_server::ShutdownPolicy::Destroy;
    })
    .await;
    ensure(&agent, OWNER).await;
    ensure(&agent, OTHER).await;
    agent.stop().await.unwrap();
    assert!(rt.workers().is_empty());
}

#[tokio::test]
async fn periodic_gc_reclaims_and_forgets_workers() {
    let rt = Arc::new(FakeRuntime::new());
    let agent = Agent::start_with(rt.clone(), |s| {
        s.gc_interval = std::time::Duration::from_secs(1)
    })
    .await;
    let w = ensure(&agent, OWNER).await;
    rt.set_status(&w.id, WorkerStatus::Stopped);
    super::harness::eventually(|| rt.worker(&w.id).is_none()).await;
    let mut text = String::new();
    for _ in 0..50 {
        text = agent.scrape("/metrics").await.1;
        if text.contains("esb_agent_gc_reclaimed_workers_total 1") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        text.contains("esb_agent_gc_reclaimed_workers_total 1"),
        "{text}"
    );
    // Forgotten by the table: the next lookup asks the runtime again and finds nothing.
    let mut c = agent.client().await;
    let s = c
        .pause_container(v1::PauseContainerRequest {
            container_id: w.id,
            owner_id: OWNER.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
}
