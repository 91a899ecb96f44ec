//! [`CniNetwork`]: install, attach, detach and reconcile — the sagas that tie the pinned netns,
//! the journal and the plugin chain together.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::CniSettings;
use esb_runtime::keyed::KeyedLocks;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::chain::{self, Target};
use crate::error::CniError;
use crate::exec::{PluginExec, ProcessExec};
use crate::journal::{AttachState, Attachment, Journal};
use crate::pool::NetnsPool;
use crate::{conflist, firewall, fsutil, ipam, netns, spoofchk};

mod reconcile;

/// Interface name inside the sandbox.
pub const IFNAME: &str = "eth0";

/// Pre-created network namespaces kept ready (one batch of concurrent Ensures).
const NETNS_POOL_SIZE: usize = 8;

/// The worker network: cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct CniNetwork {
    inner: Arc<Inner>,
}

struct Inner {
    settings: CniSettings,
    conflist: Value,
    exec: Arc<dyn PluginExec>,
    journal: Journal,
    netns_dir: PathBuf,
    pool: Arc<NetnsPool>,
    /// When this process journaled each attachment (reconcile's grace period).
    attached_at: Mutex<HashMap<String, std::time::Instant>>,
    /// Per-container-id locks; presence also marks an operation in flight (reconcile skips it).
    locks: KeyedLocks,
}

impl std::fmt::Debug for CniNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CniNetwork")
            .field("network", &self.inner.settings.network_name)
            .field("subnet", &self.inner.settings.subnet)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn attached_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, std::time::Instant>> {
        self.attached_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this process journaled `id` after `cutoff` (`None` = process younger than the
    /// grace period: everything it attached is recent).
    fn attached_recently(&self, id: &str, cutoff: Option<std::time::Instant>) -> bool {
        self.attached_map()
            .get(id)
            .is_some_and(|at| cutoff.is_none_or(|c| *at > c))
    }

    fn busy(&self, id: &str) -> bool {
        self.locks.busy(id)
    }

    fn pin_path(&self, id: &str) -> PathBuf {
        self.netns_dir.join(id)
    }

    fn ipam_dir(&self) -> PathBuf {
        self.settings.net_dir.join(&self.settings.network_name)
    }
}

/// Container ids become file names: keep them to a safe charset.
fn validate_id(id: &str) -> Result<(), CniError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(CniError::InvalidContainerId(id.to_string()))
    }
}

/// Runs blocking filesystem/namespace work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CniError> + Send + 'static,
) -> Result<T, CniError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(CniError::io(
            "run blocking task",
            "",
            std::io::Error::other(e.to_string()),
        ))
    })
}

/// Runs a saga on its own task so a dropped caller never leaves it half done.
async fn detached<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T, CniError>> + Send + 'static,
) -> Result<T, CniError> {
    tokio::spawn(fut).await.unwrap_or_else(|e| {
        Err(CniError::io(
            "run cni task",
            "",
            std::io::Error::other(e.to_string()),
        ))
    })
}

impl CniNetwork {
    /// A network that runs the real plugins from `settings.bin_dir`. `state_dir` is the agent's
    /// state directory; pins and the journal live under `<state_dir>/cni/`.
    pub fn new(settings: CniSettings, state_dir: &Path) -> Result<Self, CniError> {
        let exec = Arc::new(ProcessExec::new(
            settings.bin_dir.clone(),
            settings.plugin_timeout,
        ));
        Self::with_exec(settings, state_dir, exec)
    }

