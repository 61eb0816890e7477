//! Metrics, emitted through the [`metrics`](https://docs.rs/metrics) facade: per call and per
//! attempt (gRFC A66's names), per endpoint (the balancer's view), and per pool.
//!
//! The library only emits; the application installs the recorder it already uses (Prometheus,
//! StatsD, OpenTelemetry) **before building a channel or client**: each target's and endpoint's
//! series are registered once, when its pool is spawned and as discovery adds endpoints (a latency
//! histogram the first time its status is recorded), and the request path records into those
//! handles (no label is built and nothing allocated per call).
//! Without a recorder the handles are no-ops. [`describe`] gives the recorder each metric's unit
//! and help text, and [`DURATION_BUCKETS`] are A66's histogram buckets:
//!
//! ```
//! # fn install() -> Result<(), Box<dyn std::error::Error>> {
//! let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
//!     .set_buckets(lb_core::metrics::DURATION_BUCKETS)?
//!     .install_recorder()?; // serve `prometheus.render()` at /metrics
//! lb_core::metrics::describe();
//! # let _ = prometheus; Ok(()) }
//! ```
//!
//! Every metric, in [`CATALOG`]:
//!
//! | name | kind | unit | labels | what |
//! |---|---|---|---|---|
//! | `grpc.client.attempt.started` | counter | attempts | `grpc.target` (+ `lb.endpoint`) | requests sent to an endpoint: one per attempt, so a request rerouted once counts twice |
//! | `grpc.client.attempt.duration` | histogram | seconds | `grpc.target`, `grpc.status` (+ `lb.endpoint`) | from the send to the end of the response body (or the error) |
//! | `grpc.client.call.duration` | histogram | seconds | `grpc.target`, `grpc.status` | from the call's start — waiting for an endpoint included — to its end |
//! | `lb_endpoint_picks_total` | counter | requests | `target`, `endpoint` | requests sent to each endpoint (attempts, always per endpoint) |
//! | `lb_endpoint_in_flight` | gauge | requests | `target`, `endpoint` | requests in flight, as the policy sees them (sampled) |
//! | `lb_endpoint_latency_estimate_seconds` | gauge | seconds | `target`, `endpoint` | the PeakEWMA latency estimate the policy prices the endpoint at (sampled) |
//! | `lb_endpoint_phase` | gauge | 0 / 1 | `target`, `endpoint`, `phase` | 1 for the endpoint's current phase, 0 for the others |
//! | `lb_endpoints` | gauge | endpoints | `target`, `phase` | endpoints per phase (`idle`, `connecting`, `ready`, `ejected`, `draining`) |
//! | `lb_reroutes_total` | counter | requests | `target` | requests re-picked after an endpoint handed them back unsent (or was not ready) |
//! | `lb_no_endpoint_total` | counter | requests | `target` | requests failed because no endpoint could take them in time |
//! | `lb_ejections_total` | counter | ejections | `target` | outlier ejections |
//! | `lb_connect_failures_total` | counter | attempts | `target` | failed connection attempts |
//! | `lb_discovery_updates_total` | counter | updates | `target` | discovery updates applied |
//! | `lb_discovery_errors_total` | counter | errors | `target` | discovery errors (the last known set was kept) |
//! | `lb_circuit_breaker_overflows_total` | counter | requests | `target`, `limit` | requests refused at once by a circuit-breaker bound (`max_in_flight`, `max_in_flight_per_endpoint`, `max_waiting`) |
//! | `lb_retries_total` | counter | requests | `target`, `kind` | retries (`kind="retry"`) and hedges (`kind="hedge"`) sent |
//! | `lb_retry_budget_exhausted_total` | counter | requests | `target` | retries and hedges not sent because the retry budget was spent |
//! | `lb_overload_penalties_total` | counter | penalties | `target` | endpoints kept out of picks for answering that they are overloaded |
//! | `lb_endpoint_weight` | gauge | weight | `target`, `endpoint` | the weight a load-report policy gives each endpoint |
//! | `lb_weight_fallback_total` | counter | rebuilds | `target` | rebuilds where a load-report policy fell back to round robin |
//!
//! `grpc.status` is the status of the face that sent the request: gRPC's code name through
//! `lb_tonic::LbChannel` (`OK`, `UNAVAILABLE`, …, as A66 has it), the HTTP status class through
//! `lb_hyper::LbClient` (`2xx`, `5xx`), and where a face knows no status — the C ABI's reports, a
//! Tower stack built with [`CompleteOnResponse`](crate::balance::CompleteOnResponse) — one of
//! `success`, `failure`, `cancelled`, `unavailable`, `timeout` (see [`Status`]); a C ABI pick that
//! finds no endpoint is counted in `lb_no_endpoint_total` only. The endpoint label
//! of the attempt series is off by default (a histogram per status per endpoint multiplies
//! series); turn it on with [`Options::metrics_endpoint_labels`](crate::Options).
//!
//! Where lb deviates from A66: no `grpc.method` label (lb balances below the method: a target's
//! methods share its endpoints, and labelling by method would need the path on every face);
//! no message-size histograms (`…sent_total_compressed_message_size`, `…rcvd_…`); an attempt is a
//! send to one endpoint, so a request lb re-picks because its endpoint handed it back unsent is
//! two attempts of one call, as gRPC's transparent retries are — but a retry under
//! `lb_tonic::RetryPolicy` is a call of its own, not a second attempt of the first; Prometheus
//! exporters that do not add unit suffixes render `grpc.client.call.duration` as
//! `grpc_client_call_duration` (an OpenTelemetry exporter would add `_seconds`).

