//! Standby workers (issue 9 §3) over the fake runtime: claim, invisibility, refill, TTL,
//! caps under parallel Ensures, SetStandby, restart, and the destroy policy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use esb_proto::v1::agent_service_client::AgentServiceClient;
use esb_proto::v1::{
    DestroyContainerRequest, EnsureContainerRequest, GetCapabilitiesRequest,
    GetContainerMetricsRequest, InvokeWorkerRequest, SetStandbyRequest,
};
use esb_runtime::WorkerStatus;
use esb_runtime::fake::FakeRuntime;
use esb_server::ShutdownPolicy;
use esb_server::StandbySettings;
use tonic::Code;
use tonic::transport::Channel;

use super::harness::{Agent, OTHER, OWNER, eventually};

fn spec(function: &str) -> EnsureContainerRequest {
    EnsureContainerRequest {
        function_name: function.into(),
        image: "img:1".into(),
        env: HashMap::from([("K".to_string(), "v".to_string())]),
        owner_id: OWNER.into(),
    }
}

fn per_spec(n: u32, max: u32) -> impl FnOnce(&mut esb_server::ServerSettings) {
    move |s| {
        s.standby = StandbySettings {
            per_spec: n,
            ttl: Duration::from_secs(600),
            max,
        }
    }
}

async fn listed(c: &mut AgentServiceClient<Channel>, owner: &str) -> Vec<String> {
    esb_testkit::agent::listed_ids(c, owner).await
}

