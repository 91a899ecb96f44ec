//! The service core: SPEC §3 semantics over the runtime and the worker table (ownership,
//! idempotent destroy, last-used touches), with validated domain inputs and outputs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use esb_runtime::{EnsureRequest, ErrorKind, Runtime, Worker, WorkerMetrics, WorkerStatus};
use tracing::Instrument;

use crate::admission::Admission;
use crate::invoke::{InvokeReply, Invoker, NotInvocable, Outcome, ReportCell};
use crate::metrics::{Metrics, ReadyOutcome};
use crate::model::{InvokeCall, Listed, Target};
use crate::ready::{self, ReadyFor};
use crate::standby::Standby;
use crate::status::ApiError;
use crate::workers::{Entry, WorkerTable};

/// Bound on reading a stopped worker's exit code for the error message.
const EXIT_INFO_TIMEOUT: Duration = Duration::from_secs(1);

/// Static facts GetCapabilities reports besides the runtime's.
#[derive(Debug, Clone)]
pub struct AgentFacts {
    pub agent_version: String,
    pub tls_enabled: bool,
    pub max_request_bytes: u64,
}

/// Everything the handlers call.
pub struct Core {
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) table: Arc<WorkerTable>,
    pub(crate) invoker: Invoker,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) facts: AgentFacts,
    /// `AGENT_ENSURE_READY_TIMEOUT`; zero = Ensure/Resume do not wait for the port.
    pub(crate) ready_timeout: Duration,
    pub(crate) admission: Arc<Admission>,
    pub(crate) standby: Arc<Standby>,
}

impl Core {
    pub async fn ensure(&self, req: EnsureRequest) -> Result<Worker, ApiError> {
        let started = Instant::now();
        let memory = self.admission.memory_of(&req.env)?;
        if let Some(worker) = self.standby.claim(&req).await {
            // A standby was ready (listening) when pooled: nothing to wait for.
            self.table.touch(&worker.id);
            self.standby.note_ensure(&req);
            tracing::info!(container_id = %worker.id, "ensure claimed a standby worker");
            self.metrics.ensure_done(started.elapsed());
            return Ok(worker);
        }
        let standby_req = req.clone();
        let ticket = self
            .admission
            .admit(&req.owner_id, memory, &self.table)
            .await?;
        // The runtime's work holds the ticket (its concurrency slot) to the end, even when the
        // caller leaves: the bound holds for what the runtime really runs.
        let (runtime, table) = (self.runtime.clone(), self.table.clone());
        let worker =
            esb_runtime::saga::finish_detached("ensure", tracing::Span::current(), async move {
                let worker = runtime.ensure(req).await?;
                table.insert_created(&worker);
                ticket.commit(&worker.id);
                Ok::<_, ApiError>(worker)
            })
            .await?;
        let addr = std::net::SocketAddr::new(worker.ip, worker.port);
        self.await_ready(&worker.id, Some(addr), ReadyFor::Ensure)
            .await?;
        self.standby.note_ensure(&standby_req);
        self.metrics.ensure_done(started.elapsed());
        Ok(worker)
    }

    /// `SetStandby`: a fixed floor of standbys for `req`'s spec (0 clears it). Returns the
    /// number ready now; the rest are created in the background.
    pub fn set_standby(&self, req: &EnsureRequest, count: u32) -> Result<u32, ApiError> {
        self.admission.memory_of(&req.env)?;
        if count > 0 && self.standby.settings().max == 0 {
            return Err(ApiError::FailedPrecondition(
                "standby workers are off on this node (AGENT_STANDBY_MAX=0)".into(),
            ));
        }
        self.standby.set(req, count)
    }

    /// The entry of `t.container_id` if `t.owner_id` owns it; `Ok(None)` when unknown.
    async fn find_owned(&self, t: &Target) -> Result<Option<Arc<Entry>>, ApiError> {
        // A standby is nobody's worker until an Ensure claims it.
        if self.standby.is_hidden(&t.container_id) {
            return Ok(None);
        }
        let Some(entry) = self.table.lookup(&t.container_id).await? else {
            return Ok(None);
        };
        if entry.owner_id != t.owner_id {
            return Err(ApiError::PermissionDenied(format!(
                "container {} belongs to another owner",
                t.container_id
            )));
        }
        Ok(Some(entry))
    }

