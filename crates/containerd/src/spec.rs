//! The OCI runtime spec of a worker: containerd-like Linux defaults, then the image config,
//! then the request env, shared resolv.conf/hosts, hostname and resource limits.

use std::collections::BTreeMap;

use esb_runtime::RuntimeError;
use serde_json::{Value, json};

use crate::image::RunConfig;
use crate::seccomp;

/// Any type URL containerd expects for a runtime spec.
pub(crate) const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Annotation that makes runc's v2 shim serve many containers (one shim per group).
pub(crate) const SHIM_GROUP_ANNOTATION: &str = "io.containerd.runc.v2.group";
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const CPU_PERIOD: u64 = 100_000;

/// containerd's default capability set without `CAP_NET_RAW` (ARP/IP spoofing on the shared
/// bridge), `CAP_MKNOD` and `CAP_SETFCAP`, which no function needs (review H4).
const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];
/// containerd's and Docker's masked paths, with `/sys/devices/virtual/powercap` (RAPL energy
/// counters: a power side channel) and `/proc/interrupts` (review L5).
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Everything the spec is built from.
pub(crate) struct SpecInput<'a> {
    pub id: &'a str,
    pub namespace: &'a str,
    pub image: &'a RunConfig,
    pub env: &'a BTreeMap<String, String>,
    pub netns_path: &'a str,
    pub resolv_conf: &'a str,
    pub hosts: &'a str,
    /// `(uid, gid)` the worker runs as (image user, or the forced non-root user).
    pub user: (u32, u32),
    /// `oom_score_adj` of the worker's processes.
    pub oom_score_adj: i32,
    pub memory_bytes: u64,
    pub cpu_millis: u64,
    pub pids_limit: u64,
    /// Shim group (`None` = one shim per worker).
    pub shim_group: Option<&'a str>,
}

/// Hostname = worker name trimmed to the 63-character limit.
pub(crate) fn hostname(id: &str) -> &str {
    let end = id.len().min(63);
    id.get(..end)
        .unwrap_or(id)
        .trim_end_matches(['-', '.', '_'])
}

/// Image env, then request env on top (same key wins from the request), PATH defaulted.
pub(crate) fn merge_env(image: &[String], request: &BTreeMap<String, String>) -> Vec<String> {
    let mut out: Vec<String> = image
        .iter()
        .filter(|kv| {
            let k = kv.split('=').next().unwrap_or_default();
            !request.contains_key(k)
        })
        .cloned()
        .collect();
    out.extend(request.iter().map(|(k, v)| format!("{k}={v}")));
    if !out.iter().any(|kv| kv.starts_with("PATH=")) {
        out.insert(0, DEFAULT_PATH.to_string());
    }
    out
}

/// `uid[:gid]` when numeric; `None` when names need resolving.
pub(crate) fn numeric_user(user: &str) -> Option<(u32, u32)> {
    let user = user.trim();
    if user.is_empty() {
        return Some((0, 0));
    }
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let uid = u.parse().ok()?;
    let gid = if g.is_empty() { 0 } else { g.parse().ok()? };
    Some((uid, gid))
}

/// Resolves `user` (names allowed) against an `/etc/passwd` and `/etc/group` text.
pub(crate) fn resolve_user(user: &str, passwd: &str, group: &str) -> Option<(u32, u32)> {
    if let Some(ids) = numeric_user(user) {
        return Some(ids);
    }
    let (u, g) = user.trim().split_once(':').unwrap_or((user.trim(), ""));
    let lookup = |text: &str, name: &str, field: usize| -> Option<u32> {
        text.lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name))
            .and_then(|f| f.get(field)?.parse().ok())
    };
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => (uid, 0),
        Err(_) => (lookup(passwd, u, 2)?, lookup(passwd, u, 3)?),
    };
    let gid = if g.is_empty() {
        primary_gid
    } else {
        g.parse().ok().or_else(|| lookup(group, g, 2))?
    };
    Some((uid, gid))
}

