//! The per-worker log writer (`binary://` logging shim, containerd runtime v2): the runc shim
//! starts it once per task with the task's stdout on fd 3, stderr on fd 4 and a readiness pipe
//! on fd 5. It appends both streams to `<id>.log`, bounded at write time (finding H2): when
//! the live file would pass half the bound it becomes `<id>.log.1` (one generation, the older
//! one is dropped) so the pair never exceeds the bound. `<id>.log.pos` records where the live
//! file starts in the worker's total output, which makes `crate::logs` cursors monotonic.
//!
//! It lives in the `esb-agent` binary (no extra executable) and uses only `std` + `nix::poll`
//! on the main thread: one 32 KiB buffer, no async runtime (it runs once per worker).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Query key (and thus argument) naming the log file; its presence selects the log writer.
pub const ARG_PATH: &str = "log-writer";
/// Query key (and argument) with the bound in bytes.
pub const ARG_MAX_BYTES: &str = "max-bytes";

const BUF: usize = 32 * 1024;

/// Parsed arguments of the log writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub path: PathBuf,
    pub max_bytes: u64,
}

/// The `binary://` URI containerd runs for a task: `exe` with the query pairs this module reads.
pub fn uri(exe: &Path, log: &Path, max_bytes: u64) -> String {
    format!(
        "binary://{}?{ARG_PATH}={}&{ARG_MAX_BYTES}={max_bytes}",
        encode(exe, true),
        encode(log, false)
    )
}

/// Percent-encodes everything but unreserved characters (and `/` in the path part).
fn encode(p: &Path, keep_slash: bool) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in p.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `Some` when the process arguments (after argv\[0\]) select the log writer. containerd passes
/// the URI's query as `key value` pairs in map order (random), so pairs are matched by key.
pub fn parse_args(args: &[String]) -> Option<Result<Args, String>> {
    let pairs: Vec<(&str, &str)> = args
        .chunks(2)
        .map(|c| (c[0].as_str(), c.get(1).map_or("", String::as_str)))
        .collect();
    let path = pairs.iter().find(|(k, _)| *k == ARG_PATH)?.1;
    Some((|| {
        let max = pairs
            .iter()
            .find(|(k, _)| *k == ARG_MAX_BYTES)
            .ok_or("missing max-bytes")?
            .1;
        let max_bytes: u64 = max.parse().map_err(|_| format!("bad max-bytes {max:?}"))?;
        if !path.starts_with('/') || max_bytes < 2 {
            return Err(format!(
                "need an absolute path and max-bytes >= 2, got {path:?} {max}"
            ));
        }
        Ok(Args {
            path: PathBuf::from(path),
            max_bytes,
        })
    })())
}

