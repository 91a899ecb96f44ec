//! Capacity admission for Ensure (review H3, M4; issue 9 §5): the requested memory must lie in
//! `[128 MiB, AGENT_WORKER_MEMORY_MAX_MIB]`; at most `max_concurrent_ensures` Ensures reach the
//! runtime at once (a burst queues, within the caller's deadline, instead of drowning
//! containerd); an Ensure that would exceed the node's worker cap, the owner's cap or the memory
//! budget is RESOURCE_EXHAUSTED before the runtime is touched.
//!
//! Usage is derived from the worker table on every decision (so GC, destroys and events can
//! never leave it stale) plus the Ensures admitted and still running.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use esb_runtime::{MEMORY_SIZE_ENV, WorkerStatus};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::settings::AdmissionSettings;
use crate::status::ApiError;
use crate::workers::WorkerTable;

const MIB: u64 = 1024 * 1024;
/// Lambda's smallest memory size; below it runtimes fail to start (review H3).
pub const MEMORY_MIN_BYTES: u64 = 128 * MIB;

/// What the node holds now (GetCapabilities, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub workers: u64,
    pub memory_bytes: u64,
}

#[derive(Debug, Default)]
struct Ledger {
    /// Memory limit of each worker created through this agent (adopted ones count the default).
    memory: HashMap<String, u64>,
    /// Admitted Ensures still running: token → (owner, memory).
    pending: BTreeMap<u64, (String, u64)>,
    next: u64,
}

#[derive(Debug)]
pub struct Admission {
    settings: AdmissionSettings,
    gate: Arc<Semaphore>,
    ledger: Mutex<Ledger>,
}

/// An admitted Ensure: holds its slot of the concurrency bound and its reservation until it is
/// committed (the worker exists) or dropped (it failed). Owned, so the runtime's work can hold
/// it after the caller left: a burst of impatient callers never puts more than the bound of
/// Ensures into the runtime at once.
pub struct Ticket {
    adm: Arc<Admission>,
    token: u64,
    memory: u64,
    _permit: OwnedSemaphorePermit,
}

impl Ticket {
    /// The worker exists: its memory now counts through the table.
    pub fn commit(self, id: &str) {
        if let Ok(mut l) = self.adm.ledger.lock() {
            l.memory.insert(id.to_string(), self.memory);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ok(mut l) = self.adm.ledger.lock() {
            l.pending.remove(&self.token);
        }
    }
}

impl Admission {
    pub fn new(settings: AdmissionSettings) -> Self {
        let permits = settings
            .max_concurrent_ensures
            .clamp(1, Semaphore::MAX_PERMITS);
        Self {
            settings,
            gate: Arc::new(Semaphore::new(permits)),
            ledger: Mutex::new(Ledger::default()),
        }
    }

    pub fn settings(&self) -> &AdmissionSettings {
        &self.settings
    }

    /// The memory limit an Ensure asks for: `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` (MiB) when it is
    /// a positive integer (absent, invalid or 0 → the default, SPEC §6), which must lie within
    /// `[128 MiB, memory_max]` (review H3).
    pub fn memory_of(&self, env: &BTreeMap<String, String>) -> Result<u64, ApiError> {
        let Some(mib) = env
            .get(MEMORY_SIZE_ENV)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|m| *m > 0)
        else {
            return Ok(self.settings.default_memory_bytes);
        };
        let max_mib = self.settings.memory_max_bytes / MIB;
        match mib.checked_mul(MIB) {
            Some(b) if (MEMORY_MIN_BYTES..=self.settings.memory_max_bytes).contains(&b) => Ok(b),
            _ => Err(ApiError::InvalidArgument(format!(
                "{MEMORY_SIZE_ENV}={mib} is outside {}..={max_mib} MiB",
                MEMORY_MIN_BYTES / MIB
            ))),
        }
    }

