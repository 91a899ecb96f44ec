//! The backend-agnostic scenarios of esb-testkit run against containerd (parity with Docker),
//! one test per scenario, each in a world (brand, namespace, subnet) of its own.

use std::sync::Arc;

use crate::support::World;
use esb_runtime::Runtime;
use esb_testkit::scenarios;

async fn runtime(world: &World) -> Arc<dyn Runtime> {
    Arc::new(world.runtime().await)
}

/// Host-side rollback (IPAM, veth, netns) may finish after the worker left `list`.
async fn clean(world: &World) {
    world.eventually_clean().await;
    world.assert_no_leftovers();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_lifecycle() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(env, 13);
    let rt = runtime(&world).await;
    scenarios::lifecycle(rt, &world.image())
        .await
        .expect("lifecycle");
    clean(&world).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_stopped_worker() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(env, 17);
    let rt = runtime(&world).await;
    scenarios::stopped_worker(rt, &world.image())
        .await
        .expect("stopped worker");
    clean(&world).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_missing_image() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(env, 18);
    let rt = runtime(&world).await;
    let missing = format!(
        "{}/esb/absent:1",
        world.env.registry.clone().expect("registry")
    );
    scenarios::missing_image(rt, &missing)
        .await
        .expect("missing image");
    clean(&world).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_concurrent_ensures() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(env, 19);
    let rt = runtime(&world).await;
    scenarios::concurrent_ensures(rt, &world.image(), 8)
        .await
        .expect("concurrent");
    clean(&world).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_cancelled_ensure() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(env, 20);
    let rt = runtime(&world).await;
    scenarios::cancelled_ensure(rt, &world.image())
        .await
        .expect("cancelled ensure");
    clean(&world).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_adoption() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(env, 21);
    let rt = runtime(&world).await;
    scenarios::adoption(rt, &world.image(), || async { Ok(runtime(&world).await) })
        .await
        .expect("adoption");
    clean(&world).await;
}
