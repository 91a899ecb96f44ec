//! Start-up and lifecycle: bind both listeners, load TLS, reconcile and adopt workers before
//! serving; then serve until shutdown, drain within a bound, flush state, apply the shutdown
//! policy (SPEC §12).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use esb_proto::v1::agent_service_server::AgentServiceServer;
use esb_runtime::Runtime;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::admission::Admission;
use crate::drain::InFlight;
use crate::error::ServerError;
use crate::grpc::Grpc;
use crate::invoke::Invoker;
use crate::listen::{ConnLimits, Listener};
use crate::metrics::Metrics;
use crate::rpc::RpcLayer;
use crate::service::{AgentFacts, Core};
use crate::settings::{ServerSettings, ShutdownPolicy, TlsSettings};
use crate::tls::TlsAcceptor;
use crate::workers::WorkerTable;
use crate::{health, tls};

/// A server whose listeners are bound and whose worker table is populated.
pub struct BoundServer {
    settings: ServerSettings,
    runtime: Arc<dyn Runtime>,
    core: Arc<Core>,
    grpc: Listener,
    grpc_addr: SocketAddr,
    metrics_listener: Option<Listener>,
    metrics_addr: Option<SocketAddr>,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for BoundServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundServer").finish_non_exhaustive()
    }
}

async fn listen(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { what, addr, source })
}

/// Binds the gRPC and metrics listeners, loads TLS material, reconciles the runtime and
/// adopts its live workers — all before anything is served.
pub async fn bind(
    settings: ServerSettings,
    runtime: Arc<dyn Runtime>,
) -> Result<BoundServer, ServerError> {
    let tls = tls::load(&settings.tls)?;
    if tls.is_none() {
        tracing::warn!(
            "gRPC TLS is DISABLED: traffic is plaintext and clients are not authenticated by certificate"
        );
    }
    let grpc = listen("gRPC", settings.listen_addr).await?;
    let grpc_addr = grpc.local_addr().map_err(|source| ServerError::Bind {
        what: "gRPC",
        addr: settings.listen_addr,
        source,
    })?;
    let (metrics_listener, metrics_addr) = match settings.metrics_addr {
        Some(addr) => {
            let l = listen("metrics", addr).await?;
            let bound = l.local_addr().map_err(|source| ServerError::Bind {
                what: "metrics",
                addr,
                source,
            })?;
            (Some(l), Some(bound))
        }
        None => (None, None),
    };
    // One connection cap for both ports (H6).
    let limits = ConnLimits::new(&settings.conn);
    let grpc = Listener::new(grpc, limits.clone(), "gRPC");
    let metrics_listener = metrics_listener.map(|l| Listener::new(l, limits, "metrics"));
    let metrics = Arc::new(Metrics::new());
    // Before reconcile, so its rollbacks and IPAM figures are already counted.
    runtime.set_observer(metrics.clone());
    let table = Arc::new(WorkerTable::new(runtime.clone(), Some(&settings.state_dir)));
    let adopted = runtime.reconcile().await.map_err(ServerError::Reconcile)?;
    tracing::info!(workers = adopted.len(), "reconciled; adopting live workers");
    table.adopt(adopted);
    let admission = Arc::new(Admission::new(settings.admission.clone()));
    let standby = Arc::new(crate::standby::Standby::new(
        settings.standby.clone(),
        runtime.clone(),
        table.clone(),
        admission.clone(),
        metrics.clone(),
        settings.ensure_ready_timeout,
        Some(&settings.state_dir),
    ));
    // Before serving: standbys of a previous run must never surface as the gateway's.
    standby.remove_left_over().await;
    let core = Arc::new(Core {
        runtime: runtime.clone(),
        table,
        invoker: Invoker::new(settings.invoke.clone(), metrics.clone()),
        metrics,
        ready_timeout: settings.ensure_ready_timeout,
        admission,
        standby,
        facts: AgentFacts {
            agent_version: settings.agent_version.clone(),
            tls_enabled: !matches!(settings.tls, TlsSettings::Disabled),
            max_request_bytes: settings.max_request_bytes as u64,
        },
    });
    Ok(BoundServer {
        settings,
        runtime,
        core,
        grpc,
        grpc_addr,
        metrics_listener,
        metrics_addr,
        tls,
    })
}