/// The spec as JSON bytes.
pub(crate) fn build(input: &SpecInput<'_>) -> Result<Vec<u8>, RuntimeError> {
    let mut args = input.image.entrypoint.clone();
    args.extend(input.image.cmd.iter().cloned());
    if args.is_empty() {
        return Err(RuntimeError::invalid_argument(
            "image defines neither entrypoint nor cmd",
        ));
    }
    let cwd = if input.image.cwd.is_empty() {
        "/"
    } else {
        input.image.cwd.as_str()
    };
    let caps: Vec<&str> = CAPS.to_vec();
    let quota = input.cpu_millis.saturating_mul(CPU_PERIOD) / 1000;
    let memory = i64::try_from(input.memory_bytes).unwrap_or(i64::MAX);
    let mut annotations = serde_json::Map::new();
    if let Some(group) = input.shim_group {
        annotations.insert(SHIM_GROUP_ANNOTATION.to_string(), Value::from(group));
    }
    let ro_bind = |dest: &str, src: &str| {
        json!({"destination": dest, "type": "bind", "source": src,
               "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]})
    };
    let spec = json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": input.user.0, "gid": input.user.1},
            "args": args,
            "env": merge_env(&input.image.env, input.env),
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true,
            "oomScoreAdj": input.oom_score_adj
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": hostname(input.id),
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            ro_bind("/etc/resolv.conf", input.resolv_conf),
            ro_bind("/etc/hosts", input.hosts)
        ],
        "annotations": annotations,
        "linux": {
            "resources": {
                "devices": [{"allow": false, "access": "rwm"}],
                "memory": {"limit": memory, "swap": memory},
                "cpu": {"quota": quota, "period": CPU_PERIOD},
                "pids": {"limit": input.pids_limit}
            },
            "cgroupsPath": format!("/{}/{}", input.namespace, input.id),
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "cgroup"},
                {"type": "network", "path": input.netns_path}
            ],
            "seccomp": seccomp::profile(),
            "maskedPaths": MASKED,
            "readonlyPaths": READONLY
        }
    });
    serde_json::to_vec(&spec).map_err(|e| RuntimeError::internal("encoding spec").with_source(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(image: &'a RunConfig, env: &'a BTreeMap<String, String>) -> SpecInput<'a> {
        SpecInput {
            id: "esb-dev-fn-0123abcd",
            namespace: "esb",
            image,
            env,
            netns_path: "/run/esb/netns/x",
            resolv_conf: "/state/resolv.conf",
            hosts: "/state/hosts",
            user: (1000, 1000),
            oom_score_adj: 500,
            memory_bytes: 512 * 1024 * 1024,
            cpu_millis: 289,
            pids_limit: 1024,
            shim_group: Some("esb"),
        }
    }

    #[test]
    fn spec_is_a_valid_oci_spec_with_limits() {
        let image = RunConfig {
            entrypoint: vec!["/w".into()],
            cmd: vec!["serve".into()],
            env: vec!["OVERRIDE_ME=image".into(), "KEEP=1".into()],
            ..RunConfig::default()
        };
        let env = BTreeMap::from([("OVERRIDE_ME".to_string(), "request".to_string())]);
        let bytes = build(&input(&image, &env)).expect("spec");
        let spec: oci_spec::runtime::Spec = serde_json::from_slice(&bytes).expect("oci spec");
        let process = spec.process().as_ref().expect("process");
        assert_eq!(process.args().as_ref().expect("args"), &vec!["/w", "serve"]);
        let env = process.env().as_ref().expect("env");
        assert!(env.contains(&"OVERRIDE_ME=request".to_string()));
        assert!(env.contains(&"KEEP=1".to_string()));
        assert!(!env.contains(&"OVERRIDE_ME=image".to_string()));
        assert!(env.iter().any(|e| e.starts_with("PATH=")));
        assert_eq!(process.no_new_privileges(), Some(true));
        let linux = spec.linux().as_ref().expect("linux");
        let res = linux.resources().as_ref().expect("resources");
        let mem = res.memory().as_ref().expect("memory");
        assert_eq!(mem.limit(), Some(536_870_912));
        assert_eq!(mem.swap(), Some(536_870_912));
        let cpu = res.cpu().as_ref().expect("cpu");
        assert_eq!(cpu.quota(), Some(28_900));
        assert_eq!(
            linux.cgroups_path().as_ref().expect("cg").to_str(),
            Some("/esb/esb-dev-fn-0123abcd")
        );
        assert_eq!(
            spec.root().as_ref().expect("root").path().to_str(),
            Some("rootfs")
        );
        assert_eq!(spec.hostname().as_deref(), Some("esb-dev-fn-0123abcd"));
    }

    #[test]
    fn sandbox_is_hardened() {
        let image = RunConfig {
            entrypoint: vec!["/w".into()],
            ..RunConfig::default()
        };
        let env = BTreeMap::new();
        let bytes = build(&input(&image, &env)).expect("spec");
        let spec: oci_spec::runtime::Spec = serde_json::from_slice(&bytes).expect("oci spec");
        let process = spec.process().as_ref().expect("process");
        assert_eq!(process.oom_score_adj(), Some(500));
        let caps = process.capabilities().as_ref().expect("caps");
        for set in [caps.bounding(), caps.effective(), caps.permitted()] {
            let set = set.as_ref().expect("set");
            for dropped in [
                oci_spec::runtime::Capability::NetRaw,
                oci_spec::runtime::Capability::Mknod,
                oci_spec::runtime::Capability::Setfcap,
                oci_spec::runtime::Capability::SysAdmin,
            ] {
                assert!(!set.contains(&dropped), "{dropped:?}");
            }
            assert!(set.contains(&oci_spec::runtime::Capability::NetBindService));
        }
        let linux = spec.linux().as_ref().expect("linux");
        let seccomp = linux.seccomp().as_ref().expect("seccomp");
        assert_eq!(
            seccomp.default_action(),
            oci_spec::runtime::LinuxSeccompAction::ScmpActErrno
        );
        let namespaces = linux.namespaces().as_ref().expect("namespaces");
        assert!(
            namespaces
                .iter()
                .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Cgroup)
        );
        let masked = linux.masked_paths().as_ref().expect("masked");
        for p in [
            "/sys/devices/virtual/powercap",
            "/proc/interrupts",
            "/proc/kcore",
        ] {
            assert!(masked.iter().any(|m| m == p), "{p}");
        }
    }

    #[test]
    fn empty_command_is_rejected() {
        let image = RunConfig::default();
        let env = BTreeMap::new();
        assert!(build(&input(&image, &env)).is_err());
    }

    #[test]
    fn users_resolve() {
        assert_eq!(numeric_user(""), Some((0, 0)));
        assert_eq!(numeric_user("1000"), Some((1000, 0)));
        assert_eq!(numeric_user("1000:1001"), Some((1000, 1001)));
        assert_eq!(numeric_user("app"), None);
        let passwd = "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/app:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:50:\n";
        assert_eq!(resolve_user("app", passwd, group), Some((1000, 1001)));
        assert_eq!(resolve_user("app:staff", passwd, group), Some((1000, 50)));
        assert_eq!(resolve_user("ghost", passwd, group), None);
    }

    #[test]
    fn hostname_is_bounded() {
        let long = "a".repeat(80);
        assert_eq!(hostname(&long).len(), 63);
    }
}
