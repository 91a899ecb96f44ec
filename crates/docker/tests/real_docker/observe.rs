//! The observer sees the ensure phases, pull outcomes and nothing else of note.
#![allow(clippy::unwrap_used)] // test code: a poisoned lock is a test failure anyway

use std::sync::Arc;

use esb_runtime::{ErrorKind, Phase, PullOutcome, Runtime};
use esb_testkit::observe::Recorder;

use crate::support::Ctx;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_sees_phases_and_pull_outcomes() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let ctx = Ctx::new(env, 50).await?;
    let rt = ctx.runtime().await?;
    let rec = Arc::new(Recorder::default());
    rt.set_observer(rec.clone());

    let w = rt.ensure(ctx.request("observed")).await?;
    assert_eq!(
        *rec.phases.lock().unwrap(),
        [Phase::Create, Phase::Start, Phase::Network]
    );
    assert_eq!(*rec.pulls.lock().unwrap(), [PullOutcome::Cached]);
    assert!(rt.destroy(&w.id).await?);

    rec.phases.lock().unwrap().clear();
    rec.pulls.lock().unwrap().clear();
    let registry = ctx.env.registry.clone().unwrap_or_default();
    let mut req = ctx.request("observed");
    req.image = format!("{registry}/esb/no-such-image:none");
    let err = rt.ensure(req).await.expect_err("missing image");
    assert_eq!(err.kind(), ErrorKind::ImageNotFound);
    assert_eq!(*rec.phases.lock().unwrap(), [Phase::Pull]);
    assert_eq!(*rec.pulls.lock().unwrap(), [PullOutcome::Failed]);
    assert!(rec.rollbacks.lock().unwrap().is_empty(), "nothing to undo");
    assert!(ctx.containers().await?.is_empty());
    Ok(())
}
