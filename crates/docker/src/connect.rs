//! Connecting to the daemon: `DOCKER_HOST` or the default socket, bounded retry at start-up,
//! API version negotiation, and the cheap ping behind gRPC health. bollard opens a new
//! connection per request when needed, so the client recovers by itself when the daemon
//! returns.

use std::time::Duration;

use bollard::{API_DEFAULT_VERSION, Docker};
use esb_runtime::{ErrorKind, Result, RuntimeError};

use crate::error::{Subject, map};

/// The Docker default when `DOCKER_HOST` is unset.
pub(crate) const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// Per-request timeout (seconds); pulls of large images are the long pole.
const REQUEST_TIMEOUT_SECS: u64 = 600;
/// Pauses between start-up attempts (about 8 s in all).
const RETRY_DELAYS_MS: [u64; 7] = [100, 200, 400, 800, 1600, 2000, 2000];
/// Bound of one ping.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to `host` (or the default socket), retrying while the daemon is unreachable.
pub(crate) async fn connect(host: Option<&str>) -> Result<Docker> {
    let host = host
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .unwrap_or(DEFAULT_HOST);
    let mut last = None;
    let delays = RETRY_DELAYS_MS
        .iter()
        .map(|ms| Some(Duration::from_millis(*ms)));
    for delay in delays.chain([None]) {
        // The client is rebuilt per attempt: bollard refuses a socket path that does not
        // exist yet (a daemon still starting).
        let attempt = async { try_negotiate(&client_for(host)?).await };
        match attempt.await {
            Ok(c) => {
                tracing::info!(host, api = %c.client_version(), "connected to docker");
                return Ok(c);
            }
            Err(e) if e.kind() == ErrorKind::InvalidArgument => return Err(e),
            Err(e) => {
                tracing::warn!(host, error = %e.chain(), "docker not reachable yet");
                last = Some(e);
            }
        }
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
    }
    Err(last.unwrap_or_else(|| RuntimeError::unavailable("docker daemon unreachable")))
}

fn client_for(host: &str) -> Result<Docker> {
    let client = if host.starts_with("unix://") {
        Docker::connect_with_unix(host, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
    } else if host.starts_with("tcp://") || host.starts_with("http://") {
        Docker::connect_with_http(host, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
    } else {
        return Err(RuntimeError::invalid_argument(format!(
            "unsupported DOCKER_HOST {host:?}: use unix://, tcp:// or http://"
        )));
    };
    client.map_err(|e| match e {
        bollard::errors::Error::SocketNotFoundError(_) => {
            RuntimeError::unavailable(format!("docker socket {host} does not exist")).with_source(e)
        }
        e => RuntimeError::invalid_argument(format!("invalid DOCKER_HOST {host:?}")).with_source(e),
    })
}

async fn try_negotiate(client: &Docker) -> Result<Docker> {
    ping(client).await?;
    // Lower the client's API version to the daemon's when the daemon is older (Engine 20.10
    // speaks 1.41).
    client
        .clone()
        .negotiate_version()
        .await
        .map_err(|e| map(e, "negotiate docker api version", Subject::Worker))
}

/// One bounded ping; `Unavailable` while the daemon is down.
pub(crate) async fn ping(client: &Docker) -> Result<()> {
    match tokio::time::timeout(PING_TIMEOUT, client.ping()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            let e = map(e, "ping docker", Subject::Worker);
            Err(RuntimeError::unavailable(e.message().to_string()).with_source(e))
        }
        Err(_) => Err(RuntimeError::unavailable(
            "ping docker: no answer within 2s",
        )),
    }
}
