//! Power of two choices: sample two distinct endpoints at random, send to the less loaded.
//!
//! Mitzenmacher ("The Power of Two Choices in Randomized Load Balancing", 2001) shows that comparing
//! just two random choices brings the maximum load down exponentially compared with one random
//! choice, without the herding that "always pick the least loaded" causes when many clients share
//! stale load information. gRPC's `least_request` (A48) and Envoy's least-request balancer use it;
//! Finagle and linkerd combine it with PeakEWMA.
//!
//! Three load measures are offered:
//! - [`Cost::LeastRequest`]: requests in flight + 1.
//! - [`Cost::PeakEwma`]: decayed peak latency estimate × (requests in flight + 1) — Finagle's cost
//!   function, as in linkerd and tower. It steers away from slow endpoints before they pile up a queue.
//! - [`Cost::Utilization`]: the utilization the server itself last reported (ORCA), × (requests in
//!   flight + 1) — what every client's load adds up to, not just this one's, with this client's
//!   own in-flight count to keep it from herding between reports. An endpoint with no report younger
//!   than [`P2c::UTILIZATION_MAX_AGE`] counts at the mean of those that have one.
//!
//! Either is divided by the endpoint's relative weight (Envoy's weighted least-request, with the
//! "active request bias" at 1), so equal weights change nothing and a weight-200 endpoint is
//! chosen against a weight-100 one until it carries about twice the load.
//!
//! A pick draws two random numbers from a lock-free shared generator, reads two or three atomics
//! per endpoint, and allocates nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::rng::SharedRng;
use super::{eligible, Candidate, Empty, PickContext, Picker, Policy};
use crate::load::Load;

/// The load measure P2C compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cost {
    /// Requests in flight.
    LeastRequest,
    /// Peak-sensitive latency EWMA × (requests in flight + 1).
    PeakEwma,
    /// Server-reported utilization × (requests in flight + 1).
    Utilization,
}

/// The power-of-two-choices policy.
#[derive(Clone, Debug)]
pub struct P2c {
    cost: Cost,
    seed: Option<u64>,
}

impl P2c {
    /// P2C over requests in flight.
    pub fn least_request() -> Self {
        P2c { cost: Cost::LeastRequest, seed: None }
    }

    /// P2C over PeakEWMA cost.
    pub fn peak_ewma() -> Self {
        P2c { cost: Cost::PeakEwma, seed: None }
    }

    /// P2C over the utilization the servers report (ORCA load reports).
    pub fn utilization() -> Self {
        P2c { cost: Cost::Utilization, seed: None }
    }

    /// How old a load report may be for [`P2c::utilization`] to use it (A58's weight expiration).
    pub const UTILIZATION_MAX_AGE: Duration = Duration::from_secs(180);

    /// Makes every picker built by this policy draw from a generator seeded with `seed`
    /// (deterministic tests); by default each picker is seeded from OS entropy.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The load measure.
    pub fn cost(&self) -> Cost {
        self.cost
    }
}

impl Policy for P2c {
    fn build(&self, candidates: &[Candidate]) -> Box<dyn Picker> {
        let idx = eligible(candidates);
        if idx.is_empty() {
            return Box::new(Empty);
        }
        let mean = idx
            .iter()
            .map(|&i| f64::from(candidates[i as usize].endpoint.weight().max(1)))
            .sum::<f64>()
            / idx.len() as f64;
        let slots = idx
            .iter()
            .map(|&i| {
                let c = &candidates[i as usize];
                Slot {
                    load: Arc::clone(&c.load),
                    index: i,
                    inv_weight: mean / f64::from(c.endpoint.weight().max(1)),
                }
            })
            .collect();
        let rng = match self.seed {
            Some(seed) => SharedRng::from_seed(seed),
            None => SharedRng::new(),
        };
        let unreported = match self.cost {
            Cost::Utilization => {
                let now = Instant::now();
                let fresh: Vec<f64> = idx
                    .iter()
                    .filter_map(|&i| candidates[i as usize].load.utilization_at(now, Self::UTILIZATION_MAX_AGE))
                    .collect();
                if fresh.is_empty() {
                    0.0
                } else {
                    fresh.iter().sum::<f64>() / fresh.len() as f64
                }
            }
            _ => 0.0,
        };
        Box::new(P2cPicker { cost: self.cost, slots, rng, unreported })
    }
}

#[derive(Debug)]
struct Slot {
    load: Arc<Load>,
    index: u32,
    inv_weight: f64,
}

