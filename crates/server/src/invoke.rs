//! The InvokeWorker L7 proxy (SPEC §4): one keep-alive HTTP/1.1 connection pool keyed by
//! worker (dropped when the worker is paused, destroyed or re-addressed), connect-phase-only
//! retries with the compat backoff (cut short when a runtime probe says the worker stopped,
//! paused or vanished), one invocation in flight per worker — even past a deadline (M6: the
//! slot stays held while the worker still runs the call) —, a streaming body limit, deadline
//! vs cancellation, and the invocation report.

mod conn;
mod peak;
mod report;
mod response;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use tokio::time::timeout_at;

pub use conn::Slot;
use conn::{Conn, Sender};
pub use report::{InvokeReport, Outcome, ReportCell, ReportLayer, TrailerReport};

use crate::metrics::Metrics;
use crate::model::InvokeCall;
use crate::settings::InvokeSettings;
use crate::status::ApiError;

/// After a deadline fired mid-request the worker keeps running the call: its slot stays held
/// until the worker answers or closes, for at most the call's own timeout (counted from the
/// send) plus this grace; then the connection is dropped and the slot freed.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// A worker's HTTP reply (any status is a normal reply, compat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvokeReply {
    pub status: u16,
    /// First value per header, hop-by-hop headers removed.
    pub headers: HashMap<String, String>,
    pub body: Bytes,
}

/// Why a worker cannot take an invocation (from the runtime probe).
#[derive(Debug)]
pub struct NotInvocable {
    pub error: ApiError,
    /// The worker's process has exited: `Some(Crashed)` or `Some(Oom)`.
    pub exited: Option<Outcome>,
}

impl From<NotInvocable> for ApiError {
    fn from(n: NotInvocable) -> Self {
        n.error
    }
}

/// The proxy; shared by every InvokeWorker call.
pub struct Invoker {
    settings: InvokeSettings,
    metrics: Arc<Metrics>,
}

/// Records the outcome when dropped, so a cancelled call (future dropped) is counted too.
struct OutcomeGuard<'a> {
    metrics: &'a Metrics,
    started: Instant,
    outcome: &'static str,
}

impl Drop for OutcomeGuard<'_> {
    fn drop(&mut self) {
        self.metrics
            .invoke_done(self.outcome, self.started.elapsed());
    }
}

fn outcome_of(res: &Result<InvokeReply, ApiError>) -> Outcome {
    match res {
        Ok(r) if r.status >= 500 || r.headers.contains_key("x-amz-function-error") => {
            Outcome::FunctionError
        }
        Ok(_) => Outcome::Ok,
        Err(ApiError::DeadlineExceeded(_)) => Outcome::Timeout,
        Err(ApiError::TooLarge(_)) => Outcome::TooLarge,
        Err(ApiError::Unavailable(_)) => Outcome::Unavailable,
        Err(_) => Outcome::Error,
    }
}

/// The send-and-read phase, owned so that it can outlive the caller after a deadline.
// Lives inside the (boxed) exchange future and is moved once: boxing the connection would
// only add an allocation per call.
#[allow(clippy::large_enum_variant)]
enum Exchanged {
    Done(Result<InvokeReply, ApiError>, Conn),
    /// Never written: safe to send again on a fresh connection.
    NotSent(http::Request<Full<Bytes>>),
}

async fn exchange(mut conn: Conn, req: http::Request<Full<Bytes>>, limit: u64) -> Exchanged {
    let sent = conn.run(|s: &mut Sender| s.try_send_request(req)).await;
    let resp = match sent {
        Ok(resp) => resp,
        Err(mut e) => {
            return match e.take_message() {
                Some(r) => Exchanged::NotSent(r),
                None => Exchanged::Done(
                    Err(ApiError::Unavailable(format!(
                        "worker connection failed during the invocation (not retried): {}",
                        e.error()
                    ))),
                    conn,
                ),
            };
        }
    };
    let reply = conn.run(|_| response::read(resp, limit)).await;
    Exchanged::Done(reply, conn)
}

