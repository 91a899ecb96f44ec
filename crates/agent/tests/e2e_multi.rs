//! End to end: three `esb-agent` binaries on one containerd, as on a node shared by
//! environments: A and B are two ENVs of one brand (one containerd namespace, one CNI network,
//! bridge and IPAM dir, as their defaults would give them), C is another brand on its own
//! network; all three share the CNI config and IPAM dirs. One client spreads 30 Ensures over
//! them; each lists only its own; several GC passes (1 s interval) of every agent leave the
//! others' workers, IPs and netns pins alone; `kill -9` of C leaves A and B serving; C
//! restarted adopts its workers; everything destroyed, nothing left.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use esb_proto::v1::agent_service_client::AgentServiceClient;
use esb_proto::v1::{
    DestroyContainerRequest, EnsureContainerRequest, InvokeWorkerRequest, WorkerInfo,
};
use esb_testkit::agent::AgentProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

#[path = "support/world.rs"]
mod support;
use support::{Net, World};

const SHARED_SUBNET: &str = "10.199.202.0/24";
const A: Net = Net {
    namespace: "esbtmu",
    env: "ma",
    bridge: "esbt-mu",
    subnet: SHARED_SUBNET,
    scratch_prefix: "scratch-agent-mu-a-",
};
const B: Net = Net {
    namespace: "esbtmu",
    env: "mb",
    bridge: "esbt-mu",
    subnet: SHARED_SUBNET,
    scratch_prefix: "scratch-agent-mu-b-",
};
const C: Net = Net {
    namespace: "esbtmc",
    env: "mc",
    bridge: "esbt-mc",
    subnet: "10.199.203.0/24",
    scratch_prefix: "scratch-agent-mu-c-",
};
/// The same owner everywhere: agents must scope by brand+ENV, not by owner.
const OWNER: &str = "owner-multi";
const PER_AGENT: usize = 10;

type Client = AgentServiceClient<Channel>;

