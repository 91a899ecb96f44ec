//! Crash-safe small-file writes shared by the backends and the server (review L4): a unique
//! temp file in the target's directory, fsync, rename, fsync of the directory, so a crash
//! leaves either the old or the new content and concurrent writers never share a temp file.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Marker in temp file names (what [`sweep_temp_files`] removes).
const TMP_MARK: &str = ".tmp.";

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_name(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// `<dir>/.<name>.tmp.<random>`.
fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suffix: u64 = rand::random();
    path.with_file_name(format!(".{name}{TMP_MARK}{suffix:016x}"))
}

/// Removes temp files a crash left next to `path` by [`write_atomic`]; best effort.
pub fn sweep_temp_files(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!(".{}{TMP_MARK}", name.to_string_lossy());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Empties `dir` (files only; a scratch directory whose content is useless after a crash).
pub fn sweep_dir(dir: &Path) -> usize {
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| !t.is_dir()) && std::fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_and_leave_no_temp_files() {
        let dir = tempfile_dir();
        let p = dir.join("state.json");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("rewrite");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // A crash between create and rename leaves a temp file: the sweep removes it.
        std::fs::write(temp_name(&p), b"partial").expect("tmp");
        std::fs::write(dir.join("other"), b"keep").expect("other");
        sweep_temp_files(&p);
        assert!(dir.join("other").exists());
        assert_eq!(std::fs::read_dir(&dir).expect("ls").count(), 2);
        assert_eq!(sweep_dir(&dir), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn temp_names_are_unique() {
        let p = Path::new("/x/state.json");
        assert_ne!(temp_name(p), temp_name(p));
        assert_eq!(temp_name(p).parent(), Some(Path::new("/x")));
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("esb-fsutil-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }
}
