//! Prometheus metrics (`prometheus-client`, OpenMetrics text on the admin listener's
//! `/metrics`).
//!
//! Counters on the request path are handles created once per service and backend when a router
//! is built, so recording is an atomic add with no label lookup or allocation. Gauges that
//! describe state (health, admin state, in flight, stick-table entries, bound sessions) are
//! set from the runtime when scraped.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::affinity::Outcome;

/// Labels of a per-service series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The service's name.
    pub service: String,
}

/// Labels of a per-backend series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// The service's name.
    pub service: String,
    /// The backend's id (`-` where no backend answered).
    pub backend: String,
}

/// Labels of the request counter: `class` is `1xx`..`5xx`; `backend` is `-` for stickyd's
/// own answers (400, 502, 503, 504 with no backend response).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The service's name.
    pub service: String,
    /// The backend's id (`-` where no backend answered).
    pub backend: String,
    /// The status class: `1xx` to `5xx`.
    pub class: String,
}

/// Labels of the affinity outcome counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The service's name.
    pub service: String,
    /// The affinity outcome: `new`, `hit`, `redispatch` and so on.
    pub affinity: String,
}

/// Labels of the admin-state gauge: one series per state, 1 for the current one.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The service's name.
    pub service: String,
    /// The backend's id (`-` where no backend answered).
    pub backend: String,
    /// An admin state: `ready`, `drain` or `maint`.
    pub state: String,
}

/// Labels of the reload counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `failed`.
    pub result: String,
}

/// Every metric stickyd exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<ServiceLabels, Histogram>,
    outcomes: Family<OutcomeLabels, Counter>,
    connections: Family<ServiceLabels, Gauge>,
    proxy_header_rejected: Family<ServiceLabels, Counter>,
    health_transitions: Family<BackendLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    redis_errors: Family<ServiceLabels, Counter>,
    connections_queued: Family<ServiceLabels, Counter>,
    header_fields_dropped: Family<ServiceLabels, Counter>,
    open_tunnels: Family<ServiceLabels, Gauge>,
    oversized_keys: Family<ServiceLabels, Counter>,
    /// Set at scrape time from the runtime.
    pub backend_up: Family<BackendLabels, Gauge>,
    /// Set at scrape time from the runtime.
    pub backend_admin_state: Family<StateLabels, Gauge>,
    /// Set at scrape time from the runtime.
    pub backend_in_flight: Family<BackendLabels, Gauge>,
    /// Set at scrape time from the runtime.
    pub backend_sessions: Family<BackendLabels, Gauge>,
    /// Set at scrape time from the runtime.
    pub stick_table_entries: Family<ServiceLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// An empty registry with every metric registered under the `stickyd_` prefix.
    pub fn new() -> Metrics {
        let latency_buckets = || Histogram::new(exponential_buckets(0.000_5, 2.0, 16));
        let metrics = Metrics {
            registry: Mutex::new(Registry::with_prefix("stickyd")),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_buckets),
            outcomes: Family::default(),
            connections: Family::default(),
            proxy_header_rejected: Family::default(),
            health_transitions: Family::default(),
            reloads: Family::default(),
            redis_errors: Family::default(),
            connections_queued: Family::default(),
            header_fields_dropped: Family::default(),
            open_tunnels: Family::default(),
            oversized_keys: Family::default(),
            backend_up: Family::default(),
            backend_admin_state: Family::default(),
            backend_in_flight: Family::default(),
            backend_sessions: Family::default(),
            stick_table_entries: Family::default(),
        };
        {
            let mut registry = metrics.registry.lock().expect("metrics registry lock");
            registry.register(
                "requests",
                "Requests answered, by backend and status class",
                metrics.requests.clone(),
            );
            registry.register(
                "request_duration_seconds",
                "Time from request head to response head, seconds",
                metrics.latency.clone(),
            );
            registry.register(
                "affinity_outcomes",
                "How each request's backend was chosen: hit, new, redispatch, invalid, rebalance",
                metrics.outcomes.clone(),
            );
            registry.register(
                "client_connections",
                "Open client connections",
                metrics.connections.clone(),
            );
            registry.register(
                "proxy_protocol_rejected",
                "Connections closed for a missing or malformed PROXY protocol header",
                metrics.proxy_header_rejected.clone(),
            );
            registry.register(
                "health_transitions",
                "Backend health changes (up or down) from active checks",
                metrics.health_transitions.clone(),
            );
            registry.register(
                "reloads",
                "Config reloads, by result",
                metrics.reloads.clone(),
            );
            registry.register(
                "connections_queued",
                "Connections that waited in the accept queue because the listener was at max_connections",
                metrics.connections_queued.clone(),
            );
            registry.register(
                "header_fields_dropped",
                "Request header fields dropped for a '_' in their name (underscores_in_headers)",
                metrics.header_fields_dropped.clone(),
            );
            registry.register(
                "open_tunnels",
                "Open upgraded connections (WebSocket tunnels); each also counts as a client connection",
                metrics.open_tunnels.clone(),
            );
            registry.register(
                "redis_errors",
                "Redis stick-table calls that failed or timed out (the local table answered)",
                metrics.redis_errors.clone(),
            );
            registry.register(
                "oversized_keys",
                "Session ids and hash keys longer than max_key_bytes, treated as no session",
                metrics.oversized_keys.clone(),
            );
            registry.register(
                "backend_up",
                "1 when the backend is healthy and not ejected",
                metrics.backend_up.clone(),
            );
            registry.register(
                "backend_admin_state",
                "1 for the backend's admin state (ready, drain, maint)",
                metrics.backend_admin_state.clone(),
            );
            registry.register(
                "backend_in_flight",
                "Requests in flight on the backend",
                metrics.backend_in_flight.clone(),
            );
            registry.register(
                "backend_sessions",
                "Live sessions bound to the backend (stick-table entries, or bindings seen within session_idle)",
                metrics.backend_sessions.clone(),
            );
            registry.register(
                "stick_table_entries",
                "Entries in the service's stick table",
                metrics.stick_table_entries.clone(),
            );
        }
        metrics
    }

    /// The handles one service records with, for backends named `backends` in pool order.
    pub fn service(&self, service: &str, backends: &[&str]) -> ServiceMetrics {
        let per_backend = |backend: &str| -> [Counter; 5] {
            ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
                self.requests.get_or_create_owned(&RequestLabels {
                    service: service.to_string(),
                    backend: backend.to_string(),
                    class: class.to_string(),
                })
            })
        };
        let outcome = |outcome: Outcome| {
            self.outcomes.get_or_create_owned(&OutcomeLabels {
                service: service.to_string(),
                affinity: outcome.as_str().to_string(),
            })
        };
        let labels = ServiceLabels {
            service: service.to_string(),
        };
        ServiceMetrics {
            requests: backends
                .iter()
                .map(|backend| per_backend(backend))
                .collect(),
            own_answers: per_backend("-"),
            latency: self.latency.get_or_create_owned(&labels),
            outcomes: OUTCOMES.map(outcome),
            connections: self.connections.get_or_create_owned(&labels),
            proxy_header_rejected: self.proxy_header_rejected.get_or_create_owned(&labels),
            redis_errors: self.redis_errors.get_or_create_owned(&labels),
            connections_queued: self.connections_queued.get_or_create_owned(&labels),
            header_fields_dropped: self.header_fields_dropped.get_or_create_owned(&labels),
            open_tunnels: self.open_tunnels.get_or_create_owned(&labels),
            oversized_keys: self.oversized_keys.get_or_create_owned(&labels),
            health_transitions: backends
                .iter()
                .map(|backend| {
                    self.health_transitions.get_or_create_owned(&BackendLabels {
                        service: service.to_string(),
                        backend: backend.to_string(),
                    })
                })
                .collect(),
        }
    }

    /// Counts one reload attempt that reached the runtime or was refused before it.
    pub fn count_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().expect("metrics registry lock");
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// The affinity outcomes counted, in the order of `ServiceMetrics::outcomes`.
const OUTCOMES: [Outcome; 5] = [
    Outcome::Hit,
    Outcome::New,
    Outcome::Redispatch,
    Outcome::Invalid,
    Outcome::Rebalance,
];

