//! The `esb-agent` binary without daemons: `config` output and redaction, exit codes, one-line
//! errors, and a shutdown signal while the backend is still connecting.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn agent(env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_esb-agent"));
    cmd.env_clear().env("PATH", "/usr/bin:/bin").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run(env: &[(&str, &str)], args: &[&str]) -> Output {
    agent(env, args).output().unwrap()
}

const BASE: &[(&str, &str)] = &[
    ("ENV", "dev"),
    ("CONTAINERS_NETWORK", "acme-dev-external"),
    ("AGENT_GRPC_TLS_DISABLED", "true"),
];

#[test]
fn config_prints_effective_values_with_token_redacted() {
    let mut env = BASE.to_vec();
    env.push(("AGENT_AUTH_TOKEN", "do-not-print-me"));
    let out = run(&env, &["config", "--port", "6001"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("identity.brand"), "{text}");
    assert!(text.contains("= acme\n"), "{text}");
    // Plaintext: loopback by default (review L6); the port flag overrides.
    assert!(
        text.contains("127.0.0.1:6001"),
        "flag must override: {text}"
    );
    assert!(text.contains("<redacted>"));
    assert!(!text.contains("do-not-print-me"));
}

#[test]
fn bad_value_exits_2_with_one_line_naming_the_variable() {
    let mut env = BASE.to_vec();
    env.push(("AGENT_SHUTDOWN_POLICY", "explode"));
    let out = run(&env, &["config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("AGENT_SHUTDOWN_POLICY") && err.contains("keep or destroy"),
        "{err}"
    );
    // The same through serve, and for a missing ENV.
    let out = run(&env, &["serve"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&[], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ENV"));
}

#[test]
fn unknown_flag_exits_2() {
    let out = run(BASE, &["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn runtime_failure_exits_1_with_one_line() {
    let mut env = BASE.to_vec();
    // The state dir cannot be created: fails before any backend is contacted.
    env.push(("AGENT_STATE_DIR", "/proc/esb-agent-cannot-exist"));
    let out = run(&env, &["serve"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("esb-agent: cannot create the state directory"),
        "{err}"
    );
}

#[test]
fn sigterm_while_connecting_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s).to_str().unwrap().to_string();
    let (state, sock, conf, net, idf) = (
        p("state"),
        p("no.sock"),
        p("net.d"),
        p("networks"),
        p("esb-cni.env"),
    );
    let mut env = BASE.to_vec();
    env.extend([
        ("AGENT_RUNTIME", "containerd"),
        ("ESB_BRAND_SLUG", "esbtcli"),
        ("CONTAINERD_SOCKET", sock.as_str()),
        ("AGENT_STATE_DIR", state.as_str()),
        ("CNI_CONF_DIR", conf.as_str()),
        ("CNI_NET_DIR", net.as_str()),
        ("CNI_IDENTITY_FILE", idf.as_str()),
        ("CNI_SUBNET", "10.199.201.0/24"),
        ("CNI_BRIDGE", "esbt-cli"),
        ("CNI_IP_MASQ", "false"),
        ("AGENT_LISTEN_ADDR", "127.0.0.1"),
        ("PORT", "0"),
        ("AGENT_METRICS_PORT", "off"),
    ]);
    let child = agent(&env, &["serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The containerd socket does not exist: the backend keeps retrying for a while.
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}