    /// Waits for a slot of the concurrency bound (the caller's deadline bounds the wait: a
    /// caller that leaves drops this future), then reserves a worker of `memory` for `owner`
    /// or answers RESOURCE_EXHAUSTED. A node already full says so before the wait too, so a
    /// burst against a full node is refused at once instead of queueing for a refusal.
    pub async fn admit(
        self: &Arc<Self>,
        owner: &str,
        memory: u64,
        table: &WorkerTable,
    ) -> Result<Ticket, ApiError> {
        self.check(&mut *self.ledger()?, table, owner, memory)?;
        let permit = self
            .gate
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Unavailable("the agent is shutting down".into()))?;
        let mut l = self.ledger()?;
        self.check(&mut l, table, owner, memory)?;
        let token = l.next;
        l.next += 1;
        l.pending.insert(token, (owner.to_string(), memory));
        drop(l);
        Ok(Ticket {
            adm: self.clone(),
            token,
            memory,
            _permit: permit,
        })
    }

    fn ledger(&self) -> Result<std::sync::MutexGuard<'_, Ledger>, ApiError> {
        self.ledger
            .lock()
            .map_err(|_| ApiError::Internal("admission ledger poisoned".into()))
    }

    /// Would one more worker of `memory` for `owner` stay within every bound?
    fn check(
        &self,
        l: &mut Ledger,
        table: &WorkerTable,
        owner: &str,
        memory: u64,
    ) -> Result<(), ApiError> {
        let entries = table.entries();
        let live: Vec<_> = entries
            .iter()
            .filter(|e| e.status != WorkerStatus::Stopped)
            .collect();
        // Forget workers the table no longer has (destroyed, collected).
        l.memory.retain(|id, _| entries.iter().any(|e| &e.id == id));
        let d = self.settings.default_memory_bytes;
        let workers = live.len() as u64 + l.pending.len() as u64;
        let of_owner = live.iter().filter(|e| e.owner_id == owner).count() as u64
            + l.pending.values().filter(|(o, _)| o == owner).count() as u64;
        let used: u64 = live
            .iter()
            .map(|e| l.memory.get(&e.id).copied().unwrap_or(d))
            .chain(l.pending.values().map(|(_, m)| *m))
            .fold(0u64, u64::saturating_add);
        let s = &self.settings;
        if workers >= s.max_workers {
            return Err(ApiError::ResourceExhausted(format!(
                "the node runs its maximum of {} workers (AGENT_MAX_WORKERS)",
                s.max_workers
            )));
        }
        if of_owner >= s.max_workers_per_owner {
            return Err(ApiError::ResourceExhausted(format!(
                "owner {owner:?} runs its maximum of {} workers (AGENT_MAX_WORKERS_PER_OWNER)",
                s.max_workers_per_owner
            )));
        }
        if used.saturating_add(memory) > s.memory_budget_bytes {
            return Err(ApiError::ResourceExhausted(format!(
                "memory budget exhausted: {} MiB reserved + {} MiB requested > {} MiB (AGENT_MEMORY_BUDGET)",
                used / MIB,
                memory / MIB,
                s.memory_budget_bytes / MIB
            )));
        }
        Ok(())
    }

    /// Workers and memory held now (live workers plus admitted Ensures).
    pub fn usage(&self, table: &WorkerTable) -> Usage {
        let entries = table.entries();
        let Ok(l) = self.ledger.lock() else {
            return Usage {
                workers: entries.len() as u64,
                memory_bytes: 0,
            };
        };
        let d = self.settings.default_memory_bytes;
        let live = entries.iter().filter(|e| e.status != WorkerStatus::Stopped);
        let (mut workers, mut memory) = (0u64, 0u64);
        for e in live {
            workers += 1;
            memory = memory.saturating_add(l.memory.get(&e.id).copied().unwrap_or(d));
        }
        for (_, m) in l.pending.values() {
            workers += 1;
            memory = memory.saturating_add(*m);
        }
        Usage {
            workers,
            memory_bytes: memory,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(v: &str) -> BTreeMap<String, String> {
        [(MEMORY_SIZE_ENV.to_string(), v.to_string())].into()
    }

    #[test]
    fn memory_requests_are_bounded() {
        let a = Admission::new(AdmissionSettings::default());
        assert_eq!(a.memory_of(&BTreeMap::new()).unwrap(), 512 * MIB);
        assert_eq!(a.memory_of(&env(" 256 ")).unwrap(), 256 * MIB);
        assert_eq!(a.memory_of(&env("10240")).unwrap(), 10240 * MIB);
        // SPEC §6 compat: invalid or 0 means the default.
        assert_eq!(a.memory_of(&env("lots")).unwrap(), 512 * MIB);
        assert_eq!(a.memory_of(&env("0")).unwrap(), 512 * MIB);
        for bad in ["1", "127", "10241", "1048576", "18446744073709551615"] {
            let e = a.memory_of(&env(bad)).unwrap_err();
            assert!(matches!(e, ApiError::InvalidArgument(_)), "{bad}: {e:?}");
        }
    }
}
