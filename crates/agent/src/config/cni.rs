//! CNI settings (SPEC §5, §6, §8): explicit values validated, or derived — the first default
//! subnet slot that overlaps no range claimed by another network config in `CNI_CONF_DIR`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use esb_cni::{CniSettings, WorkerFirewall};
use esb_runtime::identity::{Identity, SUBNET_SLOTS};

use super::env;
use super::{ConfigError, Vars};

/// Foreign config files larger than this are not read.
const MAX_CONF_BYTES: u64 = 1024 * 1024;

/// An IPv4 network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    network: u32,
    prefix: u8,
}

impl Ipv4Net {
    /// Parses `a.b.c.d/n`; host bits are masked off (`strict` refuses them instead).
    pub fn parse(s: &str, strict: bool) -> Option<Self> {
        let (ip, prefix) = s.trim().split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
        let mask = Self::mask(prefix);
        let raw = u32::from(ip);
        if strict && raw & !mask != 0 {
            return None;
        }
        Some(Self {
            network: raw & mask,
            prefix,
        })
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        }
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn first(&self) -> u32 {
        self.network
    }

    pub fn last(&self) -> u32 {
        self.network | !Self::mask(self.prefix)
    }

    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.first()..=self.last()).contains(&u32::from(ip))
    }

    /// Network address + 1.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network.saturating_add(1))
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

/// Reads and validates every CNI setting; `notes` collects warnings for the log.
pub fn load(
    v: &Vars<'_>,
    identity: &Identity,
    notes: &mut Vec<String>,
) -> Result<CniSettings, ConfigError> {
    let conf_dir = v.abs_path(env::CNI_CONF_DIR, "/etc/cni/net.d")?;
    let bin_dir = v.abs_path(env::CNI_BIN_DIR, "/opt/cni/bin")?;
    let network_name = identity.cni_network_name();
    let conf_file = match v.raw(env::CNI_CONF_FILE)? {
        None => conf_dir.join(format!("10-{network_name}.conflist")),
        Some(f) if !f.ends_with(".conflist") || f.ends_with('/') => {
            return Err(v.bad(
                env::CNI_CONF_FILE,
                &f,
                "a file name or path ending in .conflist",
            ));
        }
        Some(f) => conf_dir.join(f),
    };
    let bridge = match v.raw(env::CNI_BRIDGE)? {
        None => identity.bridge_name(),
        Some(b) if valid_ifname(&b) => b,
        Some(b) => {
            return Err(v.bad(
                env::CNI_BRIDGE,
                &b,
                "an interface name of 1-15 characters from a-z, A-Z, 0-9, '-', '_', '.'",
            ));
        }
    };
    let subnet = match v.raw(env::CNI_SUBNET)? {
        Some(s) => match Ipv4Net::parse(&s, true).filter(|n| (8..=30).contains(&n.prefix())) {
            Some(n) => n,
            None => {
                return Err(v.bad(
                    env::CNI_SUBNET,
                    &s,
                    "an IPv4 network address in CIDR form with a prefix from /8 to /30, e.g. 10.184.208.0/23",
                ));
            }
        },
        None => derive_subnet(identity, &conf_dir, &conf_file, notes)?,
    };
    let gateway = match v.opt_ip(env::CNI_GW_IP)? {
        None => subnet.gateway(),
        Some(IpAddr::V4(ip))
            if subnet.contains(ip)
                && u32::from(ip) != subnet.first()
                && u32::from(ip) != subnet.last() =>
        {
            ip
        }
        Some(ip) => {
            return Err(v.bad(
                env::CNI_GW_IP,
                &ip.to_string(),
                &format!("an IPv4 host address inside CNI_SUBNET {subnet}"),
            ));
        }
    };
    let dns_server = v
        .opt_ip(env::CNI_DNS_SERVER)?
        .unwrap_or(IpAddr::V4(gateway));
    Ok(CniSettings {
        conf_dir,
        bin_dir,
        conf_file,
        network_name,
        bridge,
        subnet: subnet.to_string(),
        gateway: gateway.to_string(),
        dns_server: dns_server.to_string(),
        net_dir: v.abs_path(env::CNI_NET_DIR, "/var/lib/cni/networks")?,
        ip_masq: v.bool(env::CNI_IP_MASQ, true)?,
        identity_file: v.abs_path(env::CNI_IDENTITY_FILE, "/var/lib/cni/esb-cni.env")?,
        plugin_timeout: v.duration(
            env::CNI_PLUGIN_TIMEOUT,
            esb_cni::DEFAULT_CNI_PLUGIN_TIMEOUT,
            std::time::Duration::from_secs(1),
        )?,
        firewall: Some(worker_firewall(v, identity, &identity.cni_network_name())?),
    })
}