#[derive(Debug)]
struct P2cPicker {
    cost: Cost,
    slots: Vec<Slot>,
    rng: SharedRng,
    /// The utilization an endpoint without a fresh report counts at.
    unreported: f64,
}

impl P2cPicker {
    #[inline]
    fn cost_of(&self, slot: &Slot, now: Option<Instant>) -> f64 {
        let raw = match (self.cost, now) {
            (Cost::PeakEwma, Some(now)) => slot.load.peak_ewma_cost(now),
            (Cost::Utilization, Some(now)) => {
                let u = slot.load.utilization_at(now, P2c::UTILIZATION_MAX_AGE).unwrap_or(self.unreported);
                // The small floor keeps idle servers (utilization 0) ordered by in-flight requests.
                (u + 0.01) * (f64::from(slot.load.in_flight()) + 1.0)
            }
            _ => f64::from(slot.load.in_flight()) + 1.0,
        };
        raw * slot.inv_weight
    }
}

impl P2cPicker {
    #[inline]
    fn choose(&self, now: impl FnOnce() -> Instant) -> usize {
        let n = self.slots.len();
        if n == 1 {
            return self.slots[0].index as usize;
        }
        let a = self.rng.below(n);
        let mut b = self.rng.below(n - 1);
        if b >= a {
            b += 1;
        }
        let now = match self.cost {
            Cost::LeastRequest => None,
            Cost::PeakEwma | Cost::Utilization => Some(now()),
        };
        let (sa, sb) = (&self.slots[a], &self.slots[b]);
        let chosen = if self.cost_of(sb, now) < self.cost_of(sa, now) { sb } else { sa };
        chosen.index as usize
    }
}

impl Picker for P2cPicker {
    #[inline]
    fn pick(&self, _: &PickContext) -> Option<usize> {
        Some(self.choose(Instant::now))
    }

    #[inline]
    fn pick_at(&self, _: &PickContext, now: Instant) -> Option<usize> {
        Some(self.choose(|| now))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::load::Outcome;
    use std::time::Duration;

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let c = candidates(2);
        let _busy: Vec<_> = (0..5).map(|_| c[0].load.start()).collect();
        let p = P2c::least_request().with_seed(1).build(&c);
        assert_eq!(counts(&*p, 2, 100, &PickContext::default()), vec![0, 100]);
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_avoids_the_slow_endpoint() {
        let c = candidates(3);
        for (i, ms) in [(0, 5u64), (1, 500), (2, 5)] {
            let mut g = c[i].load.start();
            tokio::time::advance(Duration::from_millis(ms)).await;
            g.set_outcome(Outcome::Success);
        }
        let p = P2c::peak_ewma().with_seed(3).build(&c);
        let counts = counts(&*p, 3, 3000, &PickContext::default());
        assert_eq!(counts[1], 0, "the slow endpoint loses every comparison: {counts:?}");
        assert!(counts[0] > 900 && counts[2] > 900, "{counts:?}");
    }

    #[test]
    fn single_candidate() {
        let mut c = candidates(3);
        c[0].healthy = false;
        c[2].healthy = false;
        let p = P2c::least_request().build(&c);
        assert_eq!(p.pick(&PickContext::default()), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn utilization_steers_to_the_idler_server() {
        use crate::load::LoadReport;
        let c = candidates(2);
        let report = |i: usize, u: f64| {
            let r = LoadReport { cpu_utilization: u, rps_fractional: 10.0, ..Default::default() };
            c[i].load.record_report(&r, Instant::now());
        };
        report(0, 0.9);
        report(1, 0.1);
        let p = P2c::utilization().with_seed(7).build(&c);
        // With two candidates every pick compares both: the idler one always wins.
        assert_eq!(counts(&*p, 2, 100, &PickContext::default()), vec![0, 100]);
        // Its own requests in flight count too: 9 outstanding on the idle one tip the balance.
        let guards: Vec<_> = (0..9).map(|_| c[1].load.start()).collect();
        assert_eq!(p.pick(&PickContext::default()), Some(0));
        drop(guards);
        // Without fresh reports, an endpoint counts at the mean of the reported ones.
        tokio::time::advance(P2c::UTILIZATION_MAX_AGE).await;
        report(0, 0.9);
        let p = P2c::utilization().with_seed(7).build(&c);
        let split = counts(&*p, 2, 1000, &PickContext::default());
        assert!(split[0] > 300 && split[1] > 300, "at the same utilization the two share: {split:?}");
    }
}