async fn standby_ready(c: &mut AgentServiceClient<Channel>) -> u32 {
    c.get_capabilities(GetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .standby_ready
}

/// Waits until the capabilities report `n` ready standbys.
async fn wait_ready(c: &AgentServiceClient<Channel>, n: u32) {
    let c = c.clone();
    esb_testkit::eventually("standbys ready", Duration::from_secs(5), || {
        let mut c = c.clone();
        async move { (standby_ready(&mut c).await == n).then_some(()) }
    })
    .await;
}

/// Ids the runtime has that the owner's List does not show (the standbys).
async fn hidden_ids(agent: &Agent, c: &mut AgentServiceClient<Channel>) -> Vec<String> {
    let shown = listed(c, OWNER).await;
    agent
        .rt
        .workers()
        .into_iter()
        .map(|w| w.id)
        .filter(|id| !shown.contains(id))
        .collect()
}

#[tokio::test]
async fn an_ensure_claims_a_hidden_standby_and_the_pool_refills() {
    let agent = Agent::start_with(Arc::new(FakeRuntime::new()), per_spec(1, 16)).await;
    let mut c = agent.client().await;
    let first = c.ensure_container(spec("f")).await.unwrap().into_inner();
    wait_ready(&c, 1).await;
    assert_eq!(agent.rt.workers().len(), 2, "the worker and one standby");

    // Invisible: not listed, and every id RPC treats it as unknown.
    assert_eq!(listed(&mut c, OWNER).await, vec![first.id.clone()]);
    let standby = hidden_ids(&agent, &mut c).await;
    assert_eq!(standby.len(), 1);
    let sid = standby[0].clone();
    let m = c
        .get_container_metrics(GetContainerMetricsRequest {
            container_id: sid.clone(),
            owner_id: OWNER.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(m.code(), Code::NotFound);
    let inv = c
        .invoke_worker(InvokeWorkerRequest {
            container_id: sid.clone(),
            owner_id: OWNER.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(inv.code(), Code::NotFound);
    // Destroy of an id the caller cannot know is the compat no-op: the standby stays.
    let d = c
        .destroy_container(DestroyContainerRequest {
            container_id: sid.clone(),
            owner_id: OWNER.into(),
            function_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.success);
    assert!(agent.rt.worker(&sid).is_some());

    // The next Ensure of the same spec gets the standby; the pool refills behind it.
    let second = c.ensure_container(spec("f")).await.unwrap().into_inner();
    assert_eq!(second.id, sid, "claimed, not created");
    assert_eq!(agent.rt.count(esb_runtime::fake::Op::Ensure), 3);
    let mut shown = listed(&mut c, OWNER).await;
    shown.sort();
    let mut want = vec![first.id.clone(), sid.clone()];
    want.sort();
    assert_eq!(shown, want, "a claimed standby is an ordinary worker");
    wait_ready(&c, 1).await;
    assert_eq!(agent.rt.workers().len(), 3);

    // Another spec (other env) never claims it.
    let mut other = spec("f");
    other.env.insert("K".into(), "other".into());
    let third = c.ensure_container(other).await.unwrap().into_inner();
    assert!(!hidden_ids(&agent, &mut c).await.contains(&third.id));
    let (_, text) = agent.scrape("/metrics").await;
    assert!(
        text.contains("esb_agent_standby_claims_total{outcome=\"hit\"} 1"),
        "{text}"
    );
}

/// The daemon lists a new worker before its Ensure returns the id: a standby being created
/// must not show in List meanwhile (the gateway's janitor would destroy it).
#[tokio::test]
async fn a_standby_is_not_listed_while_it_is_being_created() {
    let rt = Arc::new(FakeRuntime::new());
    let agent = Agent::start_with(rt.clone(), per_spec(1, 16)).await;
    let mut c = agent.client().await;
    let first = c.ensure_container(spec("f")).await.unwrap().into_inner();
    wait_ready(&c, 1).await;
    // From now on every creation stays listed-but-unanswered for a while.
    rt.set_ensure_return_delay(Duration::from_millis(600));
    let second = c.ensure_container(spec("f")).await.unwrap().into_inner();
    // The claim started a refill: wait until its worker exists in the runtime.
    esb_testkit::eventually("the refill's worker exists", Duration::from_secs(5), || {
        std::future::ready((agent.rt.workers().len() == 3).then_some(()))
    })
    .await;
    let mut want = vec![first.id.clone(), second.id.clone()];
    want.sort();
    for _ in 0..10 {
        let mut shown = listed(&mut c, OWNER).await;
        shown.sort();
        assert_eq!(shown, want, "only the gateway's workers are listed");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    wait_ready(&c, 1).await;
    let mut shown = listed(&mut c, OWNER).await;
    shown.sort();
    assert_eq!(shown, want, "the ready standby is hidden too");
}

#[tokio::test]
async fn specs_not_ensured_for_the_ttl_lose_their_standbys() {
    let agent = Agent::start_with(Arc::new(FakeRuntime::new()), |s| {
        s.standby = StandbySettings {
            per_spec: 2,
            ttl: Duration::from_secs(1),
            max: 16,
        };
        s.gc_interval = Duration::from_secs(1);
    })
    .await;
    let mut c = agent.client().await;
    let w = c.ensure_container(spec("ttl")).await.unwrap().into_inner();
    wait_ready(&c, 2).await;
    assert_eq!(agent.rt.workers().len(), 3);
    // After the TTL the GC pass removes both standbys; the gateway's worker stays.
    let rt = agent.rt.clone();
    eventually(move || rt.workers().len() == 1).await;
    assert_eq!(agent.rt.workers()[0].id, w.id);
    assert_eq!(standby_ready(&mut c).await, 0);
}

#[tokio::test]
async fn parallel_ensures_never_exceed_the_caps() {
    let rt = Arc::new(FakeRuntime::new());
    rt.set_ensure_delay(Duration::from_millis(20));
    let agent = Agent::start_with(rt, per_spec(3, 5)).await;
    let c = agent.client().await;
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move {
                c.ensure_container(spec(&format!("p{}", i % 4)))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap();
    }
    let mut c2 = c.clone();
    // Sampled while refills run: the pool never passes AGENT_STANDBY_MAX.
    for _ in 0..40 {
        let hidden = hidden_ids(&agent, &mut c2).await.len();
        assert!(hidden <= 5, "{hidden} standbys > max 5");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_ready(&c, 5).await;
    assert_eq!(hidden_ids(&agent, &mut c2).await.len(), 5);
}

#[tokio::test]
async fn set_standby_pins_a_floor_and_zero_clears_it() {
    let agent = Agent::start().await; // per spec 0: only the explicit floor
    let mut c = agent.client().await;
    let r = c
        .set_standby(SetStandbyRequest {
            spec: Some(spec("pinned")),
            count: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.ready, 0, "created in the background");
    wait_ready(&c, 2).await;
    assert!(listed(&mut c, OWNER).await.is_empty());
    let w = c
        .ensure_container(spec("pinned"))
        .await
        .unwrap()
        .into_inner();
    assert!(agent.rt.worker(&w.id).is_some());
    wait_ready(&c, 2).await;
    assert_eq!(agent.rt.workers().len(), 3);

    // Owner-scoped and validated like Ensure; over the node cap is refused.
    let mut bad = spec("pinned");
    bad.owner_id = String::new();
    let e = c
        .set_standby(SetStandbyRequest {
            spec: Some(bad),
            count: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .set_standby(SetStandbyRequest {
            spec: Some(spec("pinned")),
            count: 17,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    c.set_standby(SetStandbyRequest {
        spec: Some(spec("pinned")),
        count: 0,
    })
    .await
    .unwrap();
    let rt = agent.rt.clone();
    let id = w.id.clone();
    eventually(move || rt.workers().len() == 1 && rt.worker(&id).is_some()).await;
    assert_eq!(standby_ready(&mut c).await, 0);
    // Another owner's List never saw any of it.
    assert!(listed(&mut c, OTHER).await.is_empty());
}

#[tokio::test]
async fn a_restart_removes_the_standbys_of_the_previous_run() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let rt = Arc::new(FakeRuntime::new());
    let agent = Agent::start_in(dir.clone(), rt.clone(), per_spec(2, 16)).await;
    let mut c = agent.client().await;
    let w = c.ensure_container(spec("r")).await.unwrap().into_inner();
    wait_ready(&c, 2).await;
    agent.stop().await.unwrap();
    // Keep policy: every worker is still there; the next start adopts the live ones.
    assert_eq!(rt.workers().len(), 3);
    rt.set_reconcile_result(rt.workers());
    let agent = Agent::start_in(dir, rt.clone(), per_spec(2, 16)).await;
    let mut c = agent.client().await;
    // Before serving, the standbys were destroyed: only the gateway's worker remains.
    assert_eq!(rt.workers().len(), 1);
    assert_eq!(listed(&mut c, OWNER).await, vec![w.id.clone()]);
    assert_eq!(
        rt.worker(&w.id).map(|s| s.status),
        Some(WorkerStatus::Running)
    );
}

#[tokio::test]
async fn the_destroy_policy_removes_standbys_too() {
    let rt = Arc::new(FakeRuntime::new());
    let agent = Agent::start_with(rt.clone(), |s| {
        per_spec(1, 16)(s);
        s.shutdown_policy = ShutdownPolicy::Destroy;
    })
    .await;
    let mut c = agent.client().await;
    c.ensure_container(spec("d")).await.unwrap();
    wait_ready(&c, 1).await;
    agent.stop().await.unwrap();
    assert!(rt.workers().is_empty(), "{:?}", rt.workers());
}
