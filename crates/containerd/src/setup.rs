//! The backend's files in the state directory, prepared once at connect: the worker log and
//! download directories (downloads a crash interrupted are swept) and the resolv.conf and
//! hosts files bind-mounted into every worker.

use std::path::{Path, PathBuf};

use esb_runtime::RuntimeError;

use crate::{io_err, write_atomic};

pub(crate) struct StateFiles {
    pub logs_dir: PathBuf,
    pub tmp_dir: PathBuf,
    pub resolv_conf: PathBuf,
    pub hosts: PathBuf,
}

/// Creates the directories and writes the shared files under `state`.
pub(crate) fn state_dir(state: &Path, dns_server: &str) -> Result<StateFiles, RuntimeError> {
    let logs_dir = state.join("logs");
    let tmp_dir = state.join("tmp");
    for dir in [state, logs_dir.as_path(), tmp_dir.as_path()] {
        std::fs::create_dir_all(dir).map_err(|e| io_err("create state directory", dir, e))?;
    }
    // Layer downloads a crash interrupted are useless (pulls start over): free the space.
    let swept = esb_runtime::fsutil::sweep_dir(&tmp_dir);
    if swept > 0 {
        tracing::info!(files = swept, dir = %tmp_dir.display(), "removed leftover downloads");
    }
    let resolv_conf = state.join("resolv.conf");
    esb_runtime::fsutil::sweep_temp_files(&resolv_conf);
    write_atomic(
        &resolv_conf,
        format!("nameserver {dns_server}\n").as_bytes(),
    )?;
    let hosts = state.join("hosts");
    esb_runtime::fsutil::sweep_temp_files(&hosts);
    write_atomic(
        &hosts,
        b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )?;
    Ok(StateFiles {
        logs_dir,
        tmp_dir,
        resolv_conf,
        hosts,
    })
}
