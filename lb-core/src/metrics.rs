//! Metric names, emitted through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! Every metric carries a `target` label (the pool's [`PoolConfig::target`](crate::PoolConfig)).
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `lb_endpoints` | gauge, label `phase` (`idle`, `connecting`, `ready`, `ejected`, `draining`) | endpoints per phase |
//! | `lb_discovery_updates_total` | counter | discovery updates applied |
//! | `lb_discovery_errors_total` | counter | discovery errors (the last known set was kept) |
//! | `lb_connect_failures_total` | counter | failed connection attempts |
//! | `lb_ejections_total` | counter | outlier ejections |
//! | `lb_no_endpoint_total` | counter | requests failed because no endpoint was available in time |
//! | `lb_circuit_breaker_overflows_total` | counter, label `limit` | requests refused at once by a circuit-breaker bound |
//! | `lb_overload_penalties_total` | counter | endpoints kept out of picks for answering that they are overloaded |
//! | `lb_endpoint_weight` | gauge, label `endpoint` | the weight a load-report policy gives each endpoint |
//! | `lb_weight_fallback_total` | counter | rebuilds where a load-report policy fell back to round robin |
//!
//! Nothing here is on the pick path: picks are counted by the protocol crates only where a response
//! is recorded anyway.

/// Gauge: endpoints per phase.
pub const ENDPOINTS: &str = "lb_endpoints";
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
/// Counter: overload penalties applied.
pub const OVERLOAD_PENALTIES: &str = "lb_overload_penalties_total";
/// Gauge: an endpoint's weight under a load-report policy.
pub const ENDPOINT_WEIGHT: &str = "lb_endpoint_weight";
/// Counter: picker rebuilds where a load-report policy fell back to round robin.
pub const WEIGHT_FALLBACK: &str = "lb_weight_fallback_total";

const PHASES: [&str; 5] = ["idle", "connecting", "ready", "ejected", "draining"];

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

