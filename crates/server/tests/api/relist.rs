//! Periodic relisting (DESIGN §5): the gc loop's `list` refreshes the worker table, so a
//! change made outside the agent is known without any RPC touching the worker.

use std::time::Duration;

use esb_runtime::fake::Op;
use esb_runtime::{Runtime, WorkerStatus};
use tonic::Code;

use super::harness::eventually;
use super::liveness::{invoke_err, setup};

#[tokio::test]
async fn periodic_relisting_refreshes_the_table() {
    let (agent, id) = setup(|s| s.gc_interval = Duration::from_secs(1)).await;
    agent.rt.set_status(&id, WorkerStatus::Paused);
    // No RPC touches the worker; the gc loop's listing must bring the change in.
    // Two listings started: the first one's refresh is applied.
    eventually(|| agent.rt.count(Op::List) >= 2).await;
    let inspects = agent.rt.count(Op::Inspect);
    let (s, took) = invoke_err(&agent, &id, 10_000).await;
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().contains("worker is paused"), "{}", s.message());
    assert!(took < Duration::from_millis(200), "{took:?}");
    assert_eq!(
        agent.rt.count(Op::Inspect),
        inspects,
        "known from the listing"
    );
    // A worker removed behind the agent's back disappears from the table (and the gauge).
    assert!(agent.rt.destroy(&id).await.unwrap());
    let lists = agent.rt.count(Op::List);
    eventually(|| agent.rt.count(Op::List) > lists + 1).await;
    let (_, text) = agent.scrape("/metrics").await;
    assert!(
        text.contains("esb_agent_workers{state=\"PAUSED\"} 0")
            && text.contains("esb_agent_workers{state=\"RUNNING\"} 0"),
        "{text}"
    );
}
