//! Config tests: defaults, derivation, flags over env, and a table of bad values — each must
//! fail with an error naming its variable.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use super::*;
use esb_server::{ShutdownPolicy, TlsSettings};

/// A minimal valid docker config plus `extra`.
fn docker_src(extra: &[(&str, &str)]) -> MapSource {
    let mut m = MapSource::from_pairs([
        ("ENV", "dev"),
        ("CONTAINERS_NETWORK", "acme-dev-external"),
        ("AGENT_GRPC_TLS_DISABLED", "1"),
    ]);
    for (k, val) in extra {
        m.0.insert(k.to_string(), val.to_string());
    }
    m
}

/// A containerd config whose CNI dirs live in `dir`.
fn containerd_src(dir: &std::path::Path, extra: &[(&str, &str)]) -> MapSource {
    let conf = dir.join("net.d");
    let conf = conf.to_str().unwrap();
    let mut pairs: Vec<(&str, &str)> = vec![
        ("AGENT_RUNTIME", "containerd"),
        ("ESB_BRAND_SLUG", "esb"),
        ("CNI_CONF_DIR", conf),
    ];
    pairs.extend_from_slice(extra);
    docker_src(&pairs)
}

#[test]
fn docker_defaults() {
    let c = load(&docker_src(&[])).unwrap();
    assert_eq!(c.common.identity.brand(), "acme");
    assert_eq!(c.common.identity.env(), "dev");
    let Backend::Docker(d) = &c.backend else {
        panic!("docker expected")
    };
    assert_eq!(d.network, "acme-dev-external");
    assert_eq!(d.host, None);
    let s = &c.server;
    // Plaintext and metrics: loopback unless asked (review L6).
    assert_eq!(s.listen_addr.to_string(), "127.0.0.1:50051");
    assert_eq!(s.metrics_addr.unwrap().to_string(), "127.0.0.1:9091");
    assert!(
        c.notes.iter().any(|n| n.contains("127.0.0.1 only")),
        "{:?}",
        c.notes
    );
    assert_eq!(s.tls, TlsSettings::Disabled);
    assert_eq!(s.auth_token, None);
    assert!(!s.reflection);
    assert_eq!(s.invoke.max_response_bytes, 10485760);
    assert!(s.max_request_bytes >= 12 * 1024 * 1024);
    assert_eq!(s.invoke.default_timeout, Duration::from_secs(30));
    assert_eq!(s.shutdown_policy, ShutdownPolicy::Keep);
    assert_eq!(
        c.common.state_dir,
        std::path::PathBuf::from("/var/lib/esb-agent")
    );
    assert_eq!(c.common.registry.default_registry, "registry:5010");
    assert!(!c.common.registry.insecure);
    assert_eq!(c.common.worker.memory_bytes, 512 * 1024 * 1024);
    assert_eq!(c.logging.filter, "info");
    assert_eq!(c.logging.format, LogFormat::Text);
}

#[test]
fn containerd_derives_cni_from_identity() {
    let dir = tempfile::tempdir().unwrap();
    let c = load(&containerd_src(dir.path(), &[])).unwrap();
    let Backend::Containerd { containerd, cni } = &c.backend else {
        panic!("containerd expected")
    };
    assert_eq!(containerd.namespace, "esb");
    assert_eq!(containerd.runtime, "io.containerd.runc.v2");
    assert_eq!(containerd.snapshotter, "overlayfs");
    assert_eq!(cni.network_name, "esb-net");
    assert_eq!(cni.bridge, "esb-esbefb03b");
    assert_eq!(cni.subnet, "10.184.208.0/23");
    assert_eq!(cni.gateway, "10.184.208.1");
    let fw = cni
        .firewall
        .as_ref()
        .expect("worker firewall on by default");
    let other = load(&containerd_src(
        dir.path(),
        &[
            ("ENV", "stage"),
            ("AGENT_WORKER_DENY_CIDRS", " 169.254.0.0/16, 10.0.0.0/8 "),
            ("AGENT_WORKER_EGRESS", "none"),
        ],
    ))
    .unwrap();
    let Backend::Containerd { cni: other, .. } = &other.backend else {
        panic!("containerd expected")
    };
    let ofw = other.firewall.as_ref().unwrap();
    assert_eq!(
        ofw.scope, "esb-net/stage",
        "another ENV, another scope (M5)"
    );
    assert_eq!(ofw.deny_cidrs, ["169.254.0.0/16", "10.0.0.0/8"]);
    assert!(!ofw.egress);
    assert_eq!(fw.scope, "esb-net/dev");
    assert_eq!(fw.deny_cidrs, vec!["169.254.0.0/16".to_string()]);
    assert!(fw.egress);
    assert_eq!(cni.dns_server, "10.184.208.1");
    assert_eq!(cni.conf_file, dir.path().join("net.d/10-esb-net.conflist"));
    assert!(cni.ip_masq);
    assert_eq!(
        cni.identity_file,
        std::path::PathBuf::from("/var/lib/cni/esb-cni.env")
    );
}

