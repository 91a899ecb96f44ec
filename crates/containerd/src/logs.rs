//! Reading worker logs written by [`crate::log_writer`]: a cursor (bytes the worker wrote
//! since it started) and ranges of the live and rotated files by that cursor. A consistent
//! view is taken by reading the positions file before and after opening both files (a
//! rotation in between is retried). A log without positions file (a worker created before
//! the log writer, logging with `file://`) reads as one file starting at 0.

use std::fs::File;
use std::io::ErrorKind as IoKind;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use esb_runtime::RuntimeError;

use crate::log_writer::{pos_path, rotated_path};
use crate::{Inner, io_err};

/// Attempts at a consistent view while the writer is rotating (a rotation is a few syscalls;
/// after a few quick retries each waits [`RETRY_PAUSE`]: at most ~20 ms in all).
const ATTEMPTS: usize = 200;
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_micros(100);

/// The current end of the worker's output, as a cursor.
pub(crate) fn position(inner: &Inner, id: &str) -> Result<u64, RuntimeError> {
    let path = checked_path(inner, id)?;
    Ok(View::take(&path)
        .map_err(|e| io_err("read log", &path, e))?
        .end())
}

/// At most the last `max` bytes written after cursor `since` (everything kept if `None`).
pub(crate) fn read(
    inner: &Inner,
    id: &str,
    since: Option<u64>,
    max: usize,
) -> Result<Vec<u8>, RuntimeError> {
    let path = checked_path(inner, id)?;
    View::take(&path)
        .and_then(|v| v.read(since, max))
        .map_err(|e| io_err("read log", &path, e))
}

/// The log path of a plausible container id (never a path outside the logs directory).
fn checked_path(inner: &Inner, id: &str) -> Result<PathBuf, RuntimeError> {
    if id.is_empty() || id.starts_with('.') || id.contains('/') {
        return Err(RuntimeError::invalid_argument(format!(
            "bad container id {id:?}"
        )));
    }
    Ok(inner.log_path(id))
}

/// One generation: its file and the absolute offset of its first byte.
struct Part {
    file: File,
    start: u64,
    len: u64,
}

/// The rotated and the live generation, consistent with each other.
#[derive(Default)]
struct View {
    old: Option<Part>,
    live: Option<Part>,
}

impl View {
    fn take(path: &Path) -> std::io::Result<Self> {
        let pos = pos_path(path);
        for attempt in 0..ATTEMPTS {
            if attempt >= 4 {
                std::thread::sleep(RETRY_PAUSE);
            } else if attempt > 0 {
                std::thread::yield_now();
            }
            let before = match std::fs::read_to_string(&pos) {
                Ok(s) => s,
                Err(e) if e.kind() == IoKind::NotFound => return Self::legacy(path),
                Err(e) => return Err(e),
            };
            let Some([ino, start, prev_ino, prev_end]) = parse_pos(&before) else {
                return Err(std::io::Error::new(
                    IoKind::InvalidData,
                    "bad positions file",
                ));
            };
            // Inode numbers are reused by the next rotation: the unchanged positions file
            // (whose start offset changes with every rotation) is what proves consistency.
            let Some(live) = open_if(path, ino)? else {
                continue;
            };
            let old = if prev_ino == 0 {
                None
            } else {
                open_if(&rotated_path(path), prev_ino)?
            };
            if std::fs::read_to_string(&pos).ok().as_deref() != Some(before.as_str()) {
                continue;
            }
            let live_len = live.metadata()?.len();
            let old = match old {
                Some(file) => {
                    let len = file.metadata()?.len();
                    Some(Part {
                        file,
                        start: prev_end.saturating_sub(len),
                        len,
                    })
                }
                None => None,
            };
            return Ok(Self {
                old,
                live: Some(Part {
                    file: live,
                    start,
                    len: live_len,
                }),
            });
        }
        Err(std::io::Error::new(
            IoKind::WouldBlock,
            "log rotating too fast for a consistent read",
        ))
    }