    /// Like [`CniNetwork::new`] with a custom plugin executor (tests use the fake).
    pub fn with_exec(
        settings: CniSettings,
        state_dir: &Path,
        exec: Arc<dyn PluginExec>,
    ) -> Result<Self, CniError> {
        let conflist = conflist::conflist(&settings)?;
        let cni_dir = state_dir.join("cni");
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                conflist,
                exec,
                journal: Journal::new(cni_dir.join("attachments")),
                netns_dir: cni_dir.join("netns"),
                pool: Arc::new(NetnsPool::new(cni_dir.join("pool"), NETNS_POOL_SIZE)),
                attached_at: Mutex::new(HashMap::new()),
                locks: KeyedLocks::default(),
            }),
        })
    }

    pub fn settings(&self) -> &CniSettings {
        &self.inner.settings
    }

    /// The generated conflist.
    pub fn conflist(&self) -> &Value {
        &self.inner.conflist
    }

    /// Creates the directories, writes the conflist and the identity file atomically, and
    /// starts filling the netns pool (dropping pooled pins an earlier process left).
    pub async fn install(&self) -> Result<(), CniError> {
        let inner = self.inner.clone();
        blocking(move || {
            let s = &inner.settings;
            for dir in [
                &s.conf_dir,
                &s.net_dir,
                &inner.netns_dir,
                &inner.journal.dir().to_path_buf(),
            ] {
                std::fs::create_dir_all(dir)
                    .map_err(|e| CniError::io("create directory", dir, e))?;
            }
            let mut text = serde_json::to_vec_pretty(&inner.conflist).map_err(|e| {
                CniError::io("encode conflist", &s.conf_file, std::io::Error::other(e))
            })?;
            text.push(b'\n');
            fsutil::write_atomic(&s.conf_file, &text, fsutil::Durability::Durable)?;
            fsutil::write_atomic(
                &s.identity_file,
                conflist::identity_file(s).as_bytes(),
                fsutil::Durability::Durable,
            )?;
            if let Some(plan) = firewall_plan(s)
                && let Err(e) = firewall::install(&plan, &s.network_name)
            {
                tracing::warn!(
                    bridge = %s.bridge,
                    chains = ?firewall::chain_names(&plan.scope),
                    error = %e,
                    "cannot install the worker firewall; workers can reach the node's ports and networks"
                );
            }
            inner.pool.reset()
        })
        .await
    }

    /// Deletes the firewall chains and jumps [`CniNetwork::install`] added for this network
    /// and ENV (never another ENV's). Idempotent; the rules must stay while workers live, so
    /// only a destroy-policy stop should call it.
    pub async fn remove_firewall(&self) -> Result<(), CniError> {
        let Some(fw) = self.inner.settings.firewall.clone() else {
            return Ok(());
        };
        blocking(move || {
            firewall::remove(&fw.scope).map_err(|e| {
                CniError::io(
                    "remove firewall rules",
                    "iptables",
                    std::io::Error::other(e),
                )
            })
        })
        .await
    }

    /// Creates a pinned netns for `container_id`, journals the attachment, runs ADD and returns
    /// the attachment with the sandbox IP. On failure everything is undone. Attaching an id
    /// that is already attached returns the existing attachment.
    pub async fn attach(&self, container_id: &str) -> Result<Attachment, CniError> {
        self.attach_notify(container_id, None).await
    }

    /// [`attach`](Self::attach) that sends the netns path on `pinned` as soon as the netns is
    /// pinned (before ADD), so a caller can create its container in that netns while the
    /// plugins run. Dropped unsent when the attach fails before pinning.
    pub async fn attach_notify(
        &self,
        container_id: &str,
        pinned: Option<oneshot::Sender<PathBuf>>,
    ) -> Result<Attachment, CniError> {
        validate_id(container_id)?;
        let inner = self.inner.clone();
        let id = container_id.to_string();
        detached(async move {
            let _lock = inner.locks.lock(&id).await;
            attach_locked(&inner, &id, pinned).await
        })
        .await
    }

    /// Runs DEL (when journaled), unpins the netns and removes the journal entry. Idempotent.
    /// If DEL fails the IPAM reservation is released anyway and the netns unpinned (which
    /// removes the veth), but the journal entry stays so reconcile retries DEL; the error is
    /// returned.
    pub async fn detach(&self, container_id: &str) -> Result<(), CniError> {
        validate_id(container_id)?;
        let inner = self.inner.clone();
        let id = container_id.to_string();
        detached(async move {
            let _lock = inner.locks.lock(&id).await;
            detach_locked(&inner, &id).await
        })
        .await
    }

    /// Best-effort CHECK of an attachment (portmap's CHECK fails on plugins 1.1.1).
    pub async fn check(&self, container_id: &str) -> Result<(), CniError> {
        validate_id(container_id)?;
        let Some(a) = self.attachment(container_id)? else {
            return Ok(());
        };
        let Some(prev) = a.result.as_ref() else {
            return Ok(());
        };
        chain::check(
            self.inner.exec.as_ref(),
            &self.inner.conflist,
            &target(&a),
            prev,
        )
        .await
    }

    /// Every journaled attachment (survives agent restarts).
    pub fn attachments(&self) -> Result<Vec<Attachment>, CniError> {
        self.inner.journal.all()
    }

    /// How many attachments are journaled — each holds one IPAM reservation (one directory
    /// read, no entry parsed; for the reservations gauge).
    pub fn attachment_count(&self) -> Result<usize, CniError> {
        self.inner.journal.ids().map(|ids| ids.len())
    }

    pub fn attachment(&self, container_id: &str) -> Result<Option<Attachment>, CniError> {
        validate_id(container_id)?;
        self.inner.journal.read(container_id)
    }

    /// Releases everything no live worker owns: journaled attachments whose id is not in
    /// `live` (full detach), host-local reservations whose owner is neither live nor journaled,
    /// and pins without a journal entry. Ids with an attach/detach in flight are skipped.
    /// Returns the number of released resources.
    pub async fn reconcile(&self, live: &HashSet<String>) -> Result<u64, CniError> {
        self.reconcile_with(live, &HashSet::new()).await
    }

    /// [`reconcile`](Self::reconcile) on an IPAM store other agents may share (review M5: two
    /// ENVs of one brand use one network): a reservation whose owner is not in this journal is
    /// released only when the owner is not in `runtime_ids` (every container id the runtime
    /// knows, any ENV) and the reservation is older than any attach could take — so another
    /// agent's worker, live or being created, keeps its IP.
    pub async fn reconcile_with(
        &self,
        live: &HashSet<String>,
        runtime_ids: &HashSet<String>,
    ) -> Result<u64, CniError> {
        let inner = self.inner.clone();
        let live = live.clone();
        let runtime_ids = runtime_ids.clone();
        detached(async move { reconcile::reconcile(&inner, &live, &runtime_ids).await }).await
    }
}

