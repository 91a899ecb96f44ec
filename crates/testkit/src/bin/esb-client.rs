//! `esb-client`: a small command-line gRPC client for the agent (quickstart, manual testing).
//! Prints each reply as one JSON document on stdout.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use esb_proto::v1 as pb;
use esb_testkit::client::{ClientTls, connect_eventually};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Talk to an esb-agent over gRPC; prints JSON")]
struct Cli {
    /// Agent address: http://host:port (plaintext) or https://host:port (TLS).
    #[arg(long, env = "ESB_AGENT_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Owner id sent with every call.
    #[arg(long, env = "ESB_OWNER_ID", default_value = "quickstart")]
    owner: String,
    /// CA certificate (PEM) that signed the agent's certificate; enables TLS.
    #[arg(long, env = "ESB_CLIENT_CA")]
    ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mTLS.
    #[arg(long, env = "ESB_CLIENT_CERT", requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long, env = "ESB_CLIENT_KEY", requires = "cert")]
    key: Option<PathBuf>,
    /// Server name to verify (default: the address's host).
    #[arg(long)]
    domain: Option<String>,
    /// Seconds to keep retrying the first connection.
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// EnsureContainer: create and start a worker.
    Ensure {
        #[arg(long)]
        function: String,
        #[arg(long)]
        image: String,
        /// Worker env, repeatable: --env KEY=VALUE.
        #[arg(long = "env", value_parser = parse_kv)]
        env: Vec<(String, String)>,
    },
    /// InvokeWorker: POST a payload to a worker through the agent.
    Invoke {
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "{}")]
        payload: String,
        #[arg(long, default_value = "")]
        path: String,
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: i32,
        /// Request header, repeatable: --header KEY=VALUE.
        #[arg(long = "header", value_parser = parse_kv)]
        headers: Vec<(String, String)>,
    },
    /// ListContainers of the owner.
    List,
    /// DestroyContainer.
    Destroy {
        #[arg(long)]
        id: String,
    },
    /// PauseContainer.
    Pause {
        #[arg(long)]
        id: String,
    },
    /// ResumeContainer.
    Resume {
        #[arg(long)]
        id: String,
    },
    /// GetContainerMetrics.
    Metrics {
        #[arg(long)]
        id: String,
    },
    /// GetCapabilities.
    Capabilities,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(out) => println!("{out}"),
        Err(e) => {
            // One line with the cause chain (gRPC status included), no backtrace.
            eprintln!("esb-client: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<Value> {
    let tls = cli.ca.clone().map(|ca| ClientTls {
        ca,
        cert: cli.cert.clone(),
        key: cli.key.clone(),
        domain: cli.domain.clone(),
    });
    let timeout = std::time::Duration::from_secs(cli.connect_timeout);
    let mut c = connect_eventually(&cli.addr, tls.as_ref(), timeout).await?;
    let owner = cli.owner.clone();
    let out = match cli.cmd {
        Cmd::Ensure {
            function,
            image,
            env,
        } => {
            let w = c
                .ensure_container(pb::EnsureContainerRequest {
                    function_name: function,
                    image,
                    env: env.into_iter().collect(),
                    owner_id: owner,
                })
                .await
                .context("EnsureContainer")?
                .into_inner();
            json!({"id": w.id, "name": w.name, "ip_address": w.ip_address, "port": w.port})
        }
        Cmd::Invoke {
            id,
            payload,
            path,
            timeout_ms,
            headers,
        } => {
            let r = c
                .invoke_worker(pb::InvokeWorkerRequest {
                    path,
                    payload: payload.into_bytes(),
                    headers: headers.into_iter().collect::<HashMap<_, _>>(),
                    timeout_ms,
                    container_id: id,
                    owner_id: owner,
                })
                .await
                .context("InvokeWorker")?
                .into_inner();
            let body = serde_json::from_slice::<Value>(&r.body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.body).into_owned()));
            json!({"status_code": r.status_code, "headers": r.headers, "body": body})
        }
        Cmd::List => {
            let l = c
                .list_containers(pb::ListContainersRequest { owner_id: owner })
                .await
                .context("ListContainers")?
                .into_inner();
            let items: Vec<Value> = l
                .containers
                .into_iter()
                .map(|s| {
                    json!({"container_id": s.container_id, "function_name": s.function_name,
                    "status": s.status, "container_name": s.container_name,
                    "created_at": s.created_at, "last_used_at": s.last_used_at,
                    "owner_id": s.owner_id})
                })
                .collect();
            json!({ "containers": items })
        }
        Cmd::Destroy { id } => {
            let r = c
                .destroy_container(pb::DestroyContainerRequest {
                    function_name: String::new(),
                    container_id: id,
                    owner_id: owner,
                })
                .await
                .context("DestroyContainer")?
                .into_inner();
            json!({ "success": r.success })
        }
        Cmd::Pause { id } => {
            let r = c
                .pause_container(pb::PauseContainerRequest {
                    container_id: id,
                    owner_id: owner,
                })
                .await
                .context("PauseContainer")?
                .into_inner();
            json!({ "success": r.success })
        }
        Cmd::Resume { id } => {
            let r = c
                .resume_container(pb::ResumeContainerRequest {
                    container_id: id,
                    owner_id: owner,
                })
                .await
                .context("ResumeContainer")?
                .into_inner();
            json!({ "success": r.success })
        }
        Cmd::Metrics { id } => {
            let m = c
                .get_container_metrics(pb::GetContainerMetricsRequest {
                    container_id: id,
                    owner_id: owner,
                })
                .await
                .context("GetContainerMetrics")?
                .into_inner()
                .metrics
                .unwrap_or_default();
            json!({"container_id": m.container_id, "function_name": m.function_name,
                "container_name": m.container_name, "state": m.state,
                "memory_current": m.memory_current, "memory_max": m.memory_max,
                "oom_events": m.oom_events, "cpu_usage_ns": m.cpu_usage_ns,
                "exit_code": m.exit_code, "restart_count": m.restart_count,
                "exit_time": m.exit_time, "collected_at": m.collected_at})
        }
        Cmd::Capabilities => {
            let k = c
                .get_capabilities(pb::GetCapabilitiesRequest {})
                .await
                .context("GetCapabilities")?
                .into_inner();
            json!({"runtime": k.runtime, "runtime_version": k.runtime_version,
                "agent_version": k.agent_version, "pause_resume": k.pause_resume,
                "metrics": k.metrics, "invoke": k.invoke, "cgroup_version": k.cgroup_version,
                "snapshotter": k.snapshotter, "cni_network": k.cni_network,
                "cni_subnet": k.cni_subnet, "cni_bridge": k.cni_bridge,
                "tls_enabled": k.tls_enabled, "warnings": k.warnings})
        }
    };
    Ok(out)
}
