//! Ensure: pull per policy, create with labels/env/limits/network, start, and resolve the IP
//! with backoff (review P1-1: never an empty IP). Create/start/IP run in a detached task so a
//! dropped caller cannot leave a half-built worker: any failure — or a caller gone by the
//! time the worker is ready — removes the container.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointSettings, HostConfig,
    HostConfigLogConfig, NetworkingConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{CreateContainerOptions, InspectContainerOptions};
use esb_runtime::clock::unix_now as now;
use esb_runtime::names::worker_name;
use esb_runtime::report;
use esb_runtime::settings::PullPolicy;
use esb_runtime::{
    EnsureRequest, ErrorKind, Phase, PullOutcome, Result, RuntimeError, WORKER_PORT, Worker,
    WorkerStatus,
};
use tokio::sync::oneshot;

use crate::Inner;
use crate::convert::{inspect_status, ip_on, unix_seconds};
use crate::destroy::remove_detached;
use crate::error::{Subject, map, map_adjusted};
use crate::image::{ImageRef, ensure_image};

/// Pauses between IP look-ups after the first (SPEC §9: 100 ms … 1.6 s, 5 tries).
const IP_BACKOFF_MS: [u64; 5] = [100, 200, 400, 800, 1600];
/// Capabilities removed from Docker's default set (review H4).
pub(crate) const DROPPED_CAPS: [&str; 3] = ["NET_RAW", "MKNOD", "SETFCAP"];
/// Log files kept per worker by the json-file driver.
const LOG_FILES: u64 = 2;

pub(crate) async fn ensure(inner: &Arc<Inner>, req: EnsureRequest) -> Result<Worker> {
    // The shared rules (the server checked them too; a direct caller may not have).
    req.validate()?;
    let image = ImageRef::resolve(&req.image, &inner.common.registry)?;
    let policy = inner.common.registry.pull_policy;
    if policy == PullPolicy::Always {
        pull(inner, &image).await?;
    }

    let name = worker_name(&inner.common.identity, &req.function_name);
    let body = spec(inner, &req, &image);
    let (tx, rx) = oneshot::channel();
    let task_inner = Arc::clone(inner);
    lock_in_flight(inner).insert(name.clone());
    // The saga's own span: its log lines name the worker even after the caller left.
    let span = tracing::info_span!("ensure", container_id = %name);
    tokio::spawn(async move {
        let inner = task_inner;
        let result = build(&inner, &name, body, &req, &image).await;
        if let Err(Ok(worker)) = tx.send(result) {
            tracing::info!(container_id = %worker.name, "ensure abandoned by its caller; removing the worker");
            remove_detached(&inner, &worker.id).await;
        }
        lock_in_flight(&inner).remove(&name);
    }.instrument(span));
    rx.await.unwrap_or_else(|_| {
        Err(RuntimeError::internal(
            "ensure task ended without an answer",
        ))
    })
}

fn lock_in_flight(inner: &Inner) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
    inner.in_flight.lock().unwrap_or_else(|p| p.into_inner())
}

