//! The per-RPC tower layer: bearer-token check, one log line per RPC (method, code, duration,
//! owner, container id — never payloads or env values) and the compat gRPC metrics.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;
use tracing::Instrument;

use tonic::Status;
use tower::{Layer, Service};

use crate::authz::Peer;
use crate::drain::{Guard, GuardedBody, InFlight};
use crate::metrics::Metrics;
use crate::model::Target;
use crate::status::ApiError;

/// Identifiers a handler learnt, for the RPC's log line (set after validation only), and the
/// authenticated client of the connection.
#[derive(Debug)]
pub struct RpcContext {
    owner: OnceLock<String>,
    container: OnceLock<String>,
    /// `None` without TLS (token-only or no auth): no owner binding applies.
    peer: Option<Arc<Peer>>,
    /// The RPC's span: every log line of the call (runtime operations included) carries its
    /// method, owner and container id.
    span: tracing::Span,
}

impl Default for RpcContext {
    fn default() -> Self {
        Self {
            owner: OnceLock::new(),
            container: OnceLock::new(),
            peer: None,
            span: tracing::Span::none(),
        }
    }
}

impl RpcContext {
    /// PERMISSION_DENIED unless the client may act for `owner` (M2); call before the runtime.
    pub fn authorize(&self, owner: &str) -> Result<(), ApiError> {
        self.peer.as_ref().map_or(Ok(()), |p| p.authorize(owner))
    }

    pub fn set_owner(&self, owner: &str) {
        self.span.record("owner", owner);
        let _ = self.owner.set(owner.to_owned());
    }
    pub fn set_container(&self, id: &str) {
        self.span.record("container_id", id);
        let _ = self.container.set(id.to_owned());
    }
    pub fn set_target(&self, t: &Target) {
        self.set_owner(&t.owner_id);
        self.set_container(&t.container_id);
    }
}

const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Known services and methods: metric labels stay bounded whatever path a client sends.
const KNOWN: &[(&str, &[&str])] = &[
    (
        esb_proto::SERVICE_NAME,
        &[
            "EnsureContainer",
            "DestroyContainer",
            "PauseContainer",
            "ResumeContainer",
            "ListContainers",
            "GetContainerMetrics",
            "InvokeWorker",
            "GetCapabilities",
            "WorkerLogs",
            "PullImage",
            "SetStandby",
        ],
    ),
    (HEALTH_SERVICE, &["Check", "Watch", "List"]),
    (
        "grpc.reflection.v1.ServerReflection",
        &["ServerReflectionInfo"],
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        &["ServerReflectionInfo"],
    ),
];

fn split_path(path: &str) -> (&'static str, &'static str) {
    let mut it = path.trim_start_matches('/').splitn(2, '/');
    let (svc, method) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
    for (s, methods) in KNOWN {
        if *s == svc {
            let m = methods
                .iter()
                .find(|m| **m == method)
                .copied()
                .unwrap_or("unknown");
            return (s, m);
        }
    }
    ("unknown", "unknown")
}

/// Go-style code names, as go-grpc-prometheus labels them (compat dashboards).
fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

