//! SIGTERM/SIGINT: the first starts a graceful shutdown, a second exits at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Exit code when a second signal cuts the graceful shutdown short (128 + SIGINT).
pub const FORCED_EXIT_CODE: i32 = 130;

/// Resolves once the first shutdown signal arrived. Cheap to clone.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// Waits for the first signal.
    pub async fn wait(mut self) {
        // An error means the sender is gone, which only happens after it fired or at exit.
        let _ = self.rx.wait_for(|fired| *fired).await;
    }
}

/// Installs the handlers (must run inside the runtime). Handlers are registered before this
/// returns, so no signal is lost between start-up and serving.
pub fn install() -> std::io::Result<Shutdown> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "shutdown requested; a second signal exits at once"
        );
        let _ = tx.send(true);
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::error!(
            signal = name,
            code = FORCED_EXIT_CODE,
            "second signal: exiting now without draining"
        );
        std::process::exit(FORCED_EXIT_CODE);
    });
    Ok(Shutdown { rx })
}
