//! Pre-built series: the handles one target's and one endpoint's requests record into.
//!
//! A `metrics::counter!(name, "target" => target.to_string())` on the request path would build its
//! labels (allocating) and look the series up in the recorder on every call. Here every label set
//! is built once — per target when its pool is spawned, per endpoint when discovery adds it — and
//! the handles kept; a request only picks the handle of its status from an array (registered the
//! first time that status is seen) and records into it. With no recorder installed the handles are
//! no-ops: a branch each.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, SharedString};
use tokio::time::Instant;

use super::status::{self, Status};
use super::{
    ATTEMPTS_STARTED, ATTEMPT_DURATION, CALL_DURATION, ENDPOINT_IN_FLIGHT, ENDPOINT_LATENCY, ENDPOINT_PHASE,
    ENDPOINT_PICKS, PHASES, REROUTES,
};
use crate::load::Outcome;
use crate::pool::EndpointPhase;

const METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

fn key(name: &'static str, labels: &[Label], extra: Option<Label>) -> Key {
    let mut all = labels.to_vec();
    all.extend(extra);
    Key::from_parts(name, all)
}

fn counter(name: &'static str, labels: &[Label]) -> Counter {
    let key = key(name, labels, None);
    metrics::with_recorder(|r| r.register_counter(&key, &METADATA))
}

fn gauge(name: &'static str, labels: &[Label], extra: Option<Label>) -> Gauge {
    let key = key(name, labels, extra);
    metrics::with_recorder(|r| r.register_gauge(&key, &METADATA))
}

/// One histogram per [`Status`], each registered the first time its status is recorded.
struct PerStatus {
    name: &'static str,
    slots: [OnceLock<Histogram>; status::COUNT],
}

impl PerStatus {
    fn new(name: &'static str) -> Self {
        PerStatus {
            name,
            slots: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    #[inline]
    fn get(&self, status: Status, labels: &[Label]) -> &Histogram {
        self.slots[status.index()].get_or_init(|| {
            let key = key(self.name, labels, Some(Label::from_static_parts("grpc.status", status.as_str())));
            metrics::with_recorder(|r| r.register_histogram(&key, &METADATA))
        })
    }
}

/// The per-attempt series of a target, or of one endpoint when endpoint labels are on.
pub(crate) struct AttemptSeries {
    labels: Vec<Label>,
    started: Counter,
    duration: PerStatus,
}

impl AttemptSeries {
    fn new(labels: Vec<Label>) -> Self {
        AttemptSeries {
            started: counter(ATTEMPTS_STARTED, &labels),
            duration: PerStatus::new(ATTEMPT_DURATION),
            labels,
        }
    }
}

/// A target's series: its calls, its attempts (when not per endpoint), its reroutes.
pub(crate) struct TargetSeries {
    /// `grpc.target`, for the A66 series.
    labels: Vec<Label>,
    /// `target`, for lb's own series.
    target: SharedString,
    endpoint_labels: bool,
    attempts: Arc<AttemptSeries>,
    calls: PerStatus,
    reroutes: Counter,
}

impl std::fmt::Debug for TargetSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetSeries")
            .field("target", &self.target)
            .field("endpoint_labels", &self.endpoint_labels)
            .finish()
    }
}

impl TargetSeries {
    /// Registers the series of `target` with the recorder installed now.
    pub(crate) fn new(target: &str, endpoint_labels: bool) -> Self {
        let target = SharedString::from(target.to_string());
        let labels = vec![Label::new("grpc.target", target.clone())];
        TargetSeries {
            attempts: Arc::new(AttemptSeries::new(labels.clone())),
            calls: PerStatus::new(CALL_DURATION),
            reroutes: counter(REROUTES, &[Label::new("target", target.clone())]),
            labels,
            target,
            endpoint_labels,
        }
    }