/// Runs the writer until both streams end. Errors are reported on stderr (containerd's
/// shim discards it): the writer never blocks the worker, it drops what it cannot write.
pub fn run(args: &Args) -> std::io::Result<()> {
    // SIGTERM (sent by the shim on task delete) is blocked: the writer drains the pipes to
    // EOF, which follows immediately because the shim closed its ends first.
    let mut term = nix::sys::signal::SigSet::empty();
    term.add(nix::sys::signal::Signal::SIGTERM);
    let _ = term.thread_block();
    // Re-opening the inherited pipes through /proc avoids taking raw descriptors (no unsafe).
    let mut streams = [
        Some(File::open("/proc/self/fd/3")?),
        Some(File::open("/proc/self/fd/4")?),
    ];
    let mut log = Log::create(args)?;
    // Ready: one byte on fd 5 lets the shim start the task.
    OpenOptions::new()
        .write(true)
        .open("/proc/self/fd/5")?
        .write_all(b"r")?;
    let mut buf = vec![0u8; BUF];
    loop {
        let open: Vec<usize> = (0..2).filter(|&i| streams[i].is_some()).collect();
        if open.is_empty() {
            return Ok(());
        }
        let ready = {
            let mut fds: Vec<PollFd<'_>> = open
                .iter()
                .filter_map(|&i| streams[i].as_ref())
                .map(|f| PollFd::new(f.as_fd(), PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect::<Vec<_>>()
        };
        for (k, &i) in open.iter().enumerate() {
            if !ready[k] {
                continue;
            }
            let Some(f) = streams[i].as_mut() else {
                continue;
            };
            match f.read(&mut buf) {
                Ok(0) => streams[i] = None,
                Ok(n) => log.append(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => streams[i] = None,
            }
        }
    }
}

/// The positions file: `ino start prev_ino prev_end` of the live and the rotated file.
pub(crate) fn pos_path(log: &Path) -> PathBuf {
    suffixed(log, ".pos")
}

/// The rotated generation.
pub(crate) fn rotated_path(log: &Path) -> PathBuf {
    suffixed(log, ".1")
}

fn suffixed(log: &Path, suffix: &str) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// A writer without pipes, for the reader's tests.
#[cfg(test)]
pub(crate) fn test_log(args: &Args) -> Log {
    Log::create(args).expect("create log")
}

/// The live log and its accounting.
pub(crate) struct Log {
    path: PathBuf,
    /// Rotate when the live file would pass this (half the bound).
    half: u64,
    file: File,
    ino: u64,
    /// Absolute offset (bytes the worker wrote before) of the live file's first byte.
    start: u64,
    /// Bytes in the live file.
    len: u64,
    /// A write failed: the file no longer matches `start + len`; rotate before the next one.
    broken: bool,
}

impl Log {
    fn create(args: &Args) -> std::io::Result<Self> {
        let file = open_new(&args.path)?;
        let ino = file.metadata()?.ino();
        let _ = std::fs::remove_file(rotated_path(&args.path));
        let log = Self {
            path: args.path.clone(),
            half: args.max_bytes / 2,
            file,
            ino,
            start: 0,
            len: 0,
            broken: false,
        };
        log.write_pos(0, 0)?;
        Ok(log)
    }

    pub(crate) fn append(&mut self, mut chunk: &[u8]) {
        let n = chunk.len() as u64;
        if self.broken || self.len + n > self.half {
            let end = self.start + self.len;
            // A chunk larger than the live file may hold keeps only its tail.
            let skip = n.saturating_sub(self.half);
            chunk = &chunk[skip as usize..];
            if self.rotate(end, end + skip).is_err() {
                // Cannot rotate (disk full, …): drop the chunk, retry on the next one.
                self.start = end + skip + chunk.len() as u64;
                self.len = 0;
                self.broken = true;
                return;
            }
        }
        match self.file.write_all(chunk) {
            Ok(()) => self.len += chunk.len() as u64,
            Err(_) => {
                self.start += self.len + chunk.len() as u64;
                self.len = 0;
                self.broken = true;
            }
        }
    }

    /// Live → `.1`, a new live file starting at absolute offset `start`, then the positions.
    fn rotate(&mut self, prev_end: u64, start: u64) -> std::io::Result<()> {
        let prev_ino = self.ino;
        match std::fs::rename(&self.path, rotated_path(&self.path)) {
            // Gone after an earlier failed rotation: just start a new one.
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        self.file = open_new(&self.path)?;
        self.ino = self.file.metadata()?.ino();
        self.start = start;
        self.len = 0;
        self.write_pos(prev_ino, prev_end)?;
        self.broken = false;
        Ok(())
    }

    fn write_pos(&self, prev_ino: u64, prev_end: u64) -> std::io::Result<()> {
        let pos = pos_path(&self.path);
        let tmp = suffixed(&pos, ".tmp");
        std::fs::write(
            &tmp,
            format!("{} {} {prev_ino} {prev_end}\n", self.ino, self.start),
        )?;
        std::fs::rename(&tmp, &pos)
    }
}

/// Appending (a truncation by the GC safety net cannot leave a hole), emptied if it existed.
fn open_new(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    f.set_len(0)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn args_match_in_any_pair_order() {
        let want = Args {
            path: PathBuf::from("/s/logs/a.log"),
            max_bytes: 4096,
        };
        for args in [
            strings(&["log-writer", "/s/logs/a.log", "max-bytes", "4096"]),
            strings(&["max-bytes", "4096", "log-writer", "/s/logs/a.log"]),
        ] {
            assert_eq!(parse_args(&args), Some(Ok(want.clone())));
        }
        assert_eq!(parse_args(&strings(&["serve"])), None);
        assert_eq!(
            parse_args(&strings(&["--x", "log-writer"])),
            None,
            "values never select"
        );
        assert!(matches!(
            parse_args(&strings(&["log-writer", "rel", "max-bytes", "9"])),
            Some(Err(_))
        ));
        assert!(matches!(
            parse_args(&strings(&["log-writer", "/a"])),
            Some(Err(_))
        ));
    }

    #[test]
    fn uri_encodes_paths() {
        let u = uri(Path::new("/usr/bin/esb agent"), Path::new("/s/l&g.log"), 10);
        assert_eq!(
            u,
            "binary:///usr/bin/esb%20agent?log-writer=%2Fs%2Fl%26g.log&max-bytes=10"
        );
    }

    #[test]
    fn log_stays_within_bound_and_positions_add_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.log");
        let args = Args {
            path: path.clone(),
            max_bytes: 1000,
        };
        let mut log = Log::create(&args).expect("create");
        let mut total = 0u64;
        for (i, n) in [100usize, 300, 200, 450, 10, 2000, 7, 499, 501]
            .iter()
            .enumerate()
        {
            let chunk = vec![b'a' + i as u8; *n];
            log.append(&chunk);
            total += *n as u64;
            let live = std::fs::metadata(&path).expect("live").len();
            let old = std::fs::metadata(rotated_path(&path)).map_or(0, |m| m.len());
            assert!(live <= 500 && live + old <= 1000, "{live} + {old}");
            assert_eq!(log.start + log.len, total, "end offset after chunk {i}");
            assert_eq!(live, log.len);
        }
        let pos = std::fs::read_to_string(pos_path(&path)).expect("pos");
        let fields: Vec<u64> = pos
            .split_whitespace()
            .map(|f| f.parse().expect("num"))
            .collect();
        assert_eq!(fields[1], log.start);
        assert_eq!(fields[0], log.ino);
    }
}
