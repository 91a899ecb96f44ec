//! Server settings, filled in by the agent's config module.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::authz::OwnerMap;

const MIB: u64 = 1024 * 1024;

/// TLS for the gRPC port (SPEC §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSettings {
    /// Plaintext; only when explicitly disabled (a warning is logged and reported).
    Disabled,
    /// mTLS: server cert/key, client certs verified against `client_ca` only.
    Mutual(MutualTls),
}

/// mTLS material and client authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutualTls {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub client_ca_path: PathBuf,
    /// PEM CRLs checked for client certificates (every CA of a client chain needs one).
    pub crl_path: Option<PathBuf>,
    /// When non-empty, a client certificate must carry one of these identities
    /// (a DNS/URI SAN, or the subject CN of a certificate without such SANs).
    pub allowed_client_identities: Vec<String>,
    /// Client identity → allowed owner ids; its identities are the allow-list when
    /// `allowed_client_identities` is empty.
    pub owner_map: OwnerMap,
    /// Explicit waiver: any certificate of the CA may connect (no allow-list, no map).
    pub allow_any_client: bool,
    /// Period of the TLS file change check; `None`: only SIGHUP reloads.
    pub reload_interval: Option<Duration>,
}

impl MutualTls {
    /// The given files, no allow-list or waiver (set one), a 5 s reload check.
    pub fn new(cert_path: PathBuf, key_path: PathBuf, client_ca_path: PathBuf) -> Self {
        Self {
            cert_path,
            key_path,
            client_ca_path,
            crl_path: None,
            allowed_client_identities: Vec::new(),
            owner_map: OwnerMap::default(),
            allow_any_client: false,
            reload_interval: Some(Duration::from_secs(5)),
        }
    }
}

/// InvokeWorker proxy settings (SPEC §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvokeSettings {
    /// Body limit, bytes (`AGENT_INVOKE_MAX_RESPONSE_SIZE`).
    pub max_response_bytes: u64,
    /// Used when `timeout_ms` <= 0.
    pub default_timeout: Duration,
}

impl Default for InvokeSettings {
    fn default() -> Self {
        Self {
            max_response_bytes: 10 * 1024 * 1024,
            default_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything the server needs besides the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// gRPC bind address (`AGENT_LISTEN_ADDR` + `PORT`).
    pub listen_addr: SocketAddr,
    /// Prometheus bind address (`AGENT_METRICS_PORT`); `None` disables the endpoint.
    pub metrics_addr: Option<SocketAddr>,
    pub tls: TlsSettings,
    /// Optional bearer token required in `authorization: Bearer <token>`. A secret.
    pub auth_token: Option<String>,
    pub reflection: bool,
    /// gRPC max decode (request) size, bytes; at least the invoke limit + 2 MiB by default.
    pub max_request_bytes: usize,
    /// gRPC max encode (response) size, bytes.
    pub max_response_bytes: usize,
    pub invoke: InvokeSettings,
    /// Directory for durable server state (last-used times).
    pub state_dir: PathBuf,
    /// How long in-flight RPCs may run after shutdown starts.
    pub drain_timeout: Duration,
    /// Agent version reported by GetCapabilities.
    pub agent_version: String,
    /// What happens to managed workers when the agent stops.
    pub shutdown_policy: ShutdownPolicy,
    /// Period of the background GC / IPAM reconcile pass.
    pub gc_interval: Duration,
    /// Period of the runtime liveness probe that drives gRPC health.
    pub health_interval: Duration,
    /// How long Ensure/Resume wait for the worker to accept TCP connections; zero = no wait.
    pub ensure_ready_timeout: Duration,
    /// Capacity admission of Ensures (worker caps, memory budget, concurrency bound).
    pub admission: AdmissionSettings,
    /// Connection and stream bounds of the listeners (H6).
    pub conn: ConnSettings,
    /// Standby workers (`AGENT_STANDBY_*`).
    pub standby: StandbySettings,
}

/// Bounds that hold before any authentication (security review H6, L6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnSettings {
    /// Open connections, node-wide, over the gRPC and metrics ports together.
    pub max_connections: usize,
    /// Concurrent TLS handshakes in progress.
    pub max_tls_handshakes: usize,
    /// A connection must start its first request within this time after accept (TLS
    /// handshake included); a metrics connection is closed after it in any case.
    pub first_request_timeout: Duration,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` advertised to gRPC clients.
    pub max_concurrent_streams: u32,
    /// HTTP/2 PING interval on gRPC connections (`None`: off).
    pub keepalive_interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Concurrent gRPC health `Watch` streams.
    pub max_health_watchers: usize,
}

impl Default for ConnSettings {
    fn default() -> Self {
        Self {
            max_connections: 512,
            max_tls_handshakes: 64,
            first_request_timeout: Duration::from_secs(10),
            max_concurrent_streams: 256,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(10),
            max_health_watchers: 64,
        }
    }
}

/// What the agent does with its workers on SIGTERM/SIGINT (SPEC §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownPolicy {
    /// Leave workers running (default): an agent upgrade does not kill functions.
    Keep,
    /// Destroy every managed worker after the server stopped accepting (old behaviour).
    Destroy,
}

/// The bounds; `Default` admits everything (in-process tests), the agent fills real ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionSettings {
    /// Workers on this node (`AGENT_MAX_WORKERS`).
    pub max_workers: u64,
    /// Workers of one owner (`AGENT_MAX_WORKERS_PER_OWNER`).
    pub max_workers_per_owner: u64,
    /// Sum of the workers' memory limits (`AGENT_MEMORY_BUDGET`), bytes.
    pub memory_budget_bytes: u64,
    /// A worker's memory when the request does not say (`AGENT_WORKER_MEMORY_MIB`), bytes.
    pub default_memory_bytes: u64,
    /// Largest memory a request may ask for (`AGENT_WORKER_MEMORY_MAX_MIB`), bytes.
    pub memory_max_bytes: u64,
    /// Ensures running in the runtime at once (`AGENT_MAX_CONCURRENT_ENSURES`).
    pub max_concurrent_ensures: usize,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        Self {
            max_workers: u64::MAX,
            max_workers_per_owner: u64::MAX,
            memory_budget_bytes: u64::MAX,
            default_memory_bytes: 512 * MIB,
            memory_max_bytes: 10240 * MIB,
            max_concurrent_ensures: 64,
        }
    }
}

/// `AGENT_STANDBY_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbySettings {
    /// Standbys kept per spec after an Ensure (`AGENT_STANDBY_PER_SPEC`; 0 = off).
    pub per_spec: u32,
    /// A spec not ensured for this long loses its standbys (`AGENT_STANDBY_TTL`).
    pub ttl: Duration,
    /// Node-wide cap on standbys, ready and being created (`AGENT_STANDBY_MAX`).
    pub max: u32,
}

impl Default for StandbySettings {
    fn default() -> Self {
        Self {
            per_spec: 0,
            ttl: Duration::from_secs(600),
            max: 16,
        }
    }
}
