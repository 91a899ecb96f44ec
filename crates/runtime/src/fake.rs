//! In-process fake runtime for service tests: a small state machine that records calls and
//! can be scripted to fail the k-th call of an operation (no mock framework).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{
    EnsureRequest, ErrorKind, GcReport, Observer, ObserverSlot, Phase, PullOutcome, Result,
    Runtime, RuntimeCapabilities, RuntimeError, RuntimeKind, WORKER_PORT, Worker, WorkerMetrics,
    WorkerState, WorkerStatus,
};
use crate::{EventStream, WorkerEvent};

/// A runtime operation, for call records and scripted failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Ensure,
    Destroy,
    Pause,
    Resume,
    List,
    Inspect,
    Metrics,
    Gc,
    Reconcile,
    Ping,
    /// A subscription to the event stream (only once enabled with `enable_events`).
    Events,
    LogPosition,
    ReadLog,
}

/// One recorded call: the operation and the worker id it named, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub op: Op,
    pub id: Option<String>,
}

#[derive(Debug)]
struct Failure {
    op: Op,
    /// 1-based call number of `op` that fails; `None` = every call.
    nth: Option<u32>,
    kind: ErrorKind,
}

#[derive(Debug)]
struct Inner {
    workers: BTreeMap<String, WorkerState>,
    calls: Vec<Call>,
    counts: HashMap<Op, u32>,
    failures: Vec<Failure>,
    worker_ip: Option<IpAddr>,
    worker_port: u16,
    next_id: u64,
    ensure_delay: Duration,
    /// Sleep after the worker exists (listed) and before `ensure` returns its id.
    ensure_return_delay: Duration,
    reconcile_result: Vec<WorkerState>,
    /// `None`: `events` is unimplemented (the default, so servers poll only).
    events_enabled: bool,
    /// The sender of the current subscription.
    events_tx: Option<tokio::sync::mpsc::UnboundedSender<Result<WorkerEvent>>>,
    /// Per worker: its whole output, and chunks each `read_log` appends first (output that
    /// lands while an invocation runs, or late).
    logs: HashMap<String, (Vec<u8>, VecDeque<Vec<u8>>)>,
}