impl BoundServer {
    /// The actual gRPC address (port 0 resolved).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Serves until `shutdown` resolves, then: health NOT_SERVING, stop accepting, drain
    /// within `drain_timeout`, flush state, apply the shutdown policy.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let s = &self.settings;
        let reporter = tonic_health::server::HealthReporter::new();
        // The first status comes from a real probe, never an optimistic SERVING.
        let first = match tokio::time::timeout(Duration::from_secs(2), self.runtime.ping()).await {
            Ok(Ok(())) => ServingStatus::Serving,
            _ => ServingStatus::NotServing,
        };
        health::set_all(&reporter, first).await;
        let mut tasks: Vec<JoinHandle<()>> = vec![
            tokio::spawn(health::probe_loop(
                reporter.clone(),
                self.runtime.clone(),
                s.health_interval,
            )),
            tokio::spawn(gc_loop(self.core.clone(), s.gc_interval)),
            tokio::spawn(flush_loop(self.core.clone())),
            tokio::spawn(crate::events::event_loop(self.core.clone())),
        ];
        if let Some(l) = self.metrics_listener {
            let core = self.core.clone();
            let refresh: Arc<dyn Fn() + Send + Sync> =
                Arc::new(move || core.refresh_worker_gauge());
            tasks.push(tokio::spawn(crate::metrics::serve_http(
                l,
                self.core.metrics.clone(),
                refresh,
            )));
        }
        let agent = AgentServiceServer::new(Grpc {
            core: self.core.clone(),
        })
        .max_decoding_message_size(s.max_request_bytes)
        .max_encoding_message_size(s.max_response_bytes);
        let (refl_v1, refl_v1alpha) = reflection(s.reflection);
        let c = &s.conn;
        let in_flight = Arc::new(InFlight::default());
        let router = Server::builder()
            .max_concurrent_streams(c.max_concurrent_streams)
            .http2_keepalive_interval(c.keepalive_interval)
            .http2_keepalive_timeout(Some(c.keepalive_timeout))
            .layer(RpcLayer::new(
                self.core.metrics.clone(),
                s.auth_token.clone(),
                in_flight.clone(),
            ))
            .layer(crate::invoke::ReportLayer)
            .add_service(health::CappedHealth::server(
                reporter.clone(),
                c.max_health_watchers,
            ))
            .add_service(agent)
            .add_optional_service(refl_v1)
            .add_optional_service(refl_v1alpha);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async {
            let _ = stop_rx.await;
        };
        let mut accept_task = None;
        let serve: std::pin::Pin<
            Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
        > = match self.tls {
            None => {
                Box::pin(router.serve_with_incoming_shutdown(self.grpc.into_h2_incoming(), stop))
            }
            Some(acceptor) => {
                let (tx, rx) = tokio::sync::mpsc::channel(64);
                accept_task = Some(tokio::spawn(acceptor.accept_loop(self.grpc, tx)));
                Box::pin(router.serve_with_incoming_shutdown(ReceiverStream::new(rx), stop))
            }
        };
        tracing::info!(addr = %self.grpc_addr, "serving gRPC");
        let mut serve = serve;
        let result = tokio::select! {
            res = &mut serve => res.map_err(ServerError::Serve),
            () = shutdown => {
                tracing::info!("shutdown: health NOT_SERVING, draining in-flight RPCs");
                // Stop the probe first so it cannot flip health back to SERVING.
                if let Some(probe) = tasks.first() {
                    probe.abort();
                }
                health::set_all(&reporter, ServingStatus::NotServing).await;
                if let Some(t) = &accept_task {
                    t.abort();
                }
                let _ = stop_tx.send(());
                drain(&mut serve, &in_flight, s.drain_timeout).await
            }
        };
        drop(serve);
        if let Some(t) = accept_task {
            t.abort();
        }
        for t in &tasks {
            t.abort();
        }
        if let Err(e) = self.core.table.flush() {
            tracing::warn!(error = %e, "cannot save last-used state");
        }
        if s.shutdown_policy == ShutdownPolicy::Destroy {
            destroy_all(&self.core).await;
        }
        result
    }
}

