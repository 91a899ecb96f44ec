//! Create/start failures and cancellation leave no container behind.

use bollard::models::{ContainerConfig, ContainerCreateBody};
use bollard::query_parameters::{
    CommitContainerOptions, CreateContainerOptions, RemoveContainerOptions, RemoveImageOptions,
};
use esb_runtime::{ErrorKind, Runtime};

use crate::support::Ctx;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonexistent_network_leaves_nothing() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let mut ctx = Ctx::new(env, 20).await?;
    ctx.docker.network = "esbt-dk-no-such-net".into();
    let rt = ctx.runtime().await?;
    let err = rt.ensure(ctx.request("nonet")).await.err();
    assert_eq!(
        err.as_ref().map(|e| e.kind()),
        Some(ErrorKind::FailedPrecondition),
        "{err:?}"
    );
    assert!(ctx.containers().await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_entrypoint_leaves_nothing() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let ctx = Ctx::new(env, 21).await?;
    // An image whose entrypoint does not exist: commit a (never started) container of the
    // worker image with another entrypoint. Port 1 keeps the reference off any registry.
    let repo = "127.0.0.1:1/esbt-dk/bad-entrypoint";
    let tmp = ctx
        .raw
        .create_container(
            Some(CreateContainerOptions {
                name: Some("esbt-dk-21-commit-src".into()),
                ..Default::default()
            }),
            ContainerCreateBody {
                image: Some(ctx.image()),
                ..Default::default()
            },
        )
        .await?;
    let commit = ctx
        .raw
        .commit_container(
            CommitContainerOptions {
                container: Some(tmp.id.clone()),
                repo: Some(repo.into()),
                tag: Some("t21".into()),
                ..Default::default()
            },
            ContainerConfig {
                entrypoint: Some(vec!["/does-not-exist".into()]),
                ..Default::default()
            },
        )
        .await;
    let rm = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    ctx.raw.remove_container(&tmp.id, Some(rm)).await?;
    commit?;

    let rt = ctx.runtime().await?;
    let mut req = ctx.request("badentry");
    req.image = format!("{repo}:t21");
    let err = rt.ensure(req).await.err();
    assert!(err.is_some());
    assert!(ctx.containers().await?.is_empty());
    let rmi = RemoveImageOptions {
        force: true,
        ..Default::default()
    };
    let _ = ctx
        .raw
        .remove_image(&format!("{repo}:t21"), Some(rmi), None)
        .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_ensure_leaves_nothing() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let ctx = Ctx::new(env, 22).await?;
    let rt = ctx.runtime().await?;
    esb_testkit::scenarios::cancelled_ensure(rt, &ctx.image()).await?;
    assert!(ctx.containers().await?.is_empty());
    Ok(())
}
