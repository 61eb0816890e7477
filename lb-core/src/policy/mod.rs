//! Load-balancing policies: how one endpoint is chosen for one request.
//!
//! A [`Policy`] is configuration. Every time the pool's view of the endpoints changes it calls
//! [`Policy::build`] with the current [`Candidate`]s and publishes the resulting [`Picker`]; request
//! paths then call [`Picker::pick`] on that immutable picker, concurrently, without locks and without
//! allocating. Work that depends only on membership (a weighted schedule, a hash ring, topology tiers)
//! is done once in `build`, never per pick.
//!
//! | policy | where it comes from |
//! |---|---|
//! | [`RoundRobin`] | the classic; gRPC's `round_robin` |
//! | [`WeightedRoundRobin`] | nginx's smooth weighted round robin, scheduled EDF-style as in Envoy |
//! | [`P2c::least_request`] | Mitzenmacher's power of two choices; gRPC A48 `least_request`, Envoy |
//! | [`P2c::peak_ewma`] | Finagle's PeakEWMA, as in linkerd and tower |
//! | [`RingHash`] | Karger's consistent hashing; gRPC A42 `ring_hash`, Envoy |
//! | [`Maglev`] | Google's Maglev lookup table (NSDI 2016); Envoy `MAGLEV` |
//! | [`Topology`] | Envoy priority levels (overprovisioning 1.4, panic threshold 50%) over Kubernetes' node → zone → region keys |
//! | [`SlowStart`] | Envoy's slow start: a newly connected endpoint's share ramps up over a window (wraps any non-hashing policy) |
//! | [`WeightedRoundRobin::from_load_reports`] | gRFC A58 / Envoy `client_side_weighted_round_robin`: weights from the servers' ORCA load reports |
//! | [`P2c::utilization`] | power of two choices by the servers' reported utilization |
//!
//! Policies compose: `Topology::new(P2c::peak_ewma(), caller)` balances by PeakEWMA inside the
//! nearest tier that can take the traffic.

use std::fmt;
use std::sync::Arc;

use tokio::time::Instant;

use crate::endpoint::Endpoint;
use crate::load::Load;

mod hash;
mod maglev;
mod p2c;
mod reported;
pub(crate) mod rng;
mod round_robin;
mod slow_start;
mod topology;
mod weighted;

pub use self::hash::{hash_key, RingHash};
pub use self::maglev::Maglev;
pub use self::p2c::{Cost, P2c};
pub use self::round_robin::RoundRobin;
pub use self::slow_start::{SlowStart, SlowStartError};
pub use self::topology::{Level, Topology, TopologyKeyError};
pub use self::reported::ReportWeighted;
pub use self::weighted::WeightedRoundRobin;

/// Seeds the calling thread's random generator, which every picker built without a seed (round
/// robin's starting offset, [`P2c`] without [`P2c::with_seed`], [`Topology`]'s choice of tier,
/// the weighted policies' starting offsets) and [`Backoff::new`](crate::backoff::Backoff::new)'s
/// jitter draw from.
///
/// By default that generator is seeded from OS entropy on first use, per thread. A simulation or
/// test that must replay exactly runs its pickers on one thread and calls this first
/// (`lb-bench`'s `lb-sim` does, so a fleet simulation is reproducible from its `--seed`).
/// Pickers running on other threads are unaffected.
pub fn seed_thread_rng(seed: u64) {
    rng::SharedRng::seed_thread(seed);
}

/// What a policy sees of one endpoint when it builds a picker.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The endpoint as discovery reports it.
    pub endpoint: Arc<Endpoint>,
    /// Its live load (shared with in-flight requests).
    pub load: Arc<Load>,
    /// False while the endpoint cannot take requests (connecting, ejected, failing health checks).
    /// Unhealthy candidates are never picked; the [`Topology`] policy counts them to size its tiers.
    pub healthy: bool,
    /// When its current connection was established (`None` when unknown): [`SlowStart`] ramps an
    /// endpoint up from then.
    pub ready_since: Option<Instant>,
}

impl Candidate {
    /// A healthy candidate with a fresh load (handy for tests and custom pools).
    pub fn new(endpoint: Endpoint) -> Self {
        Candidate {
            endpoint: Arc::new(endpoint),
            load: Arc::new(Load::default()),
            healthy: true,
            ready_since: None,
        }
    }
}

/// Per-request input to a pick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PickContext {
    /// The request's affinity key for hashing policies (see [`hash_key`]); ignored by others.
    pub hash: Option<u64>,
}

impl PickContext {
    /// A context carrying an affinity key.
    pub fn with_hash(hash: u64) -> Self {
        PickContext { hash: Some(hash) }
    }
}

/// Chooses endpoints from one immutable membership snapshot.
pub trait Picker: Send + Sync + fmt::Debug {
    /// Returns the index, into the candidate slice the picker was built from, of the endpoint to
    /// use; `None` when no candidate is healthy. Must not block or allocate.
    fn pick(&self, ctx: &PickContext) -> Option<usize>;