/// The firewall for `s`, when configured and its addresses parse (validated at config load).
fn firewall_plan(s: &CniSettings) -> Option<firewall::Plan> {
    let fw = s.firewall.as_ref()?;
    Some(firewall::Plan {
        scope: fw.scope.clone(),
        bridge: s.bridge.clone(),
        subnet: s.subnet.clone(),
        gateway: s.gateway.trim().parse().ok()?,
        dns_server: Some(s.dns_server.trim().parse().ok()?),
        deny_cidrs: fw.deny_cidrs.clone(),
        egress: fw.egress,
    })
}

/// A journal entry; an unreadable one (torn by a host crash) becomes a pending entry at the
/// deterministic pin path, which is all DEL needs.
fn read_entry(inner: &Inner, id: &str) -> Result<Option<Attachment>, CniError> {
    match inner.journal.read(id) {
        Err(e @ CniError::Journal { .. }) => {
            tracing::warn!(container_id = id, error = %e, "unreadable cni journal entry; treating it as pending");
            Ok(Some(Attachment {
                container_id: id.to_string(),
                netns_path: inner.pin_path(id),
                ifname: IFNAME.to_string(),
                ip: None,
                created_at: 0,
                state: AttachState::Adding,
                result: None,
            }))
        }
        other => other,
    }
}

fn target(a: &Attachment) -> Target {
    Target {
        container_id: a.container_id.clone(),
        netns: a.netns_path.clone(),
        ifname: a.ifname.clone(),
    }
}