    /// A plain log file (no writer positions): it starts at 0; missing = empty.
    fn legacy(path: &Path) -> std::io::Result<Self> {
        match File::open(path) {
            Ok(file) => {
                let len = file.metadata()?.len();
                Ok(Self {
                    old: None,
                    live: Some(Part {
                        file,
                        start: 0,
                        len,
                    }),
                })
            }
            Err(e) if e.kind() == IoKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    fn end(&self) -> u64 {
        self.live.as_ref().map_or(0, |p| p.start + p.len)
    }

    fn read(&self, since: Option<u64>, max: usize) -> std::io::Result<Vec<u8>> {
        let end = self.end();
        let from = since
            .unwrap_or(0)
            .max(end.saturating_sub(max as u64))
            .min(end);
        let mut out = Vec::with_capacity((end - from) as usize);
        for part in [&self.old, &self.live].into_iter().flatten() {
            let lo = from.max(part.start);
            let hi = end.min(part.start + part.len);
            if lo >= hi {
                continue;
            }
            let at = out.len();
            out.resize(at + (hi - lo) as usize, 0);
            let n = read_full(&part.file, &mut out[at..], lo - part.start)?;
            out.truncate(at + n);
        }
        Ok(out)
    }
}

/// Opens `path` if it is still the inode the positions file names.
fn open_if(path: &Path, ino: u64) -> std::io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) if f.metadata()?.ino() == ino => Ok(Some(f)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == IoKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn read_full(file: &File, buf: &mut [u8], mut offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                offset += n as u64;
            }
            Err(e) if e.kind() == IoKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn parse_pos(s: &str) -> Option<[u64; 4]> {
    let mut it = s.split_whitespace().map(|f| f.parse::<u64>().ok());
    let v = [it.next()??, it.next()??, it.next()??, it.next()??];
    Some(v)
}

/// Every file of one worker's log (live, rotated, positions and its temp file).
pub(crate) fn files(log: &Path) -> [PathBuf; 4] {
    let pos = pos_path(log);
    let mut tmp = pos.as_os_str().to_owned();
    tmp.push(".tmp");
    [
        log.to_path_buf(),
        rotated_path(log),
        pos,
        PathBuf::from(tmp),
    ]
}

/// Removes every file of one worker's log (best effort).
pub(crate) fn remove(log: &Path) {
    for f in files(log) {
        let _ = std::fs::remove_file(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_writer::Args;

    /// Appends with the writer's own file logic, then reads ranges by cursor.
    #[test]
    fn ranges_by_cursor_across_rotations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.log");
        let mut w = crate::log_writer::test_log(&Args {
            path: path.clone(),
            max_bytes: 100,
        });
        let view = || View::take(&path).expect("view");
        assert_eq!(view().end(), 0);
        w.append(b"first-");
        let p1 = view().end();
        assert_eq!(p1, 6);
        w.append(b"second");
        assert_eq!(view().read(Some(p1), 4096).expect("read"), b"second");
        assert_eq!(view().read(None, 3).expect("read"), b"ond");
        // 40 + 40 > 50: rotates; the range spans both generations.
        let p2 = view().end();
        w.append(&[b'x'; 40]);
        w.append(&[b'y'; 40]);
        let got = view().read(Some(p2), 4096).expect("read");
        assert_eq!(got.len(), 80);
        assert_eq!(&got[..40], &[b'x'; 40]);
        assert_eq!(view().end(), 92);
        // What the bound dropped is simply missing.
        w.append(&[b'z'; 120]);
        let v = view();
        assert_eq!(v.end(), 212);
        let got = v.read(Some(p1), 4096).expect("read");
        assert_eq!(got, [vec![b'y'; 40], vec![b'z'; 50]].concat());
        assert_eq!(v.read(Some(500), 10).expect("future cursor"), b"");
    }

    #[test]
    fn plain_file_and_missing_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.log");
        assert_eq!(View::take(&path).expect("missing").end(), 0);
        std::fs::write(&path, b"hello world").expect("write");
        let v = View::take(&path).expect("legacy");
        assert_eq!(v.end(), 11);
        assert_eq!(v.read(Some(6), 100).expect("read"), b"world");
    }
}
