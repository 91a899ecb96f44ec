//! Reads a small file of an image's root filesystem from the snapshot's (unmounted) layer
//! directories without ever leaving the image (security review H1). The agent runs as root, so
//! a plain `read_to_string(layer/etc/passwd)` would follow an image's symlink to the host's
//! files, read `/dev/zero` forever or block on a FIFO. Instead every component is opened with
//! `O_NOFOLLOW` relative to a layer directory fd; symlinks are resolved by hand against the
//! image root (bounded hops, `..` clamped at the root), over the merged overlay view (upper →
//! lower, whiteouts and opaque directories end the search); the target must be a regular file
//! (`fstat`) of at most [`MAX_FILE_BYTES`], opened non-blocking.

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Largest file read from an image (passwd/group files are a few KiB).
pub(crate) const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Symlinks followed while resolving one path (Linux' own limit).
const MAX_SYMLINK_HOPS: usize = 40;
/// Whiteout file prefix of the OCI layer format (overlay layers use char device 0/0 instead).
const WHITEOUT_PREFIX: &str = ".wh.";
/// Opaque-directory marker of the OCI layer format.
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Opaque-directory xattrs of overlayfs (trusted, or user with `userxattr`).
const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

/// Why a file could not be read from the image.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RootfsError {
    #[error("too many levels of symbolic links")]
    SymlinkLoop,
    #[error("not a regular file")]
    NotRegular,
    #[error("larger than {MAX_FILE_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<Errno> for RootfsError {
    fn from(e: Errno) -> Self {
        Self::Io(e.into())
    }
}

/// A directory of the merged view: the layers it is visible in, top first, with an fd each.
type MergedDir = Vec<(usize, OwnedFd)>;

/// The layer directories of one snapshot, top (upper) first.
pub(crate) struct Layers {
    roots: Vec<OwnedFd>,
}

impl Layers {
    /// Opens the layer directories (host paths from containerd, trusted).
    pub(crate) fn open(dirs: &[impl AsRef<Path>]) -> Result<Self, RootfsError> {
        let mut roots = Vec::with_capacity(dirs.len());
        for d in dirs {
            roots.push(rustix::fs::open(
                d.as_ref(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?);
        }
        Ok(Self { roots })
    }

    /// The content of `path` (relative to the image root) or `None` when the image has no
    /// such file.
    pub(crate) fn read(&self, path: &str) -> Result<Option<Vec<u8>>, RootfsError> {
        let mut stack: Vec<MergedDir> = vec![self.root()?];
        let mut todo: VecDeque<String> = components(path).collect();
        let mut hops = 0;
        while let Some(name) = todo.pop_front() {
            if name == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let Some(dir) = stack.last() else {
                return Ok(None);
            };
            let Some(entry) = lookup(dir, &name)? else {
                return Ok(None);
            };
            match entry {
                Entry::Dir(merged) => stack.push(merged),
                Entry::Symlink(target) => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(RootfsError::SymlinkLoop);
                    }
                    if target.starts_with('/') {
                        stack.truncate(1);
                    }
                    for c in components(&target).rev() {
                        todo.push_front(c);
                    }
                }
                // A non-directory in the middle of the path.
                Entry::File(_) | Entry::Special if !todo.is_empty() => return Ok(None),
                Entry::File(fd_dir) => return read_regular(&fd_dir, &name).map(Some),
                // Never opened: opening a device or FIFO can block or have side effects.
                Entry::Special => return Err(RootfsError::NotRegular),
            }
        }
        // The path named a directory.
        Err(RootfsError::NotRegular)
    }

    fn root(&self) -> Result<MergedDir, RootfsError> {
        let mut out = Vec::new();
        for (i, fd) in self.roots.iter().enumerate() {
            out.push((i, rustix::io::dup(fd)?));
            if is_opaque(fd)? {
                break;
            }
        }
        Ok(out)
    }
}

fn components(path: &str) -> impl DoubleEndedIterator<Item = String> + '_ {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
}

/// One name resolved in a merged directory.
enum Entry {
    Dir(MergedDir),
    Symlink(String),
    /// A regular file, with the fd of the layer directory holding it.
    File(OwnedFd),
    /// A device, FIFO or socket.
    Special,
}

/// Looks `name` up in `dir` like overlayfs does: the topmost layer that has it wins; a
/// whiteout hides it in every lower layer; a directory merges with same-named directories
/// below it until one is opaque or a layer has a non-directory there.
fn lookup(dir: &MergedDir, name: &str) -> Result<Option<Entry>, RootfsError> {
    let mut merged: MergedDir = Vec::new();
    for (layer, fd) in dir {
        let st = match rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => {
                if exists(fd, &format!("{WHITEOUT_PREFIX}{name}"))? {
                    break;
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind == FileType::CharacterDevice
            && rustix::fs::major(st.st_rdev) == 0
            && rustix::fs::minor(st.st_rdev) == 0
        {
            break; // overlay whiteout
        }
        if kind != FileType::Directory {
            if !merged.is_empty() {
                break; // a lower non-directory is hidden by the directory above
            }
            return Ok(Some(match kind {
                FileType::Symlink => {
                    let target = rustix::fs::readlinkat(fd, name, Vec::new())?;
                    Entry::Symlink(target.to_string_lossy().into_owned())
                }
                FileType::RegularFile => Entry::File(rustix::io::dup(fd)?),
                _ => Entry::Special,
            }));
        }
        let sub = rustix::fs::openat(
            fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // A whiteout next to a directory of the same layer hides the lower ones (OCI format).
        let opaque = is_opaque(&sub)? || exists(fd, &format!("{WHITEOUT_PREFIX}{name}"))?;
        merged.push((*layer, sub));
        if opaque {
            break;
        }
    }
    Ok((!merged.is_empty()).then_some(Entry::Dir(merged)))
}

fn exists(dir: &OwnedFd, name: &str) -> Result<bool, RootfsError> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn is_opaque(dir: &OwnedFd) -> Result<bool, RootfsError> {
    for attr in OPAQUE_XATTRS {
        let mut buf = [0u8; 4];
        match rustix::fs::fgetxattr(dir, attr, &mut buf) {
            Ok(n) if buf.get(..n) == Some(b"y") => return Ok(true),
            // Absent, unsupported or not readable here: not opaque by this marker.
            Ok(_) | Err(_) => {}
        }
    }
    exists(dir, OPAQUE_MARKER)
}

/// Opens `name` in `dir` without following a link and without blocking (FIFOs), and reads
/// it only if it is a regular file within the size cap.
fn read_regular(dir: &OwnedFd, name: &str) -> Result<Vec<u8>, RootfsError> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(RootfsError::NotRegular);
    }
    if u64::try_from(st.st_size).unwrap_or(u64::MAX) > MAX_FILE_BYTES {
        return Err(RootfsError::TooLarge);
    }
    let mut out = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > MAX_FILE_BYTES {
        return Err(RootfsError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "rootfs/tests.rs"]
mod tests;