/// Default `AGENT_WORKER_DENY_CIDRS`: link-local, home of cloud metadata services.
pub const DEFAULT_DENY_CIDRS: &str = "169.254.0.0/16";

/// The worker firewall (review H5), scoped to the workers' `network` and ENV (M5).
pub fn worker_firewall(
    v: &Vars<'_>,
    identity: &Identity,
    network: &str,
) -> Result<WorkerFirewall, ConfigError> {
    let raw = v.string(env::AGENT_WORKER_DENY_CIDRS, DEFAULT_DENY_CIDRS)?;
    let mut deny_cidrs = Vec::new();
    if !raw.trim().eq_ignore_ascii_case("none") {
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let net = Ipv4Net::parse(part, true).ok_or_else(|| {
                v.bad(
                    env::AGENT_WORKER_DENY_CIDRS,
                    &raw,
                    "comma-separated IPv4 networks in CIDR form (no host bits), e.g. 169.254.0.0/16,10.0.0.0/8, or none",
                )
            })?;
            deny_cidrs.push(net.to_string());
        }
    }
    let egress = v.choice(
        env::AGENT_WORKER_EGRESS,
        true,
        &[("all", true), ("none", false)],
    )?;
    Ok(WorkerFirewall {
        scope: format!("{network}/{}", identity.env()),
        deny_cidrs,
        egress,
    })
}

/// Linux interface name rules (IFNAMSIZ 16 incl. NUL), restricted to a safe charset.
fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The first default slot that overlaps no subnet claimed by another network's config.
fn derive_subnet(
    identity: &Identity,
    conf_dir: &Path,
    own_file: &Path,
    notes: &mut Vec<String>,
) -> Result<Ipv4Net, ConfigError> {
    let claims = claimed_subnets(conf_dir, own_file, &identity.cni_network_name(), notes);
    (0..SUBNET_SLOTS)
        .filter_map(|k| Ipv4Net::parse(&identity.subnet_slot(k), true))
        .find(|slot| !claims.iter().any(|c| c.overlaps(slot)))
        .ok_or_else(|| {
            ConfigError::new(
                env::CNI_SUBNET,
                format!(
                    "unset, and every default subnet slot overlaps a network configured in {}; set CNI_SUBNET",
                    conf_dir.display()
                ),
            )
        })
}

/// Every IPv4 `subnet` found in the CNI configs of `dir`, except ours (by path or network name).
pub fn claimed_subnets(
    dir: &Path,
    own_file: &Path,
    own_name: &str,
    notes: &mut Vec<String>,
) -> Vec<Ipv4Net> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            notes.push(format!(
                "cannot scan CNI config dir {} for claimed subnets: {e}",
                dir.display()
            ));
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conf" | "conflist" | "json")
            ) && p != own_file
        })
        .collect();
    files.sort();
    let mut claims = Vec::new();
    for path in files {
        match read_json(&path) {
            Ok(json) => {
                if json.get("name").and_then(|n| n.as_str()) == Some(own_name) {
                    continue;
                }
                collect_subnets(&json, &mut claims);
            }
            Err(e) => notes.push(format!("skipping CNI config {}: {e}", path.display())),
        }
    }
    claims
}

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > MAX_CONF_BYTES {
        return Err(format!("larger than {MAX_CONF_BYTES} bytes"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("invalid JSON: {e}"))
}

/// Every string field named `subnet` anywhere in the document (ipam.subnet, ipam.ranges, ...).
fn collect_subnets(json: &serde_json::Value, out: &mut Vec<Ipv4Net>) {
    match json {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("subnet", serde_json::Value::String(s)) => {
                        out.extend(Ipv4Net::parse(s, false))
                    }
                    _ => collect_subnets(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_subnets(i, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
