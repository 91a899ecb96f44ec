//! Latency figures for the docs (run as root: `cargo test -p esb-cni --release -- --ignored
//! --nocapture bench`): netns create/remove, ADD, DEL, full attach/detach, and the
//! `unshare --net=<file>` alternative. Uses bridge `esbt-c5`, subnet 10.199.5.0/24.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::CniSettings;

use crate::chain::{self, Target};
use crate::exec::ProcessExec;
use crate::{CniNetwork, conflist, netns};

const RUNS: usize = 30;

fn p50_p90(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0;
    format!("p50 {:6.2} ms  p90 {:6.2} ms", at(0.5), at(0.9))
}

fn ip_link_del(name: &str) {
    let _ = std::process::Command::new("ip")
        .args(["link", "del", name])
        .stderr(std::process::Stdio::null())
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; needs root and the real plugins"]
async fn bench_cni_latency() {
    let bin = Path::new("/usr/lib/cni");
    assert!(bin.join("bridge").exists(), "plugins missing");
    let dir = tempfile::tempdir().expect("tempdir");
    let s = CniSettings {
        conf_dir: dir.path().join("conf"),
        bin_dir: bin.to_path_buf(),
        conf_file: dir.path().join("conf/10-esbt.conflist"),
        network_name: "esbt-c5-net".into(),
        bridge: "esbt-c5".into(),
        subnet: "10.199.5.0/24".into(),
        gateway: "10.199.5.1".into(),
        dns_server: "10.199.5.1".into(),
        net_dir: dir.path().join("net"),
        ip_masq: false,
        identity_file: dir.path().join("esb-cni.env"),
        plugin_timeout: crate::DEFAULT_CNI_PLUGIN_TIMEOUT,
        firewall: None,
    };
    ip_link_del(&s.bridge);
    let pins = dir.path().join("pins");
    std::fs::create_dir_all(&pins).expect("mkdir");
    let exec = ProcessExec::new(bin, Duration::from_secs(30));
    let conf = conflist::conflist(&s).expect("conflist");
    let (mut create, mut remove, mut unshare_cmd, mut add, mut del) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..RUNS {
        let pin = pins.join(format!("b{i}"));
        let t0 = Instant::now();
        netns::create(&pin).expect("create");
        create.push(t0.elapsed());
        let t = Target {
            container_id: format!("bench-{i}"),
            netns: pin.clone(),
            ifname: "eth0".into(),
        };
        let t0 = Instant::now();
        let res = chain::add(&exec, &conf, &t).await.expect("add");
        add.push(t0.elapsed());
        let t0 = Instant::now();
        chain::del(&exec, &conf, &t, Some(&res)).await.expect("del");
        del.push(t0.elapsed());
        let t0 = Instant::now();
        netns::remove(&pin).expect("remove");
        remove.push(t0.elapsed());

        let alt = pins.join(format!("u{i}"));
        std::fs::write(&alt, b"").expect("pin file");
        let t0 = Instant::now();
        let st = std::process::Command::new("unshare")
            .arg(format!("--net={}", alt.display()))
            .arg("true")
            .status()
            .expect("unshare");
        unshare_cmd.push(t0.elapsed());
        assert!(st.success());
        netns::remove(&alt).expect("remove alt");
    }
    let net =
        CniNetwork::with_exec(s.clone(), &dir.path().join("state"), Arc::new(exec)).expect("net");
    net.install().await.expect("install");
    let (mut attach, mut detach) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        let id = format!("w-{i}");
        let t0 = Instant::now();
        net.attach(&id).await.expect("attach");
        attach.push(t0.elapsed());
        let t0 = Instant::now();
        net.detach(&id).await.expect("detach");
        detach.push(t0.elapsed());
    }
    ip_link_del(&s.bridge);

    let journal = crate::journal::Journal::new(dir.path().join("j"));
    let pool = Arc::new(crate::pool::NetnsPool::new(dir.path().join("pool"), 4));
    pool.reset().expect("pool");
    let (mut jw, mut pooled) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        let a = crate::Attachment {
            container_id: format!("j-{i}"),
            netns_path: pins.join("x"),
            ifname: "eth0".into(),
            ip: None,
            created_at: 0,
            state: crate::AttachState::Adding,
            result: None,
        };
        let t0 = Instant::now();
        journal.write(&a).expect("journal");
        jw.push(t0.elapsed());
        std::thread::sleep(Duration::from_millis(15));
        let pin = pins.join(format!("p{i}"));
        let t0 = Instant::now();
        pool.pin(&pin).expect("pool pin");
        pooled.push(t0.elapsed());
        netns::remove(&pin).expect("remove");
    }
    drop(pool);
    let (mut mnt, mut umnt) = (Vec::new(), Vec::new());
    let src = pins.join("src");
    netns::create(&src).expect("src");
    for i in 0..RUNS {
        let dst = pins.join(format!("m{i}"));
        std::fs::write(&dst, b"").expect("file");
        let t0 = Instant::now();
        nix::mount::mount(
            Some(&src),
            &dst,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind");
        mnt.push(t0.elapsed());
        let t0 = Instant::now();
        nix::mount::umount2(&dst, nix::mount::MntFlags::MNT_DETACH).expect("umount");
        umnt.push(t0.elapsed());
        std::fs::remove_file(&dst).expect("rm");
    }
    netns::remove(&src).expect("rm src");
    println!("bind mount syscall               {}", p50_p90(mnt));
    println!("umount syscall                   {}", p50_p90(umnt));
    println!("journal write (no fsync)         {}", p50_p90(jw));
    println!("netns from warm pool             {}", p50_p90(pooled));
    println!("netns create (thread+bind+lo up) {}", p50_p90(create));
    println!("netns create (unshare --net cmd) {}", p50_p90(unshare_cmd));
    println!("netns remove                     {}", p50_p90(remove));
    println!("chain ADD (bridge+portmap)       {}", p50_p90(add));
    println!("chain DEL                        {}", p50_p90(del));
    println!("attach (journal+netns+ADD)       {}", p50_p90(attach));
    println!("detach (DEL+unpin+journal)       {}", p50_p90(detach));
}