mod series;
mod status;

pub(crate) use self::series::{EndpointGauges, EndpointSeries, Record, TargetSeries};
pub use self::status::{Dialect, Status};

/// Counter: attempts started (gRFC A66).
pub const ATTEMPTS_STARTED: &str = "grpc.client.attempt.started";
/// Histogram: attempt duration, seconds (gRFC A66).
pub const ATTEMPT_DURATION: &str = "grpc.client.attempt.duration";
/// Histogram: call duration, seconds (gRFC A66).
pub const CALL_DURATION: &str = "grpc.client.call.duration";
/// Counter: requests sent to each endpoint.
pub const ENDPOINT_PICKS: &str = "lb_endpoint_picks_total";
/// Gauge: requests in flight per endpoint.
pub const ENDPOINT_IN_FLIGHT: &str = "lb_endpoint_in_flight";
/// Gauge: the PeakEWMA latency estimate per endpoint, seconds.
pub const ENDPOINT_LATENCY: &str = "lb_endpoint_latency_estimate_seconds";
/// Gauge: 1 for each endpoint's current phase.
pub const ENDPOINT_PHASE: &str = "lb_endpoint_phase";
/// Gauge: endpoints per phase.
pub const ENDPOINTS: &str = "lb_endpoints";
/// Counter: requests re-picked.
pub const REROUTES: &str = "lb_reroutes_total";
/// Counter: discovery updates applied.
pub const DISCOVERY_UPDATES: &str = "lb_discovery_updates_total";
/// Counter: discovery errors.
pub const DISCOVERY_ERRORS: &str = "lb_discovery_errors_total";
/// Counter: failed connection attempts.
pub const CONNECT_FAILURES: &str = "lb_connect_failures_total";
/// Counter: outlier ejections.
pub const EJECTIONS: &str = "lb_ejections_total";
/// Counter: requests failed for want of an endpoint.
pub const NO_ENDPOINT: &str = "lb_no_endpoint_total";
/// Counter: requests refused by a circuit-breaker bound.
pub const OVERFLOWS: &str = "lb_circuit_breaker_overflows_total";
/// Counter: retries and hedges sent.
pub const RETRIES: &str = "lb_retries_total";
/// Counter: retries and hedges refused by the retry budget.
pub const RETRY_BUDGET_EXHAUSTED: &str = "lb_retry_budget_exhausted_total";
/// Counter: overload penalties applied.
pub const OVERLOAD_PENALTIES: &str = "lb_overload_penalties_total";
/// Gauge: an endpoint's weight under a load-report policy.
pub const ENDPOINT_WEIGHT: &str = "lb_endpoint_weight";
/// Counter: picker rebuilds where a load-report policy fell back to round robin.
pub const WEIGHT_FALLBACK: &str = "lb_weight_fallback_total";

/// A66's latency buckets (seconds), for recorders that need histogram buckets (Prometheus).
pub const DURATION_BUCKETS: &[f64] = &[
    0.0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.01,
    0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8,
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
];

/// What kind of series a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Set to the current value.
    Gauge,
    /// A distribution of samples.
    Histogram,
}

/// One metric lb emits: the rows of the table above.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    /// Its name as recorded (an exporter may rewrite `.` to `_`).
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Its unit.
    pub unit: metrics::Unit,
    /// Its label keys (optional ones included).
    pub labels: &'static [&'static str],
    /// What it counts.
    pub help: &'static str,
}

const fn metric(
    name: &'static str,
    kind: Kind,
    unit: metrics::Unit,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        unit,
        labels,
        help,
    }
}

