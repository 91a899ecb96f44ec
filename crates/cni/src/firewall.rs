//! Worker isolation firewall (SPEC §10, review H5/M5): two agent-owned iptables chains per
//! scope (network + ENV), jumped to from INPUT and FORWARD for everything that enters from the
//! worker bridge. INPUT (worker → the node itself, every host port): replies and, when the
//! gateway is the nameserver, DNS to it pass; the rest is rejected. FORWARD (worker → beyond the
//! node): replies pass, worker → worker routed through the host and the denied CIDRs are
//! dropped, everything else only when egress is allowed. Worker → worker on the bridge itself
//! never reaches iptables: bridge port isolation ([`isolate_port`]) stops it at L2.
//!
//! Chains are replaced atomically (`iptables-restore --noflush`); jump rules are added before
//! stale ones go, so the bridge is never unguarded during an update. Best effort at start-up:
//! where iptables is missing or refuses, callers warn.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

const IPTABLES: &str = "iptables";
const IPTABLES_RESTORE: &str = "iptables-restore";

/// Everything the rules depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `<network>/<ENV>` (see `WorkerFirewall::scope`).
    pub scope: String,
    pub bridge: String,
    /// Worker subnet (CIDR); only named in the comment (sweeps recognise test networks by it).
    pub subnet: String,
    pub gateway: IpAddr,
    /// The workers' nameserver when it is reached through the node (`None`: Docker's embedded
    /// DNS inside the container).
    pub dns_server: Option<IpAddr>,
    pub deny_cidrs: Vec<String>,
    pub egress: bool,
}

/// FNV-1a: a stable, dependency-free hash for chain names.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The scope's chains: (`ESBI-<hash>` for INPUT, `ESBF-<hash>` for FORWARD); well under
/// iptables' 28-character limit.
pub fn chain_names(scope: &str) -> (String, String) {
    let h = format!("{:012x}", fnv1a(scope) & 0xffff_ffff_ffff);
    (format!("ESBI-{h}"), format!("ESBF-{h}"))
}

/// The comment on our jump rules; `scripts/lib-host.sh` matches test subnets in it.
pub fn comment(plan: &Plan) -> String {
    format!("esb-agent {} {}", plan.scope, plan.subnet)
}

/// The comment of the single INPUT rule earlier versions installed (removed on install).
pub fn legacy_comment(network_name: &str) -> String {
    format!("esb-agent {network_name}: workers may not reach the agent")
}

fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