#[test]
fn firecracker_defaults_to_devmapper() {
    let dir = tempfile::tempdir().unwrap();
    let c = load(&containerd_src(
        dir.path(),
        &[("CONTAINERD_RUNTIME", "aws.firecracker")],
    ))
    .unwrap();
    let Backend::Containerd { containerd, .. } = &c.backend else {
        panic!()
    };
    assert_eq!(containerd.snapshotter, "devmapper");
}

#[test]
fn cni_explicit_values() {
    let dir = tempfile::tempdir().unwrap();
    let c = load(&containerd_src(
        dir.path(),
        &[
            ("CNI_SUBNET", "10.199.7.0/24"),
            ("CNI_GW_IP", "10.199.7.254"),
            ("CNI_BRIDGE", "esbt-x"),
            ("CNI_IP_MASQ", "false"),
            ("CNI_CONF_FILE", "50-x.conflist"),
        ],
    ))
    .unwrap();
    let Backend::Containerd { cni, .. } = &c.backend else {
        panic!()
    };
    assert_eq!(cni.subnet, "10.199.7.0/24");
    assert_eq!(cni.gateway, "10.199.7.254");
    // DNS: CNI_DNS_SERVER -> CNI_GW_IP -> gateway.
    assert_eq!(cni.dns_server, "10.199.7.254");
    assert_eq!(cni.bridge, "esbt-x");
    assert!(!cni.ip_masq);
    assert_eq!(cni.conf_file, dir.path().join("net.d/50-x.conflist"));
    let c = load(&containerd_src(
        dir.path(),
        &[("CNI_DNS_SERVER", "192.0.2.53")],
    ))
    .unwrap();
    let Backend::Containerd { cni, .. } = &c.backend else {
        panic!()
    };
    assert_eq!(cni.dns_server, "192.0.2.53");
}

#[test]
fn log_level_sources_and_directives() {
    let c = load(&docker_src(&[("LOG_LEVEL", "WARNING")])).unwrap();
    assert_eq!(c.logging.filter, "warn");
    let c = load(&docker_src(&[
        ("LOG_LEVEL", "error"),
        ("AGENT_LOG_LEVEL", "DEBUG"),
    ]))
    .unwrap();
    assert!(
        c.logging.filter.starts_with("debug,"),
        "{}",
        c.logging.filter
    );
    let c = load(&docker_src(&[
        ("AGENT_LOG_LEVEL", "info,esb_server=debug"),
        ("AGENT_LOG_FORMAT", "JSON"),
    ]))
    .unwrap();
    assert_eq!(c.logging.filter, "info,esb_server=debug");
    assert_eq!(c.logging.format, LogFormat::Json);
}

#[test]
fn flags_override_env() {
    let flags = MapSource::from_pairs([("PORT", "6000"), ("ENV", "prod")]);
    let src = Layered {
        top: flags,
        bottom: docker_src(&[("PORT", "5000")]),
    };
    let c = load(&src).unwrap();
    assert_eq!(c.server.listen_addr.port(), 6000);
    assert_eq!(c.common.identity.env(), "prod");
}

