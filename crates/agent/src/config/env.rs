//! Every setting's environment variable and CLI flag, in one table (SPEC §6 names are compat).

/// One setting: its env var, its flag (`--<flag>`), whether its value is a secret, and help.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub env: &'static str,
    pub flag: &'static str,
    pub secret: bool,
    pub help: &'static str,
}

macro_rules! settings {
    ($($konst:ident = $env:literal, $flag:literal, $secret:literal, $help:literal;)*) => {
        $(pub const $konst: &str = $env;)*
        /// All settings, in documentation order.
        pub const ALL: &[Setting] = &[
            $(Setting { env: $env, flag: $flag, secret: $secret, help: $help },)*
        ];
    };
}

settings! {
    // identity
    ENV = "ENV", "env", false, "Environment name used in labels and worker names (required)";
    ESB_BRAND_SLUG = "ESB_BRAND_SLUG", "brand-slug", false, "Brand slug (first source of brand resolution)";
    PROJECT_NAME = "PROJECT_NAME", "project-name", false, "Project name (second source of brand resolution)";
    CONTAINERS_NETWORK = "CONTAINERS_NETWORK", "containers-network", false, "Docker network workers join; third brand source";
    AGENT_RUNTIME = "AGENT_RUNTIME", "runtime", false, "Backend: docker or containerd";
    // server
    PORT = "PORT", "port", false, "gRPC port (0 = any free port)";
    AGENT_LISTEN_ADDR = "AGENT_LISTEN_ADDR", "listen-addr", false, "gRPC bind IP address";
    AGENT_METRICS_PORT = "AGENT_METRICS_PORT", "metrics-port", false, "Prometheus port (0 = any free port, off = disabled)";
    AGENT_METRICS_LISTEN_ADDR = "AGENT_METRICS_LISTEN_ADDR", "metrics-listen-addr", false, "Prometheus bind IP address (default: the gRPC one)";
    AGENT_LOG_LEVEL = "AGENT_LOG_LEVEL", "log-level", false, "Log level or tracing filter directive";
    LOG_LEVEL = "LOG_LEVEL", "log-level-compat", false, "Log level when AGENT_LOG_LEVEL is unset";
    AGENT_LOG_FORMAT = "AGENT_LOG_FORMAT", "log-format", false, "Log format: text or json";
    AGENT_GRPC_TLS_DISABLED = "AGENT_GRPC_TLS_DISABLED", "grpc-tls-disabled", false, "1/true serves plaintext gRPC (insecure)";
    AGENT_GRPC_CERT_PATH = "AGENT_GRPC_CERT_PATH", "grpc-cert-path", false, "Server certificate (PEM)";
    AGENT_GRPC_KEY_PATH = "AGENT_GRPC_KEY_PATH", "grpc-key-path", false, "Server private key (PEM)";
    AGENT_GRPC_CA_CERT_PATH = "AGENT_GRPC_CA_CERT_PATH", "grpc-ca-cert-path", false, "CA that client certificates must chain to";
    AGENT_GRPC_ALLOWED_CLIENTS = "AGENT_GRPC_ALLOWED_CLIENTS", "grpc-allowed-clients", false, "Comma-separated client identities (DNS/URI SAN; CN only without such SANs) allowed to call";
    AGENT_CLIENT_OWNER_MAP = "AGENT_CLIENT_OWNER_MAP", "client-owner-map", false, "Client identity to allowed owner ids: id=owner|prefix*,id2=*";
    AGENT_GRPC_ALLOW_ANY_CLIENT_CERT = "AGENT_GRPC_ALLOW_ANY_CLIENT_CERT", "grpc-allow-any-client-cert", false, "1/true admits any certificate of the CA (no allow-list)";
    AGENT_GRPC_CRL_PATH = "AGENT_GRPC_CRL_PATH", "grpc-crl-path", false, "PEM CRLs checked for client certificates";
    AGENT_GRPC_TLS_RELOAD_INTERVAL = "AGENT_GRPC_TLS_RELOAD_INTERVAL", "grpc-tls-reload-interval", false, "Period of the TLS file change check (off = SIGHUP only)";
    AGENT_AUTH_TOKEN = "AGENT_AUTH_TOKEN", "auth-token", true, "Bearer token required from callers (secret)";
    AGENT_AUTH_TOKEN_FILE = "AGENT_AUTH_TOKEN_FILE", "auth-token-file", false, "File holding the bearer token";
    AGENT_GRPC_REFLECTION = "AGENT_GRPC_REFLECTION", "grpc-reflection", false, "1/true enables gRPC reflection";
    AGENT_GRPC_MAX_REQUEST_BYTES = "AGENT_GRPC_MAX_REQUEST_BYTES", "grpc-max-request-bytes", false, "Largest accepted gRPC request, bytes";
    AGENT_GRPC_MAX_RESPONSE_BYTES = "AGENT_GRPC_MAX_RESPONSE_BYTES", "grpc-max-response-bytes", false, "Largest gRPC response, bytes";
    AGENT_INVOKE_MAX_RESPONSE_SIZE = "AGENT_INVOKE_MAX_RESPONSE_SIZE", "invoke-max-response-size", false, "InvokeWorker response body limit, bytes";
    AGENT_INVOKE_DEFAULT_TIMEOUT = "AGENT_INVOKE_DEFAULT_TIMEOUT", "invoke-default-timeout", false, "InvokeWorker timeout when timeout_ms <= 0";
    AGENT_DRAIN_TIMEOUT = "AGENT_DRAIN_TIMEOUT", "drain-timeout", false, "How long in-flight RPCs may finish after a shutdown signal";
    AGENT_SHUTDOWN_POLICY = "AGENT_SHUTDOWN_POLICY", "shutdown-policy", false, "keep (workers survive the agent) or destroy";
    AGENT_GC_INTERVAL = "AGENT_GC_INTERVAL", "gc-interval", false, "Period of the background GC pass";
    AGENT_HEALTH_INTERVAL = "AGENT_HEALTH_INTERVAL", "health-interval", false, "Period of the runtime liveness probe";
    AGENT_ENSURE_READY_TIMEOUT = "AGENT_ENSURE_READY_TIMEOUT", "ensure-ready-timeout", false, "How long Ensure/Resume wait for the worker to accept TCP connections (0 = no wait)";
    AGENT_MAX_CONNECTIONS = "AGENT_MAX_CONNECTIONS", "max-connections", false, "Open connections to the gRPC and metrics ports together; more are closed at accept";
    AGENT_CONN_FIRST_REQUEST_TIMEOUT = "AGENT_CONN_FIRST_REQUEST_TIMEOUT", "conn-first-request-timeout", false, "A connection that has not started a request by then (TLS handshake included) is closed";
    AGENT_GRPC_MAX_CONCURRENT_STREAMS = "AGENT_GRPC_MAX_CONCURRENT_STREAMS", "grpc-max-concurrent-streams", false, "Concurrent RPCs per gRPC connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)";
    AGENT_GRPC_KEEPALIVE_INTERVAL = "AGENT_GRPC_KEEPALIVE_INTERVAL", "grpc-keepalive-interval", false, "HTTP/2 PING interval on gRPC connections; a PING unanswered for 10 s closes it (off = none)";
    AGENT_STATE_DIR = "AGENT_STATE_DIR", "state-dir", false, "Durable agent state directory";
    // workers
    AGENT_WORKER_MEMORY_MIB = "AGENT_WORKER_MEMORY_MIB", "worker-memory-mib", false, "Default worker memory limit, MiB";
    AGENT_WORKER_CPU_MILLIS = "AGENT_WORKER_CPU_MILLIS", "worker-cpu-millis", false, "Worker CPU quota, millicores, or auto (proportional to memory)";
    AGENT_WORKER_CPU_MAX_MILLIS = "AGENT_WORKER_CPU_MAX_MILLIS", "worker-cpu-max-millis", false, "Upper bound of the proportional CPU quota, millicores";
    AGENT_WORKER_PIDS_LIMIT = "AGENT_WORKER_PIDS_LIMIT", "worker-pids-limit", false, "Worker pids limit";
    AGENT_WORKER_OOM_SCORE_ADJ = "AGENT_WORKER_OOM_SCORE_ADJ", "worker-oom-score-adj", false, "oom_score_adj of worker processes (0 to 1000)";
    AGENT_WORKER_USER = "AGENT_WORKER_USER", "worker-user", false, "uid:gid that replaces root for images running as root";
    AGENT_WORKER_MEMORY_MAX_MIB = "AGENT_WORKER_MEMORY_MAX_MIB", "worker-memory-max-mib", false, "Largest AWS_LAMBDA_FUNCTION_MEMORY_SIZE a request may ask for, MiB (at least 128)";
    // capacity
    AGENT_MAX_WORKERS = "AGENT_MAX_WORKERS", "max-workers", false, "Workers on this node: auto (host memory / default worker memory), unlimited or a number";
    AGENT_MAX_WORKERS_PER_OWNER = "AGENT_MAX_WORKERS_PER_OWNER", "max-workers-per-owner", false, "Workers of one owner id: unlimited (default) or a number";
    AGENT_MEMORY_BUDGET = "AGENT_MEMORY_BUDGET", "memory-budget", false, "Sum of the workers' memory limits: auto (90% of host memory), unlimited, MiB or N%";
    AGENT_MAX_CONCURRENT_ENSURES = "AGENT_MAX_CONCURRENT_ENSURES", "max-concurrent-ensures", false, "Ensures running in the runtime at once; more wait in line (default 4 per CPU, 8 to 256)";
    // standby workers
    AGENT_STANDBY_PER_SPEC = "AGENT_STANDBY_PER_SPEC", "standby-per-spec", false, "Standby workers kept per spec after an Ensure (0 = off)";
    AGENT_STANDBY_TTL = "AGENT_STANDBY_TTL", "standby-ttl", false, "A spec not ensured for this long loses its standby workers";
    AGENT_STANDBY_MAX = "AGENT_STANDBY_MAX", "standby-max", false, "Standby workers on this node at most (0 = none, SetStandby refused)";
    AGENT_WORKER_LOG_MAX_BYTES = "AGENT_WORKER_LOG_MAX_BYTES", "worker-log-max-bytes", false, "Per-worker log bound on disk (live + rotated), bytes";
    // registry
    CONTAINER_REGISTRY = "CONTAINER_REGISTRY", "container-registry", false, "Registry for image references without a host";
    CONTAINER_REGISTRY_INSECURE = "CONTAINER_REGISTRY_INSECURE", "container-registry-insecure", false, "1/true/yes/on: plain HTTP to registries";
    CONTAINER_REGISTRY_CA_PATH = "CONTAINER_REGISTRY_CA_PATH", "container-registry-ca-path", false, "Extra CA (PEM) trusted for registry HTTPS";
    CONTAINER_REGISTRY_CA_ONLY = "CONTAINER_REGISTRY_CA_ONLY", "container-registry-ca-only", false, "Trust only CONTAINER_REGISTRY_CA_PATH, not system roots";
    CONTAINER_REGISTRY_ALLOWED = "CONTAINER_REGISTRY_ALLOWED", "container-registry-allowed", false, "Registries image references may name: comma-separated hosts, or * for any (default: CONTAINER_REGISTRY only)";
    IMAGE_PULL_TIMEOUT = "IMAGE_PULL_TIMEOUT", "image-pull-timeout", false, "Bound of one whole image pull";
    IMAGE_MAX_BYTES = "IMAGE_MAX_BYTES", "image-max-bytes", false, "Largest image (config + compressed layers) the containerd backend pulls, bytes";
    IMAGE_PULL_POLICY = "IMAGE_PULL_POLICY", "image-pull-policy", false, "if-not-present or always";
    // containerd
    CONTAINERD_SOCKET = "CONTAINERD_SOCKET", "containerd-socket", false, "containerd socket";
    CONTAINERD_RUNTIME = "CONTAINERD_RUNTIME", "containerd-runtime", false, "Runtime name for new containers";
    CONTAINERD_SNAPSHOTTER = "CONTAINERD_SNAPSHOTTER", "containerd-snapshotter", false, "Snapshotter";
    // CNI
    CNI_CONF_DIR = "CNI_CONF_DIR", "cni-conf-dir", false, "CNI configuration directory";
    CNI_BIN_DIR = "CNI_BIN_DIR", "cni-bin-dir", false, "CNI plugin directory";
    CNI_CONF_FILE = "CNI_CONF_FILE", "cni-conf-file", false, "Generated conflist (relative = inside CNI_CONF_DIR)";
    CNI_SUBNET = "CNI_SUBNET", "cni-subnet", false, "Worker subnet (IPv4 CIDR); derived when unset";
    CNI_BRIDGE = "CNI_BRIDGE", "cni-bridge", false, "Bridge interface name; derived when unset";
    CNI_GW_IP = "CNI_GW_IP", "cni-gw-ip", false, "Gateway IP (default: subnet network + 1)";
    CNI_DNS_SERVER = "CNI_DNS_SERVER", "cni-dns-server", false, "Nameserver for workers (default: the gateway)";
    CNI_NET_DIR = "CNI_NET_DIR", "cni-net-dir", false, "host-local IPAM data directory";
    CNI_IP_MASQ = "CNI_IP_MASQ", "cni-ip-masq", false, "Masquerade worker traffic leaving the bridge";
    CNI_IDENTITY_FILE = "CNI_IDENTITY_FILE", "cni-identity-file", false, "Identity file read by the gateway (esb-cni.env)";
    CNI_PLUGIN_TIMEOUT = "CNI_PLUGIN_TIMEOUT", "cni-plugin-timeout", false, "Upper bound for one CNI plugin run";
    AGENT_WORKER_DENY_CIDRS = "AGENT_WORKER_DENY_CIDRS", "worker-deny-cidrs", false, "IPv4 CIDRs workers may never reach through the node (comma-separated; none = empty)";
    AGENT_WORKER_EGRESS = "AGENT_WORKER_EGRESS", "worker-egress", false, "Worker connections beyond the node: all (minus the denied CIDRs) or none";
    // docker
    DOCKER_HOST = "DOCKER_HOST", "docker-host", false, "Docker Engine endpoint (unix://, tcp://, http://)";
}

/// The setting named `env`, if any.
pub fn lookup(env: &str) -> Option<&'static Setting> {
    ALL.iter().find(|s| s.env == env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_and_flags_are_unique() {
        let envs: HashSet<_> = ALL.iter().map(|s| s.env).collect();
        let flags: HashSet<_> = ALL.iter().map(|s| s.flag).collect();
        assert_eq!(envs.len(), ALL.len());
        assert_eq!(flags.len(), ALL.len());
        assert!(lookup(AGENT_AUTH_TOKEN).is_some_and(|s| s.secret));
    }
}
