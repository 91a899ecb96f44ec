//! Metrics of the event-driven worker state and of the ready wait: daemon events received by
//! kind, how long after the daemon's own timestamp they reached the worker table,
//! resubscriptions of the event stream, and how Ensure/Resume's wait for the worker's port
//! ended.

use esb_runtime::WorkerEventKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// How a ready wait ended (metric label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyOutcome {
    /// The worker accepted a TCP connection.
    Ready,
    /// It did not within `AGENT_ENSURE_READY_TIMEOUT`; returned anyway.
    Timeout,
    /// Its process exited during the wait.
    Exited,
}

impl ReadyOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Timeout => "timeout",
            Self::Exited => "exited",
        }
    }
}

/// Registered into the server's registry by [`super::Metrics::new`].
#[derive(Debug, Clone)]
pub struct EventMetrics {
    events: Family<KindLabels, Counter>,
    lag: Histogram,
    resubscriptions: Counter,
    ready: Family<OutcomeLabels, Counter>,
}

impl Default for EventMetrics {
    fn default() -> Self {
        Self {
            events: Family::default(),
            // 100 µs … 3.3 s.
            lag: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            resubscriptions: Counter::default(),
            ready: Family::default(),
        }
    }
}

impl EventMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "esb_agent_worker_events",
            "Daemon events about managed workers applied to the worker table, by kind (exited, oom, paused, resumed, deleted)",
            m.events.clone(),
        );
        registry.register(
            "esb_agent_worker_event_lag_seconds",
            "From the daemon's timestamp of a worker event to its application to the worker table",
            m.lag.clone(),
        );
        registry.register(
            "esb_agent_event_resubscriptions",
            "Times the daemon event stream broke and was subscribed again",
            m.resubscriptions.clone(),
        );
        registry.register(
            "esb_agent_ensure_ready",
            "Ensure/Resume waits for the worker's port, by outcome (ready, timeout, exited)",
            m.ready.clone(),
        );
        m
    }

    pub fn event(&self, kind: WorkerEventKind) {
        self.events
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// `lag`: the daemon's event time to now (one host, one clock).
    pub fn lag(&self, lag: std::time::Duration) {
        self.lag.observe(lag.as_secs_f64());
    }

    pub fn resubscribed(&self) {
        self.resubscriptions.inc();
    }

    pub fn ready(&self, outcome: ReadyOutcome) {
        self.ready
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }
}