/// The `iptables-restore --noflush` input that (re)creates both chains with exactly our rules.
pub fn restore_text(plan: &Plan) -> String {
    let (input, forward) = chain_names(&plan.scope);
    let mut out = vec![
        "*filter".to_string(),
        format!(":{input} - [0:0]"),
        format!(":{forward} - [0:0]"),
    ];
    let established = "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN";
    let dns = |chain: &str, server: IpAddr| {
        ["udp", "tcp"].map(|p| {
            format!(
                "-A {chain} -d {} -p {p} -m {p} --dport 53 -j RETURN",
                host(server)
            )
        })
    };
    out.push(format!("-A {input} {established}"));
    if plan.dns_server == Some(plan.gateway) {
        out.extend(dns(&input, plan.gateway));
    }
    out.push(format!(
        "-A {input} -p tcp -j REJECT --reject-with tcp-reset"
    ));
    out.push(format!(
        "-A {input} -j REJECT --reject-with icmp-port-unreachable"
    ));
    out.push(format!("-A {forward} {established}"));
    out.push(format!("-A {forward} -o {} -j DROP", plan.bridge));
    if let Some(server) = plan.dns_server.filter(|d| *d != plan.gateway) {
        out.extend(dns(&forward, server));
    }
    for cidr in &plan.deny_cidrs {
        out.push(format!("-A {forward} -d {cidr} -j DROP"));
    }
    if !plan.egress {
        out.push(format!("-A {forward} -j DROP"));
    }
    out.push("COMMIT".to_string());
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// The jump rules: (`INPUT`|`FORWARD`, arguments after the chain name) in `iptables -S` order.
pub fn jump_rules(plan: &Plan) -> [(&'static str, Vec<String>); 2] {
    let (input, forward) = chain_names(&plan.scope);
    let args = |target: String| {
        vec![
            "-i".to_string(),
            plan.bridge.clone(),
            "-m".to_string(),
            "comment".to_string(),
            "--comment".to_string(),
            comment(plan),
            "-j".to_string(),
            target,
        ]
    };
    [("INPUT", args(input)), ("FORWARD", args(forward))]
}

/// Why a firewall change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot run {0}: {1}")]
    Spawn(&'static str, #[source] std::io::Error),
    #[error("{cmd} {args} failed: {stderr}")]
    Failed {
        cmd: &'static str,
        args: String,
        stderr: String,
    },
}

impl FirewallError {
    /// iptables is not installed: nothing can be enforced, and nothing of ours can exist.
    pub fn is_missing(&self) -> bool {
        matches!(self, Self::Spawn(_, e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Runs `cmd <args>` with `stdin`; `(success, stdout, stderr)`.
fn run_cmd(
    cmd: &'static str,
    args: &[String],
    stdin: Option<&str>,
) -> Result<(bool, String, String), FirewallError> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| FirewallError::Spawn(cmd, e))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| FirewallError::Spawn(cmd, e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| FirewallError::Spawn(cmd, e))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

/// `iptables -w <args>`.
fn run(args: &[String]) -> Result<(bool, String, String), FirewallError> {
    let mut all = vec!["-w".to_string()];
    all.extend(args.iter().cloned());
    run_cmd(IPTABLES, &all, None)
}

fn must(args: &[String]) -> Result<String, FirewallError> {
    match run(args)? {
        (true, stdout, _) => Ok(stdout),
        (false, _, stderr) => Err(FirewallError::Failed {
            cmd: IPTABLES,
            args: args.join(" "),
            stderr,
        }),
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
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

/// Rules of built-in `chain` (arguments after `-A <chain>`) matching `pred`.
fn rules_where(
    chain: &str,
    pred: impl Fn(&[String]) -> bool,
) -> Result<Vec<Vec<String>>, FirewallError> {
    let listing = must(&strings(&["-S", chain]))?;
    Ok(listing
        .lines()
        .map(split_rule)
        .filter(|t| t.len() > 2 && t[0] == "-A" && t[1] == chain)
        .map(|t| t[2..].to_vec())
        .filter(|r| pred(r))
        .collect())
}

fn jumps_to(rule: &[String], target: &str) -> bool {
    rule.windows(2).any(|w| w[0] == "-j" && w[1] == target)
}

fn has_comment(rule: &[String], text: &str) -> bool {
    rule.windows(2).any(|w| w[0] == "--comment" && w[1] == text)
}

fn delete(chain: &str, rule: &[String]) -> Result<(), FirewallError> {
    let mut args = strings(&["-D", chain]);
    args.extend(rule.iter().cloned());
    must(&args).map(|_| ())
}

/// Installs or updates the scope's chains and jumps. Idempotent: a second call changes
/// nothing; a changed plan replaces the chains' rules in one transaction and swaps the jumps
/// (new first). `network_name`'s rule from earlier versions is removed.
pub fn install(plan: &Plan, network_name: &str) -> Result<(), FirewallError> {
    let text = restore_text(plan);
    match run_cmd(
        IPTABLES_RESTORE,
        &strings(&["-w", "--noflush"]),
        Some(&text),
    )? {
        (true, _, _) => {}
        (false, _, stderr) => {
            return Err(FirewallError::Failed {
                cmd: IPTABLES_RESTORE,
                args: "--noflush".into(),
                stderr,
            });
        }
    }
    for (chain, rule) in jump_rules(plan) {
        let target = rule.last().cloned().unwrap_or_default();
        let existing = rules_where(chain, |r| jumps_to(r, &target))?;
        if !existing.contains(&rule) {
            let mut insert = strings(&["-I", chain, "1"]);
            insert.extend(rule.iter().cloned());
            must(&insert)?;
        }
        for old in existing.iter().filter(|r| **r != rule) {
            delete(chain, old)?;
        }
    }
    let legacy = legacy_comment(network_name);
    for old in rules_where("INPUT", |r| has_comment(r, &legacy))? {
        delete("INPUT", &old)?;
    }
    Ok(())
}

/// Deletes the scope's jumps and chains. Idempotent; no iptables means nothing of ours exists.
pub fn remove(scope: &str) -> Result<(), FirewallError> {
    let (input, forward) = chain_names(scope);
    for (chain, target) in [("INPUT", &input), ("FORWARD", &forward)] {
        let rules = match rules_where(chain, |r| jumps_to(r, target)) {
            Ok(r) => r,
            Err(e) if e.is_missing() => return Ok(()),
            Err(e) => return Err(e),
        };
        for r in rules {
            delete(chain, &r)?;
        }
    }
    for target in [&input, &forward] {
        // `-F` fails only when the chain does not exist: then there is nothing to delete.
        if run(&strings(&["-F", target]))?.0 {
            must(&strings(&["-X", target]))?;
        }
    }
    Ok(())
}

/// Whether the scope's chains exist (tests and leftover checks).
pub fn installed(scope: &str) -> bool {
    let (input, forward) = chain_names(scope);
    [input, forward]
        .iter()
        .all(|c| run(&strings(&["-S", c])).is_ok_and(|(ok, _, _)| ok))
}

/// Turns on bridge port isolation for the host end `ifname` of a worker's veth: isolated
/// ports cannot exchange frames with each other (worker ↔ worker, ARP included), only with
/// non-isolated ports — the bridge itself, i.e. the node.
pub fn isolate_port(ifname: &str) -> Result<(), FirewallError> {
    let args = strings(&["link", "set", "dev", ifname, "isolated", "on"]);
    match run_cmd("bridge", &args, None)? {
        (true, _, _) => Ok(()),
        (false, _, stderr) => Err(FirewallError::Failed {
            cmd: "bridge",
            args: args.join(" "),
            stderr,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            scope: "esb-net/dev".into(),
            bridge: "esb0".into(),
            subnet: "10.184.208.0/23".into(),
            gateway: "10.184.208.1".parse().expect("ip"),
            dns_server: Some("10.184.208.1".parse().expect("ip")),
            deny_cidrs: vec!["169.254.0.0/16".into()],
            egress: true,
        }
    }

    #[test]
    fn chains_are_scoped_per_env() {
        let (i, f) = chain_names("esb-net/dev");
        assert!(i.starts_with("ESBI-") && f.starts_with("ESBF-"));
        assert_eq!(i[5..], f[5..]);
        assert!(i.len() <= 28, "{i}");
        assert_eq!(chain_names("esb-net/dev"), (i.clone(), f));
        assert_ne!(chain_names("esb-net/stage").0, i);
    }

    #[test]
    fn restore_text_golden() {
        let (i, f) = chain_names("esb-net/dev");
        let want = format!(
            "*filter\n:{i} - [0:0]\n:{f} - [0:0]\n\
             -A {i} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n\
             -A {i} -d 10.184.208.1/32 -p udp -m udp --dport 53 -j RETURN\n\
             -A {i} -d 10.184.208.1/32 -p tcp -m tcp --dport 53 -j RETURN\n\
             -A {i} -p tcp -j REJECT --reject-with tcp-reset\n\
             -A {i} -j REJECT --reject-with icmp-port-unreachable\n\
             -A {f} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n\
             -A {f} -o esb0 -j DROP\n\
             -A {f} -d 169.254.0.0/16 -j DROP\n\
             COMMIT\n"
        );
        assert_eq!(restore_text(&plan()), want);
    }

    #[test]
    fn dns_elsewhere_and_no_egress() {
        let p = Plan {
            dns_server: Some("192.0.2.53".parse().expect("ip")),
            egress: false,
            deny_cidrs: vec!["169.254.0.0/16".into(), "10.0.0.0/8".into()],
            ..plan()
        };
        let text = restore_text(&p);
        let (i, f) = chain_names(&p.scope);
        assert!(
            !text.contains(&format!("-A {i} -d")),
            "no DNS hole to the host: {text}"
        );
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {f}")))
            .collect();
        assert_eq!(
            lines[2..],
            [
                format!("-A {f} -d 192.0.2.53/32 -p udp -m udp --dport 53 -j RETURN"),
                format!("-A {f} -d 192.0.2.53/32 -p tcp -m tcp --dport 53 -j RETURN"),
                format!("-A {f} -d 169.254.0.0/16 -j DROP"),
                format!("-A {f} -d 10.0.0.0/8 -j DROP"),
                format!("-A {f} -j DROP"),
            ]
        );
    }

    #[test]
    fn jump_rules_round_trip_listing() {
        let [(chain, rule), (fchain, _)] = jump_rules(&plan());
        assert_eq!((chain, fchain), ("INPUT", "FORWARD"));
        let (i, _) = chain_names("esb-net/dev");
        let line = format!(
            "-A INPUT -i esb0 -m comment --comment \"esb-agent esb-net/dev 10.184.208.0/23\" -j {i}"
        );
        let t = split_rule(&line);
        assert_eq!(t[2..].to_vec(), rule);
        assert!(jumps_to(&rule, &i));
        assert_eq!(split_rule(r#"a "b \" c"  d"#), vec!["a", "b \" c", "d"]);
    }
}
