//! host-local IPAM store access for reconcile: reservations are files named by IP under
//! `<net_dir>/<network>/` whose first line is the owner's container id; host-local serialises
//! access with an flock on `<dir>/lock`, which we take too.

use std::fs::{self, OpenOptions};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::CniError;

/// One reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reservation {
    pub ip: IpAddr,
    pub owner: String,
    pub path: PathBuf,
    /// When host-local wrote it (`None` when the filesystem cannot tell).
    pub modified: Option<std::time::SystemTime>,
}

/// Runs `f` under host-local's lock for `dir` (created if missing, like host-local does).
fn locked<T>(dir: &Path, f: impl FnOnce() -> Result<T, CniError>) -> Result<T, CniError> {
    let lock_path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| CniError::io("open ipam lock", &lock_path, e))?;
    let guard = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| CniError::io("lock ipam store", &lock_path, e.into()))?;
    let out = f();
    drop(guard);
    out
}

fn scan(dir: &Path) -> Result<Vec<Reservation>, CniError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| CniError::io("list", dir, e))? {
        let entry = entry.map_err(|e| CniError::io("list", dir, e))?;
        let Ok(ip) = entry.file_name().to_string_lossy().parse::<IpAddr>() else {
            continue;
        };
        let path = entry.path();
        let content = match fs::read_to_string(&path) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(CniError::io("read", &path, e)),
        };
        let owner = content
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let modified = fs::metadata(&path).and_then(|m| m.modified()).ok();
        out.push(Reservation {
            ip,
            owner,
            path,
            modified,
        });
    }
    Ok(out)
}

/// Removes every reservation in `dir` that `release` says to release; returns them.
/// A missing store directory means nothing is reserved.
pub(crate) fn release_where(
    dir: &Path,
    release: impl Fn(&Reservation) -> bool,
) -> Result<Vec<Reservation>, CniError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    locked(dir, || {
        let mut released = Vec::new();
        for r in scan(dir)? {
            if release(&r) {
                crate::fsutil::remove_if_exists(&r.path)?;
                released.push(r);
            }
        }
        Ok(released)
    })
}

/// Reservations in `dir` (read under the lock).
#[cfg(test)]
pub(crate) fn reservations(dir: &Path) -> Result<Vec<Reservation>, CniError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    locked(dir, || scan(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn releases_only_unowned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        fs::write(d.join("10.0.0.2"), "live-1\r\neth0").expect("write");
        fs::write(d.join("10.0.0.3"), "dead-1\r\neth0").expect("write");
        fs::write(d.join("10.0.0.4"), "dead-2").expect("write");
        fs::write(d.join("last_reserved_ip.0"), "10.0.0.4").expect("write");
        let keep: HashSet<String> = ["live-1".to_string()].into();
        let mut gone: Vec<_> = release_where(d, |r| !keep.contains(&r.owner))
            .expect("release")
            .into_iter()
            .map(|r| r.owner)
            .collect();
        gone.sort();
        assert_eq!(gone, vec!["dead-1", "dead-2"]);
        let left: Vec<_> = reservations(d)
            .expect("scan")
            .into_iter()
            .map(|r| r.owner)
            .collect();
        assert_eq!(left, vec!["live-1"]);
        assert!(d.join("last_reserved_ip.0").exists());
        assert!(
            release_where(&d.join("missing"), |_| true)
                .expect("missing ok")
                .is_empty()
        );
    }
}
