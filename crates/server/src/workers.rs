//! The worker table: a projection of the runtime (id → owner, function, name, ip, status,
//! created_at, last_used) used for ownership checks and invoke targets. It never blanks a known
//! IP, survives Ensure/List races, looks up misses with one targeted `inspect`, and persists
//! last-used times to `state_dir` so they survive restarts.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use esb_runtime::{
    Runtime, RuntimeError, WORKER_PORT, Worker, WorkerEvent, WorkerEventKind, WorkerState,
    WorkerStatus,
};

use crate::invoke::Slot;

/// File (in `state_dir`) holding last-used times.
pub const LAST_USED_FILE: &str = "last-used.json";

/// One known worker.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub name: String,
    pub owner_id: String,
    pub status: WorkerStatus,
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub created_at: i64,
    /// Invoke serialisation and the worker's pooled connection.
    pub slot: Arc<Slot>,
    /// When the table last learnt about this entry (to tell a stale one from a fresh insert).
    seen: Instant,
    /// What the daemon's exit/OOM events said (the listing may lag them).
    pub exit: Exit,
}

/// A worker's exit as its events told it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exit {
    /// From the exit event; `None` until one arrived.
    pub code: Option<u32>,
    /// An OOM event arrived (or the exit said so).
    pub oom: bool,
}

impl Entry {
    pub fn addr(&self) -> Option<SocketAddr> {
        self.ip.map(|ip| SocketAddr::new(ip, self.port))
    }
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Arc<Entry>>,
    last_used: HashMap<String, i64>,
    /// Recently removed ids: a runtime answer obtained before the removal must not
    /// resurrect them (their IP may already belong to a new worker).
    removed: HashMap<String, Instant>,
}

/// How long a removal is remembered (far longer than any list or inspect takes).
const TOMBSTONE_TTL: Duration = Duration::from_secs(300);

impl Inner {
    fn removed_since(&self, id: &str, started: Instant) -> bool {
        self.removed.get(id).is_some_and(|at| *at >= started)
    }
}

/// The table; cheap to share behind an `Arc`.
pub struct WorkerTable {
    inner: Mutex<Inner>,
    runtime: Arc<dyn Runtime>,
    file: Option<PathBuf>,
    dirty: AtomicBool,
}

pub use esb_runtime::clock::unix_now;

impl WorkerTable {
    /// A table persisting to `state_dir/last-used.json` (`None`: memory only), loading any
    /// times saved by a previous run.
    pub fn new(runtime: Arc<dyn Runtime>, state_dir: Option<&Path>) -> Self {
        let file = state_dir.map(|d| d.join(LAST_USED_FILE));
        let last_used = file.as_deref().map(load).unwrap_or_default();
        Self {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                last_used,
                removed: HashMap::new(),
            }),
            runtime,
            file,
            dirty: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start-up: adopts the live workers reconcile returned; forgets saved times of others.
    pub fn adopt(&self, states: Vec<WorkerState>) {
        let mut inner = self.lock();
        let live: std::collections::HashSet<&str> = states.iter().map(|s| s.id.as_str()).collect();
        let before = inner.last_used.len();
        inner.last_used.retain(|id, _| live.contains(id.as_str()));
        if inner.last_used.len() != before {
            self.dirty.store(true, Ordering::Relaxed);
        }
        for s in states {
            upsert(&mut inner, s, Instant::now());
        }
    }