#[test]
fn blank_values_mean_unset() {
    let c = load(&docker_src(&[("PORT", "  "), ("AGENT_STATE_DIR", "")])).unwrap();
    assert_eq!(c.server.listen_addr.port(), 50051);
    assert_eq!(
        c.common.state_dir,
        std::path::PathBuf::from("/var/lib/esb-agent")
    );
}

#[test]
fn token_from_env_or_file_and_redacted() {
    let c = load(&docker_src(&[("AGENT_AUTH_TOKEN", "s3cr3t-token")])).unwrap();
    assert_eq!(c.server.auth_token.as_deref(), Some("s3cr3t-token"));
    let text = render(&c);
    assert!(!text.contains("s3cr3t-token"));
    assert!(text.contains("<redacted>"));

    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("token");
    std::fs::write(&f, "file-token\n").unwrap();
    let file_src = docker_src(&[("AGENT_AUTH_TOKEN_FILE", f.to_str().unwrap())]);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = load(&file_src).unwrap();
        assert_eq!(c.server.auth_token.as_deref(), Some("file-token"));
        assert!(
            c.notes.iter().any(|n| n.contains("chmod 600")),
            "{:?}",
            c.notes
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let c = load(&file_src).unwrap();
    assert!(
        c.notes.iter().all(|n| !n.contains("chmod")),
        "{:?}",
        c.notes
    );

    let err = load(&docker_src(&[("AGENT_AUTH_TOKEN", "bad token\u{1}")])).unwrap_err();
    assert_eq!(err.var, "AGENT_AUTH_TOKEN");
    assert!(!err.to_string().contains("bad token"), "{err}");
}

#[test]
fn mtls_files_and_allow_list() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| {
        let f = dir.path().join(n);
        std::fs::write(&f, "pem").unwrap();
        f.to_str().unwrap().to_string()
    };
    let (cert, key, ca) = (p("c.crt"), p("c.key"), p("ca.crt"));
    let c = load(&docker_src(&[
        ("AGENT_GRPC_TLS_DISABLED", "0"),
        ("AGENT_GRPC_CERT_PATH", &cert),
        ("AGENT_GRPC_KEY_PATH", &key),
        ("AGENT_GRPC_CA_CERT_PATH", &ca),
        ("AGENT_GRPC_ALLOWED_CLIENTS", "gateway, spiffe://esb/gw ,"),
    ]))
    .unwrap();
    let TlsSettings::Mutual(m) = &c.server.tls else {
        panic!()
    };
    assert_eq!(m.allowed_client_identities, ["gateway", "spiffe://esb/gw"]);
    assert!(m.owner_map.is_empty() && !m.allow_any_client);
    assert_eq!(m.reload_interval, Some(Duration::from_secs(5)));
    // Default paths do not exist here: TLS on by default fails naming the cert variable.
    let err = load(&docker_src(&[("AGENT_GRPC_TLS_DISABLED", "")])).unwrap_err();
    assert_eq!(err.var, "AGENT_GRPC_CERT_PATH", "{err}");
}

