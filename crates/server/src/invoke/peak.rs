//! A worker's peak-memory cgroup file, opened once per worker and read/reset with one
//! positioned syscall each (the per-call cost must stay in the µs range).

use std::fs::File;
use std::os::unix::fs::FileExt;

use esb_runtime::MemoryPeakProbe;

#[derive(Debug)]
pub struct PeakFile {
    file: File,
    /// cgroup v1 `memory.max_usage_in_bytes`: reset before each call, so the value is the
    /// call's own peak; otherwise the peak since the worker started.
    pub resettable: bool,
}

impl PeakFile {
    /// Opens the probe's file (read-write when it can be reset); `None` when it is missing.
    pub fn open(probe: &MemoryPeakProbe) -> Option<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(probe.resettable)
            .open(&probe.path)
            .map_err(|e| {
                tracing::debug!(path = %probe.path.display(), error = %e, "no peak memory file");
            })
            .ok()?;
        Some(Self {
            file,
            resettable: probe.resettable,
        })
    }

    /// Starts a new peak window (no-op when the file cannot be reset).
    pub fn reset(&self) {
        if self.resettable {
            let _ = self.file.write_at(b"0", 0);
        }
    }

    /// The peak in bytes.
    pub fn read(&self) -> Option<u64> {
        let mut buf = [0u8; 32];
        let n = self.file.read_at(&mut buf, 0).ok()?;
        std::str::from_utf8(buf.get(..n)?).ok()?.trim().parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_number_and_resets_a_resettable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.max_usage_in_bytes");
        std::fs::write(&path, "123456\n").unwrap();
        let f = PeakFile::open(&MemoryPeakProbe {
            path: path.clone(),
            resettable: true,
        })
        .unwrap();
        assert_eq!(f.read(), Some(123_456));
        f.reset();
        // A regular file keeps the tail; the cgroup file resets to the current usage.
        assert!(std::fs::read_to_string(&path).unwrap().starts_with('0'));
        assert!(
            PeakFile::open(&MemoryPeakProbe {
                path: dir.path().join("missing"),
                resettable: false
            })
            .is_none()
        );
    }
}
