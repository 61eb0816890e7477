//! Metric names the agent emits through the `metrics` facade (exported by [`crate::http`]).

/// Histogram: seconds one sync took (planning + kernel transaction), label `backend`.
pub const SYNC_DURATION: &str = "lb_agent_sync_duration_seconds";
/// Counter: syncs that wrote to the kernel, label `backend`.
pub const SYNCS: &str = "lb_agent_syncs_total";
/// Gauge: kernel objects the agent owns (map elements, rules or real servers), label `backend`.
pub const OBJECTS: &str = "lb_agent_objects_programmed";
/// Gauge: services configured.
pub const SERVICES: &str = "lb_agent_services";
/// Counter: errors, label `kind` (`sync`, `discovery`, `conntrack`, `skipped_endpoint`, `config`).
pub const ERRORS: &str = "lb_agent_errors_total";

/// Describes the metrics for the exporter.
pub fn describe() {
    metrics::describe_histogram!(SYNC_DURATION, metrics::Unit::Seconds, "Time one sync of the kernel took.");
    metrics::describe_counter!(SYNCS, "Syncs that wrote to the kernel.");
    metrics::describe_gauge!(OBJECTS, "Kernel objects the agent owns.");
    metrics::describe_gauge!(SERVICES, "Services configured.");
    metrics::describe_counter!(ERRORS, "Errors by kind.");
}
