//! The backend-agnostic scenarios of esb-testkit run against containerd (parity with Docker).

use std::sync::Arc;

use crate::support::World;
use esb_runtime::Runtime;
use esb_testkit::scenarios;

async fn runtime(world: &World) -> Arc<dyn Runtime> {
    Arc::new(world.runtime().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_scenarios() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(env, 13);
    let image = world.image();
    let rt = runtime(&world).await;
    scenarios::lifecycle(rt.clone(), &image)
        .await
        .expect("lifecycle");
    scenarios::stopped_worker(rt.clone(), &image)
        .await
        .expect("stopped worker");
    let missing = format!(
        "{}/esb/absent:1",
        world.env.registry.clone().expect("registry")
    );
    scenarios::missing_image(rt.clone(), &missing)
        .await
        .expect("missing image");
    scenarios::concurrent_ensures(rt.clone(), &image, 8)
        .await
        .expect("concurrent");
    scenarios::cancelled_ensure(rt.clone(), &image)
        .await
        .expect("cancelled ensure");
    // Host-side rollback (IPAM, veth, netns) may finish after the worker left `list`.
    world.eventually_clean().await;
    scenarios::adoption(rt, &image, || async { Ok(runtime(&world).await) })
        .await
        .expect("adoption");
    world.assert_no_leftovers();
}
