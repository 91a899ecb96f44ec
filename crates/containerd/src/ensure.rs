//! Ensure: image → snapshot → container → task (logs to a file), alongside pinned netns + CNI
//! ADD (the task only needs the netns pinned) → start once both are done. Runs in a detached task; every failure compensates what was done, and a worker whose
//! caller went away is destroyed, so nothing leaks (SPEC §3, §7).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use containerd_client::services::v1::container::Runtime as ContainerRuntime;
use containerd_client::services::v1::snapshots::PrepareSnapshotRequest;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, StartRequest,
};
use containerd_client::types::Mount;
use esb_runtime::names::worker_name;
use esb_runtime::{EnsureRequest, RuntimeError, WORKER_PORT, Worker};
use prost_types::Any;
use tokio::sync::oneshot;

use crate::client::status_err;
use crate::spec::{self, SpecInput};
use crate::{Inner, destroy, lease, rootfs, teardown};

/// Lease lifetime if the agent dies mid-ensure (containerd then collects the rest).
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(15 * 60);
/// Bound of the compensation after a failed ensure.
const UNDO_DEADLINE: Duration = Duration::from_secs(60);

pub(crate) async fn ensure(inner: &Arc<Inner>, req: EnsureRequest) -> Result<Worker, RuntimeError> {
    // The shared rules (the server checked them too; a direct caller may not have).
    req.validate()?;
    // A bad reference, or one to a registry that is not allowed, must fail before the network
    // is attached (review L1, M1).
    inner.common.registry.resolve(&req.image)?;
    let id = worker_name(&inner.common.identity, &req.function_name);
    let (tx, rx) = oneshot::channel();
    let task_inner = inner.clone();
    // The saga's own span: its log lines name the worker even after the caller left.
    let span = tracing::info_span!("ensure", container_id = %id);
    tokio::spawn(async move {
        let (result, lease) = create(&task_inner, &id, &req).await;
        // A failed ensure answers once nothing is left, lease included; a created worker
        // answers first: its container record now holds the snapshot, so the lease only has
        // to go eventually.
        let delete_lease = async |lease: Option<String>| {
            if let Some(lease) = lease
                && let Err(e) = lease::delete(&task_inner.client, &lease, false).await
            {
                tracing::warn!(lease = %lease, error = %e.chain(), "deleting ensure lease failed (it expires)");
            }
        };
        let sent = if result.is_ok() {
            let sent = tx.send(result);
            delete_lease(lease).await;
            sent
        } else {
            delete_lease(lease).await;
            tx.send(result)
        };
        if let Err(Ok(unwanted)) = sent {
            tracing::info!(container_id = %unwanted.id, "ensure caller went away; destroying the new worker");
            task_inner.observer.get().rollback("ensure");
            if let Err(e) = destroy::destroy_detached(&task_inner, &unwanted.id).await {
                tracing::warn!(container_id = %unwanted.id, error = %e.chain(), "destroying an unwanted worker failed");
            }
        }
    }.instrument(span));
    rx.await
        .map_err(|_| RuntimeError::internal("ensure task ended without a result"))?
}

/// What has been created so far (for compensation).
#[derive(Default)]
struct Done {
    snapshot: bool,
    network: bool,
    container: bool,
    task: bool,
}

/// Marks an id as in flight for GC while alive.
struct Creating<'a>(&'a Inner, String);

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.0.creating.lock() {
            set.remove(&self.1);
        }
    }
}

/// The ensure and its lease (deleted by the caller once the result is out).
async fn create(
    inner: &Arc<Inner>,
    id: &str,
    req: &EnsureRequest,
) -> (Result<Worker, RuntimeError>, Option<String>) {
    {
        // Registration waits while a GC pass releases unowned resources.
        let _gate = inner.gate.read().await;
        if let Ok(mut set) = inner.creating.lock() {
            set.insert(id.to_string());
        }
    }
    let _creating = Creating(inner, id.to_string());
    let lease = match lease::create(&inner.client, LEASE_TTL).await {
        Ok(l) => l,
        Err(e) => return (Err(e), None),
    };
    let mut done = Done::default();
    let result = steps(inner, id, req, &lease, &mut done).await;
    if result.is_err() {
        // The error itself is logged once, by whoever receives it (the RPC edge, or the saga
        // when the caller left).
        tracing::info!(container_id = %id, "ensure failed; rolling back");
        if done.snapshot || done.network || done.container || done.task {
            inner.observer.get().rollback("ensure");
        }
        let undo = undo(inner, id, &done);
        if tokio::time::timeout(UNDO_DEADLINE, undo).await.is_err() {
            tracing::error!(container_id = %id, "rollback of a failed ensure timed out");
        }
    }
    (result, Some(lease))
}