/// Constant-time comparison (the token is a secret; never logged).
fn token_matches(expected: &[u8], got: &[u8]) -> bool {
    if expected.len() != got.len() {
        return false;
    }
    expected
        .iter()
        .zip(got)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[derive(Clone)]
pub struct RpcLayer {
    metrics: Arc<Metrics>,
    token: Option<Arc<str>>,
    in_flight: Arc<InFlight>,
}

impl RpcLayer {
    pub fn new(metrics: Arc<Metrics>, token: Option<String>, in_flight: Arc<InFlight>) -> Self {
        Self {
            metrics,
            token: token.filter(|t| !t.is_empty()).map(Arc::from),
            in_flight,
        }
    }
}

/// Streams a client may keep open for as long as it likes: a shutdown does not wait for them.
fn open_ended(service: &str, method: &str) -> bool {
    matches!(
        (service, method),
        (HEALTH_SERVICE, "Watch") | (esb_proto::SERVICE_NAME, "WorkerLogs")
    ) || service.starts_with("grpc.reflection.")
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    layer: RpcLayer,
}

/// Logs and counts the RPC when dropped: a cancelled call (future dropped) is recorded too.
struct Finish {
    metrics: Arc<Metrics>,
    service: &'static str,
    method: &'static str,
    ctx: Arc<RpcContext>,
    started: Instant,
    code: i32,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let code = code_name(self.code);
        self.metrics
            .rpc_done(self.service, self.method, code, elapsed);
        let owner = self.ctx.owner.get().map_or("", String::as_str);
        let container_id = self.ctx.container.get().map_or("", String::as_str);
        let client = self
            .ctx
            .peer
            .as_ref()
            .and_then(|p| p.identities.first())
            .map_or("", String::as_str);
        let duration_us = elapsed.as_micros() as u64;
        // Health probes are frequent and uninteresting: debug only.
        if self.service == HEALTH_SERVICE {
            tracing::debug!(
                service = self.service,
                method = self.method,
                code,
                duration_us,
                "rpc"
            );
        } else {
            tracing::info!(
                service = self.service,
                method = self.method,
                code,
                duration_us,
                owner,
                container_id,
                client,
                "rpc"
            );
        }
    }
}

impl Finish {
    fn set_code(&mut self, code: i32) {
        self.code = code;
    }
}

/// The gRPC code of a response; rewrites tonic's OUT_OF_RANGE for an oversized message to
/// RESOURCE_EXHAUSTED (what grpc-go and the C core answer, and what SPEC §10 promises).
fn response_code<B>(resp: &mut http::Response<B>) -> i32 {
    // Errors of unary calls travel as trailers-only responses: the code is in the headers.
    let code = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let too_large = resp.headers().get("grpc-message").is_some_and(|m| {
        let needle = b"length%20too%20large";
        m.as_bytes().windows(needle.len()).any(|w| w == needle)
    });
    if code == tonic::Code::OutOfRange as i32 && too_large {
        resp.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("8"));
        return tonic::Code::ResourceExhausted as i32;
    }
    code
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqB, ResB> Service<http::Request<ReqB>> for RpcService<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    ResB: http_body::Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    ResB::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqB>) -> Self::Future {
        let (service, method) = split_path(req.uri().path());
        let span = if service == HEALTH_SERVICE {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "rpc",
                method,
                owner = tracing::field::Empty,
                container_id = tracing::field::Empty
            )
        };
        let ctx = Arc::new(RpcContext {
            peer: req.extensions().get::<Arc<Peer>>().cloned(),
            span: span.clone(),
            ..RpcContext::default()
        });
        req.extensions_mut().insert(ctx.clone());
        let guard = if open_ended(service, method) {
            Guard::none()
        } else {
            self.layer.in_flight.enter()
        };
        let mut finish = Finish {
            metrics: self.layer.metrics.clone(),
            service,
            method,
            ctx,
            started: Instant::now(),
            code: 1,
        };
        if let Some(token) = &self.layer.token
            && service != HEALTH_SERVICE
        {
            let got = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
                .unwrap_or_default();
            if !token_matches(token.as_bytes(), got) {
                finish.set_code(tonic::Code::Unauthenticated as i32);
                let resp = Status::unauthenticated("missing or invalid bearer token").into_http();
                return Box::pin(async move {
                    drop(finish);
                    drop(guard);
                    Ok(resp)
                });
            }
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let mut res = inner.call(req).await;
                finish.set_code(match &mut res {
                    Ok(resp) => response_code(resp),
                    Err(_) => tonic::Code::Unknown as i32,
                });
                // The RPC stays in flight (for the drain) until its body has been sent.
                res.map(|resp| resp.map(|b| tonic::body::Body::new(GuardedBody::new(b, guard))))
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(
            split_path("/esb.agent.v1.AgentService/InvokeWorker"),
            (esb_proto::SERVICE_NAME, "InvokeWorker")
        );
        assert_eq!(
            split_path("/esb.agent.v1.AgentService/Nope"),
            (esb_proto::SERVICE_NAME, "unknown")
        );
        assert_eq!(split_path("/x.y/Z"), ("unknown", "unknown"));
    }

    #[test]
    fn token_compare() {
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abc", b"abd"));
        assert!(!token_matches(b"abc", b"ab"));
    }
}
