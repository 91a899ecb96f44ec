//! Pure generators: the network's conflist (SPEC §8) and the identity file (SPEC §5), plus the
//! small IPv4 CIDR arithmetic they need.

use std::net::Ipv4Addr;

use crate::CniSettings;
use serde_json::{Value, json};

use crate::error::CniError;

/// CNI spec version of the generated config and of every plugin call.
pub const CNI_VERSION: &str = "1.0.0";

/// An IPv4 network in canonical form (no host bits set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    /// Parses `a.b.c.d/n`; rejects host bits, prefixes over /30 (no room for workers) and IPv6.
    pub fn parse(cidr: &str) -> Result<Self, CniError> {
        let bad = |why: &str| CniError::InvalidSettings(format!("subnet {cidr:?}: {why}"));
        let (addr, prefix) = cidr
            .trim()
            .split_once('/')
            .ok_or_else(|| bad("expected a.b.c.d/n"))?;
        let network: Ipv4Addr = addr.parse().map_err(|_| bad("not an ipv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("bad prefix length"))?;
        if !(1..=30).contains(&prefix) {
            return Err(bad("prefix length must be 1..=30"));
        }
        let net = Self { network, prefix };
        if u32::from(network) & !net.mask() != 0 {
            return Err(bad("host bits set"));
        }
        Ok(net)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// The `n`-th address after the network address.
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).wrapping_add(n))
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Checks the settings and returns the parsed subnet and gateway.
pub fn validate(s: &CniSettings) -> Result<(Ipv4Net, Ipv4Addr), CniError> {
    let net = Ipv4Net::parse(&s.subnet)?;
    let gw: Ipv4Addr = s.gateway.trim().parse().map_err(|_| {
        CniError::InvalidSettings(format!("gateway {:?} is not an ipv4 address", s.gateway))
    })?;
    if !net.contains(gw) || gw == net.network || gw == net.broadcast() {
        return Err(CniError::InvalidSettings(format!(
            "gateway {gw} is not a host address of subnet {net}"
        )));
    }
    for (what, v) in [("network name", &s.network_name), ("bridge", &s.bridge)] {
        if v.is_empty()
            || v.chars()
                .any(|c| c.is_control() || c == '/' || c.is_whitespace())
        {
            return Err(CniError::InvalidSettings(format!(
                "{what} {v:?} is not usable"
            )));
        }
    }
    if s.bridge.len() > 15 {
        return Err(CniError::InvalidSettings(format!(
            "bridge {:?} is longer than 15 characters (linux interface name limit)",
            s.bridge
        )));
    }
    Ok((net, gw))
}

/// The conflist (SPEC §8): `bridge` with host-local IPAM whose `subnet` equals `CNI_SUBNET`
/// (review P1-2), range network+1..broadcast-1 with the gateway set explicitly (host-local
/// never hands out the gateway), default route, `macspoofchk`; then `portmap`.
pub fn conflist(s: &CniSettings) -> Result<Value, CniError> {
    let (net, gw) = validate(s)?;
    Ok(json!({
        "cniVersion": CNI_VERSION,
        "name": s.network_name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": s.bridge,
                "isGateway": true,
                "ipMasq": s.ip_masq,
                "hairpinMode": true,
                // Frames from a worker must carry its own MAC (no ARP/MAC spoofing, H5).
                "macspoofchk": true,
                "dns": { "nameservers": [s.dns_server] },
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{
                        "subnet": net.to_string(),
                        "rangeStart": net.nth(1).to_string(),
                        "rangeEnd": Ipv4Addr::from(u32::from(net.broadcast()) - 1).to_string(),
                        "gateway": gw.to_string(),
                    }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": s.net_dir.display().to_string(),
                },
            },
            {
                "type": "portmap",
                "capabilities": { "portMappings": true },
            },
        ],
    }))
}

/// `value` single-quoted for POSIX sh; `'` becomes `'"'"'`.
pub fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\"'\"'"))
}

