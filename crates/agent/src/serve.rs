//! `esb-agent serve`: connect the chosen backend, bind the server (which reconciles before
//! serving), serve until a shutdown signal, then drain and stop.

use std::sync::Arc;

use anyhow::Context;
use esb_runtime::Runtime;

use crate::config::{Backend, Config};
use crate::signals::Shutdown;

/// Runs the daemon until `shutdown` and the server's drain complete.
pub async fn run(cfg: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    for note in &cfg.notes {
        tracing::warn!(note = %note, "configuration");
    }
    let id = &cfg.common.identity;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        runtime = cfg.backend.name(),
        brand = id.brand(),
        env = id.env(),
        state_dir = %cfg.common.state_dir.display(),
        "starting esb-agent"
    );
    if matches!(cfg.server.tls, esb_server::TlsSettings::Disabled) {
        match cfg.server.auth_token {
            None => tracing::warn!(
                listen_addr = %cfg.server.listen_addr,
                "no TLS and no bearer token: anyone who reaches the gRPC port controls workers"
            ),
            Some(_) => tracing::warn!("the bearer token travels in plaintext: TLS is disabled"),
        }
    }
    raise_nofile_limit(cfg.server.conn.max_connections);
    create_state_dir(&cfg.common.state_dir)?;

    let runtime = tokio::select! {
        r = connect(cfg.backend, cfg.common) => r?,
        () = shutdown.clone().wait() => {
            tracing::info!("shutdown requested before the runtime was connected");
            return Ok(());
        }
    };
    let server = esb_server::bind(cfg.server, runtime)
        .await
        .context("cannot start the gRPC server")?;
    tracing::info!(
        grpc_addr = %server.grpc_addr(),
        metrics_addr = %server.metrics_addr().map_or("off".to_string(), |a| a.to_string()),
        "serving"
    );
    server.run(shutdown.wait()).await.context("server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// Connects the configured backend (each constructor retries within its own bound).
async fn connect(
    backend: Backend,
    common: esb_runtime::settings::CommonSettings,
) -> anyhow::Result<Arc<dyn Runtime>> {
    Ok(match backend {
        Backend::Containerd {
            mut containerd,
            cni,
        } => {
            // Each task's log writer is this binary (`log-writer` mode), resolved now: the
            // shim runs it by path, so an upgrade in place applies to new workers only.
            containerd.log_writer = std::env::current_exe()
                .context("cannot resolve the agent's own executable (the log writer)")?;
            let socket = containerd.socket.display().to_string();
            let rt = esb_containerd::ContainerdRuntime::connect(common, containerd, cni)
                .await
                .map_err(|e| anyhow::anyhow!(e.chain()))
                .with_context(|| {
                    format!("cannot start the containerd backend (socket {socket})")
                })?;
            Arc::new(rt)
        }
        Backend::Docker(docker) => {
            let rt = esb_docker::DockerRuntime::connect(common, docker)
                .await
                .map_err(|e| anyhow::anyhow!(e.chain()))
                .context("cannot start the docker backend")?;
            Arc::new(rt)
        }
    })
}

/// The state dir holds journals and worker logs: private to the agent's user.
fn create_state_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| {
            format!(
                "cannot create the state directory {} (AGENT_STATE_DIR)",
                dir.display()
            )
        })
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (review H6): the default soft 1024 would
/// let a few hundred connections starve the journal, log files and containerd calls of
/// descriptors. Warns when the connection cap does not leave room for the agent's own files.
fn raise_nofile_limit(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "could not raise the open-files limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the open-files limit");
            return;
        }
    };
    // Headroom for workers' log files, netns pins, journal, daemon connections.
    if (max_connections as u64).saturating_add(512) > soft {
        tracing::warn!(
            nofile = soft,
            max_connections,
            "AGENT_MAX_CONNECTIONS leaves under 512 descriptors for the agent's own files; raise LimitNOFILE or lower the cap"
        );
    }
}
