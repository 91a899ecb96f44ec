//! Full lifecycle (the shared scenario), capabilities, and stopped workers.

use std::time::Duration;

use anyhow::Context;

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

    esb_testkit::scenarios::lifecycle(rt, &ctx.image()).await?;
    assert!(ctx.containers().await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exiting_worker_is_stopped_then_collected() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let ctx = Ctx::new(env, 3).await?;
    let rt = ctx.runtime().await?;
    esb_testkit::scenarios::stopped_worker(rt, &ctx.image()).await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_worker_has_metrics() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let ctx = Ctx::new(env, 4).await?;
    let rt = ctx.runtime().await?;
    let w = rt.ensure(ctx.request("paused-metrics")).await?;
    invoke(w.ip, r#"{"alloc_mib":16}"#).await?;
    rt.pause(&w.id).await?;
    let m = rt.metrics(&w.id).await?;
    assert_eq!(m.status, Some(WorkerStatus::Paused));
    assert_eq!(m.memory_max, 536_870_912);
    assert!(m.memory_current >= 16 * 1024 * 1024, "{m:?}");
    assert!(m.cpu_usage_ns > 0);
    assert!(rt.destroy(&w.id).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_killed_worker_reports_the_oom() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let ctx = Ctx::new(env, 5).await?;
    let rt = ctx.runtime().await?;
    let mut req = ctx.request("oom");
    req.env
        .insert("AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(), "128".into());
    let w = rt.ensure(req).await?;
    invoke(w.ip, "{}").await?;
    // Swap = memory, so touching more than the limit kills the process.
    let _ = crate::support::invoke_once(w.ip, r#"{"alloc_mib":256}"#).await;
    let m = esb_testkit::eventually("worker oom-killed", Duration::from_secs(15), || async {
        rt.metrics(&w.id)
            .await
            .ok()
            .filter(|m| m.status == Some(WorkerStatus::Stopped))
    })
    .await;
    assert_eq!(m.oom_events, 1, "{m:?}");
    assert_eq!(m.exit_code, 137);
    assert_eq!(m.memory_max, 128 * 1024 * 1024);
    assert!(rt.destroy(&w.id).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_carries_labels_limits_and_hardening() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let ctx = Ctx::new(env, 6).await?;
    let rt = ctx.runtime().await?;
    let mut req = ctx.request("Spec Check");
    req.env.insert("SECRET_TOKEN".into(), "s3cr3t".into());
    let w = rt.ensure(req).await?;
    let c = ctx
        .raw
        .inspect_container(
            &w.id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await?;
    assert_eq!(c.id.as_deref(), Some(w.id.as_str()));
    assert_eq!(w.id.len(), 64);
    let labels = c
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    let want = ctx.common.identity.worker_labels("Spec Check", "owner-1");
    for (k, v) in &want {
        assert_eq!(labels.get(k), Some(v), "label {k}");
    }
    let envs = c
        .config
        .as_ref()
        .and_then(|c| c.env.clone())
        .unwrap_or_default();
    assert!(envs.contains(&"SECRET_TOKEN=s3cr3t".to_string()));
    let h = c.host_config.context("host config")?;
    let mem = 512 * 1024 * 1024;
    assert_eq!((h.memory, h.memory_swap), (Some(mem), Some(mem)));
    let millis = ctx.common.worker.cpu_for(512 * 1024 * 1024) as i64;
    assert_eq!(h.nano_cpus, Some(millis * 1_000_000));
    assert_eq!(h.pids_limit, Some(1024));
    assert!(
        h.security_opt
            .clone()
            .unwrap_or_default()
            .iter()
            .any(|o| o.starts_with("no-new-privileges"))
    );
    let restart = h.restart_policy.and_then(|r| r.name).map(|n| n.to_string());
    assert!(matches!(restart.as_deref(), Some("no" | "")), "{restart:?}");
    let log = h.log_config.context("log config")?;
    assert_eq!(log.typ.as_deref(), Some("json-file"));
    let opts = log.config.unwrap_or_default();
    assert_eq!(opts.get("max-file").map(String::as_str), Some("2"));
    assert_eq!(opts.get("max-size").map(String::as_str), Some("524288"));
    assert_eq!(h.network_mode.as_deref(), Some(ctx.docker.network.as_str()));
    // Sandbox (review H4/L5): capabilities dropped, OOM preference, seccomp never disabled.
    let dropped = h.cap_drop.clone().unwrap_or_default();
    for cap in ["NET_RAW", "MKNOD", "SETFCAP"] {
        assert!(dropped.iter().any(|c| c == cap), "{cap} in {dropped:?}");
    }
    assert_eq!(h.oom_score_adj, Some(500));
    let opts = h.security_opt.clone().unwrap_or_default();
    assert!(!opts.iter().any(|o| o.contains("unconfined")), "{opts:?}");
    let info = ctx.raw.info().await?;
    let daemon_opts = info.security_options.unwrap_or_default();
    assert!(
        daemon_opts.iter().any(|o| o.contains("name=seccomp")),
        "dockerd runs without seccomp: {daemon_opts:?}"
    );
    // What the kernel applied to the worker process itself.
    let status = esb_testkit::sandbox::worker_status(w.ip).await?;
    assert_eq!(status.seccomp, 2, "{status:?}");
    assert!(status.no_new_privs, "{status:?}");
    for bit in [
        esb_testkit::sandbox::CAP_NET_RAW_BIT,
        esb_testkit::sandbox::CAP_MKNOD_BIT,
        esb_testkit::sandbox::CAP_SETFCAP_BIT,
    ] {
        assert_eq!(status.cap_bnd & (1 << bit), 0, "cap bit {bit}: {status:?}");
    }
    let adj = esb_testkit::sandbox::read_worker_file(w.ip, "/proc/self/oom_score_adj").await?;
    assert_eq!(adj.trim(), "500");
    assert!(rt.destroy(&w.id).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_pause_resume_stays_consistent() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let ctx = Ctx::new(env, 7).await?;
    let rt = ctx.runtime().await?;
    let w = rt.ensure(ctx.request("toggle")).await?;
    invoke(w.ip, "{}").await?;
    // dockerd applies pause/resume events asynchronously; quick toggles (here also through
    // the raw API) must never make an operation of ours fail or lie.
    for i in 0..40 {
        rt.pause(&w.id).await?;
        rt.resume(&w.id).await?;
        if i % 4 == 0 {
            let _ = ctx.raw.pause_container(&w.id).await;
            let _ = ctx.raw.unpause_container(&w.id).await;
        }
    }
    rt.resume(&w.id).await?;
    assert!(
        invoke(w.ip, r#"{"after":"toggles"}"#)
            .await?
            .contains("toggles")
    );
    rt.pause(&w.id).await?;
    assert_eq!(
        rt.inspect(&w.id).await?.map(|s| s.status),
        Some(WorkerStatus::Paused)
    );
    // Really frozen: no answer.
    let frozen = tokio::time::timeout(
        Duration::from_millis(500),
        crate::support::invoke_once(w.ip, "{}"),
    )
    .await;
    assert!(frozen.is_err(), "a paused worker answered");
    assert!(rt.destroy(&w.id).await?);
    Ok(())
}

/// Review H4: `AGENT_WORKER_USER` replaces root for an image that runs as root (the test
/// worker's image sets no user): the worker runs as that uid:gid, without capabilities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_user_replaces_root() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let mut ctx = Ctx::new(env, 8).await?;
    ctx.common.worker.run_as = Some((1000, 1000));
    let rt = ctx.runtime().await?;
    let w = rt.ensure(ctx.request("Forced User")).await?;
    let status = esb_testkit::sandbox::worker_status(w.ip).await?;
    assert_eq!((status.uid, status.gid), (1000, 1000), "{status:?}");
    assert_eq!(status.cap_eff, 0, "a non-root worker has no capabilities");
    assert_eq!(status.seccomp, 2, "Docker's default seccomp profile");
    let c = ctx
        .raw
        .inspect_container(
            &w.id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await?;
    assert_eq!(c.config.and_then(|c| c.user).as_deref(), Some("1000:1000"));
    assert!(rt.destroy(&w.id).await?);
    assert!(ctx.containers().await?.is_empty());
    Ok(())
}