    async fn owned(&self, t: &Target) -> Result<Arc<Entry>, ApiError> {
        self.find_owned(t)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("container {} not found", t.container_id)))
    }

    /// Idempotent: unknown or already removed → `true` (compat).
    pub async fn destroy(&self, t: Target) -> Result<bool, ApiError> {
        if self.find_owned(&t).await?.is_none() {
            return Ok(true);
        }
        match self.runtime.destroy(&t.container_id).await {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.table.remove(&t.container_id);
        Ok(true)
    }

    pub async fn pause(&self, t: Target) -> Result<(), ApiError> {
        self.owned(&t).await?;
        self.runtime
            .pause(&t.container_id)
            .await
            .map_err(|e| self.forget_if_gone(&t, e))?;
        self.table.set_status(&t.container_id, WorkerStatus::Paused);
        Ok(())
    }

    /// Resume counts as a use.
    pub async fn resume(&self, t: Target) -> Result<(), ApiError> {
        let entry = self.owned(&t).await?;
        self.runtime
            .resume(&t.container_id)
            .await
            .map_err(|e| self.forget_if_gone(&t, e))?;
        self.table
            .set_status(&t.container_id, WorkerStatus::Running);
        self.table.touch(&t.container_id);
        self.await_ready(&t.container_id, entry.addr(), ReadyFor::Resume)
            .await
    }

    fn forget_if_gone(&self, t: &Target, e: esb_runtime::RuntimeError) -> ApiError {
        if e.kind() == ErrorKind::NotFound {
            self.table.remove(&t.container_id);
        }
        e.into()
    }

    /// A worker's kept log (its last `tail` bytes), then, with `follow`, new output polled
    /// every 250 ms until the worker is gone or the receiver is dropped. The cursor is taken
    /// before each read, so a line written during a read may be sent twice, never lost.
    pub async fn worker_logs(
        self: Arc<Self>,
        t: Target,
        tail: u32,
        follow: bool,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<Vec<u8>, ApiError>>, ApiError> {
        const DEFAULT_TAIL: usize = 64 * 1024;
        const MAX_READ: usize = 1024 * 1024;
        const POLL: Duration = Duration::from_millis(250);
        self.owned(&t).await?;
        let tail = match tail as usize {
            0 => DEFAULT_TAIL,
            n => n.min(MAX_READ),
        };
        let id = t.container_id;
        let mut cursor = self.runtime.log_position(&id).await?;
        let first = self.runtime.read_log(&id, None, tail).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            if !first.is_empty() && tx.send(Ok(first)).await.is_err() || !follow {
                return;
            }
            loop {
                tokio::select! {
                    () = tokio::time::sleep(POLL) => {}
                    () = tx.closed() => return,
                }
                // Destroyed through the agent, or collected: the stream ends cleanly.
                if self.table.status(&id).is_none() {
                    return;
                }
                let next = match self.runtime.log_position(&id).await {
                    Ok(p) => p,
                    // Gone (destroyed, collected): the stream ends cleanly.
                    Err(e) if e.kind() == ErrorKind::NotFound => return,
                    Err(e) => {
                        let _ = tx.send(Err(ApiError::from(e))).await;
                        return;
                    }
                };
                if next == cursor {
                    continue;
                }
                match self.runtime.read_log(&id, Some(cursor), MAX_READ).await {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => {
                        if tx.send(Ok(data)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => return,
                    Err(e) => {
                        let _ = tx.send(Err(ApiError::from(e))).await;
                        return;
                    }
                }
                cursor = next;
            }
        });
        Ok(rx)
    }

    /// Pre-pull with progress: intermediate updates are dropped when the caller reads slower
    /// than layers arrive; the final message (or the error) is always delivered. The pull
    /// continues when the caller leaves (a concurrent Ensure may be sharing it).
    pub fn pull_image(
        self: Arc<Self>,
        image: String,
    ) -> tokio::sync::mpsc::Receiver<Result<PullUpdate, ApiError>> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(
            async move {
                let sink_tx = tx.clone();
                let sink = move |p: esb_runtime::PullProgress| {
                    let _ = sink_tx.try_send(Ok(PullUpdate::Progress(p)));
                };
                let last = match self.runtime.pull_image(&image, &sink).await {
                    Ok(img) => Ok(PullUpdate::Done(img)),
                    Err(e) => Err(ApiError::from(e)),
                };
                let _ = tx.send(last).await;
            }
            .in_current_span(),
        );
        rx
    }

    /// Strictly owner-filtered.
    pub async fn list(&self, owner_id: &str) -> Result<Vec<Listed>, ApiError> {
        let started = Instant::now();
        let states = self.runtime.list().await?;
        self.table.refresh(&states, started);
        Ok(states
            .into_iter()
            .filter(|s| s.owner_id == owner_id && !self.standby.is_hidden_listed(s))
            .map(|mut s| {
                // The exit event may be ahead of the daemon's own listing.
                if self.table.status(&s.id) == Some(WorkerStatus::Stopped) {
                    s.status = WorkerStatus::Stopped;
                }
                s
            })
            .map(|s| Listed {
                last_used_at: self.table.last_used(&s.id, s.created_at),
                state: s,
            })
            .collect())
    }

    pub async fn metrics(&self, t: Target) -> Result<WorkerMetrics, ApiError> {
        let entry = self.owned(&t).await?;
        let mut m = self
            .runtime
            .metrics(&t.container_id)
            .await
            .map_err(|e| ApiError::from(e).for_metrics())?;
        // The exit event may be ahead of the daemon's own state.
        if let Some(code) = entry.exit.code
            && m.status != Some(WorkerStatus::Stopped)
        {
            m.status = Some(WorkerStatus::Stopped);
            m.exit_code = code;
        }
        if entry.exit.oom {
            m.oom_events = m.oom_events.max(1);
        }
        Ok(m)
    }

    /// `grpc_deadline`: the caller's deadline, if it sent one. The report of an invocation
    /// that reached the worker is left in `report`.
    pub async fn invoke(
        &self,
        call: InvokeCall,
        grpc_deadline: Option<Instant>,
        report: &ReportCell,
    ) -> Result<InvokeReply, ApiError> {
        let entry = self.owned(&call.target).await?;
        // A failed invocation is a use too (SPEC §4).
        self.table.touch(&entry.id);
        if let Err(e) = self.invocable(&entry.id, entry.status).await {
            return Err(e.error);
        }
        let addr = entry.addr().ok_or_else(|| {
            ApiError::FailedPrecondition(format!("container {} has no ip address", entry.id))
        })?;
        let mut deadline = Instant::now() + call.timeout;
        if let Some(d) = grpc_deadline {
            deadline = deadline.min(d);
        }
        let probe = || self.still_invocable(&entry.id);
        let peak = || self.runtime.memory_peak_probe(&entry.id);
        let log_since = if crate::logtail::wants_tail(&call.headers) {
            crate::logtail::before(self.runtime.as_ref(), &entry.id).await
        } else {
            None
        };
        let mut reply = self
            .invoker
            .invoke(&entry.slot, addr, call, deadline, &probe, peak, report)
            .await?;
        if let Some(since) = log_since
            && let Some(tail) = crate::logtail::after(self.runtime.as_ref(), &entry.id, since).await
        {
            reply
                .headers
                .insert(crate::logtail::LOG_RESULT_HEADER.into(), tail);
        }
        Ok(reply)
    }

    /// Asked while a worker keeps refusing connections, or after its connection broke: one
    /// targeted `inspect` (refreshing the table) tells a cold start (running: keep waiting)
    /// from a worker that exited, was paused or vanished outside the agent (fail now instead
    /// of at the deadline).
    async fn still_invocable(&self, id: &str) -> Result<(), NotInvocable> {
        match self.table.reinspect(id).await {
            Ok(Some(state)) => self.invocable(id, state.status).await,
            Ok(None) => Err(NotInvocable {
                error: ApiError::NotFound(format!("container {id} not found")),
                exited: None,
            }),
            Err(e) => {
                // Cannot tell: keep treating it as a cold start.
                tracing::debug!(container_id = %id, error = %e.chain(), "liveness inspect failed");
                Ok(())
            }
        }
    }

    /// Paused or exited workers are retryable elsewhere (the gateway replaces a worker on
    /// UNAVAILABLE), so they fail at once with UNAVAILABLE; an exit names its code.
    async fn invocable(&self, id: &str, status: WorkerStatus) -> Result<(), NotInvocable> {
        match status {
            WorkerStatus::Paused => Err(NotInvocable {
                error: ApiError::Unavailable(format!(
                    "container {id}: worker is paused; resume it before invoking"
                )),
                exited: None,
            }),
            // A stopped worker never starts listening: no cold-start wait until the deadline.
            WorkerStatus::Stopped => {
                // The exit event's code when it came (no runtime call), else ask.
                let exit = self.table.exit(id);
                let (code, oom) = match exit.code {
                    Some(code) => (Some(code), exit.oom),
                    None => {
                        let m =
                            tokio::time::timeout(EXIT_INFO_TIMEOUT, self.runtime.metrics(id)).await;
                        match m {
                            Ok(Ok(m)) => (Some(m.exit_code), m.oom_events > 0 || exit.oom),
                            _ => (None, exit.oom),
                        }
                    }
                };
                let mut msg = format!("container {id}: worker process exited");
                if let Some(code) = code {
                    msg.push_str(&format!(" with code {code}"));
                }
                if oom {
                    msg.push_str(" (OOM-killed)");
                }
                Err(NotInvocable {
                    error: ApiError::Unavailable(msg),
                    exited: Some(if oom { Outcome::Oom } else { Outcome::Crashed }),
                })
            }
            WorkerStatus::Running | WorkerStatus::Unknown => Ok(()),
        }
    }

    /// Workers gauge, by state.
    pub fn refresh_worker_gauge(&self) {
        let mut entries = self.table.entries();
        entries.retain(|e| !self.standby.is_hidden(&e.id));
        let count = |s: WorkerStatus| entries.iter().filter(|e| e.status == s).count() as i64;
        self.metrics.set_workers(&[
            ("RUNNING", count(WorkerStatus::Running)),
            ("PAUSED", count(WorkerStatus::Paused)),
            ("STOPPED", count(WorkerStatus::Stopped)),
            ("UNKNOWN", count(WorkerStatus::Unknown)),
        ]);
    }
}

