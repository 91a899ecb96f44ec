//! Shared pieces of the real-containerd tests: per-test settings (namespace, brand, subnet,
//! bridge, temp dirs), a plain HTTP invoker, and a cleanup that empties the namespace and
//! removes the bridge even when the test failed.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use esb_cni::CniSettings;
use esb_containerd::ContainerdRuntime;
use esb_containerd::ContainerdSettings;
use esb_runtime::settings::CommonSettings;
use esb_runtime::{EnsureRequest, Runtime};
use esb_testkit::DevEnv;
use esb_testkit::ctr::Ctr;

pub const FUNCTION: &str = "fn-test";
pub const OWNER: &str = "owner-1";

/// One test's world: namespace `esbt-cd-<n>`, subnet `10.199.<100+n>.0/24`, bridge `esbt-d<n>`.
pub struct World {
    pub n: u32,
    pub env: DevEnv,
    pub dir: tempfile::TempDir,
    pub common: CommonSettings,
    pub containerd: ContainerdSettings,
    pub cni: CniSettings,
}

impl World {
    pub fn new(env: DevEnv, n: u32) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let brand = format!("esbt-cd-{n}");
        let socket = env.containerd_socket.clone().expect("socket");
        let common = esb_testkit::common_settings(&env, &brand, "test", dir.path().join("state"));
        let containerd = ContainerdSettings {
            socket: PathBuf::from(socket),
            runtime: "io.containerd.runc.v2".into(),
            snapshotter: "overlayfs".into(),
            namespace: brand.clone(),
            log_writer: PathBuf::from(env!("CARGO_BIN_EXE_esb-containerd-log-writer")),
        };
        let subnet = 100 + n;
        let cni = CniSettings {
            conf_dir: dir.path().join("conf"),
            bin_dir: PathBuf::from(&env.cni_bin_dir),
            conf_file: dir.path().join("conf/10-esbt.conflist"),
            network_name: format!("{brand}-net"),
            bridge: format!("esbt-d{n}"),
            subnet: format!("10.199.{subnet}.0/24"),
            gateway: format!("10.199.{subnet}.1"),
            dns_server: format!("10.199.{subnet}.1"),
            net_dir: dir.path().join("net"),
            ip_masq: false,
            identity_file: dir.path().join("esb-cni.env"),
            plugin_timeout: esb_cni::DEFAULT_CNI_PLUGIN_TIMEOUT,
            firewall: None,
        };
        let world = Self {
            n,
            env,
            dir,
            common,
            containerd,
            cni,
        };
        world.cleanup();
        world
    }

    pub fn image(&self) -> String {
        self.env.worker_image.clone().expect("worker image")
    }

    pub async fn runtime(&self) -> ContainerdRuntime {
        ContainerdRuntime::connect(
            self.common.clone(),
            self.containerd.clone(),
            self.cni.clone(),
        )
        .await
        .expect("connect")
    }

    pub fn request(&self, env: &[(&str, &str)]) -> EnsureRequest {
        EnsureRequest {
            function_name: FUNCTION.into(),
            image: self.image(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            owner_id: OWNER.into(),
        }
    }

    /// `ctr` in this test's namespace.
    pub fn ctr_ns(&self) -> Ctr<'_> {
        Ctr {
            socket: &self.containerd.socket,
            namespace: &self.containerd.namespace,
        }
    }

    pub fn ctr(&self, args: &[&str]) -> String {
        self.ctr_ns().run(args)
    }

    pub fn ctr_lines(&self, args: &[&str]) -> Vec<String> {
        self.ctr_ns().lines(args)
    }

    /// Active (container) snapshots: committed image layers are not leaks.
    pub fn active_snapshots(&self) -> Vec<String> {
        self.ctr_lines(&["snapshots", "ls"])
            .into_iter()
            .skip(1)
            .filter(|l| l.contains("Active"))
            .collect()
    }

    pub fn ipam_files(&self) -> Vec<String> {
        let dir = self.cni.net_dir.join(&self.cni.network_name);
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn netns_pins(&self) -> Vec<String> {
        let dir = self.common.state_dir.join("cni/netns");
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Worker resources still present in the namespace or on the host (empty = clean).
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        out.extend(
            self.ctr_lines(&["tasks", "ls", "-q"])
                .into_iter()
                .map(|t| format!("task {t}")),
        );
        out.extend(
            self.ctr_lines(&["containers", "ls", "-q"])
                .into_iter()
                .filter(|c| !c.starts_with("foreign"))
                .map(|c| format!("container {c}")),
        );
        out.extend(
            self.active_snapshots()
                .into_iter()
                .map(|s| format!("snapshot {s}")),
        );
        out.extend(self.ipam_files().into_iter().map(|f| format!("ipam {f}")));
        out.extend(self.netns_pins().into_iter().map(|p| format!("netns {p}")));
        let veths = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.cni.bridge])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.extend(
            veths
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| format!("veth {l}")),
        );
        let logs = self.common.state_dir.join("logs");
        if let Ok(d) = std::fs::read_dir(logs) {
            out.extend(
                d.flatten()
                    .map(|e| format!("log {}", e.file_name().to_string_lossy())),
            );
        }
        out
    }

    /// Asserts no worker resource is left in the namespace or on the host.
    pub fn assert_no_leftovers(&self) {
        let left = self.leftovers();
        assert!(left.is_empty(), "leftovers: {left:?}");
    }

    /// Waits until nothing is left (detached rollbacks finish after the caller returned).
    pub async fn eventually_clean(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "leftovers after 20 s: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Removes everything in the namespace (tasks, containers, images → GC of content and
    /// snapshots, leases), the namespace, the bridge and the pinned netns.
    pub fn cleanup(&self) {
        for t in self.ctr_lines(&["tasks", "ls", "-q"]) {
            self.ctr(&["tasks", "resume", &t]);
            self.ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", &t]);
        }
        for t in self.ctr_lines(&["tasks", "ls", "-q"]) {
            for _ in 0..20 {
                if !self.ctr(&["tasks", "rm", "-f", &t]).is_empty()
                    || !self.ctr_lines(&["tasks", "ls", "-q"]).contains(&t)
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        for c in self.ctr_lines(&["containers", "ls", "-q"]) {
            self.ctr(&["containers", "rm", &c]);
        }
        for l in self.ctr_lines(&["leases", "ls", "-q"]) {
            self.ctr(&["leases", "rm", &l]);
        }
        for s in self.active_snapshots() {
            if let Some(key) = s.split_whitespace().next() {
                self.ctr(&["snapshots", "rm", key]);
            }
        }
        self.ctr_ns().purge_images_and_namespace();
        let pins = self.common.state_dir.join("cni/netns");
        for p in self.netns_pins() {
            let path = pins.join(p);
            let _ = nix_umount(&path);
            let _ = std::fs::remove_file(&path);
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.cni.bridge])
            .output();
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn nix_umount(path: &std::path::Path) -> std::io::Result<()> {
    Command::new("umount").arg(path).output().map(|_| ())
}

pub use esb_testkit::http::post;

/// Posts until the worker answers 200 (it may still be starting).
pub async fn invoke(ip: IpAddr, body: &str) -> String {
    esb_testkit::eventually("worker answers", Duration::from_secs(15), || async {
        match post(ip, body).await {
            Ok((200, b)) => Some(b),
            _ => None,
        }
    })
    .await
}

pub fn env_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Keeps the runtime type in scope for callers that only need the trait.
pub fn as_dyn(rt: &ContainerdRuntime) -> &dyn Runtime {
    rt
}

/// Starts a throwaway containerd of the test's own in `dir` (own root, state and socket
/// `dir/c.sock`), so a test may stop and restart it; the shared dev daemon is never touched.
pub fn start_containerd(dir: &std::path::Path) -> std::process::Child {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n[grpc]\n  address = \"{0}/c.sock\"\n[ttrpc]\n  address = \"{0}/c.sock.ttrpc\"\n[debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{0}/opt\"\n",
            dir.display()
        ),
    )
    .expect("config");
    std::process::Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn containerd")
}