async fn steps(
    inner: &Arc<Inner>,
    id: &str,
    req: &EnsureRequest,
    lease: &str,
    done: &mut Done,
) -> Result<Worker, RuntimeError> {
    let c = &inner.client;
    let t0 = std::time::Instant::now();
    // The network does not depend on the image, and runc only needs the netns pinned, not
    // wired: the plugins run while the image, snapshot, container and task are set up, and
    // only the start waits for them (a failure on either side is undone with the rest).
    let (pinned_tx, pinned_rx) = oneshot::channel();
    let network = async {
        let r = inner.cni.attach_notify(id, Some(pinned_tx)).await;
        (r, t0.elapsed().as_micros() as u64)
    };
    let mut wdone = Done::default();
    let mut clock = Phases::start();
    let workload = workload(inner, id, req, lease, pinned_rx, &mut wdone, &mut clock);
    let ((attached, network_us), created) = tokio::join!(network, workload);
    done.network = attached.is_ok();
    done.snapshot = wdone.snapshot;
    done.container = wdone.container;
    done.task = wdone.task;
    // The network's own error explains a workload that stopped for want of a netns.
    let attachment = attached?;
    let created_at = created?;
    clock.t.network = network_us;
    clock.t.net_wait = clock.lap();
    let ip = attachment
        .ip
        .ok_or_else(|| RuntimeError::internal("cni returned no address for the worker"))?;
    c.tasks()
        .start(c.req(StartRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        }))
        .await
        .map_err(|s| status_err("start task", s))?;
    clock.t.start = clock.lap();
    let t = &clock.t;
    tracing::debug!(
        container_id = %id, image_us = t.image, snapshot_us = t.snapshot, network_us = t.network,
        container_us = t.container, task_us = t.task, net_wait_us = t.net_wait,
        start_us = t.start, "worker created"
    );
    clock.report(inner.observer.get());

    Ok(Worker {
        id: id.to_string(),
        name: id.to_string(),
        ip,
        port: WORKER_PORT,
        function_name: req.function_name.clone(),
        owner_id: req.owner_id.clone(),
        created_at,
    })
}

