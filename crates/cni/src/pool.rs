//! A small pool of pre-created network namespaces, so attach does not pay for `unshare` and
//! bringing `lo` up on the hot path. Idle pins live in `<state>/cni/pool/`; taking one
//! bind-mounts it onto the worker's pin path and drops the pool's mount (the netns is fresh
//! and used once). A background thread refills the pool.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use nix::mount::MsFlags;

use crate::error::CniError;
use crate::netns;

#[derive(Debug, Default)]
struct State {
    idle: Vec<PathBuf>,
    filling: bool,
    seq: u64,
}

#[derive(Debug)]
pub(crate) struct NetnsPool {
    dir: PathBuf,
    target: usize,
    state: Mutex<State>,
}

impl NetnsPool {
    pub(crate) fn new(dir: PathBuf, target: usize) -> Self {
        Self {
            dir,
            target,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes pins left by an earlier process (not ours to reuse: nothing proves they are
    /// unused) and starts filling. Blocking.
    pub(crate) fn reset(self: &Arc<Self>) -> Result<(), CniError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| CniError::io("create directory", &self.dir, e))?;
        let ours: Vec<PathBuf> = self.lock().idle.clone();
        for name in netns::list(&self.dir)? {
            let p = self.dir.join(&name);
            if !ours.contains(&p) {
                netns::remove(&p)?;
            }
        }
        self.refill();
        Ok(())
    }

    /// Pins a fresh netns at `path`: from the pool when one is ready, else created now.
    /// Blocking.
    pub(crate) fn pin(self: &Arc<Self>, path: &Path) -> Result<(), CniError> {
        netns::ensure_parent(path)?;
        let taken = self.lock().idle.pop();
        self.refill();
        if let Some(src) = taken {
            match rebind(&src, path) {
                Ok(()) => {
                    let _ = netns::remove(&src);
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pooled netns unusable; creating one");
                    let _ = netns::remove(&src);
                }
            }
        }
        netns::create(path)
    }

    /// Starts the refill thread unless one runs or the pool is full.
    fn refill(self: &Arc<Self>) {
        {
            let mut st = self.lock();
            if self.target == 0 || st.filling || st.idle.len() >= self.target {
                return;
            }
            st.filling = true;
        }
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("esb-netns-pool".into())
            .spawn(move || fill(&weak));
        if spawned.is_err() {
            self.lock().filling = false;
        }
    }

    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.lock().idle.len()
    }
}

/// Fills up to the target; stops when the pool is dropped (removing what it just made).
fn fill(weak: &Weak<NetnsPool>) {
    loop {
        let Some(pool) = weak.upgrade() else { return };
        let path = {
            let mut st = pool.lock();
            if st.idle.len() >= pool.target {
                st.filling = false;
                return;
            }
            st.seq += 1;
            pool.dir.join(format!("{}-{}", std::process::id(), st.seq))
        };
        drop(pool);
        let made = netns::create(&path);
        let Some(pool) = weak.upgrade() else {
            let _ = netns::remove(&path);
            return;
        };
        match made {
            Ok(()) => pool.lock().idle.push(path),
            Err(e) => {
                tracing::warn!(error = %e, "netns pool refill failed");
                pool.lock().filling = false;
                return;
            }
        }
    }
}

/// Bind-mounts the netns pinned at `src` onto a new file at `dst`.
fn rebind(src: &Path, dst: &Path) -> Result<(), CniError> {
    let err = |action, source: std::io::Error| CniError::Netns {
        action,
        path: dst.to_path_buf(),
        source,
    };
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(|e| err("create pin file", e))?;
    if let Err(e) = nix::mount::mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
    {
        let _ = std::fs::remove_file(dst);
        return Err(err("bind mount", e.into()));
    }
    Ok(())
}

impl Drop for NetnsPool {
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.lock().idle);
        for p in idle {
            let _ = netns::remove(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_fills_hands_out_and_cleans_up() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = Arc::new(NetnsPool::new(dir.path().join("pool"), 2));
        // A leftover from an "earlier process" is removed by reset.
        std::fs::create_dir_all(dir.path().join("pool")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("netns")).expect("mkdir");
        std::fs::write(dir.path().join("pool/stale"), b"").expect("stale");
        pool.reset().expect("reset");
        for _ in 0..200 {
            if pool.idle() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(pool.idle(), 2);
        assert!(!dir.path().join("pool/stale").exists());
        let pin = dir.path().join("netns/w-1");
        pool.pin(&pin).expect("pin");
        assert!(netns::is_pinned(&pin));
        netns::remove(&pin).expect("remove");
        for _ in 0..200 {
            if pool.idle() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(pool);
        // Dropping the pool unpins its idle netns (a refill thread may finish just after).
        for _ in 0..200 {
            if netns::list(&dir.path().join("pool"))
                .expect("list")
                .is_empty()
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            netns::list(&dir.path().join("pool"))
                .expect("list")
                .is_empty()
        );
    }
}