/// How long connections may take to close on their own once no RPC is in flight: a
/// responsive client answers the GOAWAY within a round trip.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Waits, within `bound`, for the RPCs in flight to finish and the connections to close.
/// Connections still open once nothing is in flight (open-ended streams, a client that does
/// not answer the GOAWAY) are closed after [`CLOSE_GRACE`] rather than at the bound.
async fn drain(
    serve: &mut (impl Future<Output = Result<(), tonic::transport::Error>> + Unpin),
    in_flight: &InFlight,
    bound: Duration,
) -> Result<(), ServerError> {
    let deadline = tokio::time::Instant::now() + bound;
    tokio::select! {
        res = &mut *serve => return res.map_err(ServerError::Serve),
        () = tokio::time::sleep_until(deadline) => {
            tracing::warn!(timeout = ?bound, in_flight = in_flight.count(), "drain timed out; dropping remaining RPCs");
            return Ok(());
        }
        () = in_flight.idle() => {}
    }
    let grace = tokio::time::Instant::now() + CLOSE_GRACE;
    match tokio::time::timeout_at(grace.min(deadline), &mut *serve).await {
        Ok(res) => res.map_err(ServerError::Serve),
        Err(_) => {
            tracing::info!(
                "no RPC in flight; closing the connections still open (open-ended streams, clients that did not answer the GOAWAY)"
            );
            Ok(())
        }
    }
}

fn reflection(
    enabled: bool,
) -> (
    Option<
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
    >,
    Option<
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    >,
) {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(esb_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    if !enabled {
        return (None, None);
    }
    (builder().build_v1().ok(), builder().build_v1alpha().ok())
}

async fn gc_loop(core: Arc<Core>, interval: Duration) {
    let interval = interval.max(Duration::from_secs(1));
    loop {
        tokio::time::sleep(interval).await;
        match core.runtime.gc().await {
            Ok(report) => {
                for id in &report.removed_workers {
                    core.table.remove(id);
                }
                core.metrics
                    .gc_done(report.removed_workers.len(), report.released_resources);
                if !report.removed_workers.is_empty() || report.released_resources > 0 {
                    tracing::info!(
                        removed = report.removed_workers.len(),
                        released = report.released_resources,
                        "gc reclaimed resources"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e.chain(), "gc pass failed"),
        }
        // DESIGN §5: the table is kept fresh by periodic relisting too, so a worker that
        // exited, was paused or removed outside the agent is known without any RPC.
        let started = Instant::now();
        match core.runtime.list().await {
            Ok(states) => core.table.refresh(&states, started),
            Err(e) => tracing::warn!(error = %e.chain(), "periodic worker listing failed"),
        }
        core.standby.sweep();
        core.refresh_worker_gauge();
    }
}

/// Debounced persistence of last-used times (~1 s).
async fn flush_loop(core: Arc<Core>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Err(e) = core.table.flush() {
            tracing::warn!(error = %e, "cannot save last-used state");
        }
    }
}

/// Shutdown policy `destroy`: every managed worker (runtime listing, else the table).
async fn destroy_all(core: &Core) {
    let ids: Vec<String> = match core.runtime.list().await {
        Ok(states) => states.into_iter().map(|s| s.id).collect(),
        Err(e) => {
            tracing::warn!(error = %e.chain(), "cannot list workers; destroying the known ones");
            core.table.entries().iter().map(|e| e.id.clone()).collect()
        }
    };
    for id in ids {
        match core.runtime.destroy(&id).await {
            Ok(_) => core.table.remove(&id),
            Err(e) => {
                tracing::warn!(container_id = %id, error = %e.chain(), "destroy at shutdown failed")
            }
        }
    }
    let _ = core.table.flush();
    // The worker firewall outlives a keep-policy stop (workers do); with destroy it goes too.
    if let Err(e) = core.runtime.release_node_resources().await {
        tracing::warn!(error = %e.chain(), "cannot remove the worker firewall at shutdown");
    }
}
