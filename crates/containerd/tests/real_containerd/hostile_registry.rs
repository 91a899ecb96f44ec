//! Review M1 on real containerd: a hostile registry (a loopback HTTP server of this test) that
//! declares huge blobs, sends more than it declared, never ends a manifest or a blob or trickles
//! it, and a reference to a registry outside the allow-list. Every Ensure fails with a clean code
//! (RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, INVALID_ARGUMENT), no scratch file stays in
//! `state/tmp`, nothing is left in containerd, and the disallowed registry is never contacted.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::World;
use esb_runtime::settings::RegistrySettings;
use esb_runtime::{ErrorKind, Runtime};
use esb_testkit::registry::{Blob, Registry, add_image, serve};

fn tmp_files(world: &World) -> Vec<String> {
    std::fs::read_dir(world.common.state_dir.join("tmp"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_registry_cannot_exhaust_memory_disk_or_time() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let small_config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]},"config":{}}"#.to_vec();
    let fake_layer = format!("sha256:{}", "1".repeat(64));
    let mut reg = Registry::default();
    // Declares a 100 MiB config: refused before any blob is fetched.
    add_image(
        &mut reg,
        "evil/bigconfig",
        (small_config.clone(), 100 << 20, Blob::Endless),
        None,
    );
    // Declares 2 GiB of layers against IMAGE_MAX_BYTES = 64 MiB.
    add_image(
        &mut reg,
        "evil/huge",
        (
            small_config.clone(),
            small_config.len() as i64,
            Blob::Bytes(small_config.clone()),
        ),
        Some((fake_layer.clone(), 2 << 30, Blob::Endless)),
    );
    // Declares a small config, then sends without end.
    add_image(
        &mut reg,
        "evil/liarconfig",
        (
            small_config.clone(),
            small_config.len() as i64,
            Blob::Endless,
        ),
        None,
    );
    // A real config, and a layer of "1 MiB" that never ends.
    add_image(
        &mut reg,
        "evil/endless",
        (
            small_config.clone(),
            small_config.len() as i64,
            Blob::Bytes(small_config.clone()),
        ),
        Some((fake_layer.clone(), 1 << 20, Blob::Endless)),
    );
    // A layer that trickles one byte per 100 ms.
    add_image(
        &mut reg,
        "evil/slow",
        (
            small_config.clone(),
            small_config.len() as i64,
            Blob::Bytes(small_config.clone()),
        ),
        Some((fake_layer, 1 << 20, Blob::Trickle)),
    );
    // Manifests without end, with no length and with a declared 1 GiB: oci-client read a
    // manifest whole, so this filled memory until the pull deadline.
    reg.endless_manifests
        .insert("/v2/evil/endlessmanifest/manifests/latest".into(), None);
    reg.endless_manifests.insert(
        "/v2/evil/hugemanifest/manifests/latest".into(),
        Some(1 << 30),
    );
    let reg = Arc::new(reg);
    let addr = serve(reg.clone()).await;
    // A registry nobody may name: it must never see a connection.
    let other = Arc::new(Registry::default());
    let other_addr = serve(other.clone()).await;

    let mut world = World::new(env, 47);
    let host = addr.to_string();
    world.common.registry = RegistrySettings {
        default_registry: host.clone(),
        insecure: true,
        allowed: RegistrySettings::only_default(&host),
        pull_timeout: Duration::from_secs(2),
        max_image_bytes: 64 << 20,
        ..world.common.registry.clone()
    };
    let rt = world.runtime().await;
    let results = Mutex::new(Vec::new());
    let ensure = async |image: String| {
        let mut req = world.request(&[]);
        req.image = image.clone();
        let t = Instant::now();
        let e = rt.ensure(req).await.expect_err("a hostile image must fail");
        results.lock().unwrap().push(format!(
            "{image}: {:?} in {:?}: {}",
            e.kind(),
            t.elapsed(),
            e.chain()
        ));
        (e, t.elapsed())
    };

    let (e, _) = ensure(format!("{other_addr}/x:1")).await;
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{}", e.chain());
    assert!(
        e.message().contains("CONTAINER_REGISTRY_ALLOWED"),
        "{}",
        e.chain()
    );

    for image in ["evil/endlessmanifest", "evil/hugemanifest"] {
        let (e, took) = ensure(image.into()).await;
        assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{}", e.chain());
        assert!(e.message().contains("manifest"), "{}", e.chain());
        assert!(
            took < Duration::from_secs(2),
            "stopped at the cap, not the deadline: {took:?}"
        );
    }

    let (e, _) = ensure("evil/bigconfig".into()).await;
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{}", e.chain());
    let (e, _) = ensure("evil/huge".into()).await;
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{}", e.chain());
    assert!(e.message().contains("IMAGE_MAX_BYTES"), "{}", e.chain());
    assert_eq!(
        reg.blob_requests.load(Ordering::Relaxed),
        0,
        "declared sizes are refused before any blob is fetched"
    );
    let (e, _) = ensure("evil/liarconfig".into()).await;
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{}", e.chain());
    let (e, _) = ensure("evil/endless".into()).await;
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{}", e.chain());
    assert!(tmp_files(&world).is_empty(), "{:?}", tmp_files(&world));
    let (e, took) = ensure("evil/slow".into()).await;
    assert_eq!(e.kind(), ErrorKind::DeadlineExceeded, "{}", e.chain());
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(tmp_files(&world).is_empty(), "{:?}", tmp_files(&world));

    println!("{}", results.lock().unwrap().join("\n"));
    assert_eq!(other.connections.load(Ordering::Relaxed), 0);
    world.eventually_clean().await;
    assert!(
        world.ctr_lines(&["leases", "ls", "-q"]).is_empty(),
        "leases left"
    );
}
