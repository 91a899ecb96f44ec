//! Full lifecycle: ensure -> invoke -> list -> pause/resume -> metrics -> destroy twice.

use std::time::Duration;

use esb_runtime::{ErrorKind, Runtime, RuntimeKind, WorkerStatus};

use crate::support::{Ctx, invoke};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let ctx = Ctx::new(env, 1).await?;
    let rt = ctx.runtime().await?;

    let caps = rt.capabilities();
    assert_eq!(caps.kind, RuntimeKind::Docker);
    assert!(!caps.version.is_empty());
    assert!(matches!(caps.cgroup_version, 1 | 2));
    assert_eq!(caps.network, ctx.docker.network);
    rt.ping().await?;

    let w = rt.ensure(ctx.request("Life-Cycle")).await?;
    assert!(!w.ip.is_unspecified());
    assert_eq!(w.port, 8080);
    assert!(w.name.starts_with("esbt-dk-1-test-"), "{}", w.name);
    assert!(w.created_at > 0);
    assert!(
        invoke(w.ip, r#"{"hello":"world"}"#)
            .await?
            .contains("world")
    );

    let list = rt.list().await?;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, w.id);
    assert_eq!(list[0].name, w.name);
    assert_eq!(list[0].ip, Some(w.ip));
    assert_eq!(list[0].function_name, "Life-Cycle");
    assert_eq!(list[0].owner_id, "owner-1");
    assert_eq!(list[0].status, WorkerStatus::Running);
    assert_eq!(list[0].created_at, w.created_at);
    // Inspect accepts the id and the name.
    assert_eq!(rt.inspect(&w.name).await?.map(|s| s.id), Some(w.id.clone()));

    rt.pause(&w.id).await?;
    rt.pause(&w.id).await?;
    assert_eq!(
        rt.inspect(&w.id).await?.map(|s| s.status),
        Some(WorkerStatus::Paused)
    );
    rt.resume(&w.id).await?;
    rt.resume(&w.id).await?;
    assert_eq!(
        rt.inspect(&w.id).await?.map(|s| s.status),
        Some(WorkerStatus::Running)
    );
    invoke(w.ip, "{}").await?;

    let before = rt.metrics(&w.id).await?;
    assert_eq!(before.status, Some(WorkerStatus::Running));
    assert_eq!(before.memory_max, 536_870_912);
    assert_eq!(before.function_name, "Life-Cycle");
    invoke(w.ip, r#"{"burn_ms":300,"alloc_mib":64}"#).await?;
    let after = rt.metrics(&w.id).await?;
    assert!(
        after.cpu_usage_ns > before.cpu_usage_ns + 100_000_000,
        "{before:?} {after:?}"
    );
    assert!(
        after.memory_current >= before.memory_current + 32 * 1024 * 1024,
        "{before:?} {after:?}"
    );
    assert_eq!(after.oom_events, 0);

    assert!(rt.destroy(&w.id).await?);
    assert!(!rt.destroy(&w.id).await?);
    assert!(rt.list().await?.is_empty());
    assert!(rt.inspect(&w.id).await?.is_none());
    assert_eq!(
        rt.pause(&w.id).await.err().map(|e| e.kind()),
        Some(ErrorKind::NotFound)
    );
    assert_eq!(
        rt.metrics(&w.id).await.err().map(|e| e.kind()),
        Some(ErrorKind::NotFound)
    );
    assert!(ctx.containers().await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_worker_reports_exit_and_is_collected() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let ctx = Ctx::new(env, 2).await?;
    let rt = ctx.runtime().await?;
    let w = rt.ensure(ctx.request("stopper")).await?;
    invoke(w.ip, "{}").await?;
    ctx.raw
        .kill_container(
            &w.id,
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await?;
    let m = esb_testkit::eventually("worker stopped", Duration::from_secs(10), || async {
        rt.metrics(&w.id)
            .await
            .ok()
            .filter(|m| m.status == Some(WorkerStatus::Stopped))
    })
    .await;
    assert_eq!(m.exit_code, 137);
    assert!(m.exit_time > 0);
    assert_eq!((m.memory_current, m.cpu_usage_ns), (0, 0));
    assert_eq!(m.memory_max, 536_870_912);
    let listed = rt.list().await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].status, listed[0].ip),
        (WorkerStatus::Stopped, None)
    );

    let err = rt.resume(&w.id).await.err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::FailedPrecondition));
    let err = rt.pause(&w.id).await.err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::FailedPrecondition));

    let live = rt.reconcile().await?;
    assert!(live.is_empty());
    assert!(ctx.containers().await?.is_empty());
    assert!(!rt.destroy(&w.id).await?);
    Ok(())
}
