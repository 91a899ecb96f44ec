//! Per-worker connection slot and the connect phase: a TCP connect we do ourselves, so a
//! refused connection (cold start) is retried with backoff and nothing else ever is. A long run
//! of refusals asks the runtime (bounded, via a probe) whether the worker can still come up.
//!
//! The HTTP/1.1 connection is driven inside the invoking task ([`driven`]) rather than by a
//! task of its own: on a 2-core node every hop between tasks costs tens of µs per call.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use super::peak::PeakFile;
use crate::metrics::Metrics;
use crate::status::ApiError;

pub type Sender = SendRequest<Full<Bytes>>;
type Driver = Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// Cold-start backoff (compat): 100, 200, 400, 800 ms, then 1 s until the deadline.
const BACKOFF_MS: [u64; 4] = [100, 200, 400, 800];
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Refusals before the first liveness probe (after the 100 + 200 ms steps, ~300 ms).
const PROBE_AFTER: usize = 2;
/// At most one liveness probe per this interval.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// One keep-alive connection to a worker: the request handle and the connection state
/// machine, which whoever uses the connection polls (see [`driven`]).
pub struct Conn {
    pub(crate) sender: Sender,
    driver: Option<Driver>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("open", &self.driver.is_some())
            .finish()
    }
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.driver.is_none() || self.sender.is_closed()
    }

    /// Runs `f` on the sender while driving the connection in this task.
    pub async fn run<'a, T, Fut>(&'a mut self, f: impl FnOnce(&'a mut Sender) -> Fut) -> T
    where
        Fut: Future<Output = T> + 'a,
    {
        driven(&mut self.driver, f(&mut self.sender)).await
    }
}

/// Polls `fut` and, alongside, the connection, so the connection needs no task of its own.
/// Once the connection has finished it is dropped and `fut` alone is polled (it then sees the
/// closed connection through hyper's channels).
async fn driven<F: Future>(driver: &mut Option<Driver>, fut: F) -> F::Output {
    let mut fut = pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(v);
        }
        if let Some(d) = driver.as_mut()
            && d.poll_without_shutdown(cx).is_ready()
        {
            *driver = None;
            return fut.as_mut().poll(cx);
        }
        Poll::Pending
    })
    .await
}

/// One worker's invoke state: the in-flight lock, its idle keep-alive connection, whether it
/// was created by this agent and not yet invoked (the init report), and its peak-memory file.
#[derive(Debug)]
pub struct Slot {
    pub(crate) serial: Arc<tokio::sync::Mutex<()>>,
    idle: Mutex<Idle>,
    /// When a worker created by this agent started; taken by its first answered invocation.
    fresh: Mutex<Option<std::time::Instant>>,
    pub(crate) peak: OnceLock<Option<PeakFile>>,
}

impl Default for Slot {
    /// A slot for a worker the agent adopted (its first invocation may be long past).
    fn default() -> Self {
        Self {
            serial: Arc::default(),
            idle: Mutex::default(),
            fresh: Mutex::new(None),
            peak: OnceLock::new(),
        }
    }
}

#[derive(Debug, Default)]
struct Idle {
    generation: u64,
    conn: Option<Conn>,
}

impl Slot {
    /// A slot for a worker Ensure has just started: its first invocation reports the init.
    pub fn fresh() -> Self {
        Self {
            fresh: Mutex::new(Some(std::time::Instant::now())),
            ..Self::default()
        }
    }

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

    pub(crate) fn checkout(&self) -> (u64, Option<Conn>) {
        let mut idle = self.idle();
        let conn = idle.conn.take().filter(|c| !c.is_closed());
        (idle.generation, conn)
    }

    pub(crate) fn checkin(&self, generation: u64, conn: Conn) {
        let mut idle = self.idle();
        if idle.generation == generation && !conn.is_closed() {
            idle.conn = Some(conn);
        }
    }

    /// The worker's start time if this is its first answered invocation (then never again).
    pub(crate) fn take_fresh(&self) -> Option<std::time::Instant> {
        self.fresh.lock().unwrap_or_else(|e| e.into_inner()).take()
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
) -> Result<Conn, ApiError>
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
        let (sender, driver) = http1::handshake(TokioIo::new(stream)).await.map_err(|e| {
            ApiError::Unavailable(format!("http handshake with worker failed: {e}"))
        })?;
        return Ok(Conn {
            sender,
            driver: Some(driver),
        });
    }
}