async fn attach_locked(
    inner: &Arc<Inner>,
    id: &str,
    pinned: Option<oneshot::Sender<PathBuf>>,
) -> Result<Attachment, CniError> {
    if let Some(existing) = read_entry(inner, id)? {
        if existing.state == AttachState::Added && netns::is_pinned(&existing.netns_path) {
            if let Some(tx) = pinned {
                let _ = tx.send(existing.netns_path.clone());
            }
            return Ok(existing);
        }
        // A stale half-done attachment (crash mid-ADD): clear it before starting over.
        detach_locked(inner, id).await?;
    }
    let pending = Attachment {
        container_id: id.to_string(),
        netns_path: inner.pin_path(id),
        ifname: IFNAME.to_string(),
        ip: None,
        created_at: fsutil::now_unix(),
        state: AttachState::Adding,
        result: None,
    };
    // Intent first: from here on a crash leaves a journal entry that reconcile can undo.
    inner.journal.write(&pending)?;
    inner
        .attached_map()
        .insert(id.to_string(), std::time::Instant::now());
    let started = std::time::Instant::now();
    let res = add_steps(inner, &pending, pinned).await;
    match res {
        Ok(done) => {
            tracing::debug!(container_id = id, ip = ?done.ip, elapsed_ms = started.elapsed().as_millis() as u64, "cni attached");
            Ok(done)
        }
        Err(e) => {
            if let Err(undo) = undo_attach(inner, &pending).await {
                tracing::warn!(container_id = id, error = %undo, "cni attach rollback incomplete; reconcile will retry");
            }
            Err(e)
        }
    }
}

async fn add_steps(
    inner: &Arc<Inner>,
    pending: &Attachment,
    pinned: Option<oneshot::Sender<PathBuf>>,
) -> Result<Attachment, CniError> {
    let pin = pending.netns_path.clone();
    let pool = inner.pool.clone();
    blocking(move || pool.pin(&pin)).await?;
    if let Some(tx) = pinned {
        // The caller may have gone; the attach goes on regardless.
        let _ = tx.send(pending.netns_path.clone());
    }
    let result = chain::add(inner.exec.as_ref(), &inner.conflist, &target(pending)).await?;
    let ip = chain::sandbox_ip(&result, &pending.ifname).ok_or_else(|| CniError::NoIp {
        container_id: pending.container_id.clone(),
    })?;
    // Fail closed: a worker that could talk to its neighbours at L2 is not handed out.
    for veth in chain::host_veths(&result, &inner.settings.bridge) {
        inner.exec.isolate_port(&veth).await?;
    }
    let done = Attachment {
        ip: Some(ip),
        state: AttachState::Added,
        result: Some(result),
        ..pending.clone()
    };
    inner.journal.write(&done)?;
    Ok(done)
}

async fn undo_attach(inner: &Arc<Inner>, pending: &Attachment) -> Result<(), CniError> {
    release(inner, pending).await
}

async fn detach_locked(inner: &Arc<Inner>, id: &str) -> Result<(), CniError> {
    match read_entry(inner, id)? {
        Some(a) => release(inner, &a).await,
        None => {
            // No journal entry: at most a stray pin is left.
            let pin = inner.pin_path(id);
            blocking(move || netns::remove(&pin)).await
        }
    }
}

/// DEL + unpin + journal removal; on DEL failure releases IPAM directly, unpins, keeps the
/// journal entry (for a later DEL retry) and returns the DEL error.
async fn release(inner: &Arc<Inner>, a: &Attachment) -> Result<(), CniError> {
    let pin = a.netns_path.clone();
    // A pin file that no longer pins a netns (host rebooted) would make bridge's DEL fail;
    // without the file DEL treats the netns as gone and only releases IPAM.
    let netns_gone = blocking(move || {
        if pin.exists() && !netns::is_pinned(&pin) {
            netns::remove(&pin).map(|()| true)
        } else {
            Ok(!pin.exists())
        }
    })
    .await?;
    let del = chain::del(
        inner.exec.as_ref(),
        &inner.conflist,
        &target(a),
        a.result.as_ref(),
    )
    .await;
    let pin = a.netns_path.clone();
    let ipam_dir = inner.ipam_dir();
    let owner = a.container_id.clone();
    let failed = del.is_err();
    let ifname = a.ifname.clone();
    blocking(move || {
        if failed {
            ipam::release_where(&ipam_dir, |r| r.owner == owner)?;
        }
        if failed || netns_gone {
            // The plugin skips its macspoofchk teardown without a netns (or failed midway).
            spoofchk::teardown(&owner, &ifname);
        }
        netns::remove(&pin)
    })
    .await?;
    del?;
    inner.journal.remove(&a.container_id)?;
    inner.attached_map().remove(&a.container_id);
    Ok(())
}