/// The pre-built metric handles of one service.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    /// Per backend index, per status class.
    requests: Vec<[Counter; 5]>,
    /// stickyd's own answers, per status class.
    own_answers: [Counter; 5],
    latency: Histogram,
    /// hit, new, redispatch, invalid, rebalance.
    outcomes: [Counter; 5],
    /// Open client connections of the service.
    pub connections: Gauge,
    /// Connections refused for a bad PROXY header.
    pub proxy_header_rejected: Counter,
    /// Redis stick-table calls that failed or timed out.
    pub redis_errors: Counter,
    /// Connections that waited because the listener was at `max_connections`.
    pub connections_queued: Counter,
    /// Request header fields dropped for a `_` in their name.
    pub header_fields_dropped: Counter,
    /// Open upgraded tunnels of the service.
    pub open_tunnels: Gauge,
    /// Session ids and hash keys longer than `max_key_bytes`, treated as no session.
    pub oversized_keys: Counter,
    /// Per backend index: health flips.
    pub health_transitions: Vec<Counter>,
}

impl ServiceMetrics {
    /// Records one answered request; `outcome` is `None` for a request refused before any
    /// routing (a 400), which has no affinity outcome.
    pub fn record(
        &self,
        backend: Option<usize>,
        status: u16,
        outcome: Option<Outcome>,
        elapsed: Duration,
    ) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        let by_class = backend.map_or(&self.own_answers, |index| &self.requests[index]);
        by_class[class].inc();
        if let Some(outcome) = outcome {
            self.outcomes[Self::outcome_index(outcome)].inc();
        }
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// Responses from the backend at pool index `index` so far, per status class (`1xx` at
    /// 0 to `5xx` at 4). The counters outlive a reload that keeps the backend's id.
    pub fn backend_responses(&self, index: usize) -> [u64; 5] {
        self.requests[index].each_ref().map(Counter::get)
    }

    /// stickyd's own answers so far (no backend response: 400, 502, 503, 504), per status
    /// class as in [`ServiceMetrics::backend_responses`].
    pub fn own_responses(&self) -> [u64; 5] {
        self.own_answers.each_ref().map(Counter::get)
    }

    /// Requests so far per affinity outcome: hit, new, redispatch, invalid, rebalance.
    pub fn outcomes(&self) -> [(Outcome, u64); 5] {
        OUTCOMES.map(|outcome| (outcome, self.outcomes[Self::outcome_index(outcome)].get()))
    }

    fn outcome_index(outcome: Outcome) -> usize {
        match outcome {
            Outcome::Hit => 0,
            Outcome::New => 1,
            Outcome::Redispatch => 2,
            Outcome::Invalid => 3,
            Outcome::Rebalance => 4,
        }
    }
}