    /// The series one endpoint's requests record into.
    pub(crate) fn endpoint(self: &Arc<Self>, addr: &str) -> EndpointSeries {
        let endpoint = SharedString::from(addr.to_string());
        let lb_labels = [Label::new("target", self.target.clone()), Label::new("endpoint", endpoint.clone())];
        let attempts = if self.endpoint_labels {
            let mut labels = self.labels.clone();
            labels.push(Label::new("lb.endpoint", endpoint));
            Arc::new(AttemptSeries::new(labels))
        } else {
            Arc::clone(&self.attempts)
        };
        EndpointSeries {
            picks: counter(ENDPOINT_PICKS, &lb_labels),
            attempts,
            target: Arc::clone(self),
        }
    }

    /// The gauges of the pool's view of one endpoint.
    pub(crate) fn gauges(&self, addr: &str) -> EndpointGauges {
        let labels = [Label::new("target", self.target.clone()), Label::new("endpoint", addr.to_string())];
        EndpointGauges {
            in_flight: gauge(ENDPOINT_IN_FLIGHT, &labels, None),
            latency: gauge(ENDPOINT_LATENCY, &labels, None),
            phases: std::array::from_fn(|i| gauge(ENDPOINT_PHASE, &labels, Some(Label::from_static_parts("phase", PHASES[i])))),
            phase: None,
        }
    }

    /// Records the end of a call that the engine itself ended (no endpoint, a failed send, a
    /// caller that gave up before the response).
    pub(crate) fn call_ended(&self, status: Status, duration: Duration) {
        self.calls.get(status, &self.labels).record(duration.as_secs_f64());
    }

    pub(crate) fn reroute(&self) {
        self.reroutes.increment(1);
    }
}

/// The series of one endpoint, kept in its [`Load`](crate::Load) so a pick reaches them through the
/// reference it already holds.
pub(crate) struct EndpointSeries {
    picks: Counter,
    attempts: Arc<AttemptSeries>,
    target: Arc<TargetSeries>,
}

impl EndpointSeries {
    #[inline]
    pub(crate) fn attempt_started(&self) {
        self.picks.increment(1);
        self.attempts.started.increment(1);
    }

    /// Records an attempt's end and, when it ends its call, the call's.
    #[inline]
    pub(crate) fn attempt_ended(&self, record: &Record, outcome: Outcome, start: Instant, latency: Duration) {
        let status = record.status.unwrap_or(Status::of_outcome(outcome));
        self.attempts.duration.get(status, &self.attempts.labels).record(latency.as_secs_f64());
        if let Some(call_start) = record.call_start {
            // The call began with its wait for an endpoint (and any attempts before this one).
            let call = start.saturating_duration_since(call_start) + latency;
            self.target.calls.get(status, &self.target.labels).record(call.as_secs_f64());
        }
    }
}

/// What a [`LoadGuard`](crate::LoadGuard) records when it ends, besides the endpoint's load.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Record {
    /// The pick carried a request: its end is an attempt's end.
    pub(crate) attempt: bool,
    /// The `grpc.status` it ends with; the outcome's word when unset.
    pub(crate) status: Option<Status>,
    /// Set when this attempt ends its call, which began then.
    pub(crate) call_start: Option<Instant>,
}

/// The gauges of the pool's view of one endpoint, set by the pool task.
pub(crate) struct EndpointGauges {
    in_flight: Gauge,
    latency: Gauge,
    phases: [Gauge; 5],
    phase: Option<EndpointPhase>,
}

impl EndpointGauges {
    pub(crate) fn set(&mut self, phase: EndpointPhase, in_flight: u32, latency: Duration) {
        self.in_flight.set(f64::from(in_flight));
        self.latency.set(latency.as_secs_f64());
        if self.phase != Some(phase) {
            if let Some(old) = self.phase {
                self.phases[old as usize].set(0.0);
            }
            self.phases[phase as usize].set(1.0);
            self.phase = Some(phase);
        }
    }

    /// The endpoint is gone: every gauge reads 0 (the facade cannot remove a series; an
    /// exporter's idle timeout can).
    pub(crate) fn clear(&mut self) {
        self.in_flight.set(0.0);
        self.latency.set(0.0);
        if let Some(old) = self.phase.take() {
            self.phases[old as usize].set(0.0);
        }
    }
}
