//! Pull policies against the local registry: if-not-present pulls only when absent, always
//! falls back to a local copy, a missing image is ImageNotFound, the default registry is
//! prepended to host-less references.

use bollard::query_parameters::{PushImageOptions, RemoveImageOptions, TagImageOptions};
use esb_runtime::settings::PullPolicy;
use esb_runtime::{ErrorKind, Runtime};
use futures::StreamExt;

use crate::support::{Ctx, invoke};

/// Tags the worker image as `repo:tag` locally.
async fn tag(ctx: &Ctx, repo: &str, tag: &str) -> anyhow::Result<()> {
    let opts = TagImageOptions {
        repo: Some(repo.to_string()),
        tag: Some(tag.to_string()),
    };
    ctx.raw.tag_image(&ctx.image(), Some(opts)).await?;
    Ok(())
}

async fn untag(ctx: &Ctx, reference: &str) {
    let opts = RemoveImageOptions {
        force: true,
        ..Default::default()
    };
    let _ = ctx.raw.remove_image(reference, Some(opts), None).await;
}

async fn present(ctx: &Ctx, reference: &str) -> bool {
    ctx.raw.inspect_image(reference).await.is_ok()
}

/// `repo:tag` of the worker image, pushed to the registry and then dropped locally, so the
/// next use must pull it. Returns the reference.
async fn in_registry_only(ctx: &Ctx, repo: &str, tag_name: &str) -> anyhow::Result<String> {
    let reference = format!("{repo}:{tag_name}");
    tag(ctx, repo, tag_name).await?;
    let mut push = ctx.raw.push_image(
        repo,
        Some(PushImageOptions {
            tag: Some(tag_name.into()),
            ..Default::default()
        }),
        None,
    );
    while let Some(item) = push.next().await {
        item?;
    }
    untag(ctx, &reference).await;
    assert!(!present(ctx, &reference).await);
    Ok(reference)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_not_present_pulls_when_absent() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let mut ctx = Ctx::new(env, 10).await?;
    let registry = ctx.env.registry.clone().unwrap_or_default();
    // A reference of our own, pushed to the registry and then dropped locally.
    let reference = in_registry_only(&ctx, &format!("{registry}/esbt-dk/pull-ifnp"), "t10").await?;

    ctx.common.registry.pull_policy = PullPolicy::IfNotPresent;
    let rt = ctx.runtime().await?;
    // Host-less reference: the default registry (the local one) is prepended.
    let mut req = ctx.request("pull-ifnp");
    req.image = "esbt-dk/pull-ifnp:t10".into();
    let w = rt.ensure(req).await?;
    assert!(present(&ctx, &reference).await);
    invoke(w.ip, "{}").await?;
    assert!(rt.destroy(&w.id).await?);

    // `always` re-pulls a present image and works.
    ctx.common.registry.pull_policy = PullPolicy::Always;
    let rt = ctx.runtime().await?;
    let mut req = ctx.request("pull-always");
    req.image = reference.clone();
    let w = rt.ensure(req).await?;
    assert!(rt.destroy(&w.id).await?);
    untag(&ctx, &reference).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_falls_back_to_local_copy() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let mut ctx = Ctx::new(env, 11).await?;
    ctx.common.registry.pull_policy = PullPolicy::Always;
    // Nothing listens on port 1: the pull fails, the local copy serves.
    let repo = "127.0.0.1:1/esbt-dk/fallback";
    tag(&ctx, repo, "t11").await?;
    let rt = ctx.runtime().await?;
    let mut req = ctx.request("fallback");
    req.image = format!("{repo}:t11");
    let w = rt.ensure(req).await?;
    invoke(w.ip, "{}").await?;
    assert!(rt.destroy(&w.id).await?);
    untag(&ctx, &format!("{repo}:t11")).await;

    // No local copy either: the registry is unreachable.
    let mut req = ctx.request("fallback");
    req.image = format!("{repo}:absent");
    let err = rt.ensure(req).await.err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Unavailable));
    assert!(ctx.containers().await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_is_image_not_found_without_leftover() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let ctx = Ctx::new(env, 12).await?;
    let rt = ctx.runtime().await?;
    let registry = ctx.env.registry.clone().unwrap_or_default();
    let missing = format!("{registry}/esbt-dk/does-not-exist:nope");
    esb_testkit::scenarios::missing_image(rt.clone(), &missing).await?;
    // A malformed reference is the caller's fault.
    let mut req = ctx.request("missing");
    req.image = "Not A Ref".into();
    let err = rt.ensure(req).await.err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidArgument));
    assert!(ctx.containers().await?.is_empty());
    Ok(())
}

