//! Real-containerd tests of the worker sandbox (security review H1, H4, L1, L5): what the
//! kernel applied to the worker process (seccomp filter, capabilities, uid, oom_score_adj,
//! cgroup namespace, masked paths) read back by the worker itself and from the stored spec;
//! the forced non-root user; image user resolution that never reads the host's files; and a
//! bad image reference that never reaches CNI.

use std::path::Path;
use std::process::Command;

use crate::support::World;
use esb_runtime::{ErrorKind, Runtime};
use esb_testkit::sandbox::{
    CAP_MKNOD_BIT, CAP_NET_RAW_BIT, CAP_SETFCAP_BIT, read_worker_file, worker_status,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_runs_in_the_hardened_sandbox() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(env, 38);
    let rt = world.runtime().await;
    let w = rt.ensure(world.request(&[])).await.expect("ensure");

    let status = worker_status(w.ip).await.expect("status");
    assert_eq!(status.seccomp, 2, "seccomp filter mode: {status:?}");
    assert!(status.no_new_privs, "{status:?}");
    assert_eq!(status.uid, 0, "the test image runs as root: {status:?}");
    for bit in [CAP_NET_RAW_BIT, CAP_MKNOD_BIT, CAP_SETFCAP_BIT] {
        assert_eq!(status.cap_bnd & (1 << bit), 0, "cap bit {bit}: {status:?}");
    }
    let adj = read_worker_file(w.ip, "/proc/self/oom_score_adj")
        .await
        .expect("oom_score_adj");
    assert_eq!(adj.trim(), "500");
    // In its own cgroup namespace the worker sees its cgroup as the root.
    let cgroup = read_worker_file(w.ip, "/proc/self/cgroup")
        .await
        .expect("cgroup");
    assert!(
        !cgroup.contains(&w.id),
        "host cgroup path visible: {cgroup}"
    );
    // Masked files read as empty (/dev/null bound over them).
    let interrupts = read_worker_file(w.ip, "/proc/interrupts")
        .await
        .expect("interrupts");
    assert!(interrupts.is_empty(), "{interrupts}");

    // The stored spec carries the same (what containerd hands to runc).
    let info = world.ctr(&["containers", "info", &w.id]);
    let info: serde_json::Value = serde_json::from_str(&info).expect("containers info json");
    let spec = &info["Spec"];
    assert_eq!(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(spec["process"]["oomScoreAdj"], 500);
    let namespaces = spec["linux"]["namespaces"].as_array().expect("namespaces");
    assert!(namespaces.iter().any(|n| n["type"] == "cgroup"));
    let masked = spec["linux"]["maskedPaths"].as_array().expect("masked");
    for p in [
        "/sys/devices/virtual/powercap",
        "/proc/interrupts",
        "/proc/kcore",
    ] {
        assert!(masked.iter().any(|m| m == p), "{p} not masked");
    }
    let bounding = spec["process"]["capabilities"]["bounding"]
        .as_array()
        .expect("caps");
    assert!(!bounding.iter().any(|c| c == "CAP_NET_RAW"));

    assert!(rt.destroy(&w.id).await.expect("destroy"));
    world.assert_no_leftovers();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_user_replaces_root() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let mut world = World::new(env, 39);
    world.common.worker.run_as = Some((1000, 1000));
    let rt = world.runtime().await;
    let w = rt.ensure(world.request(&[])).await.expect("ensure");
    let status = worker_status(w.ip).await.expect("status");
    assert_eq!((status.uid, status.gid), (1000, 1000), "{status:?}");
    assert_eq!(status.cap_eff, 0, "a non-root worker has no capabilities");
    assert_eq!(status.seccomp, 2);
    assert!(rt.destroy(&w.id).await.expect("destroy"));
    world.assert_no_leftovers();
}

/// Copies the test worker image into an OCI layout, applies `edit` (umoci arguments after
/// `--image <layout>`), and pushes it as `esb/h1-test-<random>:latest`. Returns the reference.
fn derived_image(dir: &Path, registry: &str, base: &str, edits: &[&[&str]]) -> String {
    std::fs::create_dir_all(dir).expect("mkdir");
    let layout = format!("oci:{}:img", dir.join("layout").display());
    let umoci_image = format!("{}:img", dir.join("layout").display());
    run(
        "skopeo",
        &[
            "copy",
            "-q",
            "--src-tls-verify=false",
            &format!("docker://{base}"),
            &layout,
        ],
    );
    for edit in edits {
        let mut args = vec![edit[0], "--image", &umoci_image];
        args.extend_from_slice(&edit[1..]);
        run("umoci", &args);
    }
    let reference = format!("{registry}/esb/h1-test-{:08x}:latest", rand_u32(dir));
    run(
        "skopeo",
        &[
            "copy",
            "-q",
            "--dest-tls-verify=false",
            &layout,
            &format!("docker://{reference}"),
        ],
    );
    reference
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A per-test random-enough number (the temp dir name is random).
fn rand_u32(dir: &Path) -> u32 {
    let name = dir.to_string_lossy();
    name.bytes().fold(2_166_136_261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16_777_619)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_user_is_resolved_inside_the_image_only() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(env, 40);
    let rt = world.runtime().await;
    let registry = world.env.registry.clone().expect("registry");
    let base = world.image();
    let scratch = tempfile::tempdir().expect("tempdir");

    // /etc/passwd → the host's /etc/passwd when followed from the snapshot's layer directory
    // (which is how the agent read it before), user `daemon` (uid 1 on the host, absent from
    // the image): must be refused, never resolved to the host's uid.
    let link = scratch.path().join("passwd-link");
    std::os::unix::fs::symlink(format!("{}etc/passwd", "../".repeat(24)), &link).expect("link");
    let link_s = link.to_string_lossy().into_owned();
    let hostile = derived_image(
        &scratch.path().join("hostile"),
        &registry,
        &base,
        &[
            &["insert", &link_s, "/etc/passwd"],
            &["config", "--config.user", "daemon"],
        ],
    );
    let mut req = world.request(&[]);
    req.image = hostile;
    let e = rt
        .ensure(req)
        .await
        .expect_err("hostile image must be refused");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{}", e.chain());
    world.eventually_clean().await;

    // Control: a named user that the image's own passwd has resolves and runs.
    let named = derived_image(
        &scratch.path().join("named"),
        &registry,
        &base,
        &[&["config", "--config.user", "worker"]],
    );
    let mut req = world.request(&[]);
    req.image = named;
    let w = rt.ensure(req).await.expect("ensure with a named user");
    let status = worker_status(w.ip).await.expect("status");
    assert_eq!((status.uid, status.gid), (1000, 1000), "{status:?}");
    assert!(rt.destroy(&w.id).await.expect("destroy"));
    world.eventually_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reference_never_reaches_cni() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let world = World::new(env, 41);
    let rt = world.runtime().await;
    let mut req = world.request(&[]);
    req.image = "Bad Reference::".into();
    let e = rt.ensure(req).await.expect_err("bad reference");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{}", e.chain());
    // host-local keeps `last_reserved_ip.*` after any allocation, even once released; the
    // bridge plugin creates the bridge on the first ADD.
    let ipam_dir = world.cni.net_dir.join(&world.cni.network_name);
    let touched: Vec<String> = std::fs::read_dir(&ipam_dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lock")
                .collect()
        })
        .unwrap_or_default();
    assert!(touched.is_empty(), "CNI ran: {touched:?}");
    let bridge = Command::new("ip")
        .args(["link", "show", &world.cni.bridge])
        .output()
        .expect("ip");
    assert!(!bridge.status.success(), "the bridge was created");
    world.assert_no_leftovers();
}
