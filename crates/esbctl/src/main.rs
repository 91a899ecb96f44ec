//! `esbctl`: the operator CLI of esb-agent (what `crictl` is to containerd). Tables for people,
//! `-o json` for scripts; errors are one line on stderr with the gRPC code, exit status 1.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use esb_proto::v1 as pb;
use esbctl::client::{ClientTls, connect_eventually};
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tonic::Request;
use tonic::metadata::{MetadataMap, MetadataValue};

const EXAMPLES: &str = "\
Examples:
  esbctl --addr http://127.0.0.1:50051 health
  esbctl --owner gw-1 ls
  esbctl --owner gw-1 ensure --function hello --image registry:5010/hello:1 --env GREETING=hi
  echo '{\"name\":\"x\"}' | esbctl --owner gw-1 invoke esb-dev-hello-1a2b3c -
  esbctl --owner gw-1 logs -f esb-dev-hello-1a2b3c
  esbctl pull registry:5010/hello:1
  esbctl --addr https://node-7:50051 --ca ca.crt --cert ops.crt --key ops.key caps
  esbctl completion bash > /etc/bash_completion.d/esbctl

Settings mirror the agent's: mTLS material (--ca/--cert/--key), the bearer token
(--token-file, or ESB_AGENT_TOKEN), and the owner id every worker call is scoped to.";

#[derive(Parser)]
#[command(
    name = "esbctl",
    version,
    about = "Operator CLI for esb-agent",
    after_help = EXAMPLES
)]
struct Cli {
    /// Agent address: http://host:port (plaintext) or https://host:port (TLS).
    #[arg(
        long,
        env = "ESB_AGENT_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    addr: String,
    /// Owner id every worker call is scoped to (the gateway's id).
    #[arg(long, env = "ESB_OWNER_ID", default_value = "default", global = true)]
    owner: String,
    /// CA certificate (PEM) that signed the agent's certificate; implies TLS.
    #[arg(long, env = "ESB_CLIENT_CA", global = true)]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    #[arg(long, env = "ESB_CLIENT_CERT", requires = "key", global = true)]
    cert: Option<PathBuf>,
    /// Client key (PEM) for mTLS.
    #[arg(long, env = "ESB_CLIENT_KEY", requires = "cert", global = true)]
    key: Option<PathBuf>,
    /// Server name to verify (default: the address's host).
    #[arg(long, global = true)]
    domain: Option<String>,
    /// Bearer token (the agent's AGENT_AUTH_TOKEN). Prefer --token-file: argv is visible.
    #[arg(long, env = "ESB_AGENT_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// File holding the bearer token (the agent's AGENT_AUTH_TOKEN_FILE).
    #[arg(long, env = "ESB_AGENT_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Seconds to keep retrying the first connection.
    #[arg(long, default_value_t = 10, global = true)]
    connect_timeout: u64,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// gRPC health of the agent (SERVING when its runtime answers).
    Health,
    /// What the agent supports and its capacity (GetCapabilities).
    #[command(alias = "capabilities")]
    Caps,
    /// The owner's workers.
    #[command(alias = "list")]
    Ls,
    /// One worker: its listing and its metrics.
    Inspect { id: String },
    /// Create and start a worker (EnsureContainer).
    Ensure {
        #[arg(long)]
        function: String,
        #[arg(long)]
        image: String,
        /// Worker env, repeatable: --env KEY=VALUE.
        #[arg(long = "env", value_parser = parse_kv)]
        env: Vec<(String, String)>,
    },
    /// Invoke a worker; prints its reply body (status and report on stderr).
    Invoke {
        id: String,
        /// Payload; `-` reads stdin. Default `{}`.
        payload: Option<String>,
        #[arg(long, default_value = "")]
        path: String,
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: i32,
        /// Request header, repeatable: --header KEY=VALUE.
        #[arg(long = "header", value_parser = parse_kv)]
        headers: Vec<(String, String)>,
    },
    /// Pause a worker.
    Pause { id: String },
    /// Resume a worker.
    Resume { id: String },
    /// Destroy a worker.
    #[command(alias = "destroy")]
    Rm { id: String },
    /// A worker's metrics (GetContainerMetrics).
    Metrics { id: String },
    /// A worker's stdout/stderr as the agent keeps it.
    Logs {
        id: String,
        /// Keep following new output.
        #[arg(short, long)]
        follow: bool,
        /// Last bytes to show first (0 = 64 KiB).
        #[arg(long, default_value_t = 0)]
        tail: u32,
    },
    /// Pull an image ahead of its first Ensure (PullImage), with progress.
    Pull { image: String },
    /// Shell completion script.
    Completion { shell: clap_complete::Shell },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        // One line: the cause chain with the gRPC code, never a backtrace.
        let msg = match e.downcast_ref::<tonic::Status>() {
            Some(s) => format!("{:?}: {}", s.code(), s.message()),
            None => format!("{e:#}"),
        };
        eprintln!("esbctl: {msg}");
        std::process::exit(1);
    }
}