/// What a PullImage stream carries: progress, then the pulled image.
#[derive(Debug)]
pub enum PullUpdate {
    Progress(esb_runtime::PullProgress),
    Done(esb_runtime::PulledImage),
}

/// Ready-on-return (the waiting itself is in [`crate::ready`]).
impl Core {
    /// Waits (up to `AGENT_ENSURE_READY_TIMEOUT`) until the worker `id` at `addr` accepts a
    /// TCP connection. A timeout is not an error (the caller's own probe carries on); an exit
    /// is `UNAVAILABLE` with the exit code and log tail.
    pub(crate) async fn await_ready(
        &self,
        id: &str,
        addr: Option<SocketAddr>,
        what: ReadyFor,
    ) -> Result<(), ApiError> {
        let (Some(addr), false) = (addr, self.ready_timeout.is_zero()) else {
            return Ok(());
        };
        let started = Instant::now();
        let outcome = ready::wait(
            self.runtime.as_ref(),
            &self.table,
            id,
            addr,
            self.ready_timeout,
        )
        .await;
        if what == ReadyFor::Ensure {
            esb_runtime::Observer::phase(
                &*self.metrics,
                esb_runtime::Phase::Ready,
                started.elapsed(),
            );
        }
        match outcome {
            ready::Readiness::Ready => {
                self.metrics.events.ready(ReadyOutcome::Ready);
                Ok(())
            }
            ready::Readiness::TimedOut => {
                self.metrics.events.ready(ReadyOutcome::Timeout);
                tracing::warn!(container_id = %id, timeout = ?self.ready_timeout, "worker not listening yet; returning it anyway");
                Ok(())
            }
            ready::Readiness::Exited => {
                self.metrics.events.ready(ReadyOutcome::Exited);
                let msg = ready::exit_report(self.runtime.as_ref(), &self.table, id).await;
                if what == ReadyFor::Ensure {
                    match self.runtime.destroy(id).await {
                        Ok(_) => self.table.remove(id),
                        Err(e) => {
                            tracing::warn!(container_id = %id, error = %e.chain(), "cannot destroy a worker that exited at start; GC will")
                        }
                    }
                }
                Err(ApiError::Unavailable(msg))
            }
        }
    }
}
