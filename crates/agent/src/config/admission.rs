//! Capacity admission settings (review H3, M4; issue 9 §5): worker caps, the memory budget,
//! the largest memory a request may ask for, and the bound on concurrent Ensures. Defaults
//! derive from the host's memory and CPUs, so a node is protected without tuning.

use esb_runtime::settings::WorkerDefaults;
use esb_server::AdmissionSettings;

use super::env;
use super::{ConfigError, Vars};

const MIB: u64 = 1024 * 1024;
/// Lambda's smallest memory size.
const MIN_MIB: u64 = 128;
/// Default `AGENT_WORKER_MEMORY_MAX_MIB`: Lambda's largest size.
const DEFAULT_MAX_MIB: u64 = 10240;
/// Default `AGENT_MEMORY_BUDGET`, percent of the host's memory.
const DEFAULT_BUDGET_PERCENT: u64 = 90;

/// What the defaults are derived from; read from the host by [`HostFacts::probe`].
#[derive(Debug, Clone, Copy)]
pub struct HostFacts {
    /// `MemTotal` of /proc/meminfo, bytes; `None` when unreadable (then no memory-derived cap).
    pub memory_bytes: Option<u64>,
    pub cpus: u64,
}

impl HostFacts {
    pub fn probe() -> Self {
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| mem_total(&s));
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get() as u64);
        Self { memory_bytes, cpus }
    }
}

/// `MemTotal:  16337800 kB` → bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb = line.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    kb.checked_mul(1024)
}

pub fn load(
    v: &Vars<'_>,
    worker: &WorkerDefaults,
    host: HostFacts,
) -> Result<AdmissionSettings, ConfigError> {
    let default_mib = worker.memory_bytes / MIB;
    let max_mib = v.u64_in(
        env::AGENT_WORKER_MEMORY_MAX_MIB,
        DEFAULT_MAX_MIB.max(default_mib),
        MIN_MIB,
        1 << 20,
    )?;
    if max_mib < default_mib {
        return Err(ConfigError::new(
            env::AGENT_WORKER_MEMORY_MAX_MIB,
            format!(
                "{max_mib} is below AGENT_WORKER_MEMORY_MIB ({default_mib}); raise it or lower that default"
            ),
        ));
    }
    let budget = match limit(v, env::AGENT_MEMORY_BUDGET, "MiB")? {
        Limit::Auto => host
            .memory_bytes
            .map_or(u64::MAX, |m| m / 100 * DEFAULT_BUDGET_PERCENT),
        Limit::Unlimited => u64::MAX,
        Limit::Value(mib) => mib.saturating_mul(MIB),
        Limit::Percent(p) => match host.memory_bytes {
            Some(m) => m / 100 * p,
            None => {
                return Err(ConfigError::new(
                    env::AGENT_MEMORY_BUDGET,
                    format!(
                        "{p}% needs the host's memory size, which /proc/meminfo does not give; set MiB"
                    ),
                ));
            }
        },
    };
    let max_workers = match limit(v, env::AGENT_MAX_WORKERS, "workers")? {
        // As many default-sized workers as the host has memory for.
        Limit::Auto => host
            .memory_bytes
            .map_or(u64::MAX, |m| (m / worker.memory_bytes.max(1)).max(1)),
        Limit::Unlimited => u64::MAX,
        Limit::Value(n) => n,
        Limit::Percent(_) => return Err(no_percent(v, env::AGENT_MAX_WORKERS)?),
    };
    let per_owner = match limit(v, env::AGENT_MAX_WORKERS_PER_OWNER, "workers")? {
        Limit::Auto | Limit::Unlimited => u64::MAX,
        Limit::Value(n) => n,
        Limit::Percent(_) => return Err(no_percent(v, env::AGENT_MAX_WORKERS_PER_OWNER)?),
    };
    let default_ensures = (host.cpus.saturating_mul(4)).clamp(8, 256);
    let max_concurrent_ensures =
        v.u64_in(env::AGENT_MAX_CONCURRENT_ENSURES, default_ensures, 1, 4096)? as usize;
    Ok(AdmissionSettings {
        max_workers,
        max_workers_per_owner: per_owner,
        memory_budget_bytes: budget,
        default_memory_bytes: worker.memory_bytes,
        memory_max_bytes: max_mib * MIB,
        max_concurrent_ensures,
    })
}

enum Limit {
    Auto,
    Unlimited,
    Value(u64),
    Percent(u64),
}

/// `auto` (or unset), `unlimited`, a positive integer, or `N%` (1–100).
fn limit(v: &Vars<'_>, var: &'static str, unit: &str) -> Result<Limit, ConfigError> {
    let Some(raw) = v.raw(var)? else {
        return Ok(Limit::Auto);
    };
    let s = raw.trim().to_ascii_lowercase();
    let parsed = match s.as_str() {
        "auto" => Some(Limit::Auto),
        "unlimited" | "off" => Some(Limit::Unlimited),
        _ => match s.strip_suffix('%') {
            Some(p) => p
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .map(Limit::Percent),
            None => s
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=1 << 40).contains(n))
                .map(Limit::Value),
        },
    };
    parsed.ok_or_else(|| {
        v.bad(
            var,
            &raw,
            &format!("auto, unlimited, a positive number of {unit} or a percentage such as 90%"),
        )
    })
}

fn no_percent(v: &Vars<'_>, var: &'static str) -> Result<ConfigError, ConfigError> {
    let raw = v.raw(var)?.unwrap_or_default();
    Ok(v.bad(var, &raw, "auto, unlimited or a positive number of workers"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_total() {
        let m = "MemTotal:       16337800 kB\nMemFree:  1 kB\n";
        assert_eq!(mem_total(m), Some(16337800 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total("MemTotal: lots kB\n"), None);
    }
}
