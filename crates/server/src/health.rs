//! gRPC health (SPEC §11): `""`, `esb.agent.v1.AgentService` and the legacy
//! `agent.v1.AgentService` are SERVING only while the runtime answers `ping`, and NOT_SERVING
//! once shutdown begins. `Watch` streams are capped (they are token-exempt and long-lived).

use std::sync::Arc;
use std::time::Duration;

use esb_runtime::Runtime;
use futures::{Stream, StreamExt};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

/// Service names whose health we report.
pub const NAMES: [&str; 3] = ["", esb_proto::SERVICE_NAME, esb_proto::LEGACY_SERVICE_NAME];

pub async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for name in NAMES {
        reporter.set_service_status(name, status).await;
    }
}

/// Probes the runtime every `interval` until aborted.
pub async fn probe_loop(reporter: HealthReporter, runtime: Arc<dyn Runtime>, interval: Duration) {
    let interval = interval.max(Duration::from_millis(10));
    let mut last = None;
    loop {
        let ok = matches!(
            tokio::time::timeout(interval.max(Duration::from_secs(1)), runtime.ping()).await,
            Ok(Ok(()))
        );
        if last != Some(ok) {
            if ok {
                tracing::info!("runtime reachable: health SERVING");
            } else {
                tracing::warn!("runtime unreachable: health NOT_SERVING");
            }
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_all(&reporter, status).await;
            last = Some(ok);
        }
        tokio::time::sleep(interval).await;
    }
}

/// The standard health service with at most `max_watchers` concurrent `Watch` streams; one
/// more is answered RESOURCE_EXHAUSTED (clients retry with backoff, per the protocol).
pub struct CappedHealth {
    inner: HealthService,
    watchers: Arc<Semaphore>,
}

impl CappedHealth {
    pub fn server(reporter: HealthReporter, max_watchers: usize) -> HealthServer<Self> {
        HealthServer::new(Self {
            inner: HealthService::from_health_reporter(reporter),
            watchers: Arc::new(Semaphore::new(max_watchers)),
        })
    }
}

type WatchStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Health for CappedHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let Ok(permit) = self.watchers.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(
                "too many concurrent health Watch streams",
            ));
        };
        let stream = self.inner.watch(request).await?.into_inner();
        // The permit lives as long as the stream.
        let stream = stream.map(move |item| {
            let _held = &permit;
            item
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