    /// A worker Ensure just created (Ensure counts as a use).
    pub fn insert_created(&self, w: &Worker) {
        let mut inner = self.lock();
        inner.entries.insert(
            w.id.clone(),
            Arc::new(Entry {
                id: w.id.clone(),
                name: w.name.clone(),
                owner_id: w.owner_id.clone(),
                status: WorkerStatus::Running,
                ip: Some(w.ip),
                port: w.port,
                created_at: w.created_at,
                slot: Arc::new(Slot::fresh()),
                seen: Instant::now(),
                exit: Exit::default(),
            }),
        );
        inner.last_used.insert(w.id.clone(), unix_now());
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// The entry for `id`; on a miss, one targeted `inspect` (never a full list).
    pub async fn lookup(&self, id: &str) -> Result<Option<Arc<Entry>>, RuntimeError> {
        if let Some(e) = self.lock().entries.get(id) {
            return Ok(Some(e.clone()));
        }
        let started = Instant::now();
        let Some(state) = self.runtime.inspect(id).await? else {
            return Ok(None);
        };
        let mut inner = self.lock();
        if inner.removed_since(id, started) {
            return Ok(None);
        }
        upsert(&mut inner, state, started);
        Ok(inner.entries.get(id).cloned())
    }

    /// Re-reads one worker from the runtime (one `inspect`) and updates its entry; a worker the
    /// runtime no longer has is dropped (unless re-added after the inspect began).
    pub async fn reinspect(&self, id: &str) -> Result<Option<WorkerState>, RuntimeError> {
        let started = Instant::now();
        let state = self.runtime.inspect(id).await?;
        let mut inner = self.lock();
        match &state {
            Some(s) if !inner.removed_since(id, started) => upsert(&mut inner, s.clone(), started),
            Some(_) => {}
            None => {
                if inner.entries.get(id).is_some_and(|e| e.seen < started)
                    && let Some(e) = inner.entries.remove(id)
                {
                    e.slot.invalidate();
                }
            }
        }
        Ok(state)
    }

    /// Merges a full runtime listing taken at `started`: updates every listed worker and
    /// drops entries the runtime no longer has — except those added after the listing began
    /// (a racing Ensure), which the listing could not see.
    pub fn refresh(&self, states: &[WorkerState], started: Instant) {
        let mut inner = self.lock();
        let listed: std::collections::HashSet<&str> =
            states.iter().map(|s| s.id.as_str()).collect();
        let gone: Vec<String> = inner
            .entries
            .values()
            .filter(|e| e.seen < started && !listed.contains(e.id.as_str()))
            .map(|e| e.id.clone())
            .collect();
        for id in gone {
            if let Some(e) = inner.entries.remove(&id) {
                e.slot.invalidate();
            }
        }
        let now = Instant::now();
        inner
            .removed
            .retain(|_, at| now.duration_since(*at) < TOMBSTONE_TTL);
        for s in states {
            if !inner.removed_since(&s.id, started) {
                upsert(&mut inner, s.clone(), started);
            }
        }
    }

    pub fn set_status(&self, id: &str, status: WorkerStatus) {
        if let Some(e) = self.lock().entries.get_mut(id) {
            let e = Arc::make_mut(e);
            e.status = status;
            if status != WorkerStatus::Running {
                e.slot.invalidate();
            }
        }
    }

    /// Applies a daemon event to a known worker (events of unknown ids are ignored: the
    /// table tracks managed workers only, and a listing or lookup brings in the rest).
    /// Returns whether an entry changed. A stopped worker stays stopped until removed.
    pub fn apply_event(&self, ev: &WorkerEvent) -> bool {
        let status = match ev.kind {
            WorkerEventKind::Exited { .. } => WorkerStatus::Stopped,
            WorkerEventKind::Paused => WorkerStatus::Paused,
            WorkerEventKind::Resumed => WorkerStatus::Running,
            WorkerEventKind::Oom => {
                let mut inner = self.lock();
                let Some(e) = inner.entries.get_mut(&ev.id) else {
                    return false;
                };
                Arc::make_mut(e).exit.oom = true;
                return true;
            }
            WorkerEventKind::Deleted => {
                let known = self.lock().entries.contains_key(&ev.id);
                if known {
                    self.remove(&ev.id);
                }
                return known;
            }
        };
        let mut inner = self.lock();
        let Some(e) = inner.entries.get_mut(&ev.id) else {
            return false;
        };
        if e.status == WorkerStatus::Stopped && e.exit.code.is_some() {
            return false;
        }
        let e = Arc::make_mut(e);
        if let WorkerEventKind::Exited { exit_code, oom } = ev.kind {
            e.exit.code = Some(exit_code);
            e.exit.oom |= oom;
        } else if e.status == WorkerStatus::Stopped {
            // A pause/resume event cannot revive an exited worker.
            return false;
        }
        e.status = status;
        if status != WorkerStatus::Running {
            e.slot.invalidate();
        }
        e.seen = Instant::now();
        true
    }

    /// The known status of `id`, without asking the runtime.
    pub fn status(&self, id: &str) -> Option<WorkerStatus> {
        self.lock().entries.get(id).map(|e| e.status)
    }

    /// What the events said about the exit of `id` (default when nothing or unknown).
    pub fn exit(&self, id: &str) -> Exit {
        self.lock()
            .entries
            .get(id)
            .map(|e| e.exit)
            .unwrap_or_default()
    }

    pub fn remove(&self, id: &str) {
        let mut inner = self.lock();
        if let Some(e) = inner.entries.remove(id) {
            e.slot.invalidate();
        }
        inner.removed.insert(id.to_owned(), Instant::now());
        if inner.last_used.remove(id).is_some() {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Records a use (Ensure, Resume, Invoke).
    pub fn touch(&self, id: &str) {
        let now = unix_now();
        let mut inner = self.lock();
        match inner.last_used.get_mut(id) {
            Some(t) => *t = now,
            None => {
                inner.last_used.insert(id.to_owned(), now);
            }
        }
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Last use of `id`, else `created_at`.
    pub fn last_used(&self, id: &str, created_at: i64) -> i64 {
        self.lock().last_used.get(id).copied().unwrap_or(created_at)
    }

    /// Every known entry (for shutdown destroy and the workers gauge).
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        self.lock().entries.values().cloned().collect()
    }

    /// Writes last-used times if they changed since the last flush (atomic replace).
    pub fn flush(&self) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let json = {
            let inner = self.lock();
            serde_json::to_vec(&inner.last_used).map_err(std::io::Error::other)?
        };
        let res = write_atomic(file, &json);
        if res.is_err() {
            self.dirty.store(true, Ordering::Relaxed);
        }
        res
    }
}

/// Merges one runtime answer obtained from `taken` on. An entry the table learnt about after
/// that (a racing Ensure, an event) is fresher than the answer and is left alone.
fn upsert(inner: &mut Inner, s: WorkerState, taken: Instant) {
    match inner.entries.get_mut(&s.id) {
        Some(e) if e.seen > taken => {}
        Some(e) => {
            let e = Arc::make_mut(e);
            // Never blank a known IP; a changed IP or a non-running worker drops its
            // pooled connection.
            if let Some(ip) = s.ip {
                if e.ip.is_some_and(|old| old != ip) {
                    e.slot.invalidate();
                }
                e.ip = Some(ip);
            }
            if s.status != WorkerStatus::Running {
                e.slot.invalidate();
            }
            // An exit an event told is final (no restarts): a listing or inspect that still
            // says running is stale — Docker sends `die` before its own state says exited.
            if e.exit.code.is_none() {
                e.status = s.status;
            }
            if s.created_at > 0 {
                e.created_at = s.created_at;
            }
            if !s.name.is_empty() {
                e.name = s.name;
            }
            e.seen = Instant::now();
        }
        None => {
            inner.entries.insert(
                s.id.clone(),
                Arc::new(Entry {
                    id: s.id,
                    name: s.name,
                    owner_id: s.owner_id,
                    status: s.status,
                    ip: s.ip,
                    port: WORKER_PORT,
                    created_at: s.created_at,
                    slot: Arc::new(Slot::default()),
                    seen: Instant::now(),
                    exit: Exit::default(),
                }),
            );
        }
    }
}

fn load(file: &Path) -> HashMap<String, i64> {
    esb_runtime::fsutil::sweep_temp_files(file);
    match std::fs::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %file.display(), error = %e, "ignoring unreadable last-used state");
            HashMap::new()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
        Err(e) => {
            tracing::warn!(path = %file.display(), error = %e, "cannot read last-used state");
            HashMap::new()
        }
    }
}

