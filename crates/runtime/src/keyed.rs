//! One async lock per key (an image reference, a container id), each with a small state of its
//! own: the single-flight rule the backends share. A key's entry lives while someone holds or
//! waits for it, so the map does not grow with every key ever seen, and a waiter that gives up
//! (its future dropped) leaves nothing behind.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

type Map<T> = Arc<Mutex<HashMap<String, Arc<AsyncMutex<T>>>>>;

/// Per-key async locks with per-key state `T` (reset to `T::default()` once nobody holds or
/// waits for the key).
pub struct KeyedLocks<T = ()> {
    map: Map<T>,
}

impl<T> Default for KeyedLocks<T> {
    fn default() -> Self {
        Self {
            map: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<T> std::fmt::Debug for KeyedLocks<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLocks")
            .field("keys", &lock(&self.map).len())
            .finish()
    }
}

fn lock<T>(map: &Map<T>) -> MutexGuard<'_, HashMap<String, Arc<AsyncMutex<T>>>> {
    map.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T: Default> KeyedLocks<T> {
    /// Waits for `key`'s lock. Cancel-safe: a dropped wait removes its entry if it was the last.
    pub async fn lock(&self, key: &str) -> KeyedGuard<T> {
        let entry = lock(&self.map).entry(key.to_owned()).or_default().clone();
        // Declared before the wait so that, if the wait is dropped, the entry's Arc goes first
        // and the prune sees the true count.
        let prune = Prune {
            map: self.map.clone(),
            key: key.to_owned(),
        };
        let guard = entry.lock_owned().await;
        KeyedGuard {
            guard,
            _prune: prune,
        }
    }
}

impl<T> KeyedLocks<T> {
    /// Whether someone holds or waits for `key`'s lock.
    pub fn busy(&self, key: &str) -> bool {
        lock(&self.map)
            .get(key)
            .is_some_and(|m| Arc::strong_count(m) > 1)
    }
}

/// Removes the key's entry when only the map still refers to it.
struct Prune<T> {
    map: Map<T>,
    key: String,
}

impl<T> Drop for Prune<T> {
    fn drop(&mut self) {
        let mut map = lock(&self.map);
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.key);
        }
    }
}

/// A held key lock; derefs to the key's state. `'static`: it may move into a detached task.
pub struct KeyedGuard<T> {
    // Dropped before `_prune` (field order), so the prune sees the lock released.
    guard: OwnedMutexGuard<T>,
    _prune: Prune<T>,
}

impl<T> std::fmt::Debug for KeyedGuard<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedGuard")
            .field("key", &self._prune.key)
            .finish_non_exhaustive()
    }
}

impl<T> Deref for KeyedGuard<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for KeyedGuard<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn keys<T>(l: &KeyedLocks<T>) -> usize {
        lock(&l.map).len()
    }

    #[tokio::test]
    async fn one_holder_per_key_and_state_kept_for_waiters() {
        let l = Arc::new(KeyedLocks::<u32>::default());
        let mut a = l.lock("img").await;
        *a = 7;
        let other = l.lock("other").await;
        assert!(l.busy("img") && l.busy("other"));
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { *l.lock("img").await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the key is held");
        drop(a);
        assert_eq!(
            waiter.await.unwrap(),
            7,
            "a waiter sees what the holder left"
        );
        drop(other);
        assert_eq!(keys(&l), 0, "no entry without a holder or waiter");
        assert!(!l.busy("img"));
        assert_eq!(*l.lock("img").await, 0, "state resets once the key is idle");
    }

    #[tokio::test]
    async fn a_dropped_wait_leaves_nothing_behind() {
        let l = KeyedLocks::<()>::default();
        let held = l.lock("id").await;
        let gave_up = tokio::time::timeout(Duration::from_millis(20), l.lock("id")).await;
        assert!(gave_up.is_err());
        assert!(l.busy("id"));
        drop(held);
        assert!(!l.busy("id"));
        assert_eq!(keys(&l), 0);
    }
}