/// The container definition (SPEC §9, §10: limits, no restart, no-new-privileges, bounded logs).
fn spec(inner: &Inner, req: &EnsureRequest, image: &ImageRef) -> ContainerCreateBody {
    let w = &inner.common.worker;
    let memory = w.memory_for(&req.env);
    let cpu_millis = w.cpu_for(memory);
    let network = inner.settings.network.clone();
    let log_max = (inner.common.worker_log_max_bytes / LOG_FILES).max(1024);
    let labels: HashMap<String, String> = inner
        .common
        .identity
        .worker_labels(&req.function_name, &req.owner_id)
        .into_iter()
        .collect();
    ContainerCreateBody {
        image: Some(image.full.clone()),
        env: Some(req.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(labels),
        host_config: Some(HostConfig {
            memory: Some(to_i64(memory)),
            memory_swap: Some(to_i64(memory)),
            nano_cpus: Some(to_i64(cpu_millis.saturating_mul(1_000_000))),
            pids_limit: Some(to_i64(w.pids_limit)),
            // Docker's default seccomp profile applies (no `seccomp=` override here); drop the
            // capabilities no function needs, NET_RAW above all (spoofing on the bridge; H4).
            security_opt: Some(vec!["no-new-privileges".to_string()]),
            cap_drop: Some(DROPPED_CAPS.iter().map(|c| c.to_string()).collect()),
            oom_score_adj: Some(i64::from(w.oom_score_adj)),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".to_string()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), log_max.to_string()),
                    ("max-file".to_string(), LOG_FILES.to_string()),
                ])),
            }),
            network_mode: Some(network.clone()),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(network, EndpointSettings::default())])),
        }),
        ..Default::default()
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Create, start, resolve the IP; removes the container on any failure after create.
/// With `if-not-present` the create itself is the presence check (one round trip less on
/// the hot path); only its "no such image" answer triggers a pull (review P3-3).
async fn build(
    inner: &Inner,
    name: &str,
    mut body: ContainerCreateBody,
    req: &EnsureRequest,
    image: &ImageRef,
) -> Result<Worker> {
    if let Some(run_as) = inner.common.worker.run_as {
        // Opt-in (AGENT_WORKER_USER): one image inspect more per Ensure.
        body.user = forced_user(run_as, &image_user(inner, image).await?);
    }
    let opts = CreateContainerOptions {
        name: Some(name.to_string()),
        ..Default::default()
    };
    let obs = inner.observer.get();
    let policy = inner.common.registry.pull_policy;
    let mut t = Instant::now();
    let first = inner
        .docker
        .create_container(Some(opts.clone()), body.clone())
        .await;
    let created = match first {
        Err(e) if is_no_such_image(&e) => {
            pull(inner, image).await?;
            t = Instant::now();
            inner.docker.create_container(Some(opts), body).await
        }
        other => {
            // With if-not-present a successful create was the presence check (`always`
            // already reported its pull).
            if other.is_ok() && policy == PullPolicy::IfNotPresent {
                obs.pull(PullOutcome::Cached);
            }
            other
        }
    }
    .map_err(create_error)?;
    obs.phase(Phase::Create, t.elapsed());
    let id = created.id;
    inner.known.remember(&id);
    match start_and_address(inner, &id).await {
        Ok((ip, created_at)) => {
            tracing::info!(container_id = name, docker_id = %id, %ip, "worker started");
            Ok(Worker {
                id,
                name: name.to_string(),
                ip,
                port: WORKER_PORT,
                function_name: req.function_name.clone(),
                owner_id: req.owner_id.clone(),
                created_at,
            })
        }
        Err(e) => {
            // The error itself is logged once, by whoever receives it.
            tracing::info!(
                container_id = name,
                "ensure failed after create; removing the container"
            );
            remove_detached(inner, &id).await;
            Err(e)
        }
    }
}

/// Makes `image` present per the pull policy (one shared pull per reference).
async fn pull(inner: &Inner, image: &ImageRef) -> Result<()> {
    ensure_image(
        &inner.docker,
        &inner.pulls,
        image,
        &inner.common.registry,
        inner.observer.get(),
    )
    .await
}

/// The image's configured `User` (pulled first when absent).
async fn image_user(inner: &Inner, image: &ImageRef) -> Result<String> {
    let inspected = match inner.docker.inspect_image(&image.full).await {
        Err(e) if crate::error::is_not_found(&e) => {
            pull(inner, image).await?;
            inner.docker.inspect_image(&image.full).await
        }
        other => other,
    }
    .map_err(|e| map(e, "inspect image", Subject::Image))?;
    Ok(inspected.config.and_then(|c| c.user).unwrap_or_default())
}

/// `AGENT_WORKER_USER` in place of root (review H4): the `User` a container gets when the
/// image's user part is empty, `root` or uid 0; `None` keeps the image's own. Docker resolves
/// other names inside the image (a non-root name mapped to uid 0 is not detected here).
fn forced_user((uid, gid): (u32, u32), image_user: &str) -> Option<String> {
    let user = image_user.split(':').next().unwrap_or_default().trim();
    let root = user.is_empty() || user == "root" || user.parse::<u32>() == Ok(0);
    root.then(|| format!("{uid}:{gid}"))
}

