//! Circuit breaking: bounds on what a target's callers may pile up.
//!
//! A backend that stalls with its connection open takes requests and answers none; callers that
//! keep sending queue more and more onto it, holding memory and tasks. Envoy's circuit breakers
//! (max requests, max pending) and gRPC's A32 (max concurrent requests) bound that; so does
//! [`Limits`]: at most `max_in_flight` requests of a target in flight at once (until the end of
//! their responses), at most `max_in_flight_per_endpoint` on any one endpoint, and at most
//! `max_waiting` requests waiting for an endpoint. A request over a limit fails at once with
//! [`Overloaded`](super::error::Overloaded) — gRPC `RESOURCE_EXHAUSTED`, HTTP 503 — and is counted
//! (`lb_circuit_breaker_overflows_total{target,limit}`); nothing is queued beyond the bounds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The bounds; `None` is unbounded (the default for all three).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests of the target in flight at once, until the end of their responses.
    pub max_in_flight: Option<usize>,
    /// Requests in flight on one endpoint: an endpoint at its bound is not picked.
    pub max_in_flight_per_endpoint: Option<u32>,
    /// Requests waiting for an endpoint (while none can take them).
    pub max_waiting: Option<usize>,
}

/// Which bound a request met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// [`Limits::max_in_flight`].
    InFlight,
    /// [`Limits::max_in_flight_per_endpoint`].
    InFlightPerEndpoint,
    /// [`Limits::max_waiting`].
    Waiting,
}

impl Limit {
    /// The option's name, for messages and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::InFlight => "max_in_flight",
            Limit::InFlightPerEndpoint => "max_in_flight_per_endpoint",
            Limit::Waiting => "max_waiting",
        }
    }
}

/// The counters of one target's [`Limits`], shared by every clone of its balancer.
#[derive(Debug, Default)]
pub struct Gate {
    limits: Limits,
    in_flight: AtomicUsize,
    waiting: AtomicUsize,
}

impl Gate {
    /// Counters for `limits`.
    pub fn new(limits: Limits) -> Arc<Gate> {
        Arc::new(Gate {
            limits,
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
        })
    }

    /// The bounds.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests waiting for an endpoint now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Takes an in-flight slot, or `None` when the target is at its bound.
    pub fn enter(self: &Arc<Self>) -> Option<Permit> {
        take(self, &self.in_flight, self.limits.max_in_flight, Counter::InFlight)
    }

    pub(crate) fn start_waiting(self: &Arc<Self>) -> Option<Permit> {
        take(self, &self.waiting, self.limits.max_waiting, Counter::Waiting)
    }

    pub(crate) fn endpoint_full(&self, in_flight: u32) -> bool {
        // The pick itself is already counted in `in_flight`.
        self.limits.max_in_flight_per_endpoint.is_some_and(|max| in_flight > max)
    }
}

#[derive(Clone, Copy, Debug)]
enum Counter {
    InFlight,
    Waiting,
}

fn take(gate: &Arc<Gate>, counter: &AtomicUsize, max: Option<usize>, which: Counter) -> Option<Permit> {
    let now = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if max.is_some_and(|max| now > max) {
        counter.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    Some(Permit {
        gate: Arc::clone(gate),
        which,
    })
}

/// A slot under one of a [`Gate`]'s bounds, given back when dropped. An in-flight permit rides the
/// request's load guard to the end of its response.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
    which: Counter,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let counter = match self.which {
            Counter::InFlight => &self.gate.in_flight,
            Counter::Waiting => &self.gate.waiting,
        };
        counter.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_bound_and_give_back() {
        let gate = Gate::new(Limits {
            max_in_flight: Some(2),
            ..Limits::default()
        });
        let a = gate.enter().expect("first");
        let b = gate.enter().expect("second");
        assert!(gate.enter().is_none(), "the third is over the bound");
        assert_eq!(gate.in_flight(), 2, "a refusal takes nothing");
        drop(a);
        let _c = gate.enter().expect("room again");
        drop(b);
        assert_eq!(gate.in_flight(), 1);
        let open = Gate::new(Limits::default());
        let many: Vec<_> = (0..1000).map(|_| open.enter().expect("unbounded")).collect();
        assert_eq!(open.in_flight(), 1000);
        drop(many);
        assert_eq!(open.in_flight(), 0);
    }
}
