//! Worker isolation (review H5, M5) with the real plugins and iptables: networks `esbt-c70`
//! (firewalled, two workers) and `esbt-c71` (a neighbour network standing in for "another
//! network the node can route to"). Traffic only goes to namespaces and addresses these tests
//! create. Container ids are unique across the suite: the plugin's macspoofchk nftables chains
//! are named after them, host-wide.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use esb_cni::WorkerFirewall;

use super::{
    TestNet, connect_from_netns, fetch, plugin_dir, scope, serve_in_netns, spoofchk_rules,
};

/// iptables rules (`-S` lines) of `chain` that mention `needle`.
fn rules_with(chain: &str, needle: &str) -> Vec<String> {
    let out = Command::new("iptables")
        .args(["-w", "-S", chain])
        .output()
        .expect("iptables");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Lines of `iptables -S <chain>` (empty when the chain does not exist).
fn chain_rules(chain: &str) -> Vec<String> {
    rules_with(chain, "-A ")
}

/// Host ends of the veths on `bridge` and whether each is an isolated bridge port.
fn ports(bridge: &str) -> Vec<(String, bool)> {
    let out = Command::new("ip")
        .args(["-d", "-o", "link", "show", "master", bridge])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let name = l.split(": ").nth(1)?;
            let name = name.split('@').next().unwrap_or(name).to_string();
            Some((name, l.contains(" isolated on ")))
        })
        .collect()
}

/// `/proc/thread-self/net/if_inet6` (`/proc/net` is the main thread's) as seen inside the netns at `pin`: interfaces with an IPv6 address.
fn ipv6_ifaces(pin: &Path) -> Vec<String> {
    let ns = std::fs::File::open(pin).expect("open pin");
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        std::fs::read_to_string("/proc/thread-self/net/if_inet6")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().last().map(str::to_string))
            .collect()
    })
    .join()
    .expect("thread")
}

