//! Real-containerd failure and recovery tests: CNI failure rolls back (no plugins; a plugin
//! that fails or hangs on ADD mid-chain, killed at `CNI_PLUGIN_TIMEOUT`), a cancelled ensure
//! leaks nothing, GC spares foreign containers, a restarted agent adopts running and paused
//! workers and cleans up one that died meanwhile, and 20 concurrent ensures.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::{World, invoke};
use esb_runtime::{Runtime, WorkerStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_failure_rolls_back_everything() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let mut world = World::new(env, 7);
    world.cni.bin_dir = world.dir.path().join("no-plugins-here");
    let rt = world.runtime().await;
    let e = rt
        .ensure(world.request(&[]))
        .await
        .expect_err("cni must fail");
    assert!(e.chain().to_lowercase().contains("cni") || !e.message().is_empty());
    world.assert_no_leftovers();
    assert!(
        world.ctr_lines(&["leases", "ls", "-q"]).is_empty(),
        "leases left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_ensure_leaks_nothing() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(env, 8);
    let rt = world.runtime().await;
    // Warm the image so the cancellation points land in the worker steps.
    let w = rt.ensure(world.request(&[])).await.expect("ensure");
    assert!(rt.destroy(&w.id).await.expect("destroy"));
    for ms in [1u64, 5, 10, 20, 30, 45, 60, 80, 120] {
        let fut = rt.ensure(world.request(&[]));
        if let Ok(Ok(w)) = tokio::time::timeout(Duration::from_millis(ms), fut).await {
            // Finished before the deadline: the caller owns it.
            assert!(rt.destroy(&w.id).await.expect("destroy"));
        }
        world.eventually_clean().await;
        assert!(
            rt.list().await.expect("list").is_empty(),
            "after cancel at {ms} ms"
        );
    }
    world.assert_no_leftovers();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_spares_foreign_containers() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(env, 9);
    let rt = world.runtime().await;
    let w = rt.ensure(world.request(&[])).await.expect("ensure");
    world.ctr(&["containers", "create", &world.image(), "foreign-1"]);
    assert!(
        world
            .ctr_lines(&["containers", "ls", "-q"])
            .contains(&"foreign-1".to_string())
    );
    let report = rt.gc().await.expect("gc");
    assert!(report.removed_workers.is_empty(), "{report:?}");
    assert!(
        world
            .ctr_lines(&["containers", "ls", "-q"])
            .contains(&"foreign-1".to_string())
    );
    assert!(!rt.destroy("foreign-1").await.expect("destroy foreign"));
    assert!(
        world
            .ctr_lines(&["containers", "ls", "-q"])
            .contains(&"foreign-1".to_string())
    );
    assert!(rt.inspect("foreign-1").await.expect("inspect").is_none());
    invoke(w.ip, "{}").await;
    assert!(rt.destroy(&w.id).await.expect("destroy"));
    world.ctr(&["containers", "rm", "foreign-1"]);
    world.assert_no_leftovers();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_adopts_live_workers_and_cleans_dead_ones() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(env, 10);
    let rt = world.runtime().await;
    let running = rt.ensure(world.request(&[])).await.expect("ensure");
    let paused = rt.ensure(world.request(&[])).await.expect("ensure");
    let dead = rt.ensure(world.request(&[])).await.expect("ensure");
    invoke(paused.ip, "{}").await;
    rt.pause(&paused.id).await.expect("pause");
    drop(rt); // the agent goes away; workers keep running

    world.ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", &dead.id]);
    esb_testkit::eventually("task dead", Duration::from_secs(10), || async {
        world
            .ctr(&["tasks", "ls"])
            .lines()
            .any(|l| l.starts_with(&dead.id) && l.contains("STOPPED"))
            .then_some(())
    })
    .await;

    let rt = world.runtime().await;
    let mut live = rt.reconcile().await.expect("reconcile");
    live.sort_by_key(|w| w.id.clone());
    let mut expect = vec![
        (running.id.clone(), WorkerStatus::Running, running.ip),
        (paused.id.clone(), WorkerStatus::Paused, paused.ip),
    ];
    expect.sort_by_key(|e| e.0.clone());
    let got: Vec<_> = live
        .iter()
        .map(|w| (w.id.clone(), w.status, w.ip.expect("ip")))
        .collect();
    assert_eq!(got, expect);
    assert!(live.iter().all(|w| w.created_at > 0));
    assert_eq!(
        world.ipam_files().len(),
        2,
        "the dead worker's IP is released"
    );
    assert!(
        !world
            .ctr_lines(&["containers", "ls", "-q"])
            .contains(&dead.id)
    );
    assert_eq!(rt.list().await.expect("list").len(), 2);
    invoke(running.ip, "{}").await;
    rt.resume(&paused.id).await.expect("resume");
    invoke(paused.ip, "{}").await;
    assert!(rt.destroy(&running.id).await.expect("destroy"));
    assert!(rt.destroy(&paused.id).await.expect("destroy"));
    world.assert_no_leftovers();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_ensures() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(env, 11);
    let rt = world.runtime().await;
    let ensures = (0..20).map(|_| rt.ensure(world.request(&[])));
    let workers: Vec<_> = futures::future::join_all(ensures)
        .await
        .into_iter()
        .map(|r| r.expect("ensure"))
        .collect();
    let ips: HashSet<_> = workers.iter().map(|w| w.ip).collect();
    assert_eq!(ips.len(), 20);
    for w in &workers {
        invoke(w.ip, "{}").await;
    }
    assert_eq!(rt.list().await.expect("list").len(), 20);
    let destroys = workers.iter().map(|w| rt.destroy(&w.id));
    for r in futures::future::join_all(destroys).await {
        assert!(r.expect("destroy"));
    }
    world.assert_no_leftovers();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_races_ensures_and_bounds_logs() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let mut world = World::new(env, 15);
    world.common.worker_log_max_bytes = 4096;
    let rt = std::sync::Arc::new(world.runtime().await);
    let w0 = rt.ensure(world.request(&[])).await.expect("warm ensure");

    // GC in a tight loop while ensures run: none of them may be torn down.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc_loop = tokio::spawn({
        let (rt, stop) = (rt.clone(), stop.clone());
        async move {
            let mut removed = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                removed.extend(rt.gc().await.expect("gc").removed_workers);
            }
            removed
        }
    });
    let ensures = (0..8).map(|_| rt.ensure(world.request(&[])));
    let workers: Vec<_> = futures::future::join_all(ensures)
        .await
        .into_iter()
        .map(|r| r.expect("ensure during gc"))
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let removed = gc_loop.await.expect("gc loop");
    assert!(removed.is_empty(), "gc removed live workers: {removed:?}");
    for w in &workers {
        invoke(w.ip, "{}").await;
    }
    assert_eq!(world.ipam_files().len(), 9);

    // Log bound (at write time, by the log writer) and orphan logs (every file of one).
    let logs = world.common.state_dir.join("logs");
    let log = logs.join(format!("{}.log", w0.id));
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let before = rt.log_position(&w0.id).await.expect("position");
    let line = "x".repeat(8000);
    invoke(w0.ip, &format!(r#"{{"stdout":"{line}"}}"#)).await;
    esb_testkit::eventually("log written", Duration::from_secs(5), || async {
        let p = rt.log_position(&w0.id).await.expect("position");
        (p > before + 8000).then_some(())
    })
    .await;
    let rotated = logs.join(format!("{}.log.1", w0.id));
    assert!(size(&log) + size(&rotated) <= 4096);
    let ghosts =
        ["", ".1", ".pos"].map(|s| logs.join(format!("esbt-cd-15-test-ghost-00000000.log{s}")));
    for g in &ghosts {
        std::fs::write(g, "old").expect("ghost log");
    }
    let report = rt.gc().await.expect("gc");
    assert!(report.released_resources >= 3, "{report:?}");
    assert!(log.exists(), "live worker's log kept");
    for g in &ghosts {
        assert!(!g.exists(), "{} removed", g.display());
    }
    invoke(w0.ip, "{}").await;

    for w in workers.iter().map(|w| &w.id).chain([&w0.id]) {
        assert!(rt.destroy(w).await.expect("destroy"));
    }
    world.assert_no_leftovers();
}

/// A `portmap` stand-in that fails or hangs on ADD (after `bridge` and `host-local` already
/// made a veth and reserved an IP) and delegates everything else to the real plugin.
fn inject_portmap(bin: &std::path::Path, real: &str, mode: &str, calls: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let action = match mode {
        "fail" => r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"injected failure"}'; exit 1"#,
        _ => "exec sleep 600",
    };
    let script = format!(
        "#!/bin/sh\nif [ \"$CNI_COMMAND\" = ADD ]; then echo add >> {calls}; {action}; fi\nexec {real}/portmap\n",
        calls = calls.display()
    );
    let path = bin.join("portmap");
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, script).expect("script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Processes whose command line is exactly `sleep 600` (the hanging plugin).
fn hanging_plugins() -> usize {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .filter(|c| c.as_slice() == b"sleep\x00600\x00")
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_plugin_failing_or_hanging_on_add_rolls_back_everything() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let real = env.cni_bin_dir.clone();
    let mut world = World::new(env, 46);
    let bin = world.dir.path().join("cni-bin");
    std::fs::create_dir(&bin).expect("mkdir");
    for e in std::fs::read_dir(&real).expect("cni bin dir").flatten() {
        if e.file_name() != "portmap" {
            std::os::unix::fs::symlink(e.path(), bin.join(e.file_name())).expect("symlink");
        }
    }
    let calls = world.dir.path().join("portmap-calls");
    world.cni.bin_dir = bin.clone();
    world.cni.plugin_timeout = Duration::from_secs(2);
    let before = hanging_plugins();

    for mode in ["fail", "hang"] {
        inject_portmap(&bin, &real, mode, &calls);
        let rt = world.runtime().await;
        let started = std::time::Instant::now();
        let e = rt
            .ensure(world.request(&[]))
            .await
            .expect_err("the injected plugin must fail the ensure");
        let chain = e.chain();
        match mode {
            "fail" => assert!(chain.contains("injected failure"), "{mode}: {chain}"),
            _ => {
                assert!(chain.contains("timed out"), "{mode}: {chain}");
                assert!(
                    started.elapsed() >= Duration::from_secs(2),
                    "{mode}: waited"
                );
            }
        }
        let reached = std::fs::read_to_string(&calls).unwrap_or_default();
        assert!(
            reached.lines().count() >= 1,
            "{mode}: the chain reached portmap (veth and IP were made first)"
        );
        std::fs::remove_file(&calls).expect("reset calls");
        // Rollback runs in a detached task: container, snapshot, task, veth, IP, netns pin.
        world.eventually_clean().await;
        world.assert_no_leftovers();
        assert!(rt.list().await.expect("list").is_empty(), "{mode}");
    }
    // The timed-out plugin was killed, not left sleeping.
    esb_testkit::eventually("hung plugin killed", Duration::from_secs(10), || async {
        (hanging_plugins() <= before).then_some(())
    })
    .await;
    assert!(
        world.ctr_lines(&["leases", "ls", "-q"]).is_empty(),
        "leases left"
    );
}
