//! gRPC health (SPEC §11): `""`, `esb.agent.v1.AgentService` and the legacy
//! `agent.v1.AgentService` are SERVING only while the runtime answers `ping`, and NOT_SERVING
//! once shutdown begins.

use std::sync::Arc;
use std::time::Duration;

use esb_runtime::Runtime;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

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