/// M2: with mTLS on, an allow-list (or an owner map) is required unless explicitly waived.
#[test]
fn mtls_requires_an_allow_list_or_a_waiver() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("x.pem");
    std::fs::write(&pem, "pem").unwrap();
    let pem = pem.to_str().unwrap();
    let tls_on = |extra: &[(&'static str, &'static str)]| {
        let mut pairs = vec![
            ("AGENT_GRPC_TLS_DISABLED", "0"),
            ("AGENT_GRPC_CERT_PATH", pem),
            ("AGENT_GRPC_KEY_PATH", pem),
            ("AGENT_GRPC_CA_CERT_PATH", pem),
        ];
        pairs.extend_from_slice(extra);
        load(&docker_src(&pairs))
    };
    let err = tls_on(&[]).unwrap_err();
    let line = err.to_string();
    assert_eq!(err.var, "AGENT_GRPC_ALLOWED_CLIENTS", "{line}");
    for name in [
        "AGENT_GRPC_ALLOWED_CLIENTS",
        "AGENT_CLIENT_OWNER_MAP",
        "AGENT_GRPC_ALLOW_ANY_CLIENT_CERT=1",
    ] {
        assert!(line.contains(name), "{line}");
    }
    assert!(!line.contains('\n'));
    // The explicit waiver.
    let c = tls_on(&[("AGENT_GRPC_ALLOW_ANY_CLIENT_CERT", "1")]).unwrap();
    let TlsSettings::Mutual(m) = &c.server.tls else {
        panic!()
    };
    assert!(m.allow_any_client && m.allowed_client_identities.is_empty());
    assert!(render(&c).contains("any certificate of the CA (waived)"));
    // An owner map alone: its identities are the allow-list.
    let c = tls_on(&[
        (
            "AGENT_CLIENT_OWNER_MAP",
            "gw-a.local=owner-a|team-*, spiffe://esb/ops=*",
        ),
        ("AGENT_GRPC_TLS_RELOAD_INTERVAL", "off"),
    ])
    .unwrap();
    let TlsSettings::Mutual(m) = &c.server.tls else {
        panic!()
    };
    assert_eq!(m.owner_map.identities(), ["gw-a.local", "spiffe://esb/ops"]);
    assert_eq!(m.reload_interval, None);
    assert!(
        render(&c).contains("gw-a.local=owner-a|team-*,spiffe://esb/ops=*"),
        "{}",
        render(&c)
    );
    // Owner binding and CRLs need TLS.
    for (var, value) in [
        ("AGENT_CLIENT_OWNER_MAP", "gw=o"),
        ("AGENT_GRPC_CRL_PATH", pem),
    ] {
        let err = load(&docker_src(&[(var, value)])).unwrap_err();
        assert_eq!(err.var, var, "{err}");
    }
}

#[test]
fn render_lists_effective_values() {
    let dir = tempfile::tempdir().unwrap();
    let c = load(&containerd_src(dir.path(), &[])).unwrap();
    let text = render(&c);
    for want in [
        "runtime",
        "containerd",
        "cni.subnet",
        "10.184.208.0/23",
        "esb-esbefb03b",
        "DISABLED",
    ] {
        assert!(text.contains(want), "{want} missing in:\n{text}");
    }
}

