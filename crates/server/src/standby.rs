//! Standby workers (issue 9 §3, provisioned concurrency): after an Ensure, keep
//! `AGENT_STANDBY_PER_SPEC` more workers of exactly that spec (owner, function, image, env —
//! the limits derive from the env) created, started and listening; the next Ensure of the spec
//! claims one instead of creating. `SetStandby` pins a floor per spec instead.
//!
//! Standbys run idle rather than paused: a claim of a running worker is a table operation,
//! while a paused one would need a resume (a cgroup thaw, several milliseconds) on the
//! caller's clock, and a frozen worker keeps its memory anyway.
//!
//! Rules:
//! - a standby is in the worker table (so admission counts it and events update it) but is
//!   *hidden*: List, and every id RPC, treat it as unknown until it is claimed;
//! - refills run in the background, never on a caller's clock, through admission like any
//!   Ensure, and never exceed the per-spec target or `AGENT_STANDBY_MAX` (reserved under one
//!   lock before any creation);
//! - a spec not ensured for `AGENT_STANDBY_TTL` loses its standbys (a `SetStandby` floor does
//!   not expire); an exited standby is dropped and replaced;
//! - ready standby ids are kept in `state_dir/standby.json` (written before a claim returns):
//!   the next start destroys them before serving, so they never surface as the gateway's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use esb_runtime::{EnsureRequest, Runtime, Worker, WorkerStatus};

use crate::admission::Admission;
use crate::metrics::Metrics;
use crate::ready::{self, Readiness};
pub use crate::settings::StandbySettings;
use crate::status::ApiError;
use crate::workers::WorkerTable;

/// File (in `state_dir`) listing the ids of ready standbys.
pub const STANDBY_FILE: &str = "standby.json";

/// What makes two Ensures interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Spec {
    owner_id: String,
    function_name: String,
    image: String,
    env: BTreeMap<String, String>,
}

impl Spec {
    fn of(req: &EnsureRequest) -> Self {
        Self {
            owner_id: req.owner_id.clone(),
            function_name: req.function_name.clone(),
            image: req.image.clone(),
            env: req.env.clone(),
        }
    }

