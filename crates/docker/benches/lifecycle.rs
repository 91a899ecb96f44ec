//! Lifecycle benchmark against the private dockerd (`cargo bench -p esb-docker --bench
//! lifecycle`; skipped without the dev env): Ensure -> first invoke beside the Docker CLI
//! (`docker run -d` + inspect + first invoke) on the same image in the same run,
//! pause/resume, and List with 100 containers.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions,
};
use esb_docker::DockerRuntime;
use esb_docker::DockerSettings;
use esb_runtime::settings::CommonSettings;
use esb_runtime::{EnsureRequest, Runtime};

const RUNS: usize = 15;
const BRAND: &str = "esbt-dk-bench";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let host = env.docker_host.clone().context("docker host")?;
    let network = env.docker_network.clone().context("docker network")?;
    let image = env.worker_image.clone().context("worker image")?;
    let common =
        esb_testkit::common_settings(&env, BRAND, "bench", std::env::temp_dir().join(BRAND));
    let settings = DockerSettings {
        host: Some(host.clone()),
        network: network.clone(),
        firewall: None,
    };
    let rt = DockerRuntime::connect(common.clone(), settings).await?;
    cleanup(&rt).await;
    let result = run(&rt, &common, &host, &network, &image).await;
    cleanup(&rt).await;
    result
}

