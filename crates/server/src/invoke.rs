//! The InvokeWorker L7 proxy (SPEC §4): one keep-alive HTTP/1.1 connection pool keyed by
//! worker (dropped when the worker is paused, destroyed or re-addressed), connect-phase-only
//! retries with the compat backoff (cut short when a runtime probe says the worker stopped,
//! paused or vanished), one invocation in flight per worker, a streaming body limit, deadline
//! vs cancellation.

mod conn;
mod response;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use tokio::time::timeout_at;

pub use conn::Slot;

use crate::convert::InvokeCall;
use crate::metrics::Metrics;
use crate::settings::InvokeSettings;
use crate::status::ApiError;

/// A worker's HTTP reply (any status is a normal reply, compat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvokeReply {
    pub status: u16,
    /// First value per header, hop-by-hop headers removed.
    pub headers: HashMap<String, String>,
    pub body: Bytes,
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

fn outcome_of(res: &Result<InvokeReply, ApiError>) -> &'static str {
    match res {
        Ok(_) => "ok",
        Err(ApiError::DeadlineExceeded(_)) => "deadline",
        Err(ApiError::TooLarge(_)) => "too_large",
        Err(ApiError::Unavailable(_)) => "unavailable",
        Err(_) => "error",
    }
}

impl Invoker {
    pub fn new(settings: InvokeSettings, metrics: Arc<Metrics>) -> Self {
        Self { settings, metrics }
    }

    pub fn settings(&self) -> &InvokeSettings {
        &self.settings
    }

    /// Sends `call` to the worker at `addr`, serialised through its `slot`, by `deadline`.
    /// `probe` is asked (bounded) during a long run of refused connections whether the worker
    /// can still start listening; an error from it ends the call at once.
    pub async fn invoke<P, F>(
        &self,
        slot: &Slot,
        addr: SocketAddr,
        call: InvokeCall,
        deadline: Instant,
        probe: &P,
    ) -> Result<InvokeReply, ApiError>
    where
        P: Fn() -> F,
        F: Future<Output = Result<(), ApiError>>,
    {
        let mut guard = OutcomeGuard {
            metrics: &self.metrics,
            started: Instant::now(),
            outcome: "cancelled",
        };
        let res = self.run(slot, addr, call, deadline, probe).await;
        guard.outcome = outcome_of(&res);
        res
    }

    async fn run<P, F>(
        &self,
        slot: &Slot,
        addr: SocketAddr,
        call: InvokeCall,
        deadline: Instant,
        probe: &P,
    ) -> Result<InvokeReply, ApiError>
    where
        P: Fn() -> F,
        F: Future<Output = Result<(), ApiError>>,
    {
        let deadline = tokio::time::Instant::from_std(deadline);
        let timeout = call.timeout;
        let timeout_msg = || {
            ApiError::DeadlineExceeded(format!(
                "invocation timed out after {} ms",
                timeout.as_millis()
            ))
        };
        // One invocation in flight per worker: wait for the previous one within our deadline.
        let _turn = timeout_at(deadline, slot.serial.lock())
            .await
            .map_err(|_| timeout_msg())?;
        let mut req = Some(build_request(addr, call));
        let (generation, idle) = slot.checkout();
        let mut reused = idle.is_some();
        let mut sender = match idle {
            Some(s) => s,
            None => conn::connect(addr, deadline, &self.metrics, probe).await?,
        };
        let resp = loop {
            let Some(r) = req.take() else {
                return Err(ApiError::Internal("request lost before sending".into()));
            };
            // A pooled connection may have been closed by the worker while idle; that is
            // only safe to replace while nothing was written.
            let ready = timeout_at(deadline, sender.ready())
                .await
                .map_err(|_| timeout_msg())?;
            if ready.is_err() && reused {
                req = Some(r);
                reused = false;
                sender = conn::connect(addr, deadline, &self.metrics, probe).await?;
                continue;
            }
            match timeout_at(deadline, sender.try_send_request(r)).await {
                Err(_) => return Err(timeout_msg()),
                Ok(Ok(resp)) => break resp,
                Ok(Err(mut e)) => match e.take_message() {
                    // Never written: safe to send on a fresh connection, once.
                    Some(r) if reused => {
                        req = Some(r);
                        reused = false;
                        sender = conn::connect(addr, deadline, &self.metrics, probe).await?;
                    }
                    _ => {
                        return Err(ApiError::Unavailable(format!(
                            "worker connection failed during the invocation (not retried): {}",
                            e.error()
                        )));
                    }
                },
            }
        };
        let limit = self.settings.max_response_bytes;
        let reply = timeout_at(deadline, response::read(resp, limit))
            .await
            .map_err(|_| timeout_msg())??;
        slot.checkin(generation, sender);
        Ok(reply)
    }
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
