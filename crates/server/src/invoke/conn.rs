//! Per-worker connection slot and the connect phase: a TCP connect we do ourselves, so a
//! refused connection (cold start) is retried with backoff and nothing else ever is. A long run
//! of refusals asks the runtime (bounded, via a probe) whether the worker can still come up.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use crate::metrics::Metrics;
use crate::status::ApiError;

pub type Sender = SendRequest<Full<Bytes>>;

/// Cold-start backoff (compat): 100, 200, 400, 800 ms, then 1 s until the deadline.
const BACKOFF_MS: [u64; 4] = [100, 200, 400, 800];
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Refusals before the first liveness probe (after the 100 + 200 ms steps, ~300 ms).
const PROBE_AFTER: usize = 2;
/// At most one liveness probe per this interval.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// One worker's invoke state: the in-flight lock and its idle keep-alive connection.
#[derive(Debug, Default)]
pub struct Slot {
    pub(crate) serial: tokio::sync::Mutex<()>,
    idle: Mutex<Idle>,
}

#[derive(Debug, Default)]
struct Idle {
    generation: u64,
    conn: Option<Sender>,
}

impl Slot {
    fn idle(&self) -> MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the pooled connection (worker paused, destroyed or re-addressed); a connection
    /// in use now is not returned to the pool.
    pub fn invalidate(&self) {
        let mut idle = self.idle();
        idle.generation += 1;
        idle.conn = None;
    }

    pub(crate) fn checkout(&self) -> (u64, Option<Sender>) {
        let mut idle = self.idle();
        let conn = idle.conn.take().filter(|c| !c.is_closed());
        (idle.generation, conn)
    }

    pub(crate) fn checkin(&self, generation: u64, conn: Sender) {
        let mut idle = self.idle();
        if idle.generation == generation && !conn.is_closed() {
            idle.conn = Some(conn);
        }
    }
}

fn retryable(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    // The worker's process is not listening yet (or its network is still coming up).
    matches!(
        e.kind(),
        K::ConnectionRefused | K::HostUnreachable | K::NetworkUnreachable
    )
}

/// Connects to the worker, retrying refused connections with backoff until `deadline`. Once
/// refusals have lasted past the first backoff steps, `probe` (at most once a second) may end
/// the wait early: its error (the worker stopped, paused or gone) is returned as is.
pub async fn connect<P, F>(
    addr: SocketAddr,
    deadline: Instant,
    metrics: &Metrics,
    probe: &P,
) -> Result<Sender, ApiError>
where
    P: Fn() -> F,
    F: Future<Output = Result<(), ApiError>>,
{
    let expired = || {
        ApiError::DeadlineExceeded(format!(
            "worker {addr} did not accept connections before the deadline"
        ))
    };
    let mut attempt = 0usize;
    let mut probed: Option<Instant> = None;
    loop {
        let stream = match timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => return Err(expired()),
            Ok(Ok(s)) => s,
            Ok(Err(e)) if retryable(&e) => {
                if attempt >= PROBE_AFTER && probed.is_none_or(|t| t.elapsed() >= PROBE_EVERY) {
                    probed = Some(Instant::now());
                    timeout_at(deadline, probe())
                        .await
                        .map_err(|_| expired())??;
                }
                let wait = BACKOFF_MS
                    .get(attempt)
                    .map_or(BACKOFF_MAX, |ms| Duration::from_millis(*ms));
                attempt += 1;
                if Instant::now() + wait >= deadline {
                    tokio::time::sleep_until(deadline).await;
                    return Err(expired());
                }
                metrics.invoke_retry();
                tokio::time::sleep(wait).await;
                continue;
            }
            Ok(Err(e)) => {
                return Err(ApiError::Unavailable(format!(
                    "cannot connect to worker {addr}: {e}"
                )));
            }
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(|e| {
            ApiError::Unavailable(format!("http handshake with worker failed: {e}"))
        })?;
        tokio::spawn(async move {
            // Ends when the worker closes or every sender is dropped.
            let _ = conn.await;
        });
        return Ok(sender);
    }
}
