//! Real-containerd test of the metrics observer: an ensure reports every phase, the pull
//! outcome and the IPAM count; a failed ensure reports a failed pull and its rollback.
#![allow(clippy::unwrap_used)] // test code: a poisoned lock is a test failure anyway

use std::sync::Arc;

use crate::support::World;
use esb_runtime::{ErrorKind, Phase, PullOutcome, Runtime};
use esb_testkit::observe::Recorder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_sees_phases_pulls_rollbacks_and_ipam() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(env, 30);
    let rt = world.runtime().await;
    let rec = Arc::new(Recorder::default());
    rt.set_observer(rec.clone());

    let w = rt.ensure(world.request(&[])).await.expect("ensure");
    let mut seen: Vec<&str> = rec
        .phases
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.as_str())
        .collect();
    // `ready` is measured by the server after the backend's ensure.
    let mut all: Vec<&str> = Phase::ALL
        .iter()
        .filter(|p| **p != Phase::Ready)
        .map(|p| p.as_str())
        .collect();
    seen.sort_unstable();
    all.sort_unstable();
    assert_eq!(seen, all, "every phase once");
    let pulls = rec.pulls.lock().unwrap().clone();
    assert!(
        matches!(pulls[..], [PullOutcome::Pulled | PullOutcome::Cached]),
        "{pulls:?}"
    );
    assert_eq!(rec.ipam.lock().unwrap().last(), Some(&1));
    assert!(rec.rollbacks.lock().unwrap().is_empty());
    assert!(rt.destroy(&w.id).await.expect("destroy"));
    assert_eq!(rec.ipam.lock().unwrap().last(), Some(&0));

    // A missing image fails the ensure after the network was attached alongside: undone.
    rec.pulls.lock().unwrap().clear();
    let mut req = world.request(&[]);
    req.image = format!(
        "{}/esb/no-such-image:none",
        world.env.registry.clone().unwrap_or_default()
    );
    let err = rt.ensure(req).await.expect_err("missing image");
    assert_eq!(err.kind(), ErrorKind::ImageNotFound);
    assert_eq!(*rec.pulls.lock().unwrap(), [PullOutcome::Failed]);
    assert_eq!(*rec.rollbacks.lock().unwrap(), ["ensure"]);
    assert_eq!(rec.ipam.lock().unwrap().last(), Some(&0));
    world.eventually_clean().await;
}
