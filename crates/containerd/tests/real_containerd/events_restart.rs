//! The worker event stream against a throwaway containerd of the test's own (temp root, own
//! socket; the shared dev daemon is never restarted): events are scoped to the runtime's
//! namespace, the stream breaks (error or end) when the daemon goes away, and a new
//! subscription after the restart delivers again. The server's resubscribe-and-relist loop
//! on top of this is covered with the fake runtime (crates/server/tests/api/events.rs).

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::support::World;
use containerd_client::services::v1::container::Runtime as ContainerRuntime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::{Container, CreateContainerRequest, DeleteContainerRequest};
use containerd_client::with_namespace;
use esb_runtime::{EventStream, Runtime, WorkerEvent, WorkerEventKind};
use futures::StreamExt;
use tonic::Request;

/// The private daemon, killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Creates and deletes a bare container record (no image, no task) in `ns`: one
/// `/containers/delete` event. `Err` while the daemon is not answering.
async fn create_and_delete(sock: &Path, ns: &str, id: &str) -> Result<(), String> {
    let ch = containerd_client::connect(sock)
        .await
        .map_err(|e| e.to_string())?;
    let mut c = ContainersClient::new(ch);
    let container = Container {
        id: id.into(),
        runtime: Some(ContainerRuntime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        }),
        spec: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: b"{}".to_vec(),
        }),
        ..Default::default()
    };
    let req = CreateContainerRequest {
        container: Some(container),
    };
    c.create(with_namespace!(req, ns))
        .await
        .map_err(|e| e.to_string())?;
    let req = DeleteContainerRequest { id: id.into() };
    c.delete(with_namespace!(req, ns))
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Deletes records (first in a foreign namespace, then in ours) until the stream delivers a
/// delete event, and returns it; a subscription is registered a little after the request
/// left, so the first rounds may go unseen. Panics after `within`.
async fn next_delete(
    stream: &mut EventStream,
    sock: &Path,
    ns: &str,
    round: &mut u32,
    within: Duration,
) -> WorkerEvent {
    let until = Instant::now() + within;
    loop {
        *round += 1;
        let _ = create_and_delete(sock, "esbt-cd-33-foreign", &format!("foreign-{round}")).await;
        let _ = create_and_delete(sock, ns, &format!("ours-{round}")).await;
        let next = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
        match next {
            Ok(Some(Ok(ev))) => return ev,
            Ok(Some(Err(e))) => panic!("stream failed: {}", e.chain()),
            Ok(None) => panic!("stream ended"),
            Err(_) => assert!(Instant::now() < until, "no event within {within:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_scoped_break_with_the_daemon_and_resubscribe_after_restart() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let mut world = World::new(env, 33);
    let daemon_dir = tempfile::Builder::new()
        .prefix("esbt-cd-events")
        .tempdir()
        .expect("tempdir");
    let sock = daemon_dir.path().join("c.sock");
    let dev_socket = std::mem::replace(&mut world.containerd.socket, sock.clone());
    let ns = world.containerd.namespace.clone();
    let daemon = Daemon(crate::support::start_containerd(daemon_dir.path()));
    let rt = world.runtime().await;
    let mut round = 0;

    let mut stream = rt.events().await.expect("subscribe");
    let ev = next_delete(&mut stream, &sock, &ns, &mut round, Duration::from_secs(10)).await;
    assert_eq!(ev.kind, WorkerEventKind::Deleted);
    assert!(ev.id.starts_with("ours-"), "only our namespace: {ev:?}");

    // The daemon goes away: the stream says so (error or end), it does not hang.
    let killed = Instant::now();
    drop(daemon);
    let broke = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return,
            }
        }
    })
    .await;
    assert!(broke.is_ok(), "the stream outlived the daemon");
    eprintln!(
        "events: stream broke {:?} after the daemon was killed",
        killed.elapsed()
    );

    // Restarted: a new subscription (what the server's loop makes, with backoff) delivers.
    let restarted = Instant::now();
    let _daemon = Daemon(crate::support::start_containerd(daemon_dir.path()));
    let mut stream = esb_testkit::eventually("resubscribed", Duration::from_secs(20), || async {
        let mut s = rt.events().await.ok()?;
        // A subscription made while the daemon is still starting fails at once.
        match tokio::time::timeout(Duration::from_millis(300), s.next()).await {
            Ok(Some(Err(_)) | None) => None,
            _ => Some(s),
        }
    })
    .await;
    let ev = next_delete(&mut stream, &sock, &ns, &mut round, Duration::from_secs(10)).await;
    assert!(ev.id.starts_with("ours-"), "only our namespace: {ev:?}");
    eprintln!(
        "events: first event on the new subscription {:?} after the restart",
        restarted.elapsed()
    );
    // The world's cleanup talks to the dev daemon (ctr waits long on a dead socket).
    world.containerd.socket = dev_socket;
}
