//! Pinned network namespaces: a fresh netns bind-mounted onto a file under
//! `<state>/cni/netns/<id>` (never `/var/run/netns`), so it outlives any process and the
//! container's OCI spec can name it by path.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::error::CniError;

fn netns_err(action: &'static str, path: &Path, source: io::Error) -> CniError {
    CniError::Netns {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates a new network namespace with `lo` up and pins it at `path`.
///
/// Runs on a dedicated short-lived thread: `unshare(CLONE_NEWNET)` only moves the calling
/// thread, so the agent's own threads never change namespace, and the thread is gone
/// afterwards. On failure nothing is left at `path`.
/// The parent directory must exist (a pool refill racing a removed state dir must not
/// recreate it).
pub(crate) fn create(path: &Path) -> Result<(), CniError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| netns_err("create pin file", path, e))?;
    let target = path.to_path_buf();
    let res = std::thread::Builder::new()
        .name("esb-netns".into())
        .spawn(move || pin_on_this_thread(&target))
        .map_err(|e| netns_err("spawn thread", path, e))
        .and_then(|h| {
            h.join().unwrap_or_else(|_| {
                Err(netns_err(
                    "create",
                    path,
                    io::Error::other("netns thread panicked"),
                ))
            })
        });
    if res.is_err() {
        let _ = remove(path);
    }
    res
}

fn pin_on_this_thread(target: &Path) -> Result<(), CniError> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|e| netns_err("unshare", target, e.into()))?;
    let own = PathBuf::from(format!("/proc/self/task/{}/ns/net", nix::unistd::gettid()));
    nix::mount::mount(
        Some(&own),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| netns_err("bind mount", target, e.into()))?;
    // Children inherit the calling thread's namespaces, so this configures the new netns.
    // Workers (and RIE's runtime API on 127.0.0.1:9001) need loopback.
    let status = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| netns_err("bring up lo", target, e))?;
    if !status.success() {
        return Err(netns_err(
            "bring up lo",
            target,
            io::Error::other(format!("ip link set lo up: {status}")),
        ));
    }
    disable_ipv6_on_new_links(target)
}

/// Workers are IPv4-only and the firewall is too (review H5): interfaces created in this netns
/// from now on (the plugin's `eth0`) get no IPv6, not even a link-local address that could reach
/// the node's IPv6 services over the bridge. `lo` keeps `::1`. /proc/sys/net resolves to the
/// calling thread's netns. A kernel without IPv6 has nothing to disable.
fn disable_ipv6_on_new_links(target: &Path) -> Result<(), CniError> {
    match fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", b"1") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(netns_err("disable ipv6", target, e)),
    }
}

/// Unpins and removes `path`. Idempotent: a missing or unmounted file is fine. The netns
/// itself dies when the last process in it exits (its veth end goes with it).
pub(crate) fn remove(path: &Path) -> Result<(), CniError> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(netns_err("unmount", path, e.into())),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(netns_err("remove pin file", path, e)),
    }
}

/// Whether `path` currently pins a network namespace (an nsfs bind mount). After a reboot the
/// pin files survive on disk but are plain files.
pub(crate) fn is_pinned(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Creates `path`'s parent directory.
pub(crate) fn ensure_parent(path: &Path) -> Result<(), CniError> {
    match path.parent() {
        Some(dir) => fs::create_dir_all(dir).map_err(|e| netns_err("create directory", dir, e)),
        None => Ok(()),
    }
}

/// File names in the pin directory (temp-free: pins are plain files named by container id).
pub(crate) fn list(dir: &Path) -> Result<Vec<String>, CniError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CniError::io("list", dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CniError::io("list", dir, e))?;
        out.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(out)
}