/// Unique temp file + fsync + rename + directory fsync (review L4).
fn write_atomic(file: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    esb_runtime::fsutil::write_atomic(file, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use esb_runtime::fake::{FakeRuntime, Op};

    fn state(id: &str, ip: Option<IpAddr>) -> WorkerState {
        WorkerState {
            id: id.into(),
            name: id.into(),
            function_name: "f".into(),
            owner_id: "o".into(),
            status: WorkerStatus::Running,
            ip,
            created_at: 100,
        }
    }

    #[tokio::test]
    async fn never_blanks_a_known_ip_and_miss_is_one_inspect() {
        let rt = Arc::new(FakeRuntime::new());
        rt.insert_worker(state("a", Some("10.0.0.2".parse().unwrap())));
        let t = WorkerTable::new(rt.clone(), None);
        let e = t.lookup("a").await.unwrap().unwrap();
        assert_eq!(e.ip, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(rt.count(Op::Inspect), 1);
        assert_eq!(rt.count(Op::List), 0);
        t.refresh(&[state("a", None)], Instant::now());
        let e = t.lookup("a").await.unwrap().unwrap();
        assert_eq!(e.ip, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(rt.count(Op::Inspect), 1, "hit needs no lookup");
    }

    #[tokio::test]
    async fn refresh_keeps_entries_inserted_after_listing_started() {
        let rt = Arc::new(FakeRuntime::new());
        let t = WorkerTable::new(rt, None);
        let started = Instant::now();
        t.insert_created(&Worker {
            id: "new".into(),
            name: "new".into(),
            ip: "10.0.0.3".parse().unwrap(),
            port: 8080,
            function_name: "f".into(),
            owner_id: "o".into(),
            created_at: 1,
        });
        t.refresh(&[], started);
        assert_eq!(t.entries().len(), 1);
        t.refresh(&[], Instant::now());
        assert_eq!(t.entries().len(), 0);
    }

    #[tokio::test]
    async fn a_stale_listing_does_not_resurrect_a_removed_worker() {
        let rt = Arc::new(FakeRuntime::new());
        let t = WorkerTable::new(rt, None);
        t.adopt(vec![state("a", Some("10.0.0.2".parse().unwrap()))]);
        let started = Instant::now();
        t.remove("a");
        t.refresh(&[state("a", Some("10.0.0.2".parse().unwrap()))], started);
        assert!(t.entries().is_empty());
        // A listing taken after the removal is believed.
        t.refresh(&[state("a", None)], Instant::now());
        assert_eq!(t.entries().len(), 1);
    }

    #[tokio::test]
    async fn an_older_answer_never_overrides_and_only_an_event_told_exit_is_final() {
        let rt = Arc::new(FakeRuntime::new());
        let t = WorkerTable::new(rt, None);
        let stopped = |id: &str| WorkerState {
            status: WorkerStatus::Stopped,
            ..state(id, None)
        };
        // A listing taken mid-ensure (container, no task yet) merged after Ensure answered.
        let started = Instant::now() - Duration::from_millis(1);
        t.insert_created(&Worker {
            id: "w".into(),
            name: "w".into(),
            ip: "10.0.0.3".parse().unwrap(),
            port: 8080,
            function_name: "f".into(),
            owner_id: "o".into(),
            created_at: 1,
        });
        t.refresh(&[stopped("w")], started);
        assert_eq!(t.status("w"), Some(WorkerStatus::Running));
        // A stop seen only in a listing is corrected by a later listing…
        t.refresh(&[stopped("w")], Instant::now());
        assert_eq!(t.status("w"), Some(WorkerStatus::Stopped));
        t.refresh(&[state("w", None)], Instant::now());
        assert_eq!(t.status("w"), Some(WorkerStatus::Running));
        // …an exit an event told is not (Docker lists a worker running for a moment after
        // its `die`), and its code is kept.
        assert!(t.apply_event(&WorkerEvent {
            id: "w".into(),
            kind: WorkerEventKind::Exited {
                exit_code: 3,
                oom: false
            },
            at: None,
        }));
        t.refresh(&[state("w", None)], Instant::now());
        assert_eq!(t.status("w"), Some(WorkerStatus::Stopped));
        assert_eq!(t.exit("w").code, Some(3));
    }

    #[tokio::test]
    async fn last_used_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Arc::new(FakeRuntime::new());
        let t = WorkerTable::new(rt.clone(), Some(dir.path()));
        t.touch("a");
        t.touch("gone");
        t.flush().unwrap();
        let when = t.last_used("a", 0);
        let t2 = WorkerTable::new(rt, Some(dir.path()));
        t2.adopt(vec![state("a", None)]);
        assert_eq!(t2.last_used("a", 0), when);
        assert_eq!(t2.last_used("gone", 7), 7);
    }
}