impl Invoker {
    pub fn new(settings: InvokeSettings, metrics: Arc<Metrics>) -> Self {
        Self { settings, metrics }
    }

    pub fn settings(&self) -> &InvokeSettings {
        &self.settings
    }

    /// Sends `call` to the worker at `addr`, serialised through its `slot`, by `deadline`.
    /// `probe` is asked (bounded) during a long run of refused connections, and after a
    /// connection broke mid-call, whether the worker can still answer; its error ends the call.
    /// `peak` opens the worker's peak-memory file (once per worker). The report of a call
    /// that got the worker's slot is left in `report`.
    #[allow(clippy::too_many_arguments)]
    pub async fn invoke<P, F>(
        &self,
        slot: &Arc<Slot>,
        addr: SocketAddr,
        call: InvokeCall,
        deadline: Instant,
        probe: &P,
        peak: impl FnOnce() -> Option<esb_runtime::MemoryPeakProbe>,
        report: &ReportCell,
    ) -> Result<InvokeReply, ApiError>
    where
        P: Fn() -> F,
        F: Future<Output = Result<(), NotInvocable>>,
    {
        let mut guard = OutcomeGuard {
            metrics: &self.metrics,
            started: Instant::now(),
            outcome: "cancelled",
        };
        let peak = slot
            .peak
            .get_or_init(|| peak().and_then(|p| peak::PeakFile::open(&p)));
        let mut outcome = None;
        let res = self
            .run(
                slot,
                addr,
                call,
                deadline,
                probe,
                peak.as_ref(),
                report,
                &mut outcome,
            )
            .await;
        guard.outcome = outcome.unwrap_or_else(|| outcome_of(&res)).as_str();
        res
    }

    #[allow(clippy::too_many_arguments)]
    async fn run<P, F>(
        &self,
        slot: &Arc<Slot>,
        addr: SocketAddr,
        call: InvokeCall,
        deadline: Instant,
        probe: &P,
        peak: Option<&peak::PeakFile>,
        report: &ReportCell,
        outcome: &mut Option<Outcome>,
    ) -> Result<InvokeReply, ApiError>
    where
        P: Fn() -> F,
        F: Future<Output = Result<(), NotInvocable>>,
    {
        let deadline = tokio::time::Instant::from_std(deadline);
        let timeout = call.timeout;
        let timeout_msg = || {
            ApiError::DeadlineExceeded(format!(
                "invocation timed out after {} ms",
                timeout.as_millis()
            ))
        };
        let plain_probe = || async { probe().await.map_err(ApiError::from) };
        // One invocation in flight per worker: wait for the previous one within our deadline.
        let turn = timeout_at(deadline, slot.serial.clone().lock_owned())
            .await
            .map_err(|_| timeout_msg())?;
        let started = Instant::now();
        let mut req = build_request(addr, call);
        let (generation, idle) = slot.checkout();
        let mut reused = idle.is_some();
        let mut conn = match idle {
            Some(c) => c,
            None => conn::connect(addr, deadline, &self.metrics, &plain_probe).await?,
        };
        if let Some(p) = peak {
            p.reset();
        }
        let limit = self.settings.max_response_bytes;
        let sent_at = tokio::time::Instant::now();
        let res = loop {
            // A pooled connection may have been closed by the worker while idle; that is
            // only safe to replace while nothing was written.
            let ready = timeout_at(deadline, conn.run(|s: &mut Sender| s.ready()))
                .await
                .map_err(|_| timeout_msg())?;
            if ready.is_err() && reused {
                reused = false;
                conn = conn::connect(addr, deadline, &self.metrics, &plain_probe).await?;
                continue;
            }
            let mut ex = Box::pin(exchange(conn, req, limit));
            match timeout_at(deadline, &mut ex).await {
                Ok(Exchanged::Done(res, c)) => {
                    if res.is_ok() {
                        slot.checkin(generation, c);
                    }
                    break res;
                }
                Ok(Exchanged::NotSent(r)) if reused => {
                    req = r;
                    reused = false;
                    conn = conn::connect(addr, deadline, &self.metrics, &plain_probe).await?;
                }
                Ok(Exchanged::NotSent(_)) => {
                    break Err(ApiError::Unavailable(
                        "worker connection closed before the request was sent".into(),
                    ));
                }
                Err(_) => {
                    // The worker is still running the call: keep its slot until it answers
                    // (the connection is then reusable) or the drain bound passes (M6).
                    let slot = slot.clone();
                    let until = sent_at + timeout + DRAIN_GRACE;
                    tokio::spawn(async move {
                        let _turn = turn;
                        if let Ok(Exchanged::Done(Ok(_), c)) = timeout_at(until, ex).await {
                            slot.checkin(generation, c);
                        }
                    });
                    break Err(timeout_msg());
                }
            }
        };
        let duration = started.elapsed();
        let res = match res {
            Err(ApiError::Unavailable(msg)) => {
                // The connection broke mid-call: did the worker's process exit (crash, OOM)?
                match exited(probe).await {
                    Some(n) => {
                        *outcome = n.exited;
                        Err(n.error)
                    }
                    None => Err(ApiError::Unavailable(msg)),
                }
            }
            other => other,
        };
        let class = outcome.unwrap_or_else(|| outcome_of(&res));
        let init = match class {
            Outcome::Ok | Outcome::FunctionError => slot.take_fresh().map(|t| t.elapsed()),
            _ => None,
        };
        let _ = report.set(InvokeReport {
            duration,
            init,
            max_memory: peak.and_then(peak::PeakFile::read),
            memory_since_start: peak.is_some_and(|p| !p.resettable),
            outcome: class,
        });
        res
    }
}

