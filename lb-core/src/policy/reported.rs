//! Weighted round robin with weights from the servers' own load reports (gRFC A58).
//!
//! Each server reports its utilization, queries per second and errors per second (ORCA's
//! `OrcaLoadReport`, in a trailer of every response); [`Load`](crate::Load) keeps the last report
//! of each endpoint. Every `weight_update_period` the pool rebuilds the picker, and this policy
//! computes each endpoint's weight as A58 does:
//!
//! ```text
//! weight = qps / (utilization + eps / qps × error_utilization_penalty)
//! ```
//!
//! with `utilization` the application's figure when reported, else the CPU's. A weight is used only
//! once the endpoint has been reporting non-empty load for `blackout_period` (a fresh endpoint's
//! first reports come from a cold server), and not when its last report is older than
//! `weight_expiration_period` (the blackout then starts again). Endpoints without a usable weight
//! get the mean of the usable ones; with fewer than two usable weights the policy is plain round
//! robin. The defaults are A58's: blackout 10 s, expiration 3 min, update 1 s, penalty 1.0.
//!
//! Picks use the same earliest-deadline-first cycle as [`WeightedRoundRobin`](super::WeightedRoundRobin)
//! (one relaxed `fetch_add` and an index, no allocation); weights become integers out of
//! [`ReportWeighted::RESOLUTION`], so ratios hold to within 1 %.

use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tokio::time::Instant;

use super::rng::SharedRng;
use super::weighted::{edf_cycle, fit, WeightedPicker};
use super::{Candidate, Empty, PickContext, Picker, Policy, Weights};
use crate::load::Load;

/// The A58 weighted round-robin policy; see the [module docs](self). Built with
/// [`WeightedRoundRobin::from_load_reports`](super::WeightedRoundRobin::from_load_reports).
#[derive(Clone, Debug)]
pub struct ReportWeighted {
    blackout: Duration,
    expiration: Duration,
    update: Duration,
    penalty: f64,
}

impl Default for ReportWeighted {
    fn default() -> Self {
        ReportWeighted::new()
    }
}

impl ReportWeighted {
    /// The integer weight of the heaviest endpoint in a cycle.
    pub const RESOLUTION: u64 = 100;

    /// The policy with A58's defaults.
    pub fn new() -> Self {
        ReportWeighted {
            blackout: Duration::from_secs(10),
            expiration: Duration::from_secs(180),
            update: Duration::from_secs(1),
            penalty: 1.0,
        }
    }

    /// How long an endpoint must have reported non-empty load before its weight is used
    /// (default 10 s).
    pub fn blackout_period(mut self, period: Duration) -> Self {
        self.blackout = period;
        self
    }

    /// A weight whose last report is older than this is not used (default 3 min).
    pub fn weight_expiration_period(mut self, period: Duration) -> Self {
        self.expiration = period;
        self
    }

    /// How often weights are recomputed (default 1 s; at least 100 ms).
    pub fn weight_update_period(mut self, period: Duration) -> Self {
        self.update = period.max(Duration::from_millis(100));
        self
    }

    /// How much a server's errors count against it: `eps / qps × penalty` is added to its
    /// utilization (default 1.0; negative values are taken as 0).
    pub fn error_utilization_penalty(mut self, penalty: f64) -> Self {
        self.penalty = if penalty.is_finite() { penalty.max(0.0) } else { 1.0 };
        self
    }

    /// The weight of one endpoint at `now` (0 when it has none usable), per A58.
    pub fn weight_of(&self, load: &Load, now: Instant) -> f64 {
        let Some(r) = load.reported() else { return 0.0 };
        if now.saturating_duration_since(r.at) >= self.expiration {
            load.reset_non_empty_since();
            return 0.0;
        }
        let Some(since) = r.non_empty_since else { return 0.0 };
        if now.saturating_duration_since(since) < self.blackout {
            return 0.0;
        }
        if r.qps <= 0.0 || r.utilization <= 0.0 {
            return 0.0;
        }
        let w = r.qps / (r.utilization + r.eps / r.qps * self.penalty);
        if w.is_finite() {
            w
        } else {
            0.0
        }
    }
}

impl Policy for ReportWeighted {
    fn build(&self, candidates: &[Candidate]) -> Box<dyn Picker> {
        let idx: Vec<u32> = candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.healthy)
            .map(|(i, _)| i as u32)
            .collect();
        if idx.is_empty() {
            return Box::new(Empty);
        }
        let now = Instant::now();
        let mut weights: Vec<f64> = idx.iter().map(|&i| self.weight_of(&candidates[i as usize].load, now)).collect();
        let usable: Vec<f64> = weights.iter().copied().filter(|w| *w > 0.0).collect();
        let fallback = usable.len() < 2;
        if fallback {
            weights.iter_mut().for_each(|w| *w = 1.0);
        } else {
            let mean = usable.iter().sum::<f64>() / usable.len() as f64;
            weights.iter_mut().filter(|w| **w <= 0.0).for_each(|w| *w = mean);
        }
        let max = weights.iter().copied().fold(0.0, f64::max);
        let ints: Vec<u64> = weights
            .iter()
            .map(|w| ((w / max * Self::RESOLUTION as f64).round() as u64).max(1))
            .collect();
        let cap = super::WeightedRoundRobin::MAX_CYCLE.max(32 * idx.len());
        let schedule = edf_cycle(&idx, &fit(ints, cap as u64));
        let start = SharedRng::new().below(schedule.len());
        Box::new(ReportPicker {
            inner: WeightedPicker {
                next: AtomicUsize::new(start),
                schedule,
            },
            indices: idx,
            weights,
            fallback,
        })
    }

    fn rebuild_every(&self) -> Option<Duration> {
        Some(self.update)
    }
}