    /// Like [`Picker::pick`], for a caller that has just read the clock: time-aware policies
    /// (PeakEWMA) use `now` instead of reading it again. The pool passes the same instant to the
    /// request's load guard, so a pick costs one clock read, not two.
    #[inline]
    fn pick_at(&self, ctx: &PickContext, now: Instant) -> Option<usize> {
        let _ = now;
        self.pick(ctx)
    }

    /// The weights the picker was built with, for policies that compute them (weighted round
    /// robin from load reports): the pool exports them as gauges. `None` for the others.
    fn weights(&self) -> Option<Weights<'_>> {
        None
    }
}

/// The weights a picker uses, as [`Picker::weights`] reports them.
#[derive(Clone, Copy, Debug)]
pub struct Weights<'a> {
    /// Indices into the candidates the picker was built from.
    pub indices: &'a [u32],
    /// The weight of each, in the same order.
    pub weights: &'a [f64],
    /// True when the policy fell back to plain round robin (fewer than two usable weights).
    pub fallback: bool,
}

/// Builds [`Picker`]s; the configuration half of a load-balancing policy.
pub trait Policy: Send + Sync + fmt::Debug + 'static {
    /// Builds a picker over `candidates`. Called whenever membership or health changes.
    fn build(&self, candidates: &[Candidate]) -> Box<dyn Picker>;

    /// True when the policy already prefers endpoints near the caller ([`Topology`], or a wrapper
    /// around it). [`Options`](crate::Options) refuses to wrap such a policy in a second
    /// `Topology` for a locality given separately: two nested preferences would each spill on
    /// their own thresholds, which is never what was meant.
    fn is_topology_aware(&self) -> bool {
        false
    }

    /// True when picks follow the request's hash key, for affinity ([`RingHash`], [`Maglev`], or
    /// a wrapper around one). [`SlowStart::new`] refuses such a policy: its re-picks would send a
    /// key elsewhere.
    fn is_hashing(&self) -> bool {
        false
    }

    /// How often the pool rebuilds the picker even when membership has not changed, for policies
    /// whose picker depends on something that moves by itself (weights from load reports,
    /// refreshed every `weight_update_period`). `None` (the default): only on changes.
    fn rebuild_every(&self) -> Option<std::time::Duration> {
        None
    }
}

impl<P: Policy + ?Sized> Policy for Arc<P> {
    fn build(&self, candidates: &[Candidate]) -> Box<dyn Picker> {
        (**self).build(candidates)
    }

    fn is_topology_aware(&self) -> bool {
        (**self).is_topology_aware()
    }

    fn is_hashing(&self) -> bool {
        (**self).is_hashing()
    }

    fn rebuild_every(&self) -> Option<std::time::Duration> {
        (**self).rebuild_every()
    }
}

impl<P: Policy + ?Sized> Policy for Box<P> {
    fn build(&self, candidates: &[Candidate]) -> Box<dyn Picker> {
        (**self).build(candidates)
    }

    fn is_topology_aware(&self) -> bool {
        (**self).is_topology_aware()
    }

    fn is_hashing(&self) -> bool {
        (**self).is_hashing()
    }

    fn rebuild_every(&self) -> Option<std::time::Duration> {
        (**self).rebuild_every()
    }
}

/// The indices of the candidates a weight-aware policy may pick: healthy ones with a non-zero
/// weight, or, when every healthy candidate has weight zero, all healthy ones (a set of zeros means
/// "no preference", not "send nothing").
pub(crate) fn eligible(candidates: &[Candidate]) -> Vec<u32> {
    let weighted: Vec<u32> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.healthy && c.endpoint.weight() > 0)
        .map(|(i, _)| i as u32)
        .collect();
    if !weighted.is_empty() {
        return weighted;
    }
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.healthy)
        .map(|(i, _)| i as u32)
        .collect()
}

/// A picker that never picks: no healthy candidate.
#[derive(Debug)]
pub(crate) struct Empty;

impl Picker for Empty {
    fn pick(&self, _: &PickContext) -> Option<usize> {
        None
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;
    use crate::endpoint::Locality;

    pub(crate) fn candidates(n: usize) -> Vec<Candidate> {
        (0..n).map(|i| Candidate::new(Endpoint::new(([10, 0, (i >> 8) as u8, i as u8], 80).into()))).collect()
    }

    pub(crate) fn with_locality(ep: Endpoint, region: &str, zone: &str, node: &str) -> Endpoint {
        ep.with_locality(Locality::unknown().with_region(region).with_zone(zone).with_node(node))
    }

    pub(crate) fn counts(picker: &dyn Picker, n: usize, draws: usize, ctx: &PickContext) -> Vec<usize> {
        let mut counts = vec![0; n];
        for _ in 0..draws {
            let i = picker.pick(ctx).expect("a healthy candidate exists");
            counts[i] += 1;
        }
        counts
    }
}
