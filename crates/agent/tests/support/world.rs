//! The containerd end-to-end world shared by the agent binary tests: private dirs, the agent
//! spawned with a private state dir / CNI dirs / bridge / subnet, resource listings for
//! leftover checks, and a cleanup (at start and on drop) of everything the agent may create.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use esb_testkit::agent::AgentProcess;
use esb_testkit::ctr::Ctr;

/// The names one test owns (distinct per test so they can run in parallel).
pub struct Net {
    pub namespace: &'static str,
    pub env: &'static str,
    pub bridge: &'static str,
    pub subnet: &'static str,
    pub scratch_prefix: &'static str,
}

/// Private dirs, and a cleanup (at start and on drop) of everything the agent may have
/// created: containerd objects of our namespace, mounts under the dir, the bridge.
pub struct World {
    net: Net,
    dir: tempfile::TempDir,
    socket: String,
    pub image: String,
    registry: String,
}

impl World {
    pub fn new(env: &esb_testkit::DevEnv, net: Net) -> Self {
        Self::on_socket(env, net, env.containerd_socket.as_deref().unwrap())
    }

    /// A world on another containerd (e.g. a private one a chaos test stops and restarts).
    pub fn on_socket(env: &esb_testkit::DevEnv, net: Net, socket: &str) -> Self {
        let w = Self {
            dir: esb_testkit::agent::scratch_dir(net.scratch_prefix).unwrap(),
            net,
            socket: socket.to_string(),
            image: env.worker_image.clone().unwrap(),
            registry: env.registry.clone().unwrap(),
        };
        w.cleanup();
        w
    }

    pub fn path(&self, p: &str) -> String {
        self.dir.path().join(p).to_str().unwrap().to_string()
    }

    pub fn spawn(&self, name: &str, policy: &str) -> AgentProcess {
        self.spawn_with(name, policy, &[])
    }

    /// `spawn` with some settings replaced or added (`overrides` win).
    pub fn spawn_with(&self, name: &str, policy: &str, overrides: &[(&str, &str)]) -> AgentProcess {
        let (state, conf, net, idf) = (
            self.path("state"),
            self.path("net.d"),
            self.path("networks"),
            self.path("esb-cni.env"),
        );
        let env = [
            ("AGENT_RUNTIME", "containerd"),
            ("ENV", self.net.env),
            ("ESB_BRAND_SLUG", self.net.namespace),
            ("CONTAINERD_SOCKET", self.socket.as_str()),
            ("CONTAINER_REGISTRY", self.registry.as_str()),
            ("CONTAINER_REGISTRY_INSECURE", "1"),
            ("AGENT_STATE_DIR", state.as_str()),
            ("CNI_CONF_DIR", conf.as_str()),
            ("CNI_NET_DIR", net.as_str()),
            ("CNI_IDENTITY_FILE", idf.as_str()),
            ("CNI_BIN_DIR", "/usr/lib/cni"),
            ("CNI_SUBNET", self.net.subnet),
            ("CNI_BRIDGE", self.net.bridge),
            ("CNI_IP_MASQ", "false"),
            ("AGENT_SHUTDOWN_POLICY", policy),
            ("AGENT_DRAIN_TIMEOUT", "20s"),
            ("AGENT_LOG_LEVEL", "info"),
        ];
        let mut env: Vec<(&str, &str)> = env
            .into_iter()
            .filter(|(k, _)| !overrides.iter().any(|(o, _)| o == k))
            .collect();
        env.extend_from_slice(overrides);
        AgentProcess::spawn(Path::new(env!("CARGO_BIN_EXE_esb-agent")), name, &env).unwrap()
    }

    pub fn ctr(&self, args: &[&str]) -> Vec<String> {
        Ctr {
            socket: Path::new(&self.socket),
            namespace: self.net.namespace,
        }
        .lines(args)
    }