async fn ensure(mut c: Client, image: String, function: String) -> WorkerInfo {
    c.ensure_container(EnsureContainerRequest {
        function_name: function,
        image,
        env: Default::default(),
        owner_id: OWNER.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn invoke(c: &mut Client, id: &str) -> Result<i32, tonic::Status> {
    c.invoke_worker(InvokeWorkerRequest {
        container_id: id.into(),
        path: String::new(),
        payload: b"{}".to_vec(),
        headers: Default::default(),
        timeout_ms: 10_000,
        owner_id: OWNER.into(),
    })
    .await
    .map(|r| r.into_inner().status_code)
}

async fn list(c: &mut Client) -> BTreeSet<String> {
    esb_testkit::agent::listed_ids(c, OWNER)
        .await
        .into_iter()
        .collect()
}

async fn destroy(c: &mut Client, id: &str) {
    let ok = c
        .destroy_container(DestroyContainerRequest {
            function_name: String::new(),
            container_id: id.into(),
            owner_id: OWNER.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .success;
    assert!(ok, "destroy {id}");
}

/// `esb_agent_gc_passes_total` of an agent.
async fn gc_passes(agent: &AgentProcess) -> u64 {
    let Ok(mut s) = tokio::net::TcpStream::connect(&agent.metrics_addr).await else {
        return 0;
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.lines()
        .find_map(|l| l.strip_prefix("esb_agent_gc_passes_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// IPAM reservation files (named by IP) in every network dir under the shared dir.
fn reservations(world: &World) -> BTreeSet<String> {
    world
        .entries("networks")
        .into_iter()
        .flat_map(|n| world.entries(&format!("networks/{n}")))
        .filter(|f| f.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_share_one_containerd_and_never_touch_each_other() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    // `home` owns the CNI config and IPAM dirs all three agents share (like /etc/cni/net.d and
    // /var/lib/cni/networks on a node); each agent has its own state dir.
    let home = World::new(&env, A);
    let world_b = World::new(&env, B);
    let world_c = World::new(&env, C);
    let image = home.image.clone();
    let (conf, nets) = (home.path("net.d"), home.path("networks"));
    let shared = |gc: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("CNI_CONF_DIR", conf.clone()),
            ("CNI_NET_DIR", nets.clone()),
            ("AGENT_GC_INTERVAL", gc.to_string()),
        ]
    };
    let spawn = |w: &World, name: &str| {
        let o = shared("1s");
        let o: Vec<(&str, &str)> = o.iter().map(|(k, v)| (*k, v.as_str())).collect();
        w.spawn_with(name, "keep", &o)
    };
    let mut agents = [
        spawn(&home, "e2e-multi-a"),
        spawn(&world_b, "e2e-multi-b"),
        spawn(&world_c, "e2e-multi-c"),
    ];
    let mut clients = Vec::new();
    for a in &agents {
        clients.push(a.client(Duration::from_secs(30)).await.unwrap());
    }

    // 1. 30 Ensures spread round-robin, all at once.
    let mut tasks = Vec::new();
    for i in 0..3 * PER_AGENT {
        let agent = i % 3;
        tasks.push((
            agent,
            tokio::spawn(ensure(
                clients[agent].clone(),
                image.clone(),
                format!("multi-{agent}-{i}"),
            )),
        ));
    }
    let mut mine: [BTreeSet<String>; 3] = Default::default();
    let mut ips: [BTreeSet<String>; 3] = Default::default();
    for (agent, t) in tasks {
        let w = t.await.unwrap();
        let prefix = if agent == 2 {
            "10.199.203."
        } else {
            "10.199.202."
        };
        assert!(w.ip_address.starts_with(prefix), "agent {agent}: {w:?}");
        assert!(mine[agent].insert(w.id.clone()));
        assert!(ips[agent].insert(w.ip_address.clone()));
    }
    let all_ips: BTreeSet<String> = ips.iter().flatten().cloned().collect();
    assert_eq!(all_ips.len(), 3 * PER_AGENT, "no IP handed out twice");

    // 2. Each agent lists exactly its own workers (same owner everywhere).
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(list(c).await, mine[i], "agent {i} lists only its own");
    }

    // 3. Three GC passes of every agent later, nothing of another agent was touched.
    esb_testkit::eventually("3 GC passes per agent", Duration::from_secs(60), || async {
        let mut passes = Vec::new();
        for a in &agents {
            passes.push(gc_passes(a).await);
        }
        passes.iter().all(|p| *p >= 3).then_some(())
    })
    .await;
    assert_eq!(reservations(&home), all_ips, "IPAM after GC passes");
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(list(c).await, mine[i], "agent {i} after GC");
        for id in &mine[i] {
            assert_eq!(invoke(c, id).await.unwrap(), 200, "agent {i} worker {id}");
        }
    }
    let pins: BTreeSet<String> = [&home, &world_b, &world_c]
        .iter()
        .flat_map(|w| w.pins())
        .collect();
    let ids: BTreeSet<String> = mine.iter().flatten().cloned().collect();
    assert_eq!(
        pins, ids,
        "one netns pin per worker, in its own agent's state dir"
    );

    // 4. kill -9 of C: A and B keep serving (invoke, a new Ensure on A).
    let killed = agents[2].pid();
    assert!(
        Command::new("kill")
            .args(["-KILL", &killed.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let st = agents[2].terminate(Duration::from_secs(10)).unwrap();
    assert_eq!(st.signal(), Some(9), "{st:?}");
    for i in 0..2 {
        for id in &mine[i] {
            assert_eq!(invoke(&mut clients[i], id).await.unwrap(), 200);
        }
    }
    let extra = ensure(clients[0].clone(), image.clone(), "multi-extra".into()).await;
    assert_eq!(invoke(&mut clients[0], &extra.id).await.unwrap(), 200);
    mine[0].insert(extra.id.clone());

    // 5. C restarted on its state dir adopts its workers.
    agents[2] = spawn(&world_c, "e2e-multi-c2");
    clients[2] = agents[2].client(Duration::from_secs(30)).await.unwrap();
    assert_eq!(list(&mut clients[2]).await, mine[2], "C adopts its own");
    for id in &mine[2] {
        assert_eq!(invoke(&mut clients[2], id).await.unwrap(), 200);
    }

    // 6. Each destroys its own; nothing is left on the node.
    for (i, c) in clients.iter_mut().enumerate() {
        for id in &mine[i] {
            destroy(c, id).await;
        }
        assert!(list(c).await.is_empty());
    }
    for (i, a) in agents.iter_mut().enumerate() {
        let code = a.terminate(Duration::from_secs(30)).and_then(|s| s.code());
        assert_eq!(code, Some(0), "agent {i}: {}", a.log_tail(20));
    }
    assert!(reservations(&home).is_empty(), "{:?}", reservations(&home));
    for w in [&home, &world_b, &world_c] {
        let left = w.leftovers();
        assert!(left.is_empty(), "leftovers: {left:?}");
    }
}