#[derive(Debug)]
struct ReportPicker {
    inner: WeightedPicker,
    indices: Vec<u32>,
    weights: Vec<f64>,
    fallback: bool,
}

impl Picker for ReportPicker {
    #[inline]
    fn pick(&self, ctx: &PickContext) -> Option<usize> {
        self.inner.pick(ctx)
    }

    fn weights(&self) -> Option<Weights<'_>> {
        Some(Weights {
            indices: &self.indices,
            weights: &self.weights,
            fallback: self.fallback,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::load::LoadReport;

    fn report(load: &Load, utilization: f64, qps: f64, eps: f64) {
        let r = LoadReport {
            application_utilization: utilization,
            rps_fractional: qps,
            eps,
            ..Default::default()
        };
        load.record_report(&r, Instant::now());
    }

    fn shares(p: &dyn Picker, n: usize) -> Vec<usize> {
        counts(p, n, 1000 * n, &PickContext::default())
    }

    #[tokio::test(start_paused = true)]
    async fn weights_follow_a58_after_the_blackout() {
        let c = candidates(3);
        let policy = ReportWeighted::new();
        // Same qps, utilization 0.8 / 0.4 / 0.2: weights 1 : 2 : 4.
        for (cand, u) in c.iter().zip([0.8, 0.4, 0.2]) {
            report(&cand.load, u, 100.0, 0.0);
        }
        let p = policy.build(&c);
        assert!(p.weights().expect("reports weights").fallback, "inside the blackout: round robin");
        assert_eq!(shares(&*p, 3), vec![1000, 1000, 1000]);

        tokio::time::advance(Duration::from_secs(10)).await;
        for (cand, u) in c.iter().zip([0.8, 0.4, 0.2]) {
            report(&cand.load, u, 100.0, 0.0);
        }
        let p = policy.build(&c);
        let w = p.weights().expect("weights");
        assert!(!w.fallback);
        assert_eq!(w.weights, &[125.0, 250.0, 500.0]);
        let s = shares(&*p, 3);
        assert!(s[0].abs_diff(3000 / 7) <= 15 && s[1].abs_diff(6000 / 7) <= 15 && s[2].abs_diff(12000 / 7) <= 15, "{s:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn errors_penalize_and_unknown_endpoints_get_the_mean() {
        let c = candidates(3);
        let policy = ReportWeighted::new().blackout_period(Duration::ZERO).error_utilization_penalty(1.0);
        report(&c[0].load, 0.5, 100.0, 0.0); // 200
        report(&c[1].load, 0.5, 100.0, 50.0); // 100 / (0.5 + 0.5) = 100
        let p = policy.build(&c);
        let w = p.weights().expect("weights");
        assert_eq!(w.weights, &[200.0, 100.0, 150.0], "the third has no report: the mean");
        let p = ReportWeighted::new().blackout_period(Duration::ZERO).error_utilization_penalty(0.0).build(&c);
        assert_eq!(p.weights().expect("weights").weights[1], 200.0, "no penalty: errors do not count");
    }

    #[tokio::test(start_paused = true)]
    async fn weights_expire_and_the_blackout_starts_again() {
        let c = candidates(2);
        let policy = ReportWeighted::new()
            .blackout_period(Duration::from_secs(5))
            .weight_expiration_period(Duration::from_secs(60));
        report(&c[0].load, 0.5, 100.0, 0.0);
        report(&c[1].load, 0.25, 100.0, 0.0);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!policy.build(&c).weights().expect("weights").fallback);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(policy.build(&c).weights().expect("weights").fallback, "both expired: round robin");
        // A new report restarts the blackout rather than reviving the old start.
        report(&c[0].load, 0.5, 100.0, 0.0);
        report(&c[1].load, 0.25, 100.0, 0.0);
        assert!(policy.build(&c).weights().expect("weights").fallback, "blackout again");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!policy.build(&c).weights().expect("weights").fallback);
    }

    #[tokio::test(start_paused = true)]
    async fn fewer_than_two_usable_weights_is_round_robin() {
        let c = candidates(3);
        report(&c[0].load, 0.5, 100.0, 0.0);
        report(&c[1].load, 0.0, 100.0, 0.0); // no utilization: unusable
        let p = ReportWeighted::new().blackout_period(Duration::ZERO).build(&c);
        assert!(p.weights().expect("weights").fallback);
        assert_eq!(shares(&*p, 3), vec![1000, 1000, 1000]);
        assert_eq!(ReportWeighted::new().rebuild_every(), Some(Duration::from_secs(1)));
    }
}