/// Adds the bearer token to a request.
struct Auth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Auth {
    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        r
    }
}

fn token(cli: &Cli) -> anyhow::Result<Auth> {
    let t = match (&cli.token, &cli.token_file) {
        (_, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("read token file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (Some(t), None) => Some(t.trim().to_string()),
        (None, None) => None,
    };
    match t {
        None => Ok(Auth(None)),
        Some(t) => Ok(Auth(Some(
            format!("Bearer {t}")
                .parse()
                .context("the token is not valid header text")?,
        ))),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Cmd::Completion { shell } = cli.cmd {
        clap_complete::generate(shell, &mut Cli::command(), "esbctl", &mut std::io::stdout());
        return Ok(());
    }
    let auth = token(&cli)?;
    let tls = cli.ca.clone().map(|ca| ClientTls {
        ca,
        cert: cli.cert.clone(),
        key: cli.key.clone(),
        domain: cli.domain.clone(),
    });
    let timeout = Duration::from_secs(cli.connect_timeout);
    let mut c = connect_eventually(&cli.addr, tls.as_ref(), timeout).await?;
    let owner = cli.owner.clone();
    let json_out = cli.output == Output::Json;
    match cli.cmd {
        Cmd::Health => {
            let channel = esbctl::client::channel(&cli.addr, tls.as_ref()).await?;
            let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
            let r = h
                .check(auth.req(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                }))
                .await?
                .into_inner();
            let status = match r.status() {
                tonic_health::pb::health_check_response::ServingStatus::Serving => "SERVING",
                tonic_health::pb::health_check_response::ServingStatus::NotServing => "NOT_SERVING",
                _ => "UNKNOWN",
            };
            if json_out {
                println!("{}", json!({ "status": status }));
            } else {
                println!("{status}");
            }
            if status != "SERVING" {
                bail!("the agent is {status}");
            }
        }
        Cmd::Caps => {
            let k = c
                .get_capabilities(auth.req(pb::GetCapabilitiesRequest {}))
                .await?
                .into_inner();
            let v = json!({"runtime": k.runtime, "runtime_version": k.runtime_version,
                "agent_version": k.agent_version, "pause_resume": k.pause_resume,
                "metrics": k.metrics, "invoke": k.invoke, "cgroup_version": k.cgroup_version,
                "snapshotter": k.snapshotter, "cni_network": k.cni_network,
                "cni_subnet": k.cni_subnet, "cni_bridge": k.cni_bridge,
                "max_invoke_response_bytes": k.max_invoke_response_bytes,
                "max_request_bytes": k.max_request_bytes,
                "default_memory_bytes": k.default_memory_bytes,
                "default_cpu_millis": k.default_cpu_millis,
                "default_pids_limit": k.default_pids_limit, "tls_enabled": k.tls_enabled,
                "max_workers": k.max_workers, "workers_used": k.workers_used,
                "memory_budget_bytes": k.memory_budget_bytes,
                "memory_reserved_bytes": k.memory_reserved_bytes,
                "worker_memory_max_bytes": k.worker_memory_max_bytes,
                "max_workers_per_owner": k.max_workers_per_owner,
                "max_concurrent_ensures": k.max_concurrent_ensures,
                "warnings": k.warnings});
            print_value(&v, json_out);
        }
        Cmd::Ls => {
            let l = c
                .list_containers(auth.req(pb::ListContainersRequest { owner_id: owner }))
                .await?
                .into_inner();
            if json_out {
                let items: Vec<Value> = l.containers.iter().map(listed).collect();
                println!("{}", json!({ "containers": items }));
            } else {
                let mut rows = vec![vec![
                    "ID".to_string(),
                    "FUNCTION".into(),
                    "STATUS".into(),
                    "CREATED".into(),
                    "LAST USED".into(),
                ]];
                for s in &l.containers {
                    rows.push(vec![
                        s.container_id.clone(),
                        s.function_name.clone(),
                        s.status.clone(),
                        ago(s.created_at),
                        ago(s.last_used_at),
                    ]);
                }
                print_table(&rows);
            }
        }
        Cmd::Inspect { id } => {
            let l = c
                .list_containers(auth.req(pb::ListContainersRequest {
                    owner_id: owner.clone(),
                }))
                .await?
                .into_inner();
            let Some(s) = l.containers.iter().find(|s| s.container_id == id) else {
                bail!("NotFound: container {id} not found for owner {owner:?}");
            };
            let mut v = listed(s);
            if let Ok(m) = c
                .get_container_metrics(auth.req(pb::GetContainerMetricsRequest {
                    container_id: id,
                    owner_id: owner,
                }))
                .await
            {
                v["metrics"] = metrics(&m.into_inner().metrics.unwrap_or_default());
            }
            print_value(&v, json_out);
        }
        Cmd::Ensure {
            function,
            image,
            env,
        } => {
            let w = c
                .ensure_container(auth.req(pb::EnsureContainerRequest {
                    function_name: function,
                    image,
                    env: env.into_iter().collect(),
                    owner_id: owner,
                }))
                .await?
                .into_inner();
            let v = json!({"id": w.id, "name": w.name, "ip_address": w.ip_address, "port": w.port});
            print_value(&v, json_out);
        }
        Cmd::Invoke {
            id,
            payload,
            path,
            timeout_ms,
            headers,
        } => {
            let payload = match payload.as_deref() {
                None => b"{}".to_vec(),
                Some("-") => {
                    let mut b = Vec::new();
                    std::io::stdin().read_to_end(&mut b).context("read stdin")?;
                    b
                }
                Some(p) => p.as_bytes().to_vec(),
            };
            let r = c
                .invoke_worker(auth.req(pb::InvokeWorkerRequest {
                    path,
                    payload,
                    headers: headers.into_iter().collect::<HashMap<_, _>>(),
                    timeout_ms,
                    container_id: id,
                    owner_id: owner,
                }))
                .await?;
            let report = report(r.metadata());
            let r = r.into_inner();
            if json_out {
                let body = serde_json::from_slice::<Value>(&r.body).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&r.body).into_owned())
                });
                println!(
                    "{}",
                    json!({"status_code": r.status_code, "headers": r.headers, "body": body,
                        "report": report})
                );
            } else {
                let mut out = std::io::stdout();
                out.write_all(&r.body)?;
                if !r.body.ends_with(b"\n") {
                    out.write_all(b"\n")?;
                }
                let mut line = format!("status {}", r.status_code);
                for (k, v) in &report {
                    line.push_str(&format!(" {k}={v}"));
                }
                eprintln!("{line}");
            }
        }
        Cmd::Pause { id } => {
            c.pause_container(auth.req(pb::PauseContainerRequest {
                container_id: id.clone(),
                owner_id: owner,
            }))
            .await?;
            done(&id, "paused", json_out);
        }
        Cmd::Resume { id } => {
            c.resume_container(auth.req(pb::ResumeContainerRequest {
                container_id: id.clone(),
                owner_id: owner,
            }))
            .await?;
            done(&id, "resumed", json_out);
        }
        Cmd::Rm { id } => {
            c.destroy_container(auth.req(pb::DestroyContainerRequest {
                function_name: String::new(),
                container_id: id.clone(),
                owner_id: owner,
            }))
            .await?;
            done(&id, "removed", json_out);
        }
        Cmd::Metrics { id } => {
            let m = c
                .get_container_metrics(auth.req(pb::GetContainerMetricsRequest {
                    container_id: id,
                    owner_id: owner,
                }))
                .await?
                .into_inner()
                .metrics
                .unwrap_or_default();
            print_value(&metrics(&m), json_out);
        }
        Cmd::Logs { id, follow, tail } => {
            let mut s = c
                .worker_logs(auth.req(pb::WorkerLogsRequest {
                    container_id: id,
                    owner_id: owner,
                    tail_bytes: tail,
                    follow,
                }))
                .await?
                .into_inner();
            let mut out = std::io::stdout();
            while let Some(chunk) = s.next().await {
                out.write_all(&chunk?.data)?;
                out.flush()?;
            }
        }
        Cmd::Pull { image } => {
            let mut s = c
                .pull_image(auth.req(pb::PullImageRequest {
                    image,
                    owner_id: owner,
                }))
                .await?
                .into_inner();
            let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !json_out;
            while let Some(m) = s.next().await {
                let m = m?;
                if m.done {
                    if bar {
                        eprintln!();
                    }
                    let v = json!({"reference": m.reference, "digest": m.digest,
                        "pulled": m.pulled});
                    print_value(&v, json_out);
                } else if bar {
                    eprint!("\r{}", progress_bar(&m));
                } else if !json_out {
                    eprintln!(
                        "layers {}/{}  bytes {}/{}",
                        m.layers_done, m.layers_total, m.bytes_done, m.bytes_total
                    );
                }
            }
        }
        Cmd::Completion { .. } => {}
    }
    Ok(())
}

