//! Leftovers of the bridge plugin's `macspoofchk` (nftables `bridge nat` rules and chains
//! named after the container id and interface). The plugin removes them on DEL only when the
//! netns still exists; when it is gone (host reboot, a failed DEL) we remove them ourselves.
//! Best effort: without `nft` there is nothing to remove.

use std::process::{Command, Stdio};

/// The plugin's id for one attachment (`<container id>-<ifname>`, plugins 1.1.x).
fn unique_id(container_id: &str, ifname: &str) -> String {
    format!("{container_id}-{ifname}")
}

fn nft(args: &[&str]) -> Option<String> {
    let out = Command::new("nft")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Handles of `PREROUTING` rules carrying the attachment's comment, from `nft -a` output.
pub(crate) fn rule_handles(listing: &str, uid: &str) -> Vec<String> {
    let needle = format!("comment \"macspoofchk-{uid}\"");
    listing
        .lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| {
            l.rsplit_once("# handle ")
                .map(|(_, h)| h.trim().to_string())
        })
        .collect()
}

/// Removes the attachment's spoof-check jump rules and chains. Returns how many rules went.
pub fn teardown(container_id: &str, ifname: &str) -> usize {
    let uid = unique_id(container_id, ifname);
    let Some(listing) = nft(&["-a", "list", "chain", "bridge", "nat", "PREROUTING"]) else {
        return 0;
    };
    let handles = rule_handles(&listing, &uid);
    for h in &handles {
        nft(&["delete", "rule", "bridge", "nat", "PREROUTING", "handle", h]);
    }
    let chain = format!("cni-br-iface-{uid}");
    for c in [chain.clone(), format!("{chain}-mac")] {
        if nft(&["flush", "chain", "bridge", "nat", &c]).is_some() {
            nft(&["delete", "chain", "bridge", "nat", &c]);
        }
    }
    handles.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_this_attachments_rules() {
        let listing = r#"table bridge nat {
	chain PREROUTING { # handle 1
		iifname "veth1" jump cni-br-iface-w-a-eth0 comment "macspoofchk-w-a-eth0" # handle 38
		iifname "veth2" jump cni-br-iface-w-ab-eth0 comment "macspoofchk-w-ab-eth0" # handle 39
		iifname "veth3" jump cni-br-iface-w-a-eth0 comment "macspoofchk-w-a-eth0" # handle 40
	}
}"#;
        assert_eq!(
            rule_handles(listing, &unique_id("w-a", "eth0")),
            ["38", "40"]
        );
        assert!(rule_handles(listing, "w-b-eth0").is_empty());
    }
}
