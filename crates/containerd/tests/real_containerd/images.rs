//! Real-containerd image tests: pull over HTTP and over HTTPS with the generated CA, a missing
//! image (ImageNotFound, nothing left behind), bad references, an unreachable registry, and
//! policy `always` falling back to the local copy.

use crate::support::{World, invoke};
use esb_runtime::settings::PullPolicy;
use esb_runtime::{ErrorKind, Runtime};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_over_https_with_the_ca() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let (Some(tls), Some(ca)) = (env.registry_tls.clone(), env.registry_ca.clone()) else {
        panic!("ESB_TEST_REGISTRY_TLS and ESB_TEST_REGISTRY_CA are required");
    };
    let mut world = World::new(env, 3);
    world.common.registry.insecure = false;
    world.common.registry.ca_path = Some(ca.into());
    world.common.registry.ca_only = true;
    let rt = world.runtime().await;
    let mut req = world.request(&[]);
    req.image = format!("{tls}/esb/test-worker:latest");
    let w = rt.ensure(req).await.expect("ensure over https");
    invoke(w.ip, "{}").await;
    assert!(rt.destroy(&w.id).await.expect("destroy"));
    world.assert_no_leftovers();
    assert!(
        world.ctr_lines(&["leases", "ls", "-q"]).is_empty(),
        "leases left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_without_the_ca_fails_unavailable_or_internal() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let Some(tls) = env.registry_tls.clone() else {
        return;
    };
    let mut world = World::new(env, 4);
    world.common.registry.insecure = false;
    let rt = world.runtime().await;
    let mut req = world.request(&[]);
    req.image = format!("{tls}/esb/test-worker:latest");
    let e = rt.ensure(req).await.expect_err("untrusted registry");
    assert_ne!(e.kind(), ErrorKind::ImageNotFound, "{}", e.chain());
    world.eventually_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_is_not_found_and_leaves_nothing() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(env, 5);
    let rt = world.runtime().await;
    let registry = world.env.registry.clone().expect("registry");
    let mut req = world.request(&[]);
    req.image = format!("{registry}/esb/does-not-exist:latest");
    let e = rt.ensure(req).await.expect_err("missing image");
    assert_eq!(e.kind(), ErrorKind::ImageNotFound, "{}", e.chain());

    let mut req = world.request(&[]);
    req.image = "Bad Reference::".into();
    let e = rt.ensure(req).await.expect_err("bad reference");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{}", e.chain());

    let mut req = world.request(&[]);
    req.image = "127.0.0.1:1/esb/test-worker:latest".into();
    let e = rt.ensure(req).await.expect_err("unreachable registry");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{}", e.chain());

    world.eventually_clean().await;
    assert!(
        world.ctr_lines(&["leases", "ls", "-q"]).is_empty(),
        "leases left"
    );
    assert!(
        world.ctr_lines(&["images", "ls", "-q"]).is_empty(),
        "images left"
    );
    assert!(world.ctr_lines(&["containers", "ls", "-q"]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_always_falls_back_to_the_local_copy() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let mut world = World::new(env, 6);
    let rt = world.runtime().await;
    // Pull once, then give the image a name whose registry does not answer.
    let w = rt.ensure(world.request(&[])).await.expect("ensure");
    assert!(rt.destroy(&w.id).await.expect("destroy"));
    let offline = "127.0.0.1:1/esb/test-worker:latest";
    world.ctr(&["images", "tag", &world.image(), offline]);
    assert!(world.ctr(&["images", "ls", "-q"]).contains(offline));
    drop(rt);

    world.common.registry.pull_policy = PullPolicy::Always;
    let rt = world.runtime().await;
    let mut req = world.request(&[]);
    req.image = offline.into();
    let w = rt
        .ensure(req)
        .await
        .expect("ensure falls back to the local image");
    invoke(w.ip, "{}").await;
    // And the normal reference re-pulls fine under `always`.
    let w2 = rt.ensure(world.request(&[])).await.expect("ensure always");
    invoke(w2.ip, "{}").await;
    assert!(rt.destroy(&w.id).await.expect("destroy"));
    assert!(rt.destroy(&w2.id).await.expect("destroy"));
    world.assert_no_leftovers();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_removed_behind_the_agents_back_is_pulled_and_unpacked_again() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(env, 16);
    let rt = world.runtime().await;
    let w = rt.ensure(world.request(&[])).await.expect("ensure");
    assert!(rt.destroy(&w.id).await.expect("destroy"));
    world.ctr(&["images", "rm", "--sync", &world.image()]);
    assert!(
        world.ctr_lines(&["snapshots", "ls"]).len() <= 1,
        "layers collected"
    );
    let w = rt
        .ensure(world.request(&[]))
        .await
        .expect("ensure after removal");
    invoke(w.ip, "{}").await;
    assert!(rt.destroy(&w.id).await.expect("destroy"));
    world.assert_no_leftovers();
}

/// PullImage on containerd: progress per layer (declared sizes), the manifest digest, a second
/// pull that fetches nothing, then an Ensure that finds the image ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_pull_reports_progress_and_is_shared_with_ensure() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(env, 48);
    let rt = world.runtime().await;
    let seen = std::sync::Mutex::new(Vec::new());
    let sink = |p: esb_runtime::PullProgress| seen.lock().expect("lock").push(p);
    let img = rt.pull_image(&world.image(), &sink).await.expect("pull");
    assert!(img.pulled, "{img:?}");
    assert!(img.digest.starts_with("sha256:"), "{img:?}");
    let seen = seen.into_inner().expect("lock");
    let first = seen.first().copied().expect("progress reported");
    let last = seen.last().copied().expect("progress reported");
    assert_eq!((first.layers_done, first.bytes_done), (0, 0), "{seen:?}");
    assert!(last.layers_total >= 1 && last.bytes_total > 0, "{seen:?}");
    assert_eq!(
        (last.layers_done, last.bytes_done),
        (last.layers_total, last.bytes_total),
        "{seen:?}"
    );
    assert_eq!(seen.len() as u32, last.layers_total + 1);

    let again = rt.pull_image(&world.image(), &|_| {}).await.expect("again");
    assert!(!again.pulled);
    assert_eq!(again.digest, img.digest);
    let w = rt.ensure(world.request(&[])).await.expect("ensure");
    invoke(w.ip, "{}").await;
    assert!(rt.destroy(&w.id).await.expect("destroy"));
    world.assert_no_leftovers();
    assert!(
        world.ctr_lines(&["leases", "ls", "-q"]).is_empty(),
        "leases left"
    );
}
