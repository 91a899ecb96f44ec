//! gRPC server settings: listen addresses, TLS/mTLS, token, limits, timeouts, shutdown.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use esb_server::{InvokeSettings, ServerSettings, ShutdownPolicy, TlsSettings};

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
    let listen_ip = v
        .opt_ip(env::AGENT_LISTEN_ADDR)?
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let port = v.u64_in(env::PORT, 50051, 0, 65535)? as u16;
    let metrics_ip = v
        .opt_ip(env::AGENT_METRICS_LISTEN_ADDR)?
        .unwrap_or(listen_ip);
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

    let tls = tls(v)?;
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
        conn: esb_server::ConnSettings::default(),
    })
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
    if v.bool(env::AGENT_GRPC_TLS_DISABLED, false)? {
        if !allowed.is_empty() {
            return Err(ConfigError::new(
                env::AGENT_GRPC_ALLOWED_CLIENTS,
                "needs client certificates, but AGENT_GRPC_TLS_DISABLED turns TLS off",
            ));
        }
        return Ok(TlsSettings::Disabled);
    }
    let file = |var, default| -> Result<PathBuf, ConfigError> {
        let p = v.abs_path(var, default)?;
        require_file(var, &p)?;
        Ok(p)
    };
    Ok(TlsSettings::Mutual {
        cert_path: file(env::AGENT_GRPC_CERT_PATH, "/app/config/ssl/server.crt")?,
        key_path: file(env::AGENT_GRPC_KEY_PATH, "/app/config/ssl/server.key")?,
        client_ca_path: file(
            env::AGENT_GRPC_CA_CERT_PATH,
            "/usr/local/share/ca-certificates/rootCA.crt",
        )?,
        allowed_client_identities: allowed,
    })
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
