//! Concurrency: 20 simultaneous Ensures of one image give 20 invocable workers.

use esb_runtime::ErrorKind;

use crate::support::Ctx;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_ensures() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let ctx = Ctx::new(env, 40).await?;
    let rt = ctx.runtime().await?;
    esb_testkit::scenarios::concurrent_ensures(rt, &ctx.image(), 20).await?;
    assert!(ctx.containers().await?.is_empty());
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
    let settings = esb_docker::DockerSettings {
        host: Some("unix:///work/main/.dev/no-such-docker.sock".into()),
        network: "none".into(),
        firewall: None,
    };
    let err = esb_docker::DockerRuntime::connect(ctx_common, settings)
        .await
        .err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Unavailable));
    // Bounded retry: gives up within seconds, not forever.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    Ok(())
}
