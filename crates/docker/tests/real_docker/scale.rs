//! Concurrency: 20 simultaneous Ensures of one image give 20 invocable workers.

use std::collections::HashSet;

use esb_runtime::{ErrorKind, Runtime};

use crate::support::{Ctx, invoke};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_ensures() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let ctx = Ctx::new(env, 40).await?;
    let rt = ctx.runtime().await?;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let rt = rt.clone();
            let req = ctx.request(&format!("fan-{i}"));
            tokio::spawn(async move { rt.ensure(req).await })
        })
        .collect();
    let mut workers = Vec::new();
    for t in tasks {
        workers.push(t.await??);
    }
    let ips: HashSet<_> = workers.iter().map(|w| w.ip).collect();
    assert_eq!(ips.len(), 20);
    for w in &workers {
        invoke(w.ip, "{}").await?;
    }
    assert_eq!(rt.list().await?.len(), 20);
    let destroys: Vec<_> = workers
        .iter()
        .map(|w| {
            let rt = rt.clone();
            let id = w.id.clone();
            tokio::spawn(async move { rt.destroy(&id).await })
        })
        .collect();
    for d in destroys {
        assert!(d.await??);
    }
    assert!(rt.list().await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_daemon_is_unavailable() -> anyhow::Result<()> {
    let Some(_env) = esb_testkit::docker() else {
        return Ok(());
    };
    let started = std::time::Instant::now();
    let ctx_common = {
        let env = esb_testkit::DevEnv::from_env();
        Ctx::new(env, 41).await?.common.clone()
    };
    let settings = esb_runtime::settings::DockerSettings {
        host: Some("unix:///work/main/.dev/no-such-docker.sock".into()),
        network: "none".into(),
    };
    let err = esb_docker::DockerRuntime::connect(ctx_common, settings)
        .await
        .err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Unavailable));
    // Bounded retry: gives up within seconds, not forever.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    Ok(())
}