/// The identity file (SPEC §5) consumed by the gateway's entrypoint and NAT scripts.
pub fn identity_file(s: &CniSettings) -> String {
    [
        ("CNI_NETWORK", &s.network_name),
        ("CNI_BRIDGE", &s.bridge),
        ("CNI_SUBNET", &s.subnet),
        ("CNI_GW_IP", &s.gateway),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}\n", sh_quote(v)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CniSettings {
        CniSettings {
            conf_dir: "/etc/cni/net.d".into(),
            bin_dir: "/opt/cni/bin".into(),
            conf_file: "/etc/cni/net.d/10-esb-net.conflist".into(),
            network_name: "esb-net".into(),
            bridge: "esb-esbefb03b".into(),
            subnet: "10.184.208.0/23".into(),
            gateway: "10.184.208.1".into(),
            dns_server: "10.184.208.1".into(),
            net_dir: "/var/lib/cni/networks".into(),
            ip_masq: true,
            identity_file: "/var/lib/cni/esb-cni.env".into(),
            plugin_timeout: crate::DEFAULT_CNI_PLUGIN_TIMEOUT,
            firewall: None,
        }
    }

    const GOLDEN: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "esb-net",
  "plugins": [
    {
      "bridge": "esb-esbefb03b",
      "dns": {
        "nameservers": [
          "10.184.208.1"
        ]
      },
      "hairpinMode": true,
      "ipMasq": true,
      "ipam": {
        "dataDir": "/var/lib/cni/networks",
        "ranges": [
          [
            {
              "gateway": "10.184.208.1",
              "rangeEnd": "10.184.209.254",
              "rangeStart": "10.184.208.1",
              "subnet": "10.184.208.0/23"
            }
          ]
        ],
        "routes": [
          {
            "dst": "0.0.0.0/0"
          }
        ],
        "type": "host-local"
      },
      "isGateway": true,
      "macspoofchk": true,
      "type": "bridge"
    },
    {
      "capabilities": {
        "portMappings": true
      },
      "type": "portmap"
    }
  ]
}"#;

    #[test]
    fn conflist_golden() {
        let v = conflist(&settings()).expect("valid settings");
        let text = serde_json::to_string_pretty(&v).expect("serializable");
        assert_eq!(text, GOLDEN);
    }

    #[test]
    fn ipam_subnet_equals_cni_subnet() {
        // Review P1-2: the configured subnet and the IPAM subnet/range must agree.
        for subnet in ["10.184.208.0/23", "10.199.3.0/24", "172.16.0.0/12"] {
            let s = CniSettings {
                subnet: subnet.into(),
                gateway: Ipv4Net::parse(subnet).expect("valid").nth(1).to_string(),
                ..settings()
            };
            let v = conflist(&s).expect("valid");
            let range = &v["plugins"][0]["ipam"]["ranges"][0][0];
            assert_eq!(range["subnet"], subnet);
            let net = Ipv4Net::parse(subnet).expect("valid");
            for key in ["rangeStart", "rangeEnd", "gateway"] {
                let ip: Ipv4Addr = range[key].as_str().expect("string").parse().expect("ip");
                assert!(net.contains(ip), "{key} {ip} outside {subnet}");
            }
        }
    }

    #[test]
    fn rejects_bad_settings() {
        for (subnet, gw) in [
            ("10.1.2.5/24", "10.1.2.1"),
            ("10.1.2.0/31", "10.1.2.1"),
            ("fd00::/64", "fd00::1"),
            ("10.1.2.0/24", "10.1.3.1"),
            ("10.1.2.0/24", "10.1.2.0"),
            ("10.1.2.0/24", "10.1.2.255"),
            ("10.1.2.0", "10.1.2.1"),
        ] {
            let s = CniSettings {
                subnet: subnet.into(),
                gateway: gw.into(),
                ..settings()
            };
            assert!(
                matches!(conflist(&s), Err(CniError::InvalidSettings(_))),
                "{subnet} {gw}"
            );
        }
        let long = CniSettings {
            bridge: "a-very-long-bridge-name".into(),
            ..settings()
        };
        assert!(conflist(&long).is_err());
    }

    #[test]
    fn identity_file_golden() {
        let s = CniSettings {
            network_name: "it's-net".into(),
            ..settings()
        };
        assert_eq!(
            identity_file(&s),
            "CNI_NETWORK='it'\"'\"'s-net'\nCNI_BRIDGE='esb-esbefb03b'\nCNI_SUBNET='10.184.208.0/23'\nCNI_GW_IP='10.184.208.1'\n"
        );
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("a'b'"), "'a'\"'\"'b'\"'\"''");
    }
}