fn firewall(deny: &[&str]) -> Option<WorkerFirewall> {
    Some(WorkerFirewall {
        scope: scope(70),
        deny_cidrs: deny.iter().map(|s| s.to_string()).collect(),
        egress: true,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_isolated_from_each_other_the_node_and_denied_networks() {
    let Some(bin) = plugin_dir() else { return };
    let mut t = TestNet::new(70, &bin);
    let neighbour = TestNet::new(71, &bin);
    let (chain_in, chain_fwd) = esb_cni::firewall::chain_names(&scope(70));

    t.settings.firewall = firewall(&["169.254.0.0/16"]);
    let net = t.network().await;
    assert_eq!(net.conflist()["plugins"][0]["macspoofchk"], true);
    net.install().await.expect("install twice");
    for chain in ["INPUT", "FORWARD"] {
        let jumps = rules_with(chain, "-i esbt-c70 ");
        assert_eq!(jumps.len(), 1, "one jump in {chain}: {jumps:?}");
        assert!(jumps[0].contains("10.199.70.0/24"), "{jumps:?}");
    }
    assert!(esb_cni::firewall::installed(&scope(70)));
    let input_rules = chain_rules(&chain_in);
    assert!(
        input_rules
            .iter()
            .any(|r| r.contains("-d 10.199.70.1/32 -p udp") && r.contains("--dport 53")),
        "DNS to the gateway allowed: {input_rules:?}"
    );

    let a = net.attach("iso-a").await.expect("attach a");
    let b = net.attach("iso-b").await.expect("attach b");
    let c_net = neighbour.network().await;
    let c = c_net.attach("iso-c").await.expect("attach c");
    let (ip_b, ip_c) = (b.ip.expect("ip"), c.ip.expect("ip"));

    // Bridge port isolation on every worker port; IPv6 only on loopback inside the worker.
    let p = ports("esbt-c70");
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p.iter().all(|(_, iso)| *iso), "every port isolated: {p:?}");
    let v6 = ipv6_ifaces(&a.netns_path);
    assert!(v6.iter().all(|i| i == "lo"), "no IPv6 on eth0: {v6:?}");

    // Worker A -> worker B on the same bridge: no L2 path (isolated ports), so no connection.
    let server_b = serve_in_netns(&b.netns_path, ip_b, 8080);
    let started = Instant::now();
    let r = connect_from_netns(&a.netns_path, ip_b, 8080);
    assert!(r.is_err(), "A reached B: {r:?}");
    eprintln!("A -> B:8080: {r:?} after {:?}", started.elapsed());
    // The node (the agent) still reaches B.
    assert_eq!(fetch(ip_b, 8080), "hello");
    server_b.join().expect("server b");

    // Worker A -> any host port, on the gateway address and on a wildcard listener (the
    // agent's ports are bound like this, whatever PORT says): reset at once.
    let gw: IpAddr = "10.199.70.1".parse().expect("gw");
    let on_gw = TcpListener::bind((gw, 0)).expect("bind gateway");
    let wildcard = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind any");
    for port in [
        on_gw.local_addr().expect("addr").port(),
        wildcard.local_addr().expect("addr").port(),
    ] {
        let started = Instant::now();
        assert_eq!(
            connect_from_netns(&a.netns_path, gw, port),
            Err(std::io::ErrorKind::ConnectionRefused),
            "host port {port}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "reset, not a timeout"
        );
    }
    // DNS on the gateway is the one host service workers may use.
    match TcpListener::bind((gw, 53)) {
        Ok(dns) => {
            assert_eq!(connect_from_netns(&a.netns_path, gw, 53), Ok(()));
            drop(dns);
        }
        Err(e) => eprintln!("skipping the DNS check: cannot bind {gw}:53: {e}"),
    }

    // Worker A -> a worker of another network the node routes to: allowed until its CIDR is
    // denied; the update replaces the chain in place (still one jump).
    let forwarding =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "1");
    if forwarding {
        let server_c = serve_in_netns(&c.netns_path, ip_c, 8080);
        assert_eq!(connect_from_netns(&a.netns_path, ip_c, 8080), Ok(()));
        server_c.join().expect("server c");
    }
    t.settings.firewall = firewall(&["169.254.0.0/16", "10.199.71.0/24"]);
    let net = esb_cni::CniNetwork::new(t.settings.clone(), &t.state()).expect("restarted");
    net.install().await.expect("install updated plan");
    assert_eq!(rules_with("FORWARD", "-i esbt-c70 ").len(), 1);
    assert!(
        chain_rules(&chain_fwd)
            .iter()
            .any(|r| r.contains("-d 10.199.71.0/24") && r.ends_with("-j DROP")),
        "{:?}",
        chain_rules(&chain_fwd)
    );
    let server_c = serve_in_netns(&c.netns_path, ip_c, 8080);
    let r = connect_from_netns(&a.netns_path, ip_c, 8080);
    assert!(r.is_err(), "A reached the denied network: {r:?}");
    assert_eq!(fetch(ip_c, 8080), "hello", "the node still reaches C");
    server_c.join().expect("server c");

    // macspoofchk: once A claims another MAC its frames are dropped at the bridge, so the
    // reset the node sent a moment ago never comes (a timeout instead).
    let gw_port = on_gw.local_addr().expect("addr").port();
    let spoof = Command::new("nsenter")
        .arg(format!("--net={}", a.netns_path.display()))
        .args([
            "ip",
            "link",
            "set",
            "dev",
            "eth0",
            "address",
            "02:00:00:00:00:99",
        ])
        .status()
        .expect("nsenter");
    assert!(spoof.success(), "change A's MAC");
    assert_eq!(
        connect_from_netns(&a.netns_path, gw, gw_port),
        Err(std::io::ErrorKind::TimedOut),
        "frames with a spoofed source MAC must not reach the node"
    );

    // Another ENV on the same bridge gets its own chains; removing ours leaves them (M5).
    let other_scope = "esbt-c70-net/other";
    let mut other = t.settings.clone();
    other.firewall = Some(WorkerFirewall {
        scope: other_scope.into(),
        deny_cidrs: Vec::new(),
        egress: true,
    });
    let other_net =
        esb_cni::CniNetwork::new(other, &t.dir.path().join("other-state")).expect("other env");
    other_net.install().await.expect("install other env");
    assert_eq!(rules_with("INPUT", "-i esbt-c70 ").len(), 2);
    net.remove_firewall().await.expect("remove ours");
    net.remove_firewall().await.expect("remove twice");
    assert!(!esb_cni::firewall::installed(&scope(70)));
    assert!(chain_rules(&chain_in).is_empty() && chain_rules(&chain_fwd).is_empty());
    assert!(
        esb_cni::firewall::installed(other_scope),
        "the other ENV's chains survive"
    );
    assert_eq!(rules_with("INPUT", "-i esbt-c70 ").len(), 1);
    other_net.remove_firewall().await.expect("remove other");
    assert!(rules_with("INPUT", "-i esbt-c70 ").is_empty());
    assert!(rules_with("FORWARD", "-i esbt-c70 ").is_empty());

    net.detach("iso-a").await.expect("detach a");
    net.detach("iso-b").await.expect("detach b");
    c_net.detach("iso-c").await.expect("detach c");
    t.assert_clean();
    neighbour.assert_clean();
    for id in ["iso-a", "iso-b", "iso-c"] {
        assert!(
            spoofchk_rules(id).is_empty(),
            "macspoofchk rules of {id} left"
        );
    }
    drop((on_gw, wildcard));
}
