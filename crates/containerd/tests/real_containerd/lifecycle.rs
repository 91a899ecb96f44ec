//! Real-containerd tests of the worker lifecycle: ensure → invoke → list → pause/resume →
//! metrics → destroy (twice) → list empty, env override, injected resolv.conf, OOM.

use crate::support::{World, invoke};
use esb_runtime::{Runtime, WorkerStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(env, 1);
    let rt = world.runtime().await;
    rt.ping().await.expect("ping");
    let caps = rt.capabilities();
    assert!(!caps.version.is_empty());
    assert_eq!(caps.snapshotter, "overlayfs");

    let w = rt
        .ensure(world.request(&[
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512"),
            ("OVERRIDE_ME", "request"),
        ]))
        .await
        .expect("ensure");
    assert_eq!(w.port, 8080);
    assert!(w.created_at > 0);
    let body = invoke(
        w.ip,
        r#"{"echo_env":["OVERRIDE_ME","IMAGE_ONLY","AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]}"#,
    )
    .await;
    assert!(body.contains(r#""OVERRIDE_ME":"request""#), "{body}");
    assert!(body.contains(r#""IMAGE_ONLY":"from-image""#), "{body}");

    // resolv.conf comes from the shared file with the configured nameserver.
    let body = invoke(w.ip, r#"{"read_file":"/etc/resolv.conf"}"#).await;
    assert!(
        body.contains(&format!("nameserver {}", world.cni.dns_server)),
        "{body}"
    );

    let list = rt.list().await.expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, w.id);
    assert_eq!(list[0].status, WorkerStatus::Running);
    assert_eq!(list[0].ip, Some(w.ip));
    assert_eq!(list[0].owner_id, crate::support::OWNER);
    assert_eq!(list[0].function_name, crate::support::FUNCTION);
    assert_eq!(list[0].created_at, w.created_at);

    rt.pause(&w.id).await.expect("pause");
    rt.pause(&w.id).await.expect("pause again");
    assert_eq!(
        rt.inspect(&w.id)
            .await
            .expect("inspect")
            .expect("present")
            .status,
        WorkerStatus::Paused
    );
    rt.resume(&w.id).await.expect("resume");
    rt.resume(&w.id).await.expect("resume again");
    invoke(w.ip, "{}").await;

    let before = rt.metrics(&w.id).await.expect("metrics");
    assert_eq!(before.memory_max, 536_870_912);
    assert_eq!(before.status, Some(WorkerStatus::Running));
    invoke(w.ip, r#"{"burn_ms":300,"alloc_mib":64}"#).await;
    let after = rt.metrics(&w.id).await.expect("metrics");
    assert!(
        after.cpu_usage_ns > before.cpu_usage_ns + 100_000_000,
        "{before:?} {after:?}"
    );
    assert!(
        after.memory_current > before.memory_current + 32 * 1024 * 1024,
        "{before:?} {after:?}"
    );

    assert!(rt.destroy(&w.id).await.expect("destroy"));
    assert!(!rt.destroy(&w.id).await.expect("destroy again"));
    assert!(rt.list().await.expect("list").is_empty());
    assert!(rt.inspect(&w.id).await.expect("inspect").is_none());
    let e = rt.pause(&w.id).await.expect_err("pause of a gone worker");
    assert_eq!(e.kind(), esb_runtime::ErrorKind::NotFound);
    world.assert_no_leftovers();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kill_shows_in_metrics_and_stops_the_worker() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(env, 2);
    let rt = world.runtime().await;
    let w = rt
        .ensure(world.request(&[("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")]))
        .await
        .expect("ensure");
    invoke(w.ip, "{}").await;
    let _ = crate::support::post(w.ip, r#"{"alloc_mib":400}"#).await;
    let m = esb_testkit::eventually(
        "worker stopped",
        std::time::Duration::from_secs(15),
        || async {
            let m = rt.metrics(&w.id).await.ok()?;
            (m.status == Some(WorkerStatus::Stopped)).then_some(m)
        },
    )
    .await;
    assert!(m.oom_events >= 1, "{m:?}");
    assert_eq!(m.memory_current, 0);
    assert_eq!(m.exit_code, 137);
    assert!(m.exit_time > 0);
    let e = rt.resume(&w.id).await.expect_err("resume stopped");
    assert_eq!(e.kind(), esb_runtime::ErrorKind::FailedPrecondition);
    assert!(rt.destroy(&w.id).await.expect("destroy"));
    world.assert_no_leftovers();
}
