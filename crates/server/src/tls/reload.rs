//! TLS material that reloads without a restart (issue 8 item 3): the current `ServerConfig`
//! sits behind a lock and each new connection takes the one current at its accept; existing
//! connections keep the config they were accepted with. A reload is tried on SIGHUP and when a
//! periodic metadata check (dev, inode, size, mtime, ctime) sees a file change.
//!
//! A bad new file keeps the old material. The error is logged once per bad file version: at
//! once for SIGHUP, and for a polled change only when the next check still sees the same
//! files — a rotation that writes the certificate and then the key is not an error.

use std::future::pending;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};

use super::material::{self, Files, Stamps};
use crate::error::ServerError;

/// The outcome of one check (returned for tests; the log says the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Reloaded,
    /// The new files are unusable; the old material stays.
    Failed,
}

struct Failure {
    stamps: Stamps,
    error: String,
    logged: bool,
}

struct State {
    /// The file versions of the material in use.
    applied: Stamps,
    /// The last file versions that failed to load.
    failed: Option<Failure>,
}

/// The material currently served and how to refresh it.
pub struct Reloadable {
    files: Files,
    current: RwLock<Arc<rustls::ServerConfig>>,
    state: Mutex<State>,
}

impl Reloadable {
    /// The initial load: any fault is a start-up error naming the file.
    pub(super) fn load(files: Files) -> Result<Self, ServerError> {
        // Stamped before reading: a change during the read shows up at the next check.
        let applied = material::stamps(&files);
        let built = material::build(&files)?;
        Ok(Self {
            files,
            current: RwLock::new(built.config),
            state: Mutex::new(State {
                applied,
                failed: None,
            }),
        })
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reloads when the files changed (or always when `forced`, i.e. SIGHUP). Small files
    /// read only on a change: cheap enough for the runtime thread.
    pub fn check(&self, forced: bool) -> Reload {
        let stamps = material::stamps(&self.files);
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !forced {
            if stamps == st.applied {
                // Back to the files in use (e.g. a bad file restored).
                st.failed = None;
                return Reload::Unchanged;
            }
            if let Some(f) = st.failed.as_mut().filter(|f| f.stamps == stamps) {
                if !f.logged {
                    f.logged = true;
                    log_failure(&f.error);
                }
                return Reload::Failed;
            }
        }
        match material::build(&self.files) {
            Ok(built) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = built.config;
                st.applied = stamps;
                st.failed = None;
                tracing::info!(
                    server_cert_expires = %built.expires,
                    trigger = if forced { "SIGHUP" } else { "file change" },
                    "TLS material reloaded; new connections use it"
                );
                Reload::Reloaded
            }
            Err(e) => {
                let error = e.to_string();
                if forced {
                    log_failure(&error);
                } else {
                    tracing::debug!(error = %e, "new TLS material not usable yet; checking again");
                }
                st.failed = Some(Failure {
                    stamps,
                    error,
                    logged: forced,
                });
                Reload::Failed
            }
        }
    }

    /// Checks every `interval` (`None`: never) and on each SIGHUP, until the task is aborted.
    pub async fn watch(self: Arc<Self>, interval: Option<Duration>) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS reloads only on file changes");
                None
            }
        };
        loop {
            let forced = tokio::select! {
                () = tick(interval) => false,
                () = hangup(&mut hup) => true,
            };
            self.check(forced);
        }
    }
}

fn log_failure(e: &str) {
    tracing::error!(error = %e, "TLS material reload failed; keeping the previous certificates");
}

async fn tick(interval: Option<Duration>) {
    match interval {
        Some(d) => tokio::time::sleep(d).await,
        None => pending().await,
    }
}

async fn hangup(hup: &mut Option<Signal>) {
    if let Some(h) = hup
        && h.recv().await.is_some()
    {
        return;
    }
    *hup = None;
    pending().await
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    use super::*;
    use crate::settings::MutualTls;

    /// A CA (pem) and a server (cert pem, key pem) signed by it.
    fn material() -> (String, String, String) {
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(p, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (ca.pem(), cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, (ca, cert, key): &(String, String, String)) {
        std::fs::write(dir.join("ca.crt"), ca).unwrap();
        std::fs::write(dir.join("server.crt"), cert).unwrap();
        std::fs::write(dir.join("server.key"), key).unwrap();
    }

    fn reloadable(dir: &Path) -> Reloadable {
        let m = MutualTls::new(
            dir.join("server.crt"),
            dir.join("server.key"),
            dir.join("ca.crt"),
        );
        Reloadable::load(Files::of(&m)).unwrap()
    }

    fn logged(r: &Reloadable) -> bool {
        r.state
            .lock()
            .unwrap()
            .failed
            .as_ref()
            .is_some_and(|f| f.logged)
    }

    #[test]
    fn a_bad_file_is_reported_once_and_keeps_the_old_config() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &material());
        let r = reloadable(dir.path());
        let old = r.current();
        assert_eq!(r.check(false), Reload::Unchanged);
        std::fs::write(dir.path().join("server.key"), "junk").unwrap();
        // First sight: not yet reported (a rotation may be half-written).
        assert_eq!(r.check(false), Reload::Failed);
        assert!(!logged(&r));
        // Unchanged at the next check: reported now, and never again for this version.
        assert_eq!(r.check(false), Reload::Failed);
        assert!(logged(&r));
        assert_eq!(r.check(false), Reload::Failed);
        assert!(Arc::ptr_eq(&old, &r.current()));
        // SIGHUP retries (and reports at once).
        assert_eq!(r.check(true), Reload::Failed);
        assert!(logged(&r));
    }

    #[test]
    fn a_half_written_rotation_completes_without_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &material());
        let r = reloadable(dir.path());
        let old = r.current();
        let (_, cert, key) = material();
        // The certificate lands first: it does not match the old key.
        std::fs::write(dir.path().join("server.crt"), cert).unwrap();
        assert_eq!(r.check(false), Reload::Failed);
        assert!(!logged(&r));
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        assert_eq!(r.check(false), Reload::Reloaded);
        assert!(r.state.lock().unwrap().failed.is_none());
        assert!(!Arc::ptr_eq(&old, &r.current()));
        assert_eq!(r.check(false), Reload::Unchanged);
        // A forced reload of unchanged files builds a fresh config.
        let now = r.current();
        assert_eq!(r.check(true), Reload::Reloaded);
        assert!(!Arc::ptr_eq(&now, &r.current()));
    }
}
