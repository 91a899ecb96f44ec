//! Real-plugin tests: the containernetworking plugins from `ESB_TEST_CNI_BIN_DIR` (default
//! `/usr/lib/cni`), as root. Skipped when unavailable unless `ESB_REQUIRE_REAL_DAEMONS=1`.
//! Each test owns bridge `esbt-c<n>` and subnet `10.199.<n>.0/24` (ipMasq false) and removes
//! them, its pins and its state at the start and the end.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use esb_cni::CniSettings;
use esb_cni::{AttachState, CniError, CniNetwork};
use esb_runtime::ErrorKind;

mod isolation;

fn plugin_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(
        std::env::var("ESB_TEST_CNI_BIN_DIR").unwrap_or_else(|_| "/usr/lib/cni".into()),
    );
    let root = nix::unistd::geteuid().is_root();
    if root && dir.join("bridge").exists() {
        return Some(dir);
    }
    let why = format!("cni plugins at {} (root: {root})", dir.display());
    if std::env::var("ESB_REQUIRE_REAL_DAEMONS").is_ok_and(|v| v == "1") {
        panic!("ESB_REQUIRE_REAL_DAEMONS=1 but {why} are not usable");
    }
    eprintln!("skipping: {why} not usable");
    None
}

/// One test's private network; cleans up host state on creation and on drop.
struct TestNet {
    n: u8,
    dir: tempfile::TempDir,
    settings: CniSettings,
}

impl TestNet {
    fn new(n: u8, bin_dir: &Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = CniSettings {
            conf_dir: dir.path().join("conf"),
            bin_dir: bin_dir.to_path_buf(),
            conf_file: dir.path().join("conf/10-esbt.conflist"),
            network_name: format!("esbt-c{n}-net"),
            bridge: format!("esbt-c{n}"),
            subnet: format!("10.199.{n}.0/24"),
            gateway: format!("10.199.{n}.1"),
            dns_server: format!("10.199.{n}.1"),
            net_dir: dir.path().join("net"),
            ip_masq: false,
            identity_file: dir.path().join("esb-cni.env"),
            plugin_timeout: esb_cni::DEFAULT_CNI_PLUGIN_TIMEOUT,
            firewall: None,
        };
        del_bridge(&settings.bridge);
        let _ = esb_cni::firewall::remove(&scope(n));
        Self { n, dir, settings }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    async fn network(&self) -> CniNetwork {
        let net = CniNetwork::new(self.settings.clone(), &self.state()).expect("network");
        net.install().await.expect("install");
        net
    }

    fn ipam_files(&self) -> Vec<String> {
        let dir = self.settings.net_dir.join(&self.settings.network_name);
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<IpAddr>().is_ok())
            .collect()
    }

    fn pins(&self) -> Vec<String> {
        list(&self.state().join("cni/netns"))
    }

    fn journal(&self) -> Vec<String> {
        list(&self.state().join("cni/attachments"))
    }

    fn veths(&self) -> usize {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.settings.bridge])
            .output()
            .expect("ip");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    /// Asserts nothing of ours is left besides the (empty) bridge, and no iptables rule
    /// mentions our subnet or bridge.
    fn assert_clean(&self) {
        assert!(
            self.ipam_files().is_empty(),
            "ipam left: {:?}",
            self.ipam_files()
        );
        assert!(self.pins().is_empty(), "pins left: {:?}", self.pins());
        assert!(
            self.journal().is_empty(),
            "journal left: {:?}",
            self.journal()
        );
        assert_eq!(self.veths(), 0, "veths left on {}", self.settings.bridge);
        let rules = iptables_rules();
        let subnet_prefix = format!("10.199.{}.", self.n);
        assert!(
            !rules.iter().any(|l| l.contains(&subnet_prefix)
                || l.split_whitespace().any(|w| w == self.settings.bridge)),
            "iptables rules left: {rules:?}"
        );
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for pin in self.pins() {
            let p = self.state().join("cni/netns").join(&pin);
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
            // A failed test skips DEL: drop the plugin's host-wide spoof-check rules too.
            esb_cni::spoofchk::teardown(&pin, "eth0");
        }
        del_bridge(&self.settings.bridge);
        let _ = esb_cni::firewall::remove(&scope(self.n));
    }
}

/// The firewall scope a test network uses when it turns the firewall on.
fn scope(n: u8) -> String {
    format!("esbt-c{n}-net/test")
}