    pub fn entries(&self, p: &str) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join(p))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// IPAM reservation files (named by IP) of our network.
    pub fn ipam(&self) -> Vec<String> {
        self.entries(&format!("networks/{}-net", self.net.namespace))
            .into_iter()
            .filter(|f| f.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    /// The content of the reservation file of `ip` (host-local writes the owner id in it).
    pub fn reservation(&self, ip: &str) -> Option<String> {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("networks/{}-net/{ip}", self.net.namespace)),
        )
        .ok()
    }

    pub fn pins(&self) -> Vec<String> {
        self.entries("state/cni/netns")
    }

    /// Worker resources still present (empty = clean).
    pub fn leftovers(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .ctr(&["tasks", "ls", "-q"])
            .into_iter()
            .map(|t| format!("task {t}"))
            .collect();
        out.extend(
            self.ctr(&["containers", "ls", "-q"])
                .into_iter()
                .map(|c| format!("container {c}")),
        );
        // Workers' rootfs snapshots are the active ones (image layers are committed).
        out.extend(
            self.ctr(&["snapshots", "ls"])
                .into_iter()
                .filter(|l| l.split_whitespace().nth(2) == Some("Active"))
                .map(|l| format!("snapshot {l}")),
        );
        out.extend(self.ipam().into_iter().map(|f| format!("ipam {f}")));
        out.extend(self.pins().into_iter().map(|p| format!("netns pin {p}")));
        out.extend(
            self.entries("state/logs")
                .into_iter()
                .map(|p| format!("log {p}")),
        );
        let veths = Command::new("ip")
            .args(["-o", "link", "show", "master", self.net.bridge])
            .output()
            .unwrap();
        out.extend(
            String::from_utf8_lossy(&veths.stdout)
                .lines()
                .map(|l| format!("veth {l}")),
        );
        out.extend(
            self.mounts_under_dir()
                .into_iter()
                .map(|m| format!("mount {m}")),
        );
        out
    }

    pub fn mounts_under_dir(&self) -> Vec<String> {
        let root = self.dir.path().to_str().unwrap().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| m.starts_with(&root))
            .map(str::to_string)
            .collect()
    }

    pub fn task_stopped(&self, id: &str) -> bool {
        self.ctr(&["tasks", "ls"])
            .iter()
            .any(|l| l.starts_with(id) && l.contains("STOPPED"))
    }

    pub fn cleanup(&self) {
        for t in self.ctr(&["tasks", "ls", "-q"]) {
            self.ctr(&["tasks", "resume", &t]);
            self.ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", &t]);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ctr(&["tasks", "ls", "-q"]).is_empty() && Instant::now() < deadline {
            for t in self.ctr(&["tasks", "ls", "-q"]) {
                self.ctr(&["tasks", "rm", "-f", &t]);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for c in self.ctr(&["containers", "ls", "-q"]) {
            self.ctr(&["containers", "rm", &c]);
        }
        for l in self.ctr(&["leases", "ls", "-q"]) {
            self.ctr(&["leases", "rm", &l]);
        }
        Ctr {
            socket: Path::new(&self.socket),
            namespace: self.net.namespace,
        }
        .purge_images_and_namespace();
        for m in self.mounts_under_dir().into_iter().rev() {
            let _ = Command::new("umount").arg(&m).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", self.net.bridge])
            .output();
        // The agent keeps its firewall across stops (workers may outlive it): drop its jumps
        // for our bridge and the chains they target.
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "for c in INPUT FORWARD; do iptables -w -S $c | grep -F -- '-i {} ' \
                 | grep -F 'esb-agent ' | while read -r r; do \
                 t=$(echo \"$r\" | sed -n 's/.*-j \\(ESB[IF]-[0-9a-f]*\\).*/\\1/p'); \
                 eval \"iptables -w $(echo \"$r\" | sed 's/^-A /-D /')\"; \
                 [ -n \"$t\" ] && iptables -w -F $t && iptables -w -X $t; done; done",
                    self.net.bridge
                ),
            ])
            .output();
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.cleanup();
    }
}