async fn run(
    rt: &DockerRuntime,
    common: &CommonSettings,
    host: &str,
    network: &str,
    image: &str,
) -> anyhow::Result<()> {
    let req = EnsureRequest {
        function_name: "bench".into(),
        image: image.into(),
        env: BTreeMap::from([("AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(), "128".into())]),
        owner_id: "bench".into(),
    };
    // Warm-up of both paths (image present, daemon caches warm).
    let w = rt.ensure(req.clone()).await?;
    invoke(w.ip).await?;
    rt.destroy(&w.id).await?;
    let id = cli_run(host, network, image).await?;
    cli_rm(host, &id);

    let (mut ours, mut cli, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let t = Instant::now();
        let id = bare_run(rt, network, image).await?;
        bare.push(t.elapsed());
        cli_rm(host, &id);

        let t = Instant::now();
        let w = rt.ensure(req.clone()).await?;
        invoke(w.ip).await?;
        ours.push(t.elapsed());
        rt.destroy(&w.id).await?;

        let t = Instant::now();
        let id = cli_run(host, network, image).await?;
        cli.push(t.elapsed());
        cli_rm(host, &id);
    }
    println!("ensure -> first invoke ({RUNS} runs, interleaved)");
    println!(
        "  esb-docker   p50 {:>7.1} ms  p90 {:>7.1} ms",
        pct(&mut ours, 50),
        pct(&mut ours, 90)
    );
    println!(
        "  docker CLI   p50 {:>7.1} ms  p90 {:>7.1} ms",
        pct(&mut cli, 50),
        pct(&mut cli, 90)
    );
    println!(
        "  bare API     p50 {:>7.1} ms  p90 {:>7.1} ms (create+start+inspect, no limits)",
        pct(&mut bare, 50),
        pct(&mut bare, 90)
    );
    println!(
        "  ratio p50 esb-docker / CLI {:.2}",
        pct(&mut ours, 50) / pct(&mut cli, 50)
    );

    // Pause/resume through the runtime, interleaved with bare pause/unpause calls.
    let w = rt.ensure(req.clone()).await?;
    invoke(w.ip).await?;
    let mut timings = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let mut refusals = 0;
    for _ in 0..40 {
        let t = Instant::now();
        rt.pause(&w.id).await?;
        timings[0].push(t.elapsed());
        let t = Instant::now();
        rt.resume(&w.id).await?;
        timings[1].push(t.elapsed());
        // Bare calls meet dockerd's stale state after quick toggles (late pause events):
        // a refused call is counted, not timed, and retried after the state settled.
        let t = Instant::now();
        match rt.client().pause_container(&w.id).await {
            Ok(()) => timings[2].push(t.elapsed()),
            Err(_) => {
                refusals += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                rt.pause(&w.id).await?;
            }
        }
        let t = Instant::now();
        match rt.client().unpause_container(&w.id).await {
            Ok(()) => timings[3].push(t.elapsed()),
            Err(_) => {
                refusals += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                rt.resume(&w.id).await?;
            }
        }
    }
    rt.destroy(&w.id).await?;
    let [pause, resume, bare_pause, bare_resume] = &mut timings;
    println!(
        "pause/resume (40 runs each, interleaved; bare calls refused by a stale daemon state: {refusals})"
    );
    println!(
        "  esb-docker pause p50 {:>5.1} ms p90 {:>5.1} ms | resume p50 {:>5.1} ms p90 {:>5.1} ms",
        pct(pause, 50),
        pct(pause, 90),
        pct(resume, 50),
        pct(resume, 90)
    );
    println!(
        "  bare API   pause p50 {:>5.1} ms p90 {:>5.1} ms | resume p50 {:>5.1} ms p90 {:>5.1} ms",
        pct(bare_pause, 50),
        pct(bare_pause, 90),
        pct(bare_resume, 50),
        pct(bare_resume, 90)
    );

    // 100 managed containers (created, not started: List cost does not depend on state).
    let labels: HashMap<String, String> = common
        .identity
        .worker_labels("bench", "bench")
        .into_iter()
        .collect();
    for i in 0..100 {
        let opts = CreateContainerOptions {
            name: Some(format!("{BRAND}-list-{i}")),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(image.into()),
            labels: Some(labels.clone()),
            ..Default::default()
        };
        rt.client().create_container(Some(opts), body).await?;
    }
    let mut list = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let n = rt.list().await?.len();
        list.push(t.elapsed());
        if n != 100 {
            bail!("list returned {n} workers, expected 100");
        }
    }
    println!(
        "list (100 containers) p50 {:>6.1} ms  p90 {:>6.1} ms (20 runs)",
        pct(&mut list, 50),
        pct(&mut list, 90)
    );
    Ok(())
}

fn pct(v: &mut [Duration], p: usize) -> f64 {
    v.sort();
    let i = ((v.len() * p).div_ceil(100))
        .saturating_sub(1)
        .min(v.len() - 1);
    v[i].as_secs_f64() * 1000.0
}

fn docker(host: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .arg("-H")
        .arg(host)
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The CLI path: `docker run -d`, `docker inspect` for the IP, then the first invoke.
async fn cli_run(host: &str, network: &str, image: &str) -> anyhow::Result<String> {
    let label = format!("created_by={BRAND}-agent");
    let id = docker(
        host,
        &[
            "run",
            "-d",
            "--network",
            network,
            "--label",
            &label,
            "--memory",
            "128m",
            image,
        ],
    )?;
    let ip = docker(
        host,
        &[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &id,
        ],
    )?;
    invoke(ip.parse()?).await?;
    Ok(id)
}

/// The bare Engine API path: create, start, inspect for the IP, first invoke.
async fn bare_run(rt: &DockerRuntime, network: &str, image: &str) -> anyhow::Result<String> {
    let labels = HashMap::from([("created_by".to_string(), format!("{BRAND}-agent"))]);
    let body = ContainerCreateBody {
        image: Some(image.into()),
        labels: Some(labels),
        host_config: Some(bollard::models::HostConfig {
            network_mode: Some(network.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = rt
        .client()
        .create_container(None::<CreateContainerOptions>, body)
        .await?
        .id;
    rt.client()
        .start_container(
            &id,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await?;
    let c = rt
        .client()
        .inspect_container(
            &id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await?;
    let ip = c
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|n| n.get(network).and_then(|e| e.ip_address.clone()))
        .context("no ip")?;
    invoke(ip.parse()?).await?;
    Ok(id)
}

fn cli_rm(host: &str, id: &str) {
    let _ = docker(host, &["rm", "-f", id]);
}

async fn cleanup(rt: &DockerRuntime) {
    let opts = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_string(),
            vec![format!("created_by={BRAND}-agent")],
        )])),
        ..Default::default()
    };
    if let Ok(list) = rt.client().list_containers(Some(opts)).await {
        for id in list.into_iter().filter_map(|c| c.id) {
            let rm = RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            };
            let _ = rt.client().remove_container(&id, Some(rm)).await;
        }
    }
}

/// First successful invoke, retrying while the worker is not listening yet.
async fn invoke(ip: IpAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match invoke_once(ip).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

async fn invoke_once(ip: IpAddr) -> anyhow::Result<()> {
    let (status, _) = esb_testkit::http::post(ip, "{}").await?;
    if status != 200 {
        bail!("bad answer");
    }
    Ok(())
}
