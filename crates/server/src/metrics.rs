//! Prometheus metrics: one registry, the compat gRPC metric names, the agent's own
//! `esb_agent_*` metrics and cheap process metrics read from /proc (catalogue: docs/metrics.md).

mod events;
mod http;
mod text;

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use esb_runtime::{Observer, Phase, PullOutcome};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use self::events::{EventMetrics, ReadyOutcome};
pub use self::http::serve as serve_http;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcCodeLabels {
    grpc_service: &'static str,
    grpc_method: &'static str,
    grpc_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    grpc_service: &'static str,
    grpc_method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs … ~105 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 22))
}

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    grpc_handled: Family<GrpcCodeLabels, Counter>,
    grpc_seconds: Family<GrpcLabels, Histogram, fn() -> Histogram>,
    invoke_total: Family<OutcomeLabels, Counter>,
    invoke_seconds: Histogram,
    invoke_retries: Counter,
    ensure_seconds: Histogram,
    ensure_phase_seconds: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    pulls: Family<OutcomeLabels, Counter>,
    rollbacks: Family<OperationLabels, Counter>,
    ipam_reservations: Gauge,
    workers: Family<StateLabels, Gauge>,
    gc_passes: Counter,
    gc_reclaimed: Counter,
    gc_released: Counter,
    standby_claims: Family<OutcomeLabels, Counter>,
    standby_ready: Gauge,
    standby_refill_failures: Counter,
    process_rss: Gauge,
    process_fds: Gauge,
    process_cpu: Counter<f64, AtomicU64>,
    last_cpu: Mutex<f64>,
    /// Worker events, resubscriptions and ready waits.
    pub events: EventMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let grpc_handled = Family::<GrpcCodeLabels, Counter>::default();
        registry.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure",
            grpc_handled.clone(),
        );
        let grpc_seconds: Family<GrpcLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server",
            grpc_seconds.clone(),
        );
        let invoke_total = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "esb_agent_invoke",
            "InvokeWorker calls by outcome (ok, deadline, cancelled, too_large, unavailable, error)",
            invoke_total.clone(),
        );
        let invoke_seconds = latency_histogram();
        registry.register(
            "esb_agent_invoke_duration_seconds",
            "InvokeWorker latency, seconds, including cold-start waits",
            invoke_seconds.clone(),
        );
        let invoke_retries = Counter::default();
        registry.register(
            "esb_agent_invoke_connect_retries",
            "Connect attempts retried because the worker refused the connection (cold start)",
            invoke_retries.clone(),
        );
        let ensure_seconds = latency_histogram();
        registry.register(
            "esb_agent_ensure_duration_seconds",
            "EnsureContainer latency (successful creations), seconds",
            ensure_seconds.clone(),
        );
        let ensure_phase_seconds: Family<PhaseLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "esb_agent_ensure_phase_duration_seconds",
            "EnsureContainer latency by phase (pull, snapshot, create, network, task_create, start; ready: the wait for the worker's port), seconds",
            ensure_phase_seconds.clone(),
        );
        let pulls = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "esb_agent_image_pulls",
            "Image resolutions by outcome (pulled, cached, fallback, failed)",
            pulls.clone(),
        );
        let rollbacks = Family::<OperationLabels, Counter>::default();
        registry.register(
            "esb_agent_rollbacks",
            "Compensations of partially completed operations, by operation",
            rollbacks.clone(),
        );
        let ipam_reservations = Gauge::default();
        registry.register(
            "esb_agent_cni_ipam_reservations",
            "Current CNI attachments holding an IPAM reservation (containerd backend)",
            ipam_reservations.clone(),
        );
        let workers = Family::<StateLabels, Gauge>::default();
        registry.register(
            "esb_agent_workers",
            "Workers known to the agent, by state",
            workers.clone(),
        );
        let gc_passes = Counter::default();
        registry.register(
            "esb_agent_gc_passes",
            "Periodic GC passes completed",
            gc_passes.clone(),
        );
        let gc_reclaimed = Counter::default();
        registry.register(
            "esb_agent_gc_reclaimed_workers",
            "Broken workers removed by GC and reconcile",
            gc_reclaimed.clone(),
        );
        let gc_released = Counter::default();
        registry.register(
            "esb_agent_gc_released_resources",
            "Orphaned resources (IPs, netns, logs) released by GC and reconcile",
            gc_released.clone(),
        );
        let standby_claims = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "esb_agent_standby_claims",
            "Ensures of a spec with standbys wanted, by outcome (hit: a standby was claimed; miss: none was ready)",
            standby_claims.clone(),
        );
        let standby_ready = Gauge::default();
        registry.register(
            "esb_agent_standby_workers",
            "Standby workers ready to be claimed (hidden from the API until then)",
            standby_ready.clone(),
        );
        let standby_refill_failures = Counter::default();
        registry.register(
            "esb_agent_standby_refill_failures",
            "Standby creations that failed (admission, runtime, or the worker never listened)",
            standby_refill_failures.clone(),
        );
        let process_rss = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            process_rss.clone(),
        );
        let process_fds = Gauge::default();
        registry.register(
            "process_open_fds",
            "Number of open file descriptors",
            process_fds.clone(),
        );
        let process_cpu = Counter::<f64, AtomicU64>::default();
        registry.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            process_cpu.clone(),
        );
        let events = EventMetrics::register(&mut registry);
        Self {
            registry,
            grpc_handled,
            grpc_seconds,
            invoke_total,
            invoke_seconds,
            invoke_retries,
            ensure_seconds,
            ensure_phase_seconds,
            pulls,
            rollbacks,
            ipam_reservations,
            workers,
            gc_passes,
            gc_reclaimed,
            gc_released,
            standby_claims,
            standby_ready,
            standby_refill_failures,
            process_rss,
            process_fds,
            process_cpu,
            last_cpu: Mutex::new(0.0),
            events,
        }
    }

    /// One finished RPC (`service`/`method` must come from a bounded set).
    pub fn rpc_done(
        &self,
        service: &'static str,
        method: &'static str,
        code: &'static str,
        elapsed: Duration,
    ) {
        self.grpc_handled
            .get_or_create(&GrpcCodeLabels {
                grpc_service: service,
                grpc_method: method,
                grpc_code: code,
            })
            .inc();
        self.grpc_seconds
            .get_or_create(&GrpcLabels {
                grpc_service: service,
                grpc_method: method,
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn invoke_done(&self, outcome: &'static str, elapsed: Duration) {
        self.invoke_total
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.invoke_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn invoke_retry(&self) {
        self.invoke_retries.inc();
    }

    pub fn ensure_done(&self, elapsed: Duration) {
        self.ensure_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn gc_done(&self, removed_workers: usize, released: u64) {
        self.gc_passes.inc();
        self.gc_reclaimed.inc_by(removed_workers as u64);
        self.gc_released.inc_by(released);
    }

    pub fn standby_hit(&self) {
        self.standby_claims
            .get_or_create(&OutcomeLabels { outcome: "hit" })
            .inc();
    }

    pub fn standby_miss(&self) {
        self.standby_claims
            .get_or_create(&OutcomeLabels { outcome: "miss" })
            .inc();
    }

    pub fn standby_refill_failed(&self) {
        self.standby_refill_failures.inc();
    }

    pub fn set_standby_ready(&self, n: i64) {
        self.standby_ready.set(n);
    }

    /// Sets the workers gauge from `(state, count)` pairs; states absent are zero.
    pub fn set_workers(&self, counts: &[(&'static str, i64)]) {
        for state in ["RUNNING", "PAUSED", "STOPPED", "UNKNOWN"] {
            let n = counts
                .iter()
                .filter(|(s, _)| *s == state)
                .map(|(_, n)| *n)
                .sum();
            self.workers.get_or_create(&StateLabels { state }).set(n);
        }
    }

    /// The OpenMetrics text of every metric (process metrics refreshed first).
    pub fn encode(&self) -> String {
        self.refresh_process();
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    fn refresh_process(&self) {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status")
            && let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        {
            self.process_rss.set(kb * 1024);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.process_fds.set(dir.count() as i64);
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            && let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r)
        {
            // Fields after the command name: state is #3, utime #14, stime #15 (USER_HZ=100).
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            let total = (ticks(11) + ticks(12)) / 100.0;
            let mut last = self.last_cpu.lock().unwrap_or_else(|e| e.into_inner());
            if total > *last {
                self.process_cpu.inc_by(total - *last);
                *last = total;
            }
        }
    }
}

/// Backend observations land in the `esb_agent_*` backend metrics.
impl Observer for Metrics {
    fn phase(&self, phase: Phase, d: Duration) {
        self.ensure_phase_seconds
            .get_or_create(&PhaseLabels {
                phase: phase.as_str(),
            })
            .observe(d.as_secs_f64());
    }

    fn pull(&self, outcome: PullOutcome) {
        self.pulls
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    fn rollback(&self, op: &'static str) {
        self.rollbacks
            .get_or_create(&OperationLabels { operation: op })
            .inc();
    }

    fn ipam_reservations(&self, n: u64) {
        self.ipam_reservations
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    fn exited_at_start(&self) {
        self.events.ready(ReadyOutcome::Exited);
    }
}