/// Every variable with a bad value: the error names it (and a secret is never echoed).
#[test]
fn bad_values_name_their_variable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let dir_not_file = d.to_string();
    let cases: &[(&str, &str)] = &[
        ("ENV", "a\u{7}b"),
        ("AGENT_RUNTIME", "podman"),
        ("PORT", "65536"),
        ("PORT", "http"),
        ("AGENT_LISTEN_ADDR", "localhost"),
        ("AGENT_METRICS_PORT", "-1"),
        ("AGENT_METRICS_PORT", "50051"),
        ("AGENT_METRICS_LISTEN_ADDR", "x"),
        ("AGENT_LOG_LEVEL", "loud"),
        ("LOG_LEVEL", "verbose"),
        ("AGENT_LOG_FORMAT", "xml"),
        ("AGENT_GRPC_TLS_DISABLED", "maybe"),
        ("AGENT_GRPC_REFLECTION", "2"),
        ("AGENT_GRPC_ALLOWED_CLIENTS", "gw"),
        ("AGENT_CLIENT_OWNER_MAP", "gw"),
        ("AGENT_CLIENT_OWNER_MAP", "gw=a||b"),
        ("AGENT_GRPC_ALLOW_ANY_CLIENT_CERT", "maybe"),
        ("AGENT_GRPC_CRL_PATH", "relative.crl"),
        ("AGENT_GRPC_TLS_RELOAD_INTERVAL", "soon"),
        ("AGENT_GRPC_TLS_RELOAD_INTERVAL", "10ms"),
        ("AGENT_AUTH_TOKEN", "has space"),
        ("AGENT_AUTH_TOKEN_FILE", "relative/token"),
        ("AGENT_GRPC_MAX_REQUEST_BYTES", "1024"),
        ("AGENT_GRPC_MAX_RESPONSE_BYTES", "100000"),
        ("AGENT_INVOKE_MAX_RESPONSE_SIZE", "0"),
        ("AGENT_INVOKE_DEFAULT_TIMEOUT", "soon"),
        ("AGENT_DRAIN_TIMEOUT", "5 years"),
        ("AGENT_SHUTDOWN_POLICY", "kill"),
        ("AGENT_GC_INTERVAL", "0s"),
        ("AGENT_HEALTH_INTERVAL", "1ms"),
        ("AGENT_ENSURE_READY_TIMEOUT", "soon"),
        ("AGENT_ENSURE_READY_TIMEOUT", "2m"),
        ("AGENT_MAX_CONNECTIONS", "1"),
        ("AGENT_CONN_FIRST_REQUEST_TIMEOUT", "1ms"),
        ("AGENT_GRPC_MAX_CONCURRENT_STREAMS", "0"),
        ("AGENT_GRPC_KEEPALIVE_INTERVAL", "soon"),
        ("AGENT_STATE_DIR", "state"),
        ("AGENT_WORKER_MEMORY_MIB", "1"),
        ("AGENT_WORKER_MEMORY_MIB", "127"),
        ("AGENT_WORKER_MEMORY_MAX_MIB", "127"),
        ("AGENT_WORKER_MEMORY_MAX_MIB", "256"),
        ("AGENT_MAX_WORKERS", "0"),
        ("AGENT_MAX_WORKERS", "50%"),
        ("AGENT_MAX_WORKERS", "many"),
        ("AGENT_MAX_WORKERS_PER_OWNER", "-1"),
        ("AGENT_MEMORY_BUDGET", "101%"),
        ("AGENT_MEMORY_BUDGET", "8G"),
        ("AGENT_MAX_CONCURRENT_ENSURES", "0"),
        ("AGENT_STANDBY_PER_SPEC", "65"),
        ("AGENT_STANDBY_PER_SPEC", "20"),
        ("AGENT_STANDBY_TTL", "0s"),
        ("AGENT_STANDBY_MAX", "many"),
        ("AGENT_WORKER_CPU_MILLIS", "lots"),
        ("AGENT_WORKER_CPU_MAX_MILLIS", "1"),
        ("AGENT_WORKER_PIDS_LIMIT", "0"),
        ("AGENT_WORKER_OOM_SCORE_ADJ", "1001"),
        ("AGENT_WORKER_USER", "0:0"),
        ("AGENT_WORKER_USER", "app"),
        ("AGENT_WORKER_LOG_MAX_BYTES", "12"),
        ("CONTAINER_REGISTRY", "https://registry:5010"),
        ("CONTAINER_REGISTRY_INSECURE", "sometimes"),
        ("CONTAINER_REGISTRY_CA_PATH", "/nonexistent/ca.crt"),
        ("CONTAINER_REGISTRY_CA_ONLY", "1"),
        ("IMAGE_PULL_POLICY", "never"),
        ("CONTAINER_REGISTRY_ALLOWED", "https://ghcr.io"),
        ("CONTAINER_REGISTRY_ALLOWED", ","),
        ("IMAGE_PULL_TIMEOUT", "10ms"),
        ("IMAGE_MAX_BYTES", "1000"),
        ("DOCKER_HOST", "/var/run/docker.sock"),
        ("DOCKER_HOST", "https://docker:2376"),
        ("AGENT_GRPC_CERT_PATH", &dir_not_file),
        ("AGENT_GRPC_KEY_PATH", "relative.key"),
        ("AGENT_GRPC_CA_CERT_PATH", "/nonexistent/ca.crt"),
    ];
    let containerd_cases: &[(&str, &str)] = &[
        ("CONTAINERD_SOCKET", "run/containerd.sock"),
        ("CONTAINERD_RUNTIME", "runc v2"),
        ("CONTAINERD_SNAPSHOTTER", "over/lay"),
        ("CNI_CONF_DIR", "net.d"),
        ("CNI_BIN_DIR", "bin"),
        ("CNI_CONF_FILE", "10-x.conf"),
        ("CNI_SUBNET", "10.1.2.3/24"),
        ("CNI_SUBNET", "10.1.0.0/31"),
        ("CNI_SUBNET", "fd00::/64"),
        ("CNI_BRIDGE", "a-very-long-bridge-name"),
        ("CNI_GW_IP", "10.0.0.1"),
        ("CNI_DNS_SERVER", "dns.local"),
        ("CNI_NET_DIR", "networks"),
        ("CNI_IP_MASQ", "perhaps"),
        ("CNI_IDENTITY_FILE", "esb-cni.env"),
        ("CNI_PLUGIN_TIMEOUT", "0s"),
        ("CNI_PLUGIN_TIMEOUT", "soon"),
        ("AGENT_WORKER_DENY_CIDRS", "169.254.0.0/16,10.0.0.1/8"),
        ("AGENT_WORKER_DENY_CIDRS", "fd00::/8"),
        ("AGENT_WORKER_EGRESS", "some"),
    ];
    let tested = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let check = |src: MapSource, var: &str, value: &str| {
        tested.borrow_mut().insert(var.to_string());
        let err = load(&src).expect_err(&format!("{var}={value:?} must be refused"));
        assert_eq!(err.var, var, "{var}={value:?} gave: {err}");
        let line = err.to_string();
        assert!(line.starts_with(&format!("{var}: ")), "{line}");
        assert!(!line.contains('\n'), "{line}");
    };
    let pem = dir.path().join("valid.pem");
    std::fs::write(&pem, "pem").unwrap();
    let pem = pem.to_str().unwrap();
    for (var, value) in cases {
        let mut extra = Vec::new();
        if var.starts_with("AGENT_GRPC_") && var.ends_with("_PATH") {
            // The other TLS files are valid: only `var` is at fault.
            extra.extend([
                ("AGENT_GRPC_TLS_DISABLED", "0"),
                ("AGENT_GRPC_CERT_PATH", pem),
                ("AGENT_GRPC_KEY_PATH", pem),
                ("AGENT_GRPC_CA_CERT_PATH", pem),
            ]);
        }
        extra.push((*var, *value));
        check(docker_src(&extra), var, value);
    }
    for (var, value) in containerd_cases {
        let extra = [(*var, *value)];
        let mut src = containerd_src(dir.path(), &extra);
        if *var == "CNI_GW_IP" {
            src.0.insert("CNI_SUBNET".into(), "10.199.7.0/24".into());
        }
        check(src, var, value);
    }
    // Required values.
    let mut no_env = docker_src(&[]);
    no_env.0.remove("ENV");
    check(no_env, "ENV", "");
    check(
        MapSource::from_pairs([
            ("ENV", "dev"),
            ("CONTAINERS_NETWORK", "bridge"),
            ("AGENT_GRPC_TLS_DISABLED", "1"),
        ]),
        "ESB_BRAND_SLUG",
        "",
    );
    check(
        MapSource::from_pairs([
            ("ENV", "dev"),
            ("PROJECT_NAME", "acme"),
            ("AGENT_GRPC_TLS_DISABLED", "1"),
        ]),
        "CONTAINERS_NETWORK",
        "",
    );
    check(
        docker_src(&[("ESB_BRAND_SLUG", &"b".repeat(64))]),
        "ESB_BRAND_SLUG",
        "long",
    );
    // Every setting with a refusable value is covered above; PROJECT_NAME is free-form.
    let untested: Vec<_> = env::ALL
        .iter()
        .map(|s| s.env)
        .filter(|e| !tested.borrow().contains(*e) && *e != "PROJECT_NAME")
        .collect();
    assert!(untested.is_empty(), "no bad-value case for {untested:?}");
}

/// docs/configuration.md documents every variable of the table.
#[test]
fn every_setting_is_documented() {
    let doc = include_str!("../../../../docs/configuration.md");
    for s in env::ALL {
        assert!(
            doc.contains(&format!("`{}`", s.env)),
            "{} missing from docs/configuration.md",
            s.env
        );
        assert!(
            doc.contains(&format!("--{}", s.flag)),
            "--{} missing from docs/configuration.md",
            s.flag
        );
    }
}