fn list(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn del_bridge(name: &str) {
    let _ = Command::new("ip")
        .args(["link", "del", name])
        .stderr(std::process::Stdio::null())
        .status();
}

fn iptables_rules() -> Vec<String> {
    let mut out = Vec::new();
    for table in ["nat", "filter"] {
        if let Ok(o) = Command::new("iptables").args(["-t", table, "-S"]).output() {
            out.extend(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_string),
            );
        }
    }
    out
}

fn in_subnet(ip: IpAddr, n: u8) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[..3] == [10, 199, n] && v4.octets()[3] > 1 && v4.octets()[3] < 255)
}

/// Serves one "hello" on `ip:port` from a thread inside the netns at `pin`; also checks that
/// loopback works in there. Returns once listening.
fn serve_in_netns(pin: &Path, ip: IpAddr, port: u16) -> std::thread::JoinHandle<()> {
    let ns = std::fs::File::open(pin).expect("open pin");
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let lo = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind lo");
        TcpStream::connect(lo.local_addr().expect("addr"))
            .expect("loopback is up inside the netns");
        let l = TcpListener::bind((ip, port)).expect("bind");
        tx.send(()).expect("ready");
        let (mut s, _) = l.accept().expect("accept");
        s.write_all(b"hello").expect("write");
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("listener ready");
    h
}

fn fetch(ip: IpAddr, port: u16) -> String {
    let mut s = TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(3))
        .expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read");
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_reach_detach() {
    let Some(bin) = plugin_dir() else { return };
    let t = TestNet::new(1, &bin);
    let net = t.network().await;

    let conf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&t.settings.conf_file).expect("conflist"))
            .expect("json");
    assert_eq!(&conf, net.conflist());
    assert_eq!(
        conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
        "10.199.1.0/24"
    );
    let ident = std::fs::read_to_string(&t.settings.identity_file).expect("identity");
    assert!(
        ident.contains("CNI_SUBNET='10.199.1.0/24'\n")
            && ident.contains("CNI_GW_IP='10.199.1.1'\n")
    );

    let a = net.attach("w-1").await.expect("attach");
    let ip = a.ip.expect("ip");
    assert!(in_subnet(ip, 1), "{ip}");
    assert_eq!(a.state, AttachState::Added);
    assert_eq!(a.ifname, "eth0");
    assert_eq!(net.attachment("w-1").expect("journal"), Some(a.clone()));
    assert_eq!(net.attach("w-1").await.expect("idempotent"), a);
    assert_eq!(t.ipam_files(), vec![ip.to_string()]);
    assert_eq!(t.veths(), 1);
    if let Err(e) = net.check("w-1").await {
        eprintln!("CHECK (best effort) failed: {e}");
    }

    let server = serve_in_netns(&a.netns_path, ip, 8080);
    assert_eq!(fetch(ip, 8080), "hello");
    server.join().expect("server");

    net.detach("w-1").await.expect("detach");
    t.assert_clean();
    net.detach("w-1").await.expect("detach twice");
    net.detach("never-attached").await.expect("detach unknown");
    assert!(matches!(
        net.attach("../x").await,
        Err(CniError::InvalidContainerId(_))
    ));
}

