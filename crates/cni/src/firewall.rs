//! Host firewall (SPEC §10): one iptables INPUT rule that rejects TCP from the worker bridge
//! to the agent's own ports. Best effort: where iptables is missing or refuses, callers warn.

use std::process::{Command, Stdio};

const IPTABLES: &str = "iptables";

/// The comment that marks our rule; `scripts/check-leftovers` looks for the `esb-agent ` prefix.
pub fn comment(network_name: &str) -> String {
    format!("esb-agent {network_name}: workers may not reach the agent")
}

/// The rule specification after the chain name (as given to `-C`, `-I` and `-D`).
pub fn rule_args(bridge: &str, network_name: &str, ports: &[u16]) -> Vec<String> {
    let ports = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    [
        "-i",
        bridge,
        "-p",
        "tcp",
        "-m",
        "multiport",
        "--dports",
        &ports,
        "-m",
        "comment",
        "--comment",
        &comment(network_name),
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Why a firewall change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot run iptables: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("iptables {args} failed: {stderr}")]
    Failed { args: String, stderr: String },
}

impl FirewallError {
    /// iptables is not installed: nothing can be enforced, and nothing of ours can exist.
    pub fn is_missing(&self) -> bool {
        matches!(self, Self::Spawn(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Runs `iptables -w <args>`; `Ok(false)` when it exits non-zero.
fn run(args: &[String]) -> Result<(bool, String, String), FirewallError> {
    let out = Command::new(IPTABLES)
        .arg("-w")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(FirewallError::Spawn)?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

fn must(args: &[String]) -> Result<String, FirewallError> {
    match run(args)? {
        (true, stdout, _) => Ok(stdout),
        (false, _, stderr) => Err(FirewallError::Failed {
            args: args.join(" "),
            stderr,
        }),
    }
}

/// Splits an `iptables -S` line into its arguments (double quotes and backslash escapes).
pub fn split_rule(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// Our INPUT rules (the arguments after `-A INPUT`).
fn our_rules(network_name: &str) -> Result<Vec<Vec<String>>, FirewallError> {
    let listing = must(&["-S".to_string(), "INPUT".to_string()])?;
    let ours = comment(network_name);
    Ok(listing
        .lines()
        .map(split_rule)
        .filter(|t| t.len() > 2 && t[0] == "-A" && t[1] == "INPUT")
        .filter(|t| t.windows(2).any(|w| w[0] == "--comment" && w[1] == ours))
        .map(|t| t[2..].to_vec())
        .collect())
}

fn delete(rule: &[String]) -> Result<(), FirewallError> {
    let mut args = vec!["-D".to_string(), "INPUT".to_string()];
    args.extend(rule.iter().cloned());
    must(&args).map(|_| ())
}

/// Ensures exactly our rule for `ports` exists: stale rules with our comment (other ports or
/// bridge from an earlier run) are deleted, then the rule is checked and inserted if absent.
pub fn install(bridge: &str, network_name: &str, ports: &[u16]) -> Result<(), FirewallError> {
    let rule = rule_args(bridge, network_name, ports);
    for old in our_rules(network_name)? {
        if old != rule {
            delete(&old)?;
        }
    }
    let mut check = vec!["-C".to_string(), "INPUT".to_string()];
    check.extend(rule.iter().cloned());
    if run(&check)?.0 {
        return Ok(());
    }
    let mut insert = vec!["-I".to_string(), "INPUT".to_string()];
    insert.extend(rule);
    must(&insert).map(|_| ())
}

/// Deletes every INPUT rule carrying our comment. Idempotent; no iptables means no rule.
pub fn remove(network_name: &str) -> Result<(), FirewallError> {
    let rules = match our_rules(network_name) {
        Ok(r) => r,
        Err(e) if e.is_missing() => return Ok(()),
        Err(e) => return Err(e),
    };
    for r in rules {
        delete(&r)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_arguments() {
        let r = rule_args("esb0", "esb-net", &[50051, 9091]);
        assert_eq!(
            r.join(" "),
            "-i esb0 -p tcp -m multiport --dports 50051,9091 -m comment --comment \
             esb-agent esb-net: workers may not reach the agent -j REJECT --reject-with tcp-reset"
        );
        assert_eq!(r[11], "esb-agent esb-net: workers may not reach the agent");
    }

    #[test]
    fn listing_round_trips() {
        let r = rule_args("esb0", "esb-net", &[50051]);
        let line = "-A INPUT -i esb0 -p tcp -m multiport --dports 50051 -m comment --comment \
                    \"esb-agent esb-net: workers may not reach the agent\" -j REJECT --reject-with tcp-reset";
        let t = split_rule(line);
        assert_eq!(&t[..2], ["-A", "INPUT"]);
        assert_eq!(t[2..].to_vec(), r);
        assert_eq!(split_rule(r#"a "b \" c"  d"#), vec!["a", "b \" c", "d"]);
    }
}
