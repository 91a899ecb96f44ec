//! Worker isolation on the Docker backend (review H5): the agent's chains on the test network's
//! bridge reject worker → host ports and drop worker → worker (bridged frames reach FORWARD
//! through br_netfilter); the node still reaches workers; removal restores the old behaviour.
//! Traffic only goes to the test network's containers and the bridge address.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use bollard::query_parameters::{InspectContainerOptions, InspectNetworkOptions};
use esb_cni::WorkerFirewall;
use esb_runtime::Runtime;

use crate::support::Ctx;

const SCOPE: &str = "esbt-dk-70-net/test";

/// Removes the chains even when the test fails midway.
struct ChainGuard;

impl Drop for ChainGuard {
    fn drop(&mut self) {
        let _ = esb_cni::firewall::remove(SCOPE);
    }
}

/// TCP connect from the network namespace of process `pid` (2 s timeout).
fn connect_from(pid: i64, ip: IpAddr, port: u16) -> Result<(), std::io::ErrorKind> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("open netns");
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(2))
            .map(drop)
            .map_err(|e| e.kind())
    })
    .join()
    .expect("connect thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_workers_are_isolated() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: iptables needs root");
        return Ok(());
    }
    let mut ctx = Ctx::new(env, 70).await?;
    ctx.docker.firewall = Some(WorkerFirewall {
        scope: SCOPE.into(),
        deny_cidrs: vec!["169.254.0.0/16".into()],
        egress: true,
    });
    let _guard = ChainGuard;
    let rt = ctx.runtime().await?;
    assert!(
        esb_cni::firewall::installed(SCOPE),
        "chains installed at connect"
    );

    let net = ctx
        .raw
        .inspect_network(&ctx.docker.network, None::<InspectNetworkOptions>)
        .await?;
    let gw: IpAddr = net
        .ipam
        .and_then(|i| i.config)
        .unwrap_or_default()
        .into_iter()
        .find_map(|c| match c.gateway.filter(|g| !g.is_empty()) {
            Some(g) => g.parse().ok(),
            // Docker's default: the subnet's first host address.
            None => {
                let net: std::net::Ipv4Addr = c.subnet?.split_once('/')?.0.parse().ok()?;
                Some(IpAddr::V4((u32::from(net) + 1).into()))
            }
        })
        .expect("gateway");

    let a = rt.ensure(ctx.request("iso-a")).await?;
    let b = rt.ensure(ctx.request("iso-b")).await?;
    let pid = ctx
        .raw
        .inspect_container(&a.id, None::<InspectContainerOptions>)
        .await?
        .state
        .and_then(|s| s.pid)
        .expect("pid");
    let host_port = TcpListener::bind((gw, 0))?;
    let port = host_port.local_addr()?.port();

    assert_eq!(
        connect_from(pid, gw, port),
        Err(std::io::ErrorKind::ConnectionRefused),
        "worker -> host port"
    );
    let bridged = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .is_ok_and(|v| v.trim() == "1");
    if bridged {
        let r = connect_from(pid, b.ip, b.port);
        assert!(r.is_err(), "worker A reached worker B: {r:?}");
    } else {
        eprintln!("br_netfilter off: worker -> worker is not filtered on this host");
    }
    // The node still reaches its workers.
    TcpStream::connect_timeout(&SocketAddr::new(b.ip, b.port), Duration::from_secs(2))?;

    // Without the chains the same connections go through: the firewall is what stopped them.
    rt.release_node_resources().await?;
    rt.release_node_resources().await?;
    assert!(!esb_cni::firewall::installed(SCOPE));
    assert_eq!(connect_from(pid, gw, port), Ok(()));
    assert_eq!(connect_from(pid, b.ip, b.port), Ok(()));

    rt.destroy(&a.id).await?;
    rt.destroy(&b.id).await?;
    assert!(ctx.containers().await?.is_empty());
    Ok(())
}
