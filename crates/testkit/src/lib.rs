//! Test harness shared by the real-daemon test tiers: coordinates of the private daemons
//! started by `scripts/dev-env` (read from `ESB_TEST_*` env vars), skip-or-fail gating, and an
//! eventually-assertion helper.

pub mod agent;
/// The agent client of `esbctl`, for tests.
pub use esbctl::client;
pub mod ctr;
pub mod http;
pub mod observe;
pub mod procs;
pub mod registry;
pub mod sandbox;
pub mod scenarios;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use esb_runtime::identity::Identity;
use esb_runtime::settings::{CommonSettings, PullPolicy, RegistrySettings, WorkerDefaults};

/// Set to `1` by the README's test command and CI: a missing daemon is then a failure, not a
/// skip.
pub const REQUIRE_ENV: &str = "ESB_REQUIRE_REAL_DAEMONS";

/// Coordinates of the private daemons (see `scripts/dev-env`).
#[derive(Debug, Clone)]
pub struct DevEnv {
    /// Unix socket path of the private containerd.
    pub containerd_socket: Option<String>,
    /// `unix://...` address of the private dockerd.
    pub docker_host: Option<String>,
    /// Docker network for test workers.
    pub docker_network: Option<String>,
    /// Plain-HTTP registry `host:port`.
    pub registry: Option<String>,
    /// HTTPS registry `host:port` and its CA (PEM path).
    pub registry_tls: Option<String>,
    pub registry_ca: Option<String>,
    /// Full reference of the test worker image in the HTTP registry.
    pub worker_image: Option<String>,
    /// CNI plugin directory.
    pub cni_bin_dir: String,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl DevEnv {
    pub fn from_env() -> Self {
        Self {
            containerd_socket: var("ESB_TEST_CONTAINERD_SOCKET"),
            docker_host: var("ESB_TEST_DOCKER_HOST"),
            docker_network: var("ESB_TEST_DOCKER_NETWORK"),
            registry: var("ESB_TEST_REGISTRY"),
            registry_tls: var("ESB_TEST_REGISTRY_TLS"),
            registry_ca: var("ESB_TEST_REGISTRY_CA"),
            worker_image: var("ESB_TEST_WORKER_IMAGE"),
            cni_bin_dir: var("ESB_TEST_CNI_BIN_DIR").unwrap_or_else(|| "/usr/lib/cni".into()),
        }
    }
}

/// Whether real-daemon tests must run (and so fail when a daemon is missing).
pub fn real_daemons_required() -> bool {
    matches!(var(REQUIRE_ENV).as_deref(), Some("1" | "true"))
}

/// Returns the dev env when `present` holds for it; otherwise skips (prints why) or, when
/// real daemons are required, panics so CI cannot silently skip a tier.
pub fn require(what: &str, present: impl Fn(&DevEnv) -> bool) -> Option<DevEnv> {
    let env = DevEnv::from_env();
    if present(&env) {
        return Some(env);
    }
    assert!(
        !real_daemons_required(),
        "{what} is required ({REQUIRE_ENV}=1) but its ESB_TEST_* coordinates are not set; run `scripts/dev-env up` and source .dev/env.sh"
    );
    eprintln!("skipping: {what} not configured (run scripts/dev-env up; source .dev/env.sh)");
    None
}

/// The private containerd + registry + worker image, or skip.
pub fn containerd() -> Option<DevEnv> {
    require("containerd", |e| {
        e.containerd_socket.is_some() && e.registry.is_some() && e.worker_image.is_some()
    })
}

/// The private dockerd + registry + worker image, or skip.
pub fn docker() -> Option<DevEnv> {
    require("docker", |e| {
        e.docker_host.is_some() && e.docker_network.is_some() && e.worker_image.is_some()
    })
}

/// Backend-common settings of a test runtime: identity `brand`/`env_name`, the dev env's plain
/// HTTP registry as default (insecure, pull if not present), default worker limits, 1 MiB logs.
pub fn common_settings(
    env: &DevEnv,
    brand: &str,
    env_name: &str,
    state_dir: PathBuf,
) -> CommonSettings {
    CommonSettings {
        identity: Identity::new(brand, env_name),
        registry: RegistrySettings {
            default_registry: env.registry.clone().unwrap_or_default(),
            insecure: true,
            ca_path: None,
            ca_only: false,
            pull_policy: PullPolicy::IfNotPresent,
            // Backend tests also pull from the TLS registry; the allow-list has its own tests.
            allowed: esb_runtime::image_ref::AllowedRegistries::Any,
            pull_timeout: esb_runtime::settings::DEFAULT_PULL_TIMEOUT,
            max_image_bytes: esb_runtime::settings::DEFAULT_MAX_IMAGE_BYTES,
        },
        worker: WorkerDefaults::default(),
        state_dir,
        worker_log_max_bytes: 1024 * 1024,
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}