/// `[#########...........]  3/7 layers  12.3/45.6 MiB`
fn progress_bar(m: &pb::PullImageProgress) -> String {
    const WIDTH: u64 = 30;
    let filled = (m.bytes_done.saturating_mul(WIDTH))
        .checked_div(m.bytes_total)
        .unwrap_or(0)
        .min(WIDTH) as usize;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    format!(
        "[{}{}] {}/{} layers  {:.1}/{:.1} MiB",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled),
        m.layers_done,
        m.layers_total,
        mib(m.bytes_done),
        mib(m.bytes_total)
    )
}

fn listed(s: &pb::ContainerState) -> Value {
    json!({"container_id": s.container_id, "function_name": s.function_name,
        "status": s.status, "container_name": s.container_name,
        "created_at": s.created_at, "last_used_at": s.last_used_at, "owner_id": s.owner_id})
}

fn metrics(m: &pb::ContainerMetrics) -> Value {
    json!({"container_id": m.container_id, "function_name": m.function_name,
        "container_name": m.container_name, "state": m.state,
        "memory_current": m.memory_current, "memory_max": m.memory_max,
        "oom_events": m.oom_events, "cpu_usage_ns": m.cpu_usage_ns,
        "exit_code": m.exit_code, "restart_count": m.restart_count,
        "exit_time": m.exit_time, "collected_at": m.collected_at})
}

/// The invocation report the agent returns as `x-esb-report-*` trailers.
fn report(md: &MetadataMap) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = md
        .iter()
        .filter_map(|kv| match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                let k = k.as_str().strip_prefix("x-esb-report-")?;
                Some((k.to_string(), v.to_str().ok()?.to_string()))
            }
            tonic::metadata::KeyAndValueRef::Binary(..) => None,
        })
        .collect();
    out.sort();
    out
}

fn done(id: &str, what: &str, json_out: bool) {
    if json_out {
        println!("{}", json!({ "container_id": id, "result": what }));
    } else {
        println!("{id} {what}");
    }
}

/// `key: value` lines, or one JSON document.
fn print_value(v: &Value, json_out: bool) {
    if json_out {
        println!("{v}");
        return;
    }
    if let Value::Object(m) = v {
        let width = m.keys().map(String::len).max().unwrap_or(0);
        for (k, v) in m {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Array(a) if a.is_empty() => "-".to_string(),
                other => other.to_string(),
            };
            println!("{k:width$}  {v}");
        }
    }
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

/// "12s ago" style age of a unix time; "-" when unset.
fn ago(unix: i64) -> String {
    if unix <= 0 {
        return "-".into();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let s = (now - unix).max(0);
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}