/// A bin dir with the real bridge/host-local and a `portmap` that fails ADD (so bridge's ADD
/// has already reserved an IP and created a veth when the chain fails).
fn failing_bin_dir(real: &Path, dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    for p in ["bridge", "host-local"] {
        std::os::unix::fs::symlink(real.join(p), bin.join(p)).expect("symlink");
    }
    let script = bin.join("portmap");
    std::fs::write(
        &script,
        "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then\n  echo '{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"injected failure\"}'\n  exit 1\nfi\nexit 0\n",
    )
    .expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_add_leaves_nothing() {
    let Some(real) = plugin_dir() else { return };
    let mut t = TestNet::new(2, &real);
    t.settings.bin_dir = failing_bin_dir(&real, t.dir.path());
    let net = t.network().await;
    let err = net.attach("w-fail").await.expect_err("portmap fails");
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert_eq!(
        esb_runtime::RuntimeError::from(err).kind(),
        ErrorKind::Internal
    );
    t.assert_clean();

    // A missing plugin: Unavailable, nothing left either.
    t.settings.bin_dir = t.dir.path().join("empty-bin");
    let net = t.network().await;
    let err = net.attach("w-missing").await.expect_err("no plugins");
    assert!(matches!(err, CniError::PluginNotFound { .. }), "{err}");
    assert_eq!(
        esb_runtime::RuntimeError::from(err).kind(),
        ErrorKind::Unavailable
    );
    t.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_releases_only_unowned() {
    let Some(bin) = plugin_dir() else { return };
    let t = TestNet::new(3, &bin);
    let net = t.network().await;
    let live = net.attach("w-live").await.expect("attach live");
    let dead = net.attach("w-dead").await.expect("attach dead");
    assert_ne!(live.ip, dead.ip);
    let keep: HashSet<String> = ["w-live".to_string()].into();
    // Attachments this process just made are within the grace period (the caller's `live`
    // may predate them).
    assert_eq!(net.reconcile(&keep).await.expect("grace"), 0);
    assert_eq!(net.attachments().expect("list").len(), 2);
    // A reservation nobody journaled (e.g. the agent died inside ADD long ago) and a stray pin.
    let store = t.settings.net_dir.join(&t.settings.network_name);
    std::fs::write(store.join("10.199.3.200"), "ghost\r\neth0").expect("stray ipam");
    backdate(&store.join("10.199.3.200"));
    std::fs::write(t.state().join("cni/netns/stray"), b"").expect("stray pin");

    // A restarted agent reconciles against its journal and the host state.
    let net = CniNetwork::new(t.settings.clone(), &t.state()).expect("restarted agent");
    let released = net.reconcile(&keep).await.expect("reconcile");
    assert_eq!(released, 3, "w-dead + ghost reservation + stray pin");
    assert_eq!(t.ipam_files(), vec![live.ip.expect("ip").to_string()]);
    assert_eq!(t.pins(), vec!["w-live".to_string()]);
    assert_eq!(net.attachments().expect("list").len(), 1);
    assert_eq!(t.veths(), 1);
    assert_eq!(net.reconcile(&keep).await.expect("again"), 0);

    let ip = live.ip.expect("ip");
    let server = serve_in_netns(&live.netns_path, ip, 8081);
    assert_eq!(fetch(ip, 8081), "hello");
    server.join().expect("server");

    assert_eq!(
        net.reconcile(&HashSet::new()).await.expect("release all"),
        1
    );
    t.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_attaches() {
    let Some(bin) = plugin_dir() else { return };
    let t = TestNet::new(4, &bin);
    let net = t.network().await;
    let mut set = tokio::task::JoinSet::new();
    let started = std::time::Instant::now();
    for i in 0..20 {
        let net = net.clone();
        set.spawn(async move { net.attach(&format!("w-{i}")).await });
    }
    let mut ips = HashSet::new();
    while let Some(r) = set.join_next().await {
        let a = r.expect("join").expect("attach");
        let ip = a.ip.expect("ip");
        assert!(in_subnet(ip, 4), "{ip}");
        ips.insert(ip);
    }
    eprintln!("20 concurrent attaches: {:?}", started.elapsed());
    assert_eq!(ips.len(), 20);
    assert_eq!(t.ipam_files().len(), 20);
    assert_eq!(t.veths(), 20);
    let mut dels = tokio::task::JoinSet::new();
    let started = std::time::Instant::now();
    for i in 0..20 {
        let net = net.clone();
        dels.spawn(async move { net.detach(&format!("w-{i}")).await });
    }
    while let Some(r) = dels.join_next().await {
        r.expect("join").expect("detach");
    }
    eprintln!("20 concurrent detaches: {:?}", started.elapsed());
    t.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_after_reboot_like_state() {
    let Some(bin) = plugin_dir() else { return };
    let t = TestNet::new(6, &bin);
    let net = t.network().await;
    let a = net.attach("w-boot").await.expect("attach");
    // After a reboot the pin file is a plain file again and the veth is gone.
    nix::mount::umount2(&a.netns_path, nix::mount::MntFlags::MNT_DETACH).expect("umount");
    let other = CniNetwork::new(t.settings.clone(), &t.state()).expect("restarted agent");
    assert_eq!(other.attachments().expect("journal survives").len(), 1);
    assert_eq!(
        other.reconcile(&HashSet::new()).await.expect("reconcile"),
        1
    );
    // The netns dies asynchronously once unmounted; its veth goes with it.
    for _ in 0..50 {
        if t.veths() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.assert_clean();
    assert!(
        spoofchk_rules("w-boot").is_empty(),
        "the plugin skips its macspoofchk teardown without a netns; we do it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_range_is_resource_exhausted() {
    let Some(bin) = plugin_dir() else { return };
    let mut t = TestNet::new(7, &bin);
    // A /30 holds one worker: .1 is the gateway, .2 the only free address.
    t.settings.subnet = "10.199.7.0/30".into();
    let net = t.network().await;
    let a = net.attach("w-a").await.expect("first fits");
    assert_eq!(a.ip, Some("10.199.7.2".parse().expect("ip")));
    let err = net.attach("w-b").await.expect_err("range full");
    assert_eq!(
        esb_runtime::RuntimeError::from(err).kind(),
        ErrorKind::ResourceExhausted
    );
    assert_eq!(
        net.attachments().expect("list").len(),
        1,
        "the failed attach left nothing"
    );
    net.detach("w-a").await.expect("detach");
    t.assert_clean();
}

/// Connects from inside the netns at `pin` to `ip:port` (2 s timeout); the error kind on
/// failure.
fn connect_from_netns(pin: &Path, ip: IpAddr, port: u16) -> Result<(), std::io::ErrorKind> {
    let ns = std::fs::File::open(pin).expect("open pin");
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(2))
            .map(drop)
            .map_err(|e| e.kind())
    })
    .join()
    .expect("connect thread")
}

/// The bridge plugin's `macspoofchk` nftables lines for container `id` (interface eth0).
fn spoofchk_rules(id: &str) -> Vec<String> {
    let out = Command::new("nft")
        .args(["list", "table", "bridge", "nat"])
        .output();
    let needle = format!("macspoofchk-{id}-eth0\"");
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// Makes a reservation look older than reconcile's grace for owners outside its journal.
fn backdate(path: &Path) {
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(old))
        .expect("backdate");
}

/// Review M5: two ENVs of one brand share the network (IPAM store, bridge). One agent's
/// reconcile must not release the other's reservations, old or fresh; only an old reservation
/// nobody knows goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_spares_other_envs_reservations() {
    let Some(bin) = plugin_dir() else { return };
    let t = TestNet::new(72, &bin);
    let dev = t.network().await;
    let stage =
        CniNetwork::new(t.settings.clone(), &t.dir.path().join("stage-state")).expect("second env");
    stage.install().await.expect("install stage");
    let mine = dev.attach("esb-dev-fn-1").await.expect("attach dev");
    let theirs = stage.attach("esb-stage-fn-1").await.expect("attach stage");
    let store = t.settings.net_dir.join(&t.settings.network_name);
    let their_ip = theirs.ip.expect("ip").to_string();
    backdate(&store.join(&their_ip));
    // Another ENV's Ensure between ADD and container creation: fresh and unknown to containerd.
    std::fs::write(store.join("10.199.72.201"), "esb-stage-fn-2\r\neth0").expect("fresh");
    // Left by nobody alive, long ago.
    std::fs::write(store.join("10.199.72.202"), "esb-dev-fn-ghost\r\neth0").expect("ghost");
    backdate(&store.join("10.199.72.202"));

    let dev = CniNetwork::new(t.settings.clone(), &t.state()).expect("restarted dev agent");
    let live: HashSet<String> = ["esb-dev-fn-1".to_string()].into();
    let runtime: HashSet<String> =
        ["esb-dev-fn-1".to_string(), "esb-stage-fn-1".to_string()].into();
    assert_eq!(
        dev.reconcile_with(&live, &runtime)
            .await
            .expect("reconcile"),
        1
    );
    let mut left = t.ipam_files();
    left.sort();
    let mut want = vec![
        mine.ip.expect("ip").to_string(),
        their_ip.clone(),
        "10.199.72.201".to_string(),
    ];
    want.sort();
    assert_eq!(left, want, "only the old unknown reservation went");
    // The other ENV's worker is untouched and still reachable.
    let ip = theirs.ip.expect("ip");
    let server = serve_in_netns(&theirs.netns_path, ip, 8080);
    assert_eq!(fetch(ip, 8080), "hello");
    server.join().expect("server");

    std::fs::remove_file(store.join("10.199.72.201")).expect("rm fresh");
    dev.detach("esb-dev-fn-1").await.expect("detach dev");
    stage.detach("esb-stage-fn-1").await.expect("detach stage");
    t.assert_clean();
}