/// Image → snapshot → spec (once the netns is pinned) → container → task (created, not
/// started). Returns the container's creation time.
async fn workload(
    inner: &Arc<Inner>,
    id: &str,
    req: &EnsureRequest,
    lease: &str,
    pinned: oneshot::Receiver<PathBuf>,
    done: &mut Done,
    clock: &mut Phases,
) -> Result<i64, RuntimeError> {
    let c = &inner.client;
    let identity = &inner.common.identity;
    let image = inner
        .images
        .ensure(&req.image, lease, inner.observer.get())
        .await?;
    clock.t.image = clock.lap();
    let labels: HashMap<String, String> = identity.managed_selector().into_iter().collect();
    let mounts = c
        .snapshots()
        .prepare(c.leased(
            PrepareSnapshotRequest {
                snapshotter: inner.cd.snapshotter.clone(),
                key: id.to_string(),
                parent: image.chain_id.clone(),
                labels,
            },
            lease,
        ))
        .await
        .map_err(|s| status_err("prepare snapshot", s))?
        .into_inner()
        .mounts;
    done.snapshot = true;
    clock.t.snapshot = clock.lap();
    let user = resolve_user(&image.config.user, &mounts).await?;
    let netns = pinned
        .await
        .map_err(|_| RuntimeError::internal("the worker's netns was not pinned"))?;

    let worker = &inner.common.worker;
    let memory = worker.memory_for(&req.env);
    let netns = netns.to_string_lossy();
    let resolv = inner.resolv_conf.to_string_lossy();
    let hosts = inner.hosts.to_string_lossy();
    let spec = spec::build(&SpecInput {
        id,
        namespace: inner.client.namespace(),
        image: &image.config,
        env: &req.env,
        netns_path: &netns,
        resolv_conf: &resolv,
        hosts: &hosts,
        user: worker.effective_user(user),
        oom_score_adj: worker.oom_score_adj,
        memory_bytes: memory,
        cpu_millis: worker.cpu_for(memory),
        pids_limit: worker.pids_limit,
        shim_group: inner.shim_group.as_deref(),
    })?;

    let labels: BTreeMap<String, String> =
        identity.worker_labels(&req.function_name, &req.owner_id);
    let container = Container {
        id: id.to_string(),
        labels: labels.into_iter().collect(),
        image: image.name.clone(),
        runtime: Some(ContainerRuntime {
            name: inner.cd.runtime.clone(),
            options: None,
        }),
        spec: Some(Any {
            type_url: spec::SPEC_TYPE_URL.to_string(),
            value: spec,
        }),
        snapshotter: inner.cd.snapshotter.clone(),
        snapshot_key: id.to_string(),
        ..Default::default()
    };
    let created = c
        .containers()
        .create(c.leased(
            CreateContainerRequest {
                container: Some(container),
            },
            lease,
        ))
        .await
        .map_err(|s| status_err("create container", s))?
        .into_inner();
    done.container = true;
    clock.t.container = clock.lap();
    let created_at = created
        .container
        .as_ref()
        .map(|c| crate::unix(c.created_at.as_ref()))
        .filter(|t| *t > 0)
        .unwrap_or_else(crate::now_unix);

    let log = crate::log_writer::uri(
        &inner.cd.log_writer,
        &inner.log_path(id),
        inner.common.worker_log_max_bytes,
    );
    // The agent's workers share one runc shim (`io.containerd.runc.v2.group`). When the
    // group's last task is deleted the shim exits; a create racing that exit finds its socket
    // and then fails to dial it ("failed to start shim"). A fresh attempt starts a new shim.
    let mut attempt = 0;
    loop {
        let r = c
            .tasks()
            .create(c.req(CreateTaskRequest {
                container_id: id.to_string(),
                rootfs: mounts.clone(),
                stdout: log.clone(),
                stderr: log.clone(),
                ..Default::default()
            }))
            .await;
        match r {
            Err(s) if attempt < SHIM_START_RETRIES.len() && is_shim_start_race(&s) => {
                tracing::debug!(container_id = %id, attempt, error = %s.message(), "shim start raced its exit; retrying");
                tokio::time::sleep(SHIM_START_RETRIES[attempt]).await;
                attempt += 1;
            }
            r => {
                r.map_err(|s| status_err("create task", s))?;
                break;
            }
        }
    }
    done.task = true;
    clock.t.task = clock.lap();
    Ok(created_at)
}

/// Pauses before re-creating a task whose shared shim was exiting (bounded: 350 ms in all).
const SHIM_START_RETRIES: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(50),
    std::time::Duration::from_millis(100),
    std::time::Duration::from_millis(200),
];

/// A task create that lost the race with its group shim's exit: the shim's socket vanished
/// between containerd finding it and dialling it, or the shim closed the connection while
/// exiting.
fn is_shim_start_race(s: &tonic::Status) -> bool {
    let m = s.message();
    (m.contains("failed to start shim")
        && (m.contains("no such file or directory") || m.contains("connection refused")))
        || (m.contains("failed to create shim task")
            && (m.contains("ttrpc: closed") || m.contains(": shutdown")))
}

/// Per-phase durations of one ensure, µs (debug log; the cold-start benchmark reads them).
#[derive(Debug, Default)]
struct PhaseTimes {
    image: u64,
    snapshot: u64,
    /// Overlaps the workload phases (it runs beside them).
    network: u64,
    container: u64,
    task: u64,
    start: u64,
    /// The wait for the network after the task exists (part of `network` already).
    net_wait: u64,
}

/// A lap clock over one ensure's phases.
struct Phases {
    last: std::time::Instant,
    t: PhaseTimes,
}

impl Phases {
    fn start() -> Self {
        Self {
            last: std::time::Instant::now(),
            t: PhaseTimes::default(),
        }
    }

    /// µs since the previous lap (or the start).
    fn lap(&mut self) -> u64 {
        let now = std::time::Instant::now();
        let us = now.duration_since(self.last).as_micros() as u64;
        self.last = now;
        us
    }