/// A fake [`Runtime`]: workers live in a map; new workers get `worker_ip` (loopback by
/// default, so invoke tests can point at an in-test HTTP server) and `worker_port`.
/// `ensure` reports a cached pull and the `create` and `start` phases to the observer, a
/// failed ensure a rollback of `"ensure"`.
#[derive(Debug)]
pub struct FakeRuntime {
    inner: Mutex<Inner>,
    observer: ObserverSlot,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::new()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                workers: BTreeMap::new(),
                calls: Vec::new(),
                counts: HashMap::new(),
                failures: Vec::new(),
                worker_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                worker_port: WORKER_PORT,
                next_id: 1,
                ensure_delay: Duration::ZERO,
                ensure_return_delay: Duration::ZERO,
                reconcile_result: Vec::new(),
                events_enabled: false,
                events_tx: None,
                logs: HashMap::new(),
            }),
            observer: ObserverSlot::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panicking test thread must not poison every later assertion.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Port reported in [`Worker::port`] by later `ensure` calls.
    pub fn set_worker_port(&self, port: u16) {
        self.lock().worker_port = port;
    }

    /// IP given to later `ensure` calls (`None`: the worker has no address).
    pub fn set_worker_ip(&self, ip: Option<IpAddr>) {
        self.lock().worker_ip = ip;
    }

    /// Makes `ensure` sleep after the worker exists (a real daemon lists it) and before it
    /// returns the id, as a daemon's start does.
    pub fn set_ensure_return_delay(&self, delay: Duration) {
        self.lock().ensure_return_delay = delay;
    }

    /// Makes `ensure` sleep before creating (to race it against other calls).
    pub fn set_ensure_delay(&self, delay: Duration) {
        self.lock().ensure_delay = delay;
    }

    /// Fails the `nth` (1-based) call of `op` with `kind`.
    pub fn fail_nth(&self, op: Op, nth: u32, kind: ErrorKind) {
        self.lock().failures.push(Failure {
            op,
            nth: Some(nth),
            kind,
        });
    }

    /// Fails every call of `op` with `kind`.
    pub fn fail_always(&self, op: Op, kind: ErrorKind) {
        self.lock().failures.push(Failure {
            op,
            nth: None,
            kind,
        });
    }

    /// Makes `events` subscribe (it is `Unimplemented` until then).
    pub fn enable_events(&self) {
        self.lock().events_enabled = true;
    }

    /// Sends `ev` to the current subscriber; `false` when there is none.
    pub fn emit(&self, ev: WorkerEvent) -> bool {
        self.lock()
            .events_tx
            .as_ref()
            .is_some_and(|tx| tx.send(Ok(ev)).is_ok())
    }

    /// Breaks the current subscription: with `Some(kind)` the stream yields that error,
    /// with `None` it just ends (a daemon that went away).
    pub fn break_events(&self, kind: Option<ErrorKind>) {
        if let Some(tx) = self.lock().events_tx.take()
            && let Some(kind) = kind
        {
            let _ = tx.send(Err(RuntimeError::new(
                kind,
                "scripted event stream failure",
            )));
        }
    }

    /// True while a subscriber is connected.
    pub fn has_subscriber(&self) -> bool {
        self.lock()
            .events_tx
            .as_ref()
            .is_some_and(|tx| !tx.is_closed())
    }

    /// Removes every scripted failure.
    pub fn clear_failures(&self) {
        self.lock().failures.clear();
    }

    /// Adds (or replaces) a worker directly, as if created by someone else.
    pub fn insert_worker(&self, state: WorkerState) {
        self.lock().workers.insert(state.id.clone(), state);
    }

    /// Changes a worker's status behind the server's back.
    pub fn set_status(&self, id: &str, status: WorkerStatus) {
        if let Some(w) = self.lock().workers.get_mut(id) {
            w.status = status;
        }
    }

    /// Changes a worker's IP behind the server's back.
    pub fn set_ip(&self, id: &str, ip: Option<IpAddr>) {
        if let Some(w) = self.lock().workers.get_mut(id) {
            w.ip = ip;
        }
    }

    /// Workers `reconcile` returns (in addition to nothing else; it does not consult the map).
    pub fn set_reconcile_result(&self, workers: Vec<WorkerState>) {
        self.lock().reconcile_result = workers;
    }

    /// Appends to a worker's log now.
    pub fn write_log(&self, id: &str, bytes: &[u8]) {
        let mut inner = self.lock();
        inner
            .logs
            .entry(id.to_owned())
            .or_default()
            .0
            .extend_from_slice(bytes);
    }

    /// Queues output that the next `read_log` calls of `id` append first, one chunk per call.
    pub fn write_log_on_read(&self, id: &str, chunks: &[&[u8]]) {
        let mut inner = self.lock();
        let pending = &mut inner.logs.entry(id.to_owned()).or_default().1;
        pending.extend(chunks.iter().map(|c| c.to_vec()));
    }

    pub fn worker(&self, id: &str) -> Option<WorkerState> {
        self.lock().workers.get(id).cloned()
    }

    pub fn workers(&self) -> Vec<WorkerState> {
        self.lock().workers.values().cloned().collect()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// How many calls of `op` were made.
    pub fn count(&self, op: Op) -> u32 {
        self.lock().counts.get(&op).copied().unwrap_or(0)
    }

    /// Records the call and returns the scripted failure, if any.
    fn enter(&self, op: Op, id: Option<&str>) -> Result<()> {
        let mut inner = self.lock();
        inner.calls.push(Call {
            op,
            id: id.map(str::to_owned),
        });
        let n = {
            let c = inner.counts.entry(op).or_insert(0);
            *c += 1;
            *c
        };
        let hit = inner
            .failures
            .iter()
            .find(|f| f.op == op && f.nth.is_none_or(|k| k == n));
        match hit {
            Some(f) => Err(RuntimeError::new(
                f.kind,
                format!("scripted failure of {op:?} call {n}"),
            )),
            None => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    async fn ensure(&self, req: EnsureRequest) -> Result<Worker> {
        let obs = self.observer.get();
        if let Err(e) = self.enter(Op::Ensure, None) {
            obs.rollback("ensure");
            return Err(e);
        }
        obs.pull(PullOutcome::Cached);
        let t = Instant::now();
        let delay = self.lock().ensure_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        obs.phase(Phase::Create, t.elapsed());
        let t = Instant::now();
        let (worker, return_delay) = {
            let mut inner = self.lock();
            let Some(ip) = inner.worker_ip else {
                obs.rollback("ensure");
                return Err(RuntimeError::internal("fake worker has no ip"));
            };
            let n = inner.next_id;
            inner.next_id += 1;
            let id = format!("fake-{}-{n:08x}", req.function_name);
            let worker = Worker {
                id: id.clone(),
                name: id.clone(),
                ip,
                port: inner.worker_port,
                function_name: req.function_name.clone(),
                owner_id: req.owner_id.clone(),
                created_at: now(),
            };
            inner.workers.insert(
                id.clone(),
                WorkerState {
                    id,
                    name: worker.name.clone(),
                    function_name: req.function_name,
                    owner_id: req.owner_id,
                    status: WorkerStatus::Running,
                    ip: Some(ip),
                    created_at: worker.created_at,
                },
            );
            (worker, inner.ensure_return_delay)
        };
        if !return_delay.is_zero() {
            tokio::time::sleep(return_delay).await;
        }
        obs.phase(Phase::Start, t.elapsed());
        Ok(worker)
    }

    async fn destroy(&self, id: &str) -> Result<bool> {
        self.enter(Op::Destroy, Some(id))?;
        Ok(self.lock().workers.remove(id).is_some())
    }

    async fn pause(&self, id: &str) -> Result<()> {
        self.enter(Op::Pause, Some(id))?;
        let mut inner = self.lock();
        let w = inner
            .workers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::not_found(format!("worker {id} not found")))?;
        match w.status {
            WorkerStatus::Running | WorkerStatus::Paused => {
                w.status = WorkerStatus::Paused;
                Ok(())
            }
            _ => Err(RuntimeError::failed_precondition("worker is not running")),
        }
    }

    async fn resume(&self, id: &str) -> Result<()> {
        self.enter(Op::Resume, Some(id))?;
        let mut inner = self.lock();
        let w = inner
            .workers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::not_found(format!("worker {id} not found")))?;
        match w.status {
            WorkerStatus::Running | WorkerStatus::Paused => {
                w.status = WorkerStatus::Running;
                Ok(())
            }
            _ => Err(RuntimeError::failed_precondition(
                "worker is stopped and cannot be resumed",
            )),
        }
    }

    async fn list(&self) -> Result<Vec<WorkerState>> {
        self.enter(Op::List, None)?;
        Ok(self.workers())
    }

    async fn inspect(&self, id: &str) -> Result<Option<WorkerState>> {
        self.enter(Op::Inspect, Some(id))?;
        Ok(self.worker(id))
    }

    async fn metrics(&self, id: &str) -> Result<WorkerMetrics> {
        self.enter(Op::Metrics, Some(id))?;
        let w = self
            .worker(id)
            .ok_or_else(|| RuntimeError::not_found(format!("worker {id} not found")))?;
        let running = w.status != WorkerStatus::Stopped;
        Ok(WorkerMetrics {
            id: w.id,
            name: w.name,
            function_name: w.function_name,
            status: Some(w.status),
            memory_current: if running { 8 << 20 } else { 0 },
            memory_max: if running { 128 << 20 } else { 0 },
            cpu_usage_ns: if running { 1_000_000 } else { 0 },
            collected_at: now(),
            ..WorkerMetrics::default()
        })
    }

    async fn gc(&self) -> Result<GcReport> {
        self.enter(Op::Gc, None)?;
        let mut inner = self.lock();
        let stopped: Vec<String> = inner
            .workers
            .values()
            .filter(|w| w.status == WorkerStatus::Stopped)
            .map(|w| w.id.clone())
            .collect();
        for id in &stopped {
            inner.workers.remove(id);
        }
        Ok(GcReport {
            removed_workers: stopped,
            ..GcReport::default()
        })
    }

    async fn reconcile(&self) -> Result<Vec<WorkerState>> {
        self.enter(Op::Reconcile, None)?;
        let mut inner = self.lock();
        let adopted = inner.reconcile_result.clone();
        for w in &adopted {
            inner.workers.insert(w.id.clone(), w.clone());
        }
        Ok(adopted)
    }

    async fn ping(&self) -> Result<()> {
        self.enter(Op::Ping, None)
    }

    async fn events(&self) -> Result<EventStream> {
        if !self.lock().events_enabled {
            return Err(RuntimeError::new(
                ErrorKind::Unimplemented,
                "fake events not enabled",
            ));
        }
        self.enter(Op::Events, None)?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        self.lock().events_tx = Some(tx);
        Ok(Box::pin(futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }

    /// Cursor = bytes written so far.
    async fn log_position(&self, id: &str) -> Result<u64> {
        self.enter(Op::LogPosition, Some(id))?;
        Ok(self.lock().logs.get(id).map_or(0, |l| l.0.len() as u64))
    }

    /// Two layers of 100 bytes; `missing…` images are not found.
    async fn pull_image(
        &self,
        image: &str,
        progress: &crate::PullSink<'_>,
    ) -> Result<crate::PulledImage> {
        if image.starts_with("missing") {
            return Err(RuntimeError::image_not_found(format!(
                "image {image} not found"
            )));
        }
        for done in 0..=2u32 {
            progress(crate::PullProgress {
                layers_done: done,
                layers_total: 2,
                bytes_done: u64::from(done) * 100,
                bytes_total: 200,
            });
        }
        Ok(crate::PulledImage {
            reference: format!("registry.test/{image}"),
            digest: "sha256:fake".into(),
            pulled: true,
        })
    }

    async fn read_log(&self, id: &str, since: Option<u64>, max_bytes: usize) -> Result<Vec<u8>> {
        self.enter(Op::ReadLog, Some(id))?;
        let mut inner = self.lock();
        let Some((log, pending)) = inner.logs.get_mut(id) else {
            return Ok(Vec::new());
        };
        if let Some(chunk) = pending.pop_front() {
            log.extend_from_slice(&chunk);
        }
        let from = (since.unwrap_or(0) as usize)
            .max(log.len().saturating_sub(max_bytes))
            .min(log.len());
        Ok(log[from..].to_vec())
    }

    fn capabilities(&self) -> RuntimeCapabilities {
        RuntimeCapabilities {
            kind: RuntimeKind::Containerd,
            version: "fake-1.0".into(),
            pause_resume: true,
            metrics: true,
            cgroup_version: 2,
            snapshotter: "overlayfs".into(),
            network: "esb-fake".into(),
            subnet: "10.88.0.0/16".into(),
            bridge: "esb-fake0".into(),
            default_memory_bytes: 128 << 20,
            default_cpu_millis: 1000,
            default_pids_limit: 256,
        }
    }

    fn set_observer(&self, observer: Arc<dyn Observer>) {
        self.observer.set(observer);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn req() -> EnsureRequest {
        EnsureRequest {
            function_name: "f".into(),
            image: "img".into(),
            env: BTreeMap::new(),
            owner_id: "o".into(),
        }
    }

    #[tokio::test]
    async fn scripted_failure_hits_only_the_nth_call() {
        let rt = FakeRuntime::new();
        rt.fail_nth(Op::Ensure, 2, ErrorKind::Unavailable);
        assert!(rt.ensure(req()).await.is_ok());
        let err = rt.ensure(req()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(rt.ensure(req()).await.is_ok());
        assert_eq!(rt.count(Op::Ensure), 3);
        assert_eq!(rt.workers().len(), 2);
    }

    #[tokio::test]
    async fn destroy_is_idempotent_and_resume_of_stopped_fails() {
        let rt = FakeRuntime::new();
        let w = rt.ensure(req()).await.unwrap();
        rt.set_status(&w.id, WorkerStatus::Stopped);
        let err = rt.resume(&w.id).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
        assert!(rt.destroy(&w.id).await.unwrap());
        assert!(!rt.destroy(&w.id).await.unwrap());
    }
}
