//! `esb-agent config`: the effective configuration as `key = value` lines, secrets redacted.

use esb_runtime::settings::PullPolicy;
use esb_server::{ShutdownPolicy, TlsSettings};

use super::vars::format_duration;
use super::{Backend, Config, LogFormat};

/// The effective configuration, one setting per line. The bearer token is never shown.
pub fn render(c: &Config) -> String {
    let s = &c.server;
    let id = &c.common.identity;
    let reg = &c.common.registry;
    let w = &c.common.worker;
    let mut rows: Vec<(&str, String)> = vec![
        ("runtime", c.backend.name().to_string()),
        ("identity.env", id.env().to_string()),
        ("identity.brand", id.brand().to_string()),
        ("identity.label_prefix", id.label_prefix().to_string()),
        ("server.listen_addr", s.listen_addr.to_string()),
        (
            "server.metrics_addr",
            s.metrics_addr.map_or("off".to_string(), |a| a.to_string()),
        ),
    ];
    match &s.tls {
        TlsSettings::Disabled => {
            rows.push(("server.tls", "DISABLED (plaintext, insecure)".to_string()))
        }
        TlsSettings::Mutual(m) => {
            rows.push(("server.tls", "mutual".to_string()));
            rows.push(("server.tls.cert_path", m.cert_path.display().to_string()));
            rows.push(("server.tls.key_path", m.key_path.display().to_string()));
            rows.push((
                "server.tls.client_ca_path",
                m.client_ca_path.display().to_string(),
            ));
            rows.push((
                "server.tls.crl_path",
                m.crl_path
                    .as_ref()
                    .map_or("<none>".to_string(), |p| p.display().to_string()),
            ));
            rows.push((
                "server.tls.allowed_clients",
                if !m.allowed_client_identities.is_empty() {
                    list(&m.allowed_client_identities)
                } else if !m.owner_map.is_empty() {
                    "the identities of client_owner_map".to_string()
                } else {
                    "any certificate of the CA (waived)".to_string()
                },
            ));
            rows.push((
                "server.tls.client_owner_map",
                if m.owner_map.is_empty() {
                    "<none>".to_string()
                } else {
                    m.owner_map.to_string()
                },
            ));
            rows.push((
                "server.tls.reload_interval",
                m.reload_interval
                    .map_or("off (SIGHUP only)".to_string(), format_duration),
            ));
        }
    }
    rows.extend([
        (
            "server.auth_token",
            if s.auth_token.is_some() {
                "<redacted>"
            } else {
                "<none>"
            }
            .to_string(),
        ),
        ("server.reflection", s.reflection.to_string()),
        ("server.max_request_bytes", s.max_request_bytes.to_string()),
        (
            "server.max_response_bytes",
            s.max_response_bytes.to_string(),
        ),
        (
            "server.invoke.max_response_bytes",
            s.invoke.max_response_bytes.to_string(),
        ),
        (
            "server.invoke.default_timeout",
            format_duration(s.invoke.default_timeout),
        ),
        ("server.drain_timeout", format_duration(s.drain_timeout)),
        (
            "server.shutdown_policy",
            match s.shutdown_policy {
                ShutdownPolicy::Keep => "keep",
                ShutdownPolicy::Destroy => "destroy",
            }
            .to_string(),
        ),
        ("server.gc_interval", format_duration(s.gc_interval)),
        ("server.health_interval", format_duration(s.health_interval)),
        (
            "server.ensure_ready_timeout",
            format_duration(s.ensure_ready_timeout),
        ),
        (
            "server.conn.max_connections",
            s.conn.max_connections.to_string(),
        ),
        (
            "server.conn.first_request_timeout",
            format_duration(s.conn.first_request_timeout),
        ),
        (
            "server.conn.max_concurrent_streams",
            s.conn.max_concurrent_streams.to_string(),
        ),
        (
            "server.conn.keepalive_interval",
            s.conn
                .keepalive_interval
                .map_or("off".to_string(), format_duration),
        ),
        ("admission.max_workers", limit(s.admission.max_workers)),
        (
            "admission.max_workers_per_owner",
            limit(s.admission.max_workers_per_owner),
        ),
        (
            "admission.memory_budget_bytes",
            limit(s.admission.memory_budget_bytes),
        ),
        (
            "admission.worker_memory_max_bytes",
            s.admission.memory_max_bytes.to_string(),
        ),
        (
            "admission.max_concurrent_ensures",
            s.admission.max_concurrent_ensures.to_string(),
        ),
        ("standby.per_spec", s.standby.per_spec.to_string()),
        ("standby.ttl", format_duration(s.standby.ttl)),
        ("standby.max", s.standby.max.to_string()),
        ("state_dir", c.common.state_dir.display().to_string()),
        ("registry.default", reg.default_registry.clone()),
        ("registry.insecure", reg.insecure.to_string()),
        (
            "registry.ca_path",
            reg.ca_path
                .as_ref()
                .map_or("<none>".to_string(), |p| p.display().to_string()),
        ),
        ("registry.ca_only", reg.ca_only.to_string()),
        (
            "registry.pull_policy",
            match reg.pull_policy {
                PullPolicy::IfNotPresent => "if-not-present",
                PullPolicy::Always => "always",
            }
            .to_string(),
        ),
        (
            "registry.allowed",
            match &reg.allowed {
                esb_runtime::image_ref::AllowedRegistries::Any => "*".to_string(),
                esb_runtime::image_ref::AllowedRegistries::Only(h) => h.join(","),
            },
        ),
        ("registry.pull_timeout", format_duration(reg.pull_timeout)),
        ("registry.max_image_bytes", reg.max_image_bytes.to_string()),
        ("worker.memory_bytes", w.memory_bytes.to_string()),
        (
            "worker.cpu_millis",
            w.cpu_millis.map_or("auto".to_string(), |m| m.to_string()),
        ),
        ("worker.cpu_max_millis", w.cpu_max_millis.to_string()),
        ("worker.pids_limit", w.pids_limit.to_string()),
        ("worker.oom_score_adj", w.oom_score_adj.to_string()),
        (
            "worker.user",
            w.run_as
                .map_or("image".to_string(), |(u, g)| format!("{u}:{g}")),
        ),
        (
            "worker.log_max_bytes",
            c.common.worker_log_max_bytes.to_string(),
        ),
        ("log.filter", c.logging.filter.clone()),
        (
            "log.format",
            match c.logging.format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }
            .to_string(),
        ),
    ]);
    match &c.backend {
        Backend::Docker(d) => {
            rows.push((
                "docker.host",
                d.host
                    .clone()
                    .unwrap_or_else(|| "<docker default>".to_string()),
            ));
            rows.push(("docker.network", d.network.clone()));
        }
        Backend::Containerd { containerd, cni } => {
            rows.extend([
                ("containerd.socket", containerd.socket.display().to_string()),
                ("containerd.namespace", containerd.namespace.clone()),
                ("containerd.runtime", containerd.runtime.clone()),
                ("containerd.snapshotter", containerd.snapshotter.clone()),
                ("cni.network", cni.network_name.clone()),
                ("cni.bridge", cni.bridge.clone()),
                ("cni.subnet", cni.subnet.clone()),
                ("cni.gateway", cni.gateway.clone()),
                ("cni.dns_server", cni.dns_server.clone()),
                ("cni.ip_masq", cni.ip_masq.to_string()),
                (
                    "cni.worker_deny_cidrs",
                    cni.firewall
                        .as_ref()
                        .map(|f| f.deny_cidrs.join(","))
                        .unwrap_or_default(),
                ),
                (
                    "cni.worker_egress",
                    match cni.firewall.as_ref().map(|f| f.egress) {
                        Some(false) => "none".to_string(),
                        _ => "all".to_string(),
                    },
                ),
                ("cni.conf_dir", cni.conf_dir.display().to_string()),
                ("cni.conf_file", cni.conf_file.display().to_string()),
                ("cni.bin_dir", cni.bin_dir.display().to_string()),
                ("cni.net_dir", cni.net_dir.display().to_string()),
                ("cni.identity_file", cni.identity_file.display().to_string()),
                ("cni.plugin_timeout", format_duration(cni.plugin_timeout)),
            ]);
        }
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<width$} = {v}\n"));
    }
    for note in &c.notes {
        out.push_str(&format!("# warning: {note}\n"));
    }
    out
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "<any>".to_string()
    } else {
        items.join(",")
    }
}

fn limit(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".to_string()
    } else {
        v.to_string()
    }
}