    fn request(&self) -> EnsureRequest {
        EnsureRequest {
            function_name: self.function_name.clone(),
            image: self.image.clone(),
            env: self.env.clone(),
            owner_id: self.owner_id.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct SpecPool {
    ready: Vec<Worker>,
    creating: u32,
    /// While `creating > 0`: the worker ids known when the first of those creations started.
    /// The daemon lists a new standby before the runtime's Ensure returns its id (so before it
    /// can be hidden); a worker of this spec outside the snapshot is hidden meanwhile.
    known_before: Option<Arc<HashSet<String>>>,
    last_ensure: Option<Instant>,
    /// A `SetStandby` floor: replaces `per_spec` and never expires.
    floor: Option<u32>,
}

impl SpecPool {
    fn creation_done(&mut self) {
        self.creating = self.creating.saturating_sub(1);
        if self.creating == 0 {
            self.known_before = None;
        }
    }
}

#[derive(Debug, Default)]
struct Pool {
    specs: HashMap<Spec, SpecPool>,
    /// Every standby id, ready or still being readied: hidden from the API.
    hidden: HashSet<String>,
    /// Creations in flight, node-wide.
    creating: u32,
}

impl Pool {
    fn ready_total(&self) -> u32 {
        self.specs.values().map(|s| s.ready.len() as u32).sum()
    }
}

/// Counts GetCapabilities reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyUsage {
    pub ready: u32,
    pub creating: u32,
}

/// The standby pool; shared behind an `Arc` (refills run as tasks).
pub struct Standby {
    settings: StandbySettings,
    runtime: Arc<dyn Runtime>,
    table: Arc<WorkerTable>,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
    ready_timeout: Duration,
    pool: Mutex<Pool>,
    file: Option<PathBuf>,
    /// Serialises writes of `file` (each writes the state at its own time).
    writing: Mutex<()>,
}

impl Standby {
    pub fn new(
        settings: StandbySettings,
        runtime: Arc<dyn Runtime>,
        table: Arc<WorkerTable>,
        admission: Arc<Admission>,
        metrics: Arc<Metrics>,
        ready_timeout: Duration,
        state_dir: Option<&std::path::Path>,
    ) -> Self {
        Self {
            settings,
            runtime,
            table,
            admission,
            metrics,
            ready_timeout,
            pool: Mutex::new(Pool::default()),
            file: state_dir.map(|d| d.join(STANDBY_FILE)),
            writing: Mutex::new(()),
        }
    }

    pub fn settings(&self) -> &StandbySettings {
        &self.settings
    }

    fn lock(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True for a standby (ready or being readied): the API treats it as unknown.
    pub fn is_hidden(&self, id: &str) -> bool {
        self.lock().hidden.contains(id)
    }

    /// [`Standby::is_hidden`] for a listed worker, which may also be a standby still being
    /// created: one of a spec with a creation in flight that was not known when it started.
    /// (A gateway Ensure finishing meanwhile is hidden for that moment too; the gateway
    /// learnt its id from the Ensure, and its janitor only removes what List shows.)
    pub fn is_hidden_listed(&self, s: &esb_runtime::WorkerState) -> bool {
        let p = self.lock();
        p.hidden.contains(&s.id)
            || p.specs.iter().any(|(spec, sp)| {
                spec.owner_id == s.owner_id
                    && spec.function_name == s.function_name
                    && sp.known_before.as_ref().is_some_and(|k| !k.contains(&s.id))
            })
    }

    pub fn usage(&self) -> StandbyUsage {
        let p = self.lock();
        StandbyUsage {
            ready: p.ready_total(),
            creating: p.creating,
        }
    }

    /// Start-up, before serving: destroys the standbys a previous run left (they would
    /// otherwise be adopted as the gateway's workers). Returns how many were removed.
    pub async fn remove_left_over(&self) -> usize {
        let Some(file) = &self.file else {
            return 0;
        };
        let ids: Vec<String> = match std::fs::read(file) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(file = %file.display(), error = %e, "unreadable standby file; ignoring it");
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot read the standby file");
                return 0;
            }
        };
        let mut removed = 0;
        for id in &ids {
            match self.runtime.destroy(id).await {
                Ok(existed) => {
                    tracing::info!(container_id = %id, existed, "removed a standby worker left by the previous run");
                    removed += usize::from(existed);
                    self.table.remove(id);
                }
                Err(e) => {
                    // Still hidden from the API for this run; GC or the next start retries.
                    tracing::warn!(container_id = %id, error = %e.chain(), "cannot remove a standby left by the previous run");
                    self.lock().hidden.insert(id.clone());
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed standby workers left by the previous run");
        }
        self.persist();
        removed
    }

    /// The standby target of `sp`.
    fn target(&self, sp: &SpecPool) -> u32 {
        sp.floor.unwrap_or(self.settings.per_spec)
    }

    /// Takes a ready standby of `req`'s spec, if one is there and still running; the claim
    /// is on disk before it returns.
    pub async fn claim(self: &Arc<Self>, req: &EnsureRequest) -> Option<Worker> {
        let spec = Spec::of(req);
        let (claimed, dead) = {
            let mut p = self.lock();
            let Pool { specs, hidden, .. } = &mut *p;
            let Some(sp) = specs.get_mut(&spec) else {
                if self.settings.per_spec > 0 {
                    self.metrics.standby_miss();
                }
                return None;
            };
            let mut dead = Vec::new();
            let mut claimed = None;
            while let Some(w) = sp.ready.pop() {
                hidden.remove(&w.id);
                if self.table.status(&w.id) == Some(WorkerStatus::Running) {
                    claimed = Some(w);
                    break;
                }
                dead.push(w.id);
            }
            if claimed.is_none() && self.target(sp) > 0 {
                self.metrics.standby_miss();
            }
            (claimed, dead)
        };
        for id in dead {
            self.discard(id);
        }
        let w = claimed?;
        let this = self.clone();
        // The claim must be durable before the worker is the caller's: a restart destroys
        // whatever the file still lists.
        let _ = tokio::task::spawn_blocking(move || this.persist()).await;
        self.metrics.standby_hit();
        self.update_gauge();
        Some(w)
    }

    /// An Ensure of `req`'s spec happened (claimed or created): keeps the spec alive and
    /// refills its standbys in the background.
    pub fn note_ensure(self: &Arc<Self>, req: &EnsureRequest) {
        let spec = Spec::of(req);
        let wanted = {
            let mut p = self.lock();
            let per_spec = self.settings.per_spec;
            if per_spec == 0 && !p.specs.contains_key(&spec) {
                return;
            }
            let sp = p.specs.entry(spec.clone()).or_default();
            sp.last_ensure = Some(Instant::now());
            sp.floor.unwrap_or(per_spec) > 0
        };
        if wanted {
            self.spawn_refill(spec);
        }
    }

    /// `SetStandby`: pins `count` standbys of `req`'s spec (0 clears the pin and its
    /// standbys). Returns the ready count now.
    pub fn set(self: &Arc<Self>, req: &EnsureRequest, count: u32) -> Result<u32, ApiError> {
        if count > self.settings.max {
            return Err(ApiError::InvalidArgument(format!(
                "count {count} is over AGENT_STANDBY_MAX ({})",
                self.settings.max
            )));
        }
        let spec = Spec::of(req);
        let (surplus, ready) = {
            let mut p = self.lock();
            let Pool { specs, hidden, .. } = &mut *p;
            let sp = specs.entry(spec.clone()).or_default();
            sp.floor = (count > 0).then_some(count);
            sp.last_ensure = Some(Instant::now());
            let keep = count as usize;
            let surplus: Vec<String> = if sp.ready.len() > keep {
                sp.ready.drain(keep..).map(|w| w.id).collect()
            } else {
                Vec::new()
            };
            for id in &surplus {
                hidden.remove(id);
            }
            (surplus, sp.ready.len() as u32)
        };
        for id in surplus {
            self.discard(id);
        }
        if count > 0 {
            self.spawn_refill(spec);
        }
        self.persist_detached();
        Ok(ready)
    }

    /// GC pass: drops standbys of expired specs and standbys that stopped (refilling those).
    pub fn sweep(self: &Arc<Self>) {
        let now = Instant::now();
        let ttl = self.settings.ttl;
        let mut gone = Vec::new();
        let mut refill = Vec::new();
        {
            let mut p = self.lock();
            let Pool { specs, hidden, .. } = &mut *p;
            specs.retain(|spec, sp| {
                let expired = sp.floor.is_none()
                    && sp
                        .last_ensure
                        .is_none_or(|t| now.saturating_duration_since(t) >= ttl);
                let before = sp.ready.len();
                sp.ready.retain(|w| {
                    let keep = !expired && self.table.status(&w.id) == Some(WorkerStatus::Running);
                    if !keep {
                        hidden.remove(&w.id);
                        gone.push(w.id.clone());
                    }
                    keep
                });
                if !expired && sp.ready.len() < before {
                    refill.push(spec.clone());
                }
                // An expired spec with creations in flight stays until they land (they are
                // then discarded: the spec wants none).
                !expired || sp.creating > 0
            });
        }
        let changed = !gone.is_empty();
        for id in gone {
            self.discard(id);
        }
        for spec in refill {
            self.spawn_refill(spec);
        }
        if changed {
            self.persist_detached();
        }
        self.update_gauge();
    }

    fn spawn_refill(self: &Arc<Self>, spec: Spec) {
        let this = self.clone();
        let span = tracing::info_span!("standby_refill", function_name = %spec.function_name);
        tokio::spawn(tracing::Instrument::instrument(
            async move { this.refill(spec).await },
            span,
        ));
    }

    /// Creates standbys of `spec` until its target is met, one at a time.
    async fn refill(self: Arc<Self>, spec: Spec) {
        loop {
            // Taken outside the pool's lock (the table has its own).
            let known: HashSet<String> =
                self.table.entries().iter().map(|e| e.id.clone()).collect();
            {
                let mut p = self.lock();
                let total = p.hidden.len() as u32 + p.creating;
                let max = self.settings.max;
                let Some(sp) = p.specs.get_mut(&spec) else {
                    return;
                };
                let expired = sp.floor.is_none()
                    && sp
                        .last_ensure
                        .is_none_or(|t| t.elapsed() >= self.settings.ttl);
                if expired || sp.ready.len() as u32 + sp.creating >= self.target(sp) || total >= max
                {
                    return;
                }
                if sp.creating == 0 {
                    sp.known_before = Some(Arc::new(known));
                }
                sp.creating += 1;
                p.creating += 1;
            }
            let created = self.create(&spec).await;
            let keep = {
                let mut p = self.lock();
                p.creating = p.creating.saturating_sub(1);
                let target = p.specs.get(&spec).map(|sp| self.target(sp));
                match (p.specs.get_mut(&spec), &created, target) {
                    (Some(sp), Ok(w), Some(target)) => {
                        sp.creation_done();
                        if (sp.ready.len() as u32) < target {
                            sp.ready.push(w.clone());
                            true
                        } else {
                            false
                        }
                    }
                    (Some(sp), _, _) => {
                        sp.creation_done();
                        false
                    }
                    (None, _, _) => false,
                }
            };
            match created {
                Ok(w) if keep => {
                    self.persist();
                    self.update_gauge();
                    tracing::info!(container_id = %w.id, "standby worker ready");
                }
                Ok(w) => {
                    // The spec no longer wants it (expired or lowered meanwhile).
                    self.discard(w.id);
                    return;
                }
                Err(e) => {
                    self.metrics.standby_refill_failed();
                    tracing::warn!(error = %e, "standby refill failed");
                    return;
                }
            }
        }
    }

    /// One standby: admitted like any Ensure, created, hidden, and ready (listening).
    async fn create(self: &Arc<Self>, spec: &Spec) -> Result<Worker, String> {
        let req = spec.request();
        let memory = self
            .admission
            .memory_of(&req.env)
            .map_err(|e| e.to_string())?;
        let ticket = self
            .admission
            .admit(&req.owner_id, memory, &self.table)
            .await
            .map_err(|e| e.to_string())?;
        let w = self.runtime.ensure(req).await.map_err(|e| e.chain())?;
        self.lock().hidden.insert(w.id.clone());
        self.table.insert_created(&w);
        ticket.commit(&w.id);
        if self.ready_timeout.is_zero() {
            return Ok(w);
        }
        let addr = std::net::SocketAddr::new(w.ip, w.port);
        match ready::wait(
            self.runtime.as_ref(),
            &self.table,
            &w.id,
            addr,
            self.ready_timeout,
        )
        .await
        {
            Readiness::Ready => Ok(w),
            other => {
                self.discard(w.id.clone());
                Err(format!("standby {} did not get ready: {other:?}", w.id))
            }
        }
    }

    /// Destroys a standby that left the pool, in the background; it stays hidden until gone.
    fn discard(self: &Arc<Self>, id: String) {
        self.lock().hidden.insert(id.clone());
        let this = self.clone();
        tokio::spawn(async move {
            match this.runtime.destroy(&id).await {
                Ok(_) => {
                    this.table.remove(&id);
                    this.lock().hidden.remove(&id);
                    this.persist();
                }
                Err(e) => {
                    tracing::warn!(container_id = %id, error = %e.chain(), "cannot destroy a standby worker; GC will");
                }
            }
        });
    }

    fn persist_detached(self: &Arc<Self>) {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.persist());
    }

    /// Writes the ready standby ids (atomic replace).
    fn persist(&self) {
        let Some(file) = &self.file else {
            return;
        };
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let ids: Vec<String> = {
            let p = self.lock();
            let mut ids: Vec<String> = p.hidden.iter().cloned().collect();
            ids.sort();
            ids
        };
        let res = serde_json::to_vec(&ids)
            .map_err(std::io::Error::other)
            .and_then(|json| esb_runtime::fsutil::write_atomic(file, &json));
        if let Err(e) = res {
            tracing::warn!(file = %file.display(), error = %e, "cannot save the standby list");
        }
    }

    fn update_gauge(&self) {
        self.metrics
            .set_standby_ready(i64::from(self.lock().ready_total()));
    }
}