/// PullImage on dockerd: an absent image is pulled (layer progress as the Engine's stream
/// reports it), a second pull is a no-op (`pulled` false), the digest is the registry's, and an
/// Ensure afterwards needs no pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_pull_reports_progress_and_is_shared_with_ensure() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let ctx = Ctx::new(env, 13).await?;
    let registry = ctx.env.registry.clone().unwrap_or_default();
    let reference = in_registry_only(&ctx, &format!("{registry}/esbt-dk/pre-pull"), "t13").await?;

    let rt = ctx.runtime().await?;
    let seen = std::sync::Mutex::new(Vec::new());
    let sink = |p: esb_runtime::PullProgress| seen.lock().unwrap().push(p);
    let img = rt.pull_image(&reference, &sink).await?;
    assert!(img.pulled);
    assert_eq!(img.reference, reference);
    assert!(img.digest.starts_with("sha256:"), "{img:?}");
    // dockerd lists only the layers it has to fetch: here they all exist locally (the image
    // was tagged from the worker image), so there may be no layer lines at all.
    let seen = seen.into_inner().unwrap();
    if let Some(last) = seen.last() {
        assert_eq!(last.layers_done, last.layers_total, "{seen:?}");
    }
    assert!(
        seen.iter().all(|p| p.layers_done <= p.layers_total),
        "{seen:?}"
    );
    assert!(present(&ctx, &reference).await);

    let again = rt.pull_image(&reference, &|_| {}).await?;
    assert!(!again.pulled);
    let mut req = ctx.request("pre-pull");
    req.image = reference.clone();
    let w = rt.ensure(req).await?;
    invoke(w.ip, "{}").await?;
    assert!(rt.destroy(&w.id).await?);

    let e = rt
        .pull_image("127.0.0.1:1/not/allowed:1", &|_| {})
        .await
        .expect_err("Any is allowed in the test settings, port 1 is closed");
    assert_ne!(e.kind(), ErrorKind::Internal, "{}", e.chain());
    untag(&ctx, &reference).await;
    Ok(())
}

/// Review M1 on dockerd: a registry of the test's own trickles a layer one byte per 100 ms.
/// The Ensure ends at `IMAGE_PULL_TIMEOUT` with DEADLINE_EXCEEDED (dockerd bounds blob sizes
/// itself, not time) and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_registry_ends_at_the_pull_deadline() -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use esb_runtime::settings::RegistrySettings;
    use esb_testkit::registry::{Blob, Registry, add_image, serve};

    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]},"config":{}}"#.to_vec();
    let mut reg = Registry::default();
    add_image(
        &mut reg,
        "evil/slow",
        (config.clone(), config.len() as i64, Blob::Bytes(config)),
        Some((format!("sha256:{}", "1".repeat(64)), 1 << 20, Blob::Trickle)),
    );
    let reg = Arc::new(reg);
    let host = serve(reg.clone()).await.to_string();
    let mut ctx = Ctx::new(env, 14).await?;
    ctx.common.registry = RegistrySettings {
        default_registry: host.clone(),
        insecure: true,
        allowed: RegistrySettings::only_default(&host),
        pull_timeout: Duration::from_secs(2),
        ..ctx.common.registry.clone()
    };
    let rt = ctx.runtime().await?;
    let mut req = ctx.request("slow");
    req.image = format!("{host}/evil/slow:latest");
    let t = Instant::now();
    let e = rt
        .ensure(req)
        .await
        .expect_err("a trickling registry must fail");
    let took = t.elapsed();
    println!(
        "trickling registry: {:?} after {took:?}: {}",
        e.kind(),
        e.chain()
    );
    assert_eq!(e.kind(), ErrorKind::DeadlineExceeded, "{}", e.chain());
    assert!(e.message().contains("IMAGE_PULL_TIMEOUT"), "{}", e.chain());
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        reg.blob_requests.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "dockerd reached the blobs"
    );
    assert!(ctx.containers().await?.is_empty());
    Ok(())
}