/// After a broken connection: the probe's verdict if the worker's process has exited. The
/// runtime learns of an exit a little after the socket closes, so it is asked a few times
/// (bounded: this is the failure path only).
async fn exited<P, F>(probe: &P) -> Option<NotInvocable>
where
    P: Fn() -> F,
    F: Future<Output = Result<(), NotInvocable>>,
{
    for _ in 0..5 {
        match tokio::time::timeout(Duration::from_millis(500), probe()).await {
            Ok(Err(n)) if n.exited.is_some() => return Some(n),
            Ok(Err(_)) => return None,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    None
}

fn build_request(addr: SocketAddr, call: InvokeCall) -> http::Request<Full<Bytes>> {
    let mut req = http::Request::new(Full::new(call.payload));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = http::Uri::from(call.path);
    *req.headers_mut() = call.headers;
    if let Ok(host) = http::HeaderValue::from_str(&addr.to_string()) {
        req.headers_mut().insert(http::header::HOST, host);
    }
    req
}

/// Reads `raw` as a worker's answer to one invocation, the way the proxy does (hyper's HTTP/1
/// client with the proxy's settings, then the body read bounded by `limit`). For the fuzz
/// target (`fuzz/`) and its corpus test: any input ends in a reply or a clean error.
#[doc(hidden)]
pub async fn parse_worker_response(raw: &[u8], limit: u64) -> Result<InvokeReply, ApiError> {
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (client, mut worker) = tokio::io::duplex(64 * 1024);
    let raw = raw.to_vec();
    let worker = tokio::spawn(async move {
        // Like a worker: the whole request first, then the answer, then EOF.
        let (mut seen, mut buf) = (Vec::new(), [0u8; 4096]);
        while !seen.ends_with(b"\r\n\r\n{}") {
            match worker.read(&mut buf).await {
                Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
        let _ = worker.write_all(&raw).await;
        let _ = worker.shutdown().await;
    });
    let (mut sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(client))
        .await
        .map_err(|e| ApiError::Unavailable(format!("handshake: {e}")))?;
    let driver = tokio::spawn(driver);
    let req = http::Request::post("/2015-03-31/functions/function/invocations")
        .body(Full::new(Bytes::from_static(b"{}")))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let out = match sender.send_request(req).await {
        Ok(resp) => response::read(resp, limit).await,
        Err(e) => Err(ApiError::Unavailable(format!("worker answer: {e}"))),
    };
    driver.abort();
    worker.abort();
    out
}
