//! Smooth weighted round robin.
//!
//! nginx's smooth weighted round robin spreads an endpoint's turns across the cycle instead of
//! bunching them: weights `{a: 5, b: 1, c: 1}` give `a a b a c a a`, never `a a a a a b c`. This policy
//! computes the same kind of interleaved cycle once per membership change, by earliest-deadline-first
//! as Envoy's `EdfScheduler` does: the k-th turn of an endpoint with weight `w` is due at
//! `(k + ½) / w`, and the cycle lists turns in due order. A pick is then one relaxed `fetch_add` and an
//! index — O(1), lock-free, allocation-free — whatever the weights.
//!
//! Weights are divided by their greatest common divisor first, so the cycle is as short as the ratios
//! allow. When it would still exceed [`WeightedRoundRobin::MAX_CYCLE`] slots (or 32 per endpoint, if
//! that is more) the weights are scaled down proportionally, each endpoint keeping at least one
//! slot; ratios are then honoured to within one slot per cycle.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::rng::SharedRng;
use super::{eligible, Candidate, Empty, PickContext, Picker, Policy};

/// The smooth weighted round-robin policy.
#[derive(Clone, Debug, Default)]
pub struct WeightedRoundRobin {
    _priv: (),
}

impl WeightedRoundRobin {
    /// The longest cycle built for few endpoints (2¹⁸ slots, 1 MiB).
    pub const MAX_CYCLE: usize = 1 << 18;

    /// Creates the policy.
    pub fn new() -> Self {
        WeightedRoundRobin::default()
    }
}

impl Policy for WeightedRoundRobin {
    fn build(&self, candidates: &[Candidate]) -> Box<dyn Picker> {
        let idx = eligible(candidates);
        if idx.is_empty() {
            return Box::new(Empty);
        }
        let weights: Vec<u64> = idx
            .iter()
            .map(|&i| u64::from(candidates[i as usize].endpoint.weight()).max(1))
            .collect();
        let cap = Self::MAX_CYCLE.max(32 * idx.len());
        let weights = fit(weights, cap as u64);
        let schedule = edf_cycle(&idx, &weights);
        let start = SharedRng::new().below(schedule.len());
        Box::new(WeightedPicker {
            next: AtomicUsize::new(start),
            schedule,
        })
    }
}

impl WeightedRoundRobin {
    /// Weighted round robin whose weights come from the servers' own load reports (ORCA), as
    /// gRFC A58 specifies: see [`ReportWeighted`](super::ReportWeighted).
    pub fn from_load_reports() -> super::ReportWeighted {
        super::ReportWeighted::new()
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Reduces weights by their gcd and, if their sum still exceeds `cap`, scales them to fit.
pub(super) fn fit(mut weights: Vec<u64>, cap: u64) -> Vec<u64> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    weights.iter_mut().for_each(|w| *w /= g);
    let sum: u64 = weights.iter().sum();
    if sum > cap {
        let scale = cap as f64 / sum as f64;
        weights.iter_mut().for_each(|w| *w = ((*w as f64 * scale).round() as u64).max(1));
    }
    weights
}

#[derive(PartialEq)]
struct Turn {
    due: f64,
    slot: usize,
}

impl Eq for Turn {}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        // BinaryHeap is a max-heap: the earliest due (then the lowest slot) must compare greatest.
        other
            .due
            .total_cmp(&self.due)
            .then_with(|| other.slot.cmp(&self.slot))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

pub(super) fn edf_cycle(idx: &[u32], weights: &[u64]) -> Vec<u32> {
    let len: u64 = weights.iter().sum();
    let mut heap: BinaryHeap<Turn> = weights
        .iter()
        .enumerate()
        .map(|(slot, &w)| Turn { due: 0.5 / w as f64, slot })
        .collect();
    let mut taken = vec![0u64; weights.len()];
    let mut out = Vec::with_capacity(len as usize);
    while let Some(turn) = heap.pop() {
        out.push(idx[turn.slot]);
        taken[turn.slot] += 1;
        let w = weights[turn.slot];
        if taken[turn.slot] < w {
            heap.push(Turn {
                due: (taken[turn.slot] as f64 + 0.5) / w as f64,
                slot: turn.slot,
            });
        }
    }
    out
}

#[derive(Debug)]
pub(super) struct WeightedPicker {
    pub(super) next: AtomicUsize,
    pub(super) schedule: Vec<u32>,
}

impl Picker for WeightedPicker {
    #[inline]
    fn pick(&self, _: &PickContext) -> Option<usize> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.schedule[n % self.schedule.len()] as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::endpoint::Endpoint;

    fn weighted(ws: &[u32]) -> Vec<Candidate> {
        ws.iter()
            .enumerate()
            .map(|(i, &w)| Candidate::new(Endpoint::new(([10, 0, 0, i as u8], 80).into()).with_weight(w)))
            .collect()
    }

    #[test]
    fn smooth_like_nginx() {
        let c = weighted(&[5, 1, 1]);
        let cycle = edf_cycle(&[0, 1, 2], &[5, 1, 1]);
        assert_eq!(cycle, vec![0, 0, 0, 1, 2, 0, 0]);
        let p = WeightedRoundRobin::new().build(&c);
        assert_eq!(counts(&*p, 3, 700, &PickContext::default()), vec![500, 100, 100]);
    }

    #[test]
    fn zero_weight_gets_nothing_unless_all_zero() {
        let p = WeightedRoundRobin::new().build(&weighted(&[0, 3]));
        assert_eq!(counts(&*p, 2, 30, &PickContext::default()), vec![0, 30]);
        let p = WeightedRoundRobin::new().build(&weighted(&[0, 0]));
        assert_eq!(counts(&*p, 2, 30, &PickContext::default()), vec![15, 15]);
    }

    #[test]
    fn huge_weights_are_scaled() {
        let w = fit(vec![1_000_000_007, 2_000_000_014, 1], 1000);
        assert!(w.iter().sum::<u64>() <= 1001, "{w:?}");
        assert_eq!(w[2], 1, "every endpoint keeps a slot");
        assert!(w[1].abs_diff(2 * w[0]) <= 1, "ratio kept within a slot: {w:?}");
    }
}