/// Every metric lb-core emits.
pub const CATALOG: &[Metric] = {
    use metrics::Unit::{Count, Seconds};
    use Kind::{Counter, Gauge, Histogram};
    &[
        metric(ATTEMPTS_STARTED, Counter, Count, &["grpc.target", "lb.endpoint"], "Requests sent to an endpoint (attempts)."),
        metric(ATTEMPT_DURATION, Histogram, Seconds, &["grpc.target", "grpc.status", "lb.endpoint"], "From an attempt's send to the end of its response."),
        metric(CALL_DURATION, Histogram, Seconds, &["grpc.target", "grpc.status"], "From a call's start, waiting for an endpoint included, to its end."),
        metric(ENDPOINT_PICKS, Counter, Count, &["target", "endpoint"], "Requests sent to each endpoint."),
        metric(ENDPOINT_IN_FLIGHT, Gauge, Count, &["target", "endpoint"], "Requests in flight per endpoint (sampled)."),
        metric(ENDPOINT_LATENCY, Gauge, Seconds, &["target", "endpoint"], "PeakEWMA latency estimate per endpoint (sampled)."),
        metric(ENDPOINT_PHASE, Gauge, Count, &["target", "endpoint", "phase"], "1 for each endpoint's current phase."),
        metric(ENDPOINTS, Gauge, Count, &["target", "phase"], "Endpoints per phase."),
        metric(REROUTES, Counter, Count, &["target"], "Requests re-picked after their endpoint handed them back unsent."),
        metric(NO_ENDPOINT, Counter, Count, &["target"], "Requests failed because no endpoint could take them in time."),
        metric(EJECTIONS, Counter, Count, &["target"], "Outlier ejections."),
        metric(CONNECT_FAILURES, Counter, Count, &["target"], "Failed connection attempts."),
        metric(DISCOVERY_UPDATES, Counter, Count, &["target"], "Discovery updates applied."),
        metric(DISCOVERY_ERRORS, Counter, Count, &["target"], "Discovery errors (the last known set was kept)."),
        metric(OVERFLOWS, Counter, Count, &["target", "limit"], "Requests refused at once by a circuit-breaker bound."),
        metric(RETRIES, Counter, Count, &["target", "kind"], "Retries and hedges sent."),
        metric(RETRY_BUDGET_EXHAUSTED, Counter, Count, &["target"], "Retries and hedges not sent because the retry budget was spent."),
        metric(OVERLOAD_PENALTIES, Counter, Count, &["target"], "Endpoints kept out of picks for answering that they are overloaded."),
        metric(ENDPOINT_WEIGHT, Gauge, Count, &["target", "endpoint"], "The weight a load-report policy gives each endpoint."),
        metric(WEIGHT_FALLBACK, Counter, Count, &["target"], "Rebuilds where a load-report policy fell back to round robin."),
    ]
};

/// Gives the installed recorder every metric's unit and help text ([`CATALOG`]). Spawning a pool
/// calls it too, so calling it yourself matters only for series that appear before any pool.
pub fn describe() {
    metrics::with_recorder(|r| {
        for m in CATALOG {
            let name = metrics::KeyName::from_const_str(m.name);
            let help = metrics::SharedString::const_str(m.help);
            match m.kind {
                Kind::Counter => r.describe_counter(name, Some(m.unit), help),
                Kind::Gauge => r.describe_gauge(name, Some(m.unit), help),
                Kind::Histogram => r.describe_histogram(name, Some(m.unit), help),
            }
        }
    });
}

pub(crate) const PHASES: [&str; 5] = ["idle", "connecting", "ready", "ejected", "draining"];

pub(crate) fn discovery_update(target: &str) {
    metrics::counter!(DISCOVERY_UPDATES, "target" => target.to_string()).increment(1);
}

pub(crate) fn discovery_error(target: &str) {
    metrics::counter!(DISCOVERY_ERRORS, "target" => target.to_string()).increment(1);
}

pub(crate) fn connect_failure(target: &str) {
    metrics::counter!(CONNECT_FAILURES, "target" => target.to_string()).increment(1);
}

pub(crate) fn ejection(target: &str) {
    metrics::counter!(EJECTIONS, "target" => target.to_string()).increment(1);
}

pub(crate) fn no_endpoint(target: &str) {
    metrics::counter!(NO_ENDPOINT, "target" => target.to_string()).increment(1);
}

pub(crate) fn endpoints(target: &str, phases: &[usize; 5], drained: usize) {
    for (i, name) in PHASES.iter().enumerate() {
        let mut n = phases[i];
        if i == 4 {
            n += drained;
        }
        metrics::gauge!(ENDPOINTS, "target" => target.to_string(), "phase" => *name).set(n as f64);
    }
}

pub(crate) fn overload_penalty(target: &str) {
    metrics::counter!(OVERLOAD_PENALTIES, "target" => target.to_string()).increment(1);
}

pub(crate) fn weights(target: &str, endpoints: &[(std::net::SocketAddr, f64)], fallback: bool) {
    for (addr, w) in endpoints {
        metrics::gauge!(ENDPOINT_WEIGHT, "target" => target.to_string(), "endpoint" => addr.to_string()).set(*w);
    }
    if fallback {
        metrics::counter!(WEIGHT_FALLBACK, "target" => target.to_string()).increment(1);
    }
}

pub(crate) fn overflow(target: &str, limit: &'static str) {
    metrics::counter!(OVERFLOWS, "target" => target.to_string(), "limit" => limit).increment(1);
}
