//! Client resilience against a throwaway containerd of the test's own (temp root, own socket):
//! `connect` retries until the daemon appears, `ping` fails while it is down and recovers
//! after a restart without building a new runtime.

use std::process::Child;
use std::time::Duration;

use crate::support::World;
use esb_runtime::{ErrorKind, Runtime};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_retries_and_ping_follows_restarts() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let mut world = World::new(env, 14);
    let daemon_dir = tempfile::Builder::new()
        .prefix("esbt-cd-daemon")
        .tempdir()
        .expect("tempdir");
    let dev_socket = std::mem::replace(
        &mut world.containerd.socket,
        daemon_dir.path().join("c.sock"),
    );

    // Connect first; the daemon shows up a moment later.
    let connecting = tokio::spawn({
        let (common, cd, cni) = (
            world.common.clone(),
            world.containerd.clone(),
            world.cni.clone(),
        );
        async move { esb_containerd::ContainerdRuntime::connect(common, cd, cni).await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let daemon = Daemon(crate::support::start_containerd(daemon_dir.path()));
    let rt = connecting.await.expect("join").expect("connect with retry");
    rt.ping().await.expect("ping");

    drop(daemon);
    let e = esb_testkit::eventually("ping fails", Duration::from_secs(10), || async {
        rt.ping().await.err()
    })
    .await;
    assert_eq!(e.kind(), ErrorKind::Unavailable);

    let _daemon = Daemon(crate::support::start_containerd(daemon_dir.path()));
    esb_testkit::eventually("ping recovers", Duration::from_secs(20), || async {
        rt.ping().await.ok()
    })
    .await;
    assert!(rt.list().await.expect("list after restart").is_empty());
    // The world's cleanup talks to the dev daemon (ctr waits long on a dead socket).
    world.containerd.socket = dev_socket;
}