fn is_no_such_image(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, message }
        if message.to_lowercase().contains("no such image"))
}

fn create_error(e: bollard::errors::Error) -> RuntimeError {
    map_adjusted(
        e,
        "create worker",
        Subject::Worker,
        |kind, msg| match kind {
            // 404 on create: the network does not exist, or the image vanished after the pull.
            ErrorKind::NotFound if msg.contains("network") => ErrorKind::FailedPrecondition,
            ErrorKind::NotFound => ErrorKind::ImageNotFound,
            k => k,
        },
    )
}

fn start_error(e: bollard::errors::Error) -> RuntimeError {
    map_adjusted(e, "start worker", Subject::Worker, |kind, msg| match kind {
        // Engine 20.10 resolves the network at start.
        ErrorKind::NotFound if msg.contains("network") => ErrorKind::FailedPrecondition,
        // A start failure (missing entrypoint, ...) is about the image or host, not a bad
        // request from the caller.
        ErrorKind::InvalidArgument | ErrorKind::NotFound => ErrorKind::Internal,
        k => k,
    })
}

/// Starts the container (`start` phase) and waits for its IP (`network` phase).
async fn start_and_address(inner: &Inner, id: &str) -> Result<(IpAddr, i64)> {
    let obs = inner.observer.get();
    let t = Instant::now();
    inner
        .docker
        .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
        .await
        .map_err(start_error)?;
    obs.phase(Phase::Start, t.elapsed());
    let t = Instant::now();
    let res = wait_address(inner, id).await;
    obs.phase(Phase::Network, t.elapsed());
    res
}

/// A worker whose process exited before it got its address (Docker releases a dead
/// container's IP): `UNAVAILABLE` with its exit code and log tail, the same report as the
/// server's ready wait gives (the caller then removes the container).
async fn exited_at_start(inner: &Inner, id: &str, c: &ContainerInspectResponse) -> RuntimeError {
    let state = c.state.as_ref();
    let code = state
        .and_then(|s| s.exit_code)
        .and_then(|c| u32::try_from(c).ok());
    let oom = state.and_then(|s| s.oom_killed).unwrap_or(false);
    inner.observer.get().exited_at_start();
    let log = match crate::logs::read(inner, id, None, report::TAIL_BYTES).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::debug!(container_id = %id, error = %e.chain(), "no log tail for the exit report");
            Vec::new()
        }
    };
    RuntimeError::new(
        ErrorKind::Unavailable,
        report::exited_at_start(id, code.map(|c| (c, oom)), &log),
    )
}

async fn wait_address(inner: &Inner, id: &str) -> Result<(IpAddr, i64)> {
    let network = &inner.settings.network;
    let mut delays = IP_BACKOFF_MS.iter();
    loop {
        let c = inner
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| map(e, "inspect new worker", Subject::Worker))?;
        let status = inspect_status(&c);
        if status == WorkerStatus::Stopped {
            return Err(exited_at_start(inner, id, &c).await);
        }
        if let Some(ip) = ip_on(
            c.network_settings
                .as_ref()
                .and_then(|n| n.networks.as_ref()),
            network,
        ) {
            let created_at = c.created.as_deref().map(unix_seconds).filter(|t| *t > 0);
            return Ok((ip, created_at.unwrap_or_else(now)));
        }
        match delays.next() {
            Some(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
            None => {
                return Err(RuntimeError::internal(format!(
                    "worker has no ip address on network {network} after {} tries",
                    IP_BACKOFF_MS.len() + 1
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_user_replaces_root_only() {
        let to = (1000, 1001);
        for root in [
            "",
            "root",
            "0",
            "00",
            "0:0",
            "root:root",
            "root:staff",
            " 0 ",
        ] {
            assert_eq!(
                forced_user(to, root).as_deref(),
                Some("1000:1001"),
                "{root:?}"
            );
        }
        for other in ["1", "app", "app:app", "1000:0", "nobody", "65534"] {
            assert_eq!(forced_user(to, other), None, "{other:?}");
        }
    }
}