    /// Reports the phases to the metrics observer.
    fn report(&self, obs: &dyn esb_runtime::Observer) {
        use esb_runtime::Phase;
        let t = &self.t;
        for (phase, us) in [
            (Phase::Pull, t.image),
            (Phase::Snapshot, t.snapshot),
            (Phase::Network, t.network),
            (Phase::Create, t.container),
            (Phase::TaskCreate, t.task),
            (Phase::Start, t.start),
        ] {
            obs.phase(phase, Duration::from_micros(us));
        }
    }
}

/// Undoes the created parts, newest first; each step is best effort.
async fn undo(inner: &Arc<Inner>, id: &str, done: &Done) {
    if done.task {
        teardown::stop_and_delete_task(inner, id).await;
    }
    if done.container {
        teardown::delete_container(inner, id).await;
    }
    if done.network
        && let Err(e) = inner.cni.detach(id).await
    {
        tracing::warn!(container_id = %id, error = %e, "cni detach during rollback failed; reconcile retries");
    }
    if done.snapshot {
        teardown::remove_snapshot(inner, id).await;
    }
    crate::logs::remove(&inner.log_path(id));
}

/// Numeric `uid:gid`, or names looked up in the image's `/etc/passwd` and `/etc/group`,
/// read inside the image only (review H1; blocking file I/O off the async threads).
async fn resolve_user(user: &str, mounts: &[Mount]) -> Result<(u32, u32), RuntimeError> {
    if let Some(ids) = spec::numeric_user(user) {
        return Ok(ids);
    }
    let dirs = layer_dirs(mounts);
    let owned = user.to_string();
    tokio::task::spawn_blocking(move || resolve_in_layers(&owned, &dirs))
        .await
        .map_err(|e| RuntimeError::internal("resolving the image user").with_source(e))?
}

fn resolve_in_layers(user: &str, dirs: &[String]) -> Result<(u32, u32), RuntimeError> {
    let layers = rootfs::Layers::open(dirs)
        .map_err(|e| RuntimeError::internal("opening the snapshot's layers").with_source(e))?;
    let read = |path: &str| -> Result<String, RuntimeError> {
        match layers.read(path) {
            Ok(bytes) => Ok(String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned()),
            Err(e) => Err(RuntimeError::invalid_argument(format!(
                "the image's /{path} cannot be used to resolve user {user:?}"
            ))
            .with_source(e)),
        }
    };
    let passwd = read("etc/passwd")?;
    // The group file matters only for a group given by name.
    let by_name = user
        .split_once(':')
        .is_some_and(|(_, g)| !g.trim().is_empty() && g.trim().parse::<u32>().is_err());
    let group = if by_name {
        read("etc/group")?
    } else {
        String::new()
    };
    spec::resolve_user(user, &passwd, &group).ok_or_else(|| {
        RuntimeError::invalid_argument(format!(
            "image user {user:?} is not in the image's /etc/passwd"
        ))
    })
}

/// The snapshot's layer directories, top first: overlay upper then lowers, or a bind source.
fn layer_dirs(mounts: &[Mount]) -> Vec<String> {
    let mut dirs: Vec<String> = Vec::new();
    for m in mounts {
        if m.r#type == "bind" {
            dirs.push(m.source.clone());
        }
        for opt in &m.options {
            if let Some(upper) = opt.strip_prefix("upperdir=") {
                dirs.insert(0, upper.to_string());
            } else if let Some(lower) = opt.strip_prefix("lowerdir=") {
                dirs.extend(lower.split(':').map(str::to_string));
            }
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_start_race_is_recognised() {
        let race = tonic::Status::unknown(
            "failed to start shim: start failed: dial unix /run/containerd/s/ab: connect: no such file or directory",
        );
        assert!(is_shim_start_race(&race));
        let closed = tonic::Status::unknown("failed to create shim task: ttrpc: closed: unknown");
        assert!(is_shim_start_race(&closed));
        let shutdown = tonic::Status::unknown(
            "failed to create shim task: OCI runtime create failed: unable to retrieve OCI runtime error (open /x/log.json: no such file or directory): shutdown: unknown",
        );
        assert!(is_shim_start_race(&shutdown));
        let other = tonic::Status::unknown("failed to create shim task: OCI runtime create failed");
        assert!(!is_shim_start_race(&other));
    }
}
