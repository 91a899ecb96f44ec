//! Full ids of containers already seen to carry our managed labels. Labels never change
//! after creation, so a known id can skip the scope-check inspect on hot paths
//! (pause/resume); the set is trimmed to the live workers on every List.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
pub(crate) struct KnownWorkers {
    ids: Mutex<HashSet<String>>,
}

impl KnownWorkers {
    fn lock(&self) -> MutexGuard<'_, HashSet<String>> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn remember(&self, id: &str) {
        self.lock().insert(id.to_string());
    }

    pub(crate) fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.lock().contains(id)
    }

    /// Keeps exactly the ids a complete List returned.
    pub(crate) fn replace<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let fresh: HashSet<String> = ids.into_iter().map(str::to_string).collect();
        *self.lock() = fresh;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remember_forget_replace() {
        let k = KnownWorkers::default();
        k.remember("a");
        k.remember("b");
        assert!(k.contains("a"));
        k.forget("a");
        assert!(!k.contains("a"));
        k.replace(["c"]);
        assert!(!k.contains("b"));
        assert!(k.contains("c"));
    }
}
