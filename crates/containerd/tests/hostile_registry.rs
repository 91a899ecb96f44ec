//! Review M1 on real containerd: a hostile registry (a loopback HTTP server of this test) that
//! declares huge blobs, sends more than it declared, never ends a manifest or a blob or trickles
//! it, and a reference to a registry outside the allow-list. Every Ensure fails with a clean code
//! (RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, INVALID_ARGUMENT), no scratch file stays in
//! `state/tmp`, nothing is left in containerd, and the disallowed registry is never contacted.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

#[path = "support/world.rs"]
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use esb_runtime::settings::RegistrySettings;
use esb_runtime::{ErrorKind, Runtime};
use sha2::{Digest, Sha256};
use support::World;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// How a blob is served.
#[derive(Clone)]
enum Blob {
    /// Exactly these bytes.
    Bytes(Vec<u8>),
    /// Zeros without end (no Content-Length, body until close).
    Endless,
    /// One byte per 100 ms.
    Trickle,
}

#[derive(Default)]
struct Registry {
    /// Path → (content type, body) for manifests.
    manifests: HashMap<String, Vec<u8>>,
    /// Path → declared Content-Length (None: no length) of manifests that never end.
    endless_manifests: HashMap<String, Option<u64>>,
    blobs: HashMap<String, Blob>,
    blob_requests: AtomicUsize,
    connections: AtomicUsize,
}

/// Adds repository `name` whose manifest declares `config_size` and `layer_size`; the blobs are
/// served as given.
fn add_image(
    reg: &mut Registry,
    name: &str,
    config: (Vec<u8>, i64, Blob),
    layer: Option<(String, i64, Blob)>,
) {
    let (config_bytes, config_size, config_blob) = config;
    let config_digest = digest(&config_bytes);
    let layers = match &layer {
        Some((d, size, _)) => format!(
            r#"[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{size}}}]"#
        ),
        None => "[]".to_string(),
    };
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_size}}},"layers":{layers}}}"#
    );
    reg.manifests.insert(
        format!("/v2/{name}/manifests/latest"),
        manifest.into_bytes(),
    );
    reg.blobs
        .insert(format!("/v2/{name}/blobs/{config_digest}"), config_blob);
    if let Some((d, _, blob)) = layer {
        reg.blobs.insert(format!("/v2/{name}/blobs/{d}"), blob);
    }
}

async fn serve(reg: Arc<Registry>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            reg.connections.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(conn(reg.clone(), s));
        }
    });
    addr
}

async fn conn(reg: Arc<Registry>, mut s: TcpStream) {
    loop {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b).await {
                Ok(1) => head.push(b[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let is_head = head.starts_with("HEAD ");
        if path == "/v2/" || path == "/v2" {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                .await;
            continue;
        }
        if let Some(declared) = reg.endless_manifests.get(&path) {
            let length = declared.map_or_else(String::new, |n| format!("content-length: {n}\r\n"));
            let h = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\nconnection: close\r\n{length}\r\n{{\"schemaVersion\":2,\"x\":\""
            );
            let _ = s.write_all(h.as_bytes()).await;
            let spaces = vec![b' '; 64 * 1024];
            while s.write_all(&spaces).await.is_ok() {}
            return;
        }
        if let Some(m) = reg.manifests.get(&path) {
            let h = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\ndocker-content-digest: {}\r\ncontent-length: {}\r\n\r\n",
                digest(m),
                m.len()
            );
            let _ = s.write_all(h.as_bytes()).await;
            if !is_head {
                let _ = s.write_all(m).await;
            }
            continue;
        }
        let Some(blob) = reg.blobs.get(&path).cloned() else {
            let _ = s
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .await;
            continue;
        };
        reg.blob_requests.fetch_add(1, Ordering::Relaxed);
        match blob {
            Blob::Bytes(b) => {
                let h = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", b.len());
                let _ = s.write_all(h.as_bytes()).await;
                let _ = s.write_all(&b).await;
            }
            Blob::Endless => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
                    .await;
                let zeros = vec![0u8; 64 * 1024];
                while s.write_all(&zeros).await.is_ok() {}
                return;
            }
            Blob::Trickle => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
                    .await;
                while s.write_all(b"x").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                return;
            }
        }
    }
}

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
