//! gRPC server settings: listen addresses, TLS/mTLS, token, limits, timeouts, shutdown.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use esb_server::StandbySettings;
use esb_server::{
    ConnSettings, InvokeSettings, MutualTls, OwnerMap, ServerSettings, ShutdownPolicy, TlsSettings,
};

use super::common::require_file;
use super::env;
use super::{ConfigError, Vars};

const MIB: u64 = 1024 * 1024;
/// The decode limit never drops below this by default (SPEC §4: ≥ 12 MiB).
const MIN_DEFAULT_GRPC_BYTES: u64 = 12 * MIB;
/// Room for headers and framing on top of an invoke body.
const GRPC_OVERHEAD: u64 = 2 * MIB;
const MAX_TOKEN_LEN: usize = 4096;

pub fn load(
    v: &Vars<'_>,
    state_dir: &Path,
    notes: &mut Vec<String>,
) -> Result<ServerSettings, ConfigError> {
    let tls = tls(v)?;
    // Review L6: plaintext gRPC (no client authentication) and the unauthenticated metrics
    // endpoint listen on loopback unless an address is set explicitly.
    let listen_ip = match v.opt_ip(env::AGENT_LISTEN_ADDR)? {
        Some(ip) => ip,
        None if tls == TlsSettings::Disabled => {
            notes.push(
                "plaintext gRPC listens on 127.0.0.1 only; set AGENT_LISTEN_ADDR to expose it"
                    .to_string(),
            );
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let port = v.u64_in(env::PORT, 50051, 0, 65535)? as u16;
    let metrics_ip = v
        .opt_ip(env::AGENT_METRICS_LISTEN_ADDR)?
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let metrics_addr = match v.raw(env::AGENT_METRICS_PORT)? {
        Some(s) if matches!(s.to_ascii_lowercase().as_str(), "off" | "disabled" | "none") => None,
        Some(s) => match s.parse::<u16>() {
            Ok(p) => Some(SocketAddr::new(metrics_ip, p)),
            Err(_) => {
                return Err(v.bad(
                    env::AGENT_METRICS_PORT,
                    &s,
                    "a port from 0 to 65535, or off",
                ));
            }
        },
        None => Some(SocketAddr::new(metrics_ip, 9091)),
    };
    if let Some(m) = metrics_addr
        && m.port() != 0
        && m.port() == port
        && m.ip() == listen_ip
    {
        return Err(ConfigError::new(
            env::AGENT_METRICS_PORT,
            format!("{} is also the gRPC PORT; pick another port", m.port()),
        ));
    }

    let invoke_max = v.u64_in(env::AGENT_INVOKE_MAX_RESPONSE_SIZE, 10 * MIB, 1, 1024 * MIB)?;
    let default_limit = (invoke_max + GRPC_OVERHEAD).max(MIN_DEFAULT_GRPC_BYTES);
    let max_request = v.u64_in(
        env::AGENT_GRPC_MAX_REQUEST_BYTES,
        default_limit,
        64 * 1024,
        2048 * MIB,
    )?;
    let max_response = v.u64_in(
        env::AGENT_GRPC_MAX_RESPONSE_BYTES,
        default_limit,
        64 * 1024,
        2048 * MIB,
    )?;
    // Payloads up to the invoke limit must be accepted, and such bodies returned (SPEC §4).
    for (var, limit) in [
        (env::AGENT_GRPC_MAX_REQUEST_BYTES, max_request),
        (env::AGENT_GRPC_MAX_RESPONSE_BYTES, max_response),
    ] {
        if limit < invoke_max {
            return Err(ConfigError::new(
                var,
                format!(
                    "{limit} is below AGENT_INVOKE_MAX_RESPONSE_SIZE ({invoke_max}); raise it or lower that limit"
                ),
            ));
        }
    }

    Ok(ServerSettings {
        listen_addr: SocketAddr::new(listen_ip, port),
        metrics_addr,
        tls,
        auth_token: token(v, notes)?,
        reflection: v.bool(env::AGENT_GRPC_REFLECTION, false)?,
        max_request_bytes: usize::try_from(max_request).unwrap_or(usize::MAX),
        max_response_bytes: usize::try_from(max_response).unwrap_or(usize::MAX),
        invoke: InvokeSettings {
            max_response_bytes: invoke_max,
            default_timeout: v.duration(
                env::AGENT_INVOKE_DEFAULT_TIMEOUT,
                Duration::from_secs(30),
                Duration::from_millis(100),
            )?,
        },
        state_dir: state_dir.to_path_buf(),
        drain_timeout: v.duration(
            env::AGENT_DRAIN_TIMEOUT,
            Duration::from_secs(20),
            Duration::ZERO,
        )?,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        shutdown_policy: v.choice(
            env::AGENT_SHUTDOWN_POLICY,
            ShutdownPolicy::Keep,
            &[
                ("keep", ShutdownPolicy::Keep),
                ("destroy", ShutdownPolicy::Destroy),
            ],
        )?,
        gc_interval: v.duration(
            env::AGENT_GC_INTERVAL,
            Duration::from_secs(60),
            Duration::from_secs(1),
        )?,
        health_interval: v.duration(
            env::AGENT_HEALTH_INTERVAL,
            Duration::from_secs(5),
            Duration::from_millis(100),
        )?,
        ensure_ready_timeout: ready_timeout(v)?,
        // Filled in from the worker defaults and the host by `admission::load`.
        admission: Default::default(),
        conn: conn(v)?,
        standby: standby(v)?,
    })
}

/// `AGENT_STANDBY_*` (issue 9 §3).
fn standby(v: &Vars<'_>) -> Result<StandbySettings, ConfigError> {
    let d = StandbySettings::default();
    let max = v.u64_in(env::AGENT_STANDBY_MAX, d.max.into(), 0, 4096)? as u32;
    let per_spec = v.u64_in(env::AGENT_STANDBY_PER_SPEC, d.per_spec.into(), 0, 64)? as u32;
    if per_spec > max {
        return Err(ConfigError::new(
            env::AGENT_STANDBY_PER_SPEC,
            format!("{per_spec} is above AGENT_STANDBY_MAX ({max})"),
        ));
    }
    Ok(StandbySettings {
        per_spec,
        ttl: v.duration(env::AGENT_STANDBY_TTL, d.ttl, Duration::from_secs(1))?,
        max,
    })
}

/// Listener bounds that hold before authentication (review H6).
fn conn(v: &Vars<'_>) -> Result<ConnSettings, ConfigError> {
    let d = ConnSettings::default();
    let keepalive = match v.raw(env::AGENT_GRPC_KEEPALIVE_INTERVAL)? {
        Some(s) if s.eq_ignore_ascii_case("off") => None,
        Some(_) => Some(v.duration(
            env::AGENT_GRPC_KEEPALIVE_INTERVAL,
            Duration::from_secs(30),
            Duration::from_secs(1),
        )?),
        None => d.keepalive_interval,
    };
    Ok(ConnSettings {
        max_connections: v.u64_in(
            env::AGENT_MAX_CONNECTIONS,
            d.max_connections as u64,
            8,
            1_000_000,
        )? as usize,
        first_request_timeout: v.duration(
            env::AGENT_CONN_FIRST_REQUEST_TIMEOUT,
            d.first_request_timeout,
            Duration::from_millis(100),
        )?,
        max_concurrent_streams: v.u64_in(
            env::AGENT_GRPC_MAX_CONCURRENT_STREAMS,
            d.max_concurrent_streams.into(),
            1,
            65_536,
        )? as u32,
        keepalive_interval: keepalive,
        ..d
    })
}

/// `AGENT_ENSURE_READY_TIMEOUT`: 0 (no wait) up to 60 s; a longer wait would only hold a
/// gateway's Ensure hostage to a worker that never listens.
fn ready_timeout(v: &Vars<'_>) -> Result<Duration, ConfigError> {
    let var = env::AGENT_ENSURE_READY_TIMEOUT;
    let d = v.duration(var, Duration::from_secs(2), Duration::ZERO)?;
    if d > Duration::from_secs(60) {
        return Err(ConfigError::new(
            var,
            format!("{}ms is above the maximum of 60s", d.as_millis()),
        ));
    }
    Ok(d)
}

fn tls(v: &Vars<'_>) -> Result<TlsSettings, ConfigError> {
    let allowed: Vec<String> = v
        .raw(env::AGENT_GRPC_ALLOWED_CLIENTS)?
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if let Some(bad) = allowed
        .iter()
        .find(|a| a.chars().any(|c| c.is_control() || c.is_whitespace()))
    {
        return Err(v.bad(
            env::AGENT_GRPC_ALLOWED_CLIENTS,
            bad,
            "comma-separated identities without spaces",
        ));
    }
    let owner_map = match v.raw(env::AGENT_CLIENT_OWNER_MAP)? {
        Some(s) => {
            OwnerMap::parse(&s).map_err(|e| ConfigError::new(env::AGENT_CLIENT_OWNER_MAP, e))?
        }
        None => OwnerMap::default(),
    };
    let allow_any_client = v.bool(env::AGENT_GRPC_ALLOW_ANY_CLIENT_CERT, false)?;
    let reload_interval = reload_interval(v)?;
    let crl_path = v.opt_abs_path(env::AGENT_GRPC_CRL_PATH)?;
    if v.bool(env::AGENT_GRPC_TLS_DISABLED, false)? {
        for (var, set) in [
            (env::AGENT_GRPC_ALLOWED_CLIENTS, !allowed.is_empty()),
            (env::AGENT_CLIENT_OWNER_MAP, !owner_map.is_empty()),
            (env::AGENT_GRPC_CRL_PATH, crl_path.is_some()),
        ] {
            if set {
                return Err(ConfigError::new(
                    var,
                    "needs client certificates, but AGENT_GRPC_TLS_DISABLED turns TLS off",
                ));
            }
        }
        return Ok(TlsSettings::Disabled);
    }
    let file = |var, default| -> Result<PathBuf, ConfigError> {
        let p = v.abs_path(var, default)?;
        require_file(var, &p)?;
        Ok(p)
    };
    let mut m = MutualTls::new(
        file(env::AGENT_GRPC_CERT_PATH, "/app/config/ssl/server.crt")?,
        file(env::AGENT_GRPC_KEY_PATH, "/app/config/ssl/server.key")?,
        file(
            env::AGENT_GRPC_CA_CERT_PATH,
            "/usr/local/share/ca-certificates/rootCA.crt",
        )?,
    );
    if let Some(p) = &crl_path {
        require_file(env::AGENT_GRPC_CRL_PATH, p)?;
    }
    // M2: any certificate of the (often deployment-wide) CA is not an authorization.
    if allowed.is_empty() && owner_map.is_empty() && !allow_any_client {
        return Err(ConfigError::new(
            env::AGENT_GRPC_ALLOWED_CLIENTS,
            "is required with mTLS: set it or AGENT_CLIENT_OWNER_MAP, or set AGENT_GRPC_ALLOW_ANY_CLIENT_CERT=1 to admit every certificate of AGENT_GRPC_CA_CERT_PATH",
        ));
    }
    m.crl_path = crl_path;
    m.allowed_client_identities = allowed;
    m.owner_map = owner_map;
    m.allow_any_client = allow_any_client;
    m.reload_interval = reload_interval;
    Ok(TlsSettings::Mutual(m))
}

/// `AGENT_GRPC_TLS_RELOAD_INTERVAL`: a duration (at least 100 ms), or `0`/`off` for SIGHUP only.
fn reload_interval(v: &Vars<'_>) -> Result<Option<Duration>, ConfigError> {
    let var = env::AGENT_GRPC_TLS_RELOAD_INTERVAL;
    match v.raw(var)?.map(|s| s.to_ascii_lowercase()).as_deref() {
        Some("off" | "0" | "0s") => Ok(None),
        _ => Ok(Some(v.duration(
            var,
            Duration::from_secs(5),
            Duration::from_millis(100),
        )?)),
    }
}

/// The bearer token from `AGENT_AUTH_TOKEN` or `AGENT_AUTH_TOKEN_FILE` (not both).
fn token(v: &Vars<'_>, notes: &mut Vec<String>) -> Result<Option<String>, ConfigError> {
    let direct = v.raw(env::AGENT_AUTH_TOKEN)?;
    let file = v.opt_abs_path(env::AGENT_AUTH_TOKEN_FILE)?;
    let (var, token) = match (direct, file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                env::AGENT_AUTH_TOKEN_FILE,
                "and AGENT_AUTH_TOKEN are both set; set only one",
            ));
        }
        (Some(t), None) => (env::AGENT_AUTH_TOKEN, t),
        (None, Some(p)) => {
            warn_if_shared(&p, notes);
            let text = std::fs::read_to_string(&p).map_err(|e| {
                ConfigError::new(
                    env::AGENT_AUTH_TOKEN_FILE,
                    format!("cannot read {}: {e}", p.display()),
                )
            })?;
            (env::AGENT_AUTH_TOKEN_FILE, text.trim().to_string())
        }
    };
    // The token travels in an HTTP header: visible ASCII only.
    if token.is_empty()
        || token.len() > MAX_TOKEN_LEN
        || !token.bytes().all(|b| (0x21..=0x7e).contains(&b))
    {
        return Err(ConfigError::new(
            var,
            format!("the token must be 1-{MAX_TOKEN_LEN} visible ASCII characters without spaces"),
        ));
    }
    Ok(Some(token))
}

/// A token file others can read is a leaked secret waiting to happen: say so.
fn warn_if_shared(path: &Path, notes: &mut Vec<String>) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        notes.push(format!(
            "AGENT_AUTH_TOKEN_FILE {} is readable by group or others; chmod 600 it",
            path.display()
        ));
    }
}
