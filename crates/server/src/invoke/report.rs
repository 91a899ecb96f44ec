//! The invocation report (Lambda's REPORT line): duration, init, peak memory and outcome
//! class of one invocation, sent as gRPC trailing metadata `x-esb-report-*`. A successful
//! unary response carries it in its trailers frame (added by [`ReportLayer`], since tonic
//! only lets a handler set leading metadata); an error carries it in the status' metadata,
//! which a unary error sends as trailers (trailers-only response).

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame};
use tower::{Layer, Service};

/// What happened to an invocation that reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The worker answered with status ≥ 500 or `X-Amz-Function-Error`.
    FunctionError,
    Timeout,
    /// The worker's process was OOM-killed during the call.
    Oom,
    /// The worker's process exited during the call.
    Crashed,
    /// The response was over the limit.
    TooLarge,
    /// The worker could not be reached (not running, refused, connection broken).
    Unavailable,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::FunctionError => "function_error",
            Self::Timeout => "timeout",
            Self::Oom => "oom",
            Self::Crashed => "crashed",
            Self::TooLarge => "too_large",
            Self::Unavailable => "unavailable",
            Self::Error => "error",
        }
    }
}

pub const DURATION_KEY: &str = "x-esb-report-duration-us";
pub const INIT_KEY: &str = "x-esb-report-init";
pub const INIT_DURATION_KEY: &str = "x-esb-report-init-duration-us";
/// Peak during this call (the host can reset the peak: cgroup v1).
pub const MAX_MEMORY_KEY: &str = "x-esb-report-max-memory-bytes";
/// Peak since the worker started (the host cannot reset it: cgroup v2).
pub const MAX_MEMORY_SINCE_START_KEY: &str = "x-esb-report-max-memory-since-start-bytes";
pub const OUTCOME_KEY: &str = "x-esb-report-outcome";

/// One invocation's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvokeReport {
    /// From the moment the worker's slot was ours to the end of the answer (queueing
    /// behind another invocation excluded; a cold-start connect wait included).
    pub duration: Duration,
    /// Set on the first answered invocation of a worker this agent started: worker start
    /// (Ensure) → first answer.
    pub init: Option<Duration>,
    pub max_memory: Option<u64>,
    /// `max_memory` is the peak since the worker started, not this call's.
    pub memory_since_start: bool,
    pub outcome: Outcome,
}

impl InvokeReport {
    /// The `x-esb-report-*` pairs.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            (DURATION_KEY, self.duration.as_micros().to_string()),
            (INIT_KEY, self.init.is_some().to_string()),
            (OUTCOME_KEY, self.outcome.as_str().to_owned()),
        ];
        if let Some(init) = self.init {
            out.push((INIT_DURATION_KEY, init.as_micros().to_string()));
        }
        if let Some(m) = self.max_memory {
            let key = if self.memory_since_start {
                MAX_MEMORY_SINCE_START_KEY
            } else {
                MAX_MEMORY_KEY
            };
            out.push((key, m.to_string()));
        }
        out
    }

    fn insert_into(&self, map: &mut HeaderMap) {
        for (k, v) in self.pairs() {
            if let Ok(v) = HeaderValue::from_str(&v) {
                map.insert(k, v);
            }
        }
    }

    /// Adds the report to an error status (sent as trailers).
    pub fn attach_to(&self, status: &mut tonic::Status) {
        for (k, v) in self.pairs() {
            if let Ok(v) = v.parse() {
                status.metadata_mut().insert(k, v);
            }
        }
    }
}

/// Where the proxy leaves the report for the handler (set once per invocation).
pub type ReportCell = OnceLock<InvokeReport>;

/// A report travelling from the handler to [`ReportLayer`] in the response extensions.
#[derive(Debug, Clone)]
pub struct TrailerReport(pub Arc<InvokeReport>);

/// Tower layer that appends a response's [`TrailerReport`] to its trailers frame.
#[derive(Debug, Clone, Default)]
pub struct ReportLayer;

impl<S> Layer<S> for ReportLayer {
    type Service = ReportService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ReportService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ReportService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, ReqB> Service<http::Request<ReqB>> for ReportService<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let Some(TrailerReport(report)) = resp.extensions().get::<TrailerReport>().cloned()
            else {
                return Ok(resp);
            };
            Ok(resp.map(|inner| {
                tonic::body::Body::new(ReportBody {
                    inner,
                    report: Some(report),
                })
            }))
        })
    }
}

/// A response body whose trailers frame gains the report.
struct ReportBody {
    inner: tonic::body::Body,
    report: Option<Arc<InvokeReport>>,
}

impl Body for ReportBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_trailers() {
                    Ok(mut trailers) => {
                        if let Some(r) = this.report.take() {
                            r.insert_into(&mut trailers);
                        }
                        Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_name_the_memory_window_and_init_only_when_set() {
        let mut r = InvokeReport {
            duration: Duration::from_micros(1500),
            init: None,
            max_memory: Some(42),
            memory_since_start: false,
            outcome: Outcome::FunctionError,
        };
        let p = r.pairs();
        assert!(p.contains(&(DURATION_KEY, "1500".into())));
        assert!(p.contains(&(INIT_KEY, "false".into())));
        assert!(p.contains(&(OUTCOME_KEY, "function_error".into())));
        assert!(p.contains(&(MAX_MEMORY_KEY, "42".into())));
        assert!(!p.iter().any(|(k, _)| *k == INIT_DURATION_KEY));
        r.init = Some(Duration::from_millis(3));
        r.memory_since_start = true;
        let p = r.pairs();
        assert!(p.contains(&(INIT_DURATION_KEY, "3000".into())));
        assert!(p.contains(&(MAX_MEMORY_SINCE_START_KEY, "42".into())));
        assert!(!p.iter().any(|(k, _)| *k == MAX_MEMORY_KEY));
    }
}
