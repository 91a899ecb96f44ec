//! The agent's configuration (SPEC §6, P5-2): every setting read from one [`Source`] (env,
//! flags layered on top), validated at start-up, assembled into the settings each layer takes.
//! A bad value is one [`ConfigError`] naming the variable and what it accepts.

mod admission;
mod cni;
mod common;
mod display;
pub mod env;
mod server;
mod source;
mod vars;

use esb_cni::CniSettings;
use esb_containerd::ContainerdSettings;
use esb_docker::DockerSettings;
use esb_runtime::identity::{BrandSources, Identity, resolve_brand};
use esb_runtime::settings::CommonSettings;
use esb_server::ServerSettings;

pub use display::render;
pub use source::{Layered, MapSource, ProcessEnv, Source};
pub use vars::Vars;

/// Longest brand slug: it becomes the containerd namespace and label prefixes.
const MAX_BRAND_LEN: usize = 63;
/// Longest ENV value.
const MAX_ENV_LEN: usize = 128;

/// A setting with a bad or missing value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    /// The env var at fault.
    pub var: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(var: &'static str, message: impl Into<String>) -> Self {
        Self {
            var,
            message: message.into(),
        }
    }
}

/// The chosen backend and its settings (built once; the size difference does not matter).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Docker(DockerSettings),
    Containerd {
        containerd: ContainerdSettings,
        cni: CniSettings,
    },
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Docker(_) => "docker",
            Backend::Containerd { .. } => "containerd",
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// A `tracing` filter directive, e.g. `info`.
    pub filter: String,
    pub format: LogFormat,
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub server: ServerSettings,
    pub common: CommonSettings,
    pub backend: Backend,
    pub logging: LogSettings,
    /// Warnings found while loading (logged once logging is up).
    pub notes: Vec<String>,
}

/// Reads, validates and derives the whole configuration. Reads the filesystem (TLS files,
/// token file, CNI configs) but changes nothing.
pub fn load(src: &dyn Source) -> Result<Config, ConfigError> {
    let v = Vars::new(src);
    let mut notes = Vec::new();
    // The backend decides which settings matter: read it first.
    let runtime = v.choice(
        env::AGENT_RUNTIME,
        "docker",
        &[("docker", "docker"), ("containerd", "containerd")],
    )?;
    let logging = load_logging(&v)?;
    let identity = load_identity(&v)?;
    let common = common::load(&v, identity.clone())?;
    let mut server = server::load(&v, &common.state_dir, &mut notes)?;
    server.admission = admission::load(&v, &common.worker, admission::HostFacts::probe())?;
    let backend = match runtime {
        "containerd" => {
            // SPEC §10: the worker firewall rejects every host port (not a list of the
            // agent's configured ports, which may be 0 = any), so no port is handed over here.
            let cni = cni::load(&v, &identity, &mut notes)?;
            Backend::Containerd {
                containerd: common::containerd(&v, &identity)?,
                cni,
            }
        }
        _ => Backend::Docker(common::docker(&v, &identity)?),
    };
    Ok(Config {
        server,
        common,
        backend,
        logging,
        notes,
    })
}

fn load_identity(v: &Vars<'_>) -> Result<Identity, ConfigError> {
    let env_name = v.raw(env::ENV)?.ok_or_else(|| {
        ConfigError::new(
            env::ENV,
            "is required: the environment name used in labels and worker names, e.g. dev or prod",
        )
    })?;
    if env_name.len() > MAX_ENV_LEN || env_name.chars().any(char::is_control) {
        return Err(v.bad(
            env::ENV,
            &env_name,
            &format!("at most {MAX_ENV_LEN} bytes without control characters"),
        ));
    }
    let sources = BrandSources {
        esb_brand_slug: v.raw(env::ESB_BRAND_SLUG)?,
        project_name: v.raw(env::PROJECT_NAME)?,
        containers_network: v.raw(env::CONTAINERS_NETWORK)?,
        env: Some(env_name.clone()),
    };
    let brand = resolve_brand(&sources)
        .map_err(|e| ConfigError::new(env::ESB_BRAND_SLUG, e.to_string()))?;
    if brand.len() > MAX_BRAND_LEN {
        return Err(ConfigError::new(
            env::ESB_BRAND_SLUG,
            format!(
                "the resolved brand slug {brand:?} is longer than {MAX_BRAND_LEN} characters; set a shorter ESB_BRAND_SLUG"
            ),
        ));
    }
    Ok(Identity::new(brand, env_name))
}

fn load_logging(v: &Vars<'_>) -> Result<LogSettings, ConfigError> {
    let (var, raw) = match v.raw(env::AGENT_LOG_LEVEL)? {
        Some(l) => (env::AGENT_LOG_LEVEL, l),
        None => (env::LOG_LEVEL, v.string(env::LOG_LEVEL, "info")?),
    };
    let filter = log_filter(&raw).ok_or_else(|| {
        v.bad(var, &raw, "trace, debug, info, warn, error, off, or a tracing filter such as info,esb_server=debug")
    })?;
    let format = v.choice(
        env::AGENT_LOG_FORMAT,
        LogFormat::Text,
        &[("text", LogFormat::Text), ("json", LogFormat::Json)],
    )?;
    Ok(LogSettings { filter, format })
}

/// A level name (any case; `warning` = `warn`) or a full filter directive.
fn log_filter(raw: &str) -> Option<String> {
    let lower = raw.to_ascii_lowercase();
    let level = match lower.as_str() {
        "warning" => "warn",
        l @ ("trace" | "debug" | "info" | "warn" | "error" | "off") => l,
        _ => {
            return tracing_subscriber::EnvFilter::try_new(raw)
                .ok()
                .filter(|_| raw.contains('='))
                .map(|_| raw.to_string());
        }
    };
    // DEBUG is for the agent; the HTTP/2 and TLS stacks stay quiet unless asked by directive.
    Some(match level {
        "trace" | "debug" => {
            format!("{level},h2=info,hyper=info,hyper_util=info,tower=info,rustls=info")
        }
        _ => level.to_string(),
    })
}

#[cfg(test)]
mod tests;
