//! Round robin: each healthy endpoint in turn.
//!
//! Weights are ignored (see [`WeightedRoundRobin`](super::WeightedRoundRobin)). Each picker starts at
//! a random offset, as gRPC's `round_robin` does, so many clients built at once do not all hit the
//! first endpoint first. A pick is one relaxed `fetch_add`.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::rng::SharedRng;
use super::{Candidate, Empty, PickContext, Picker, Policy};

/// The round-robin policy.
#[derive(Clone, Debug, Default)]
pub struct RoundRobin {
    _priv: (),
}

impl RoundRobin {
    /// Creates the policy.
    pub fn new() -> Self {
        RoundRobin::default()
    }
}

impl Policy for RoundRobin {
    fn build(&self, candidates: &[Candidate]) -> Box<dyn Picker> {
        let healthy: Vec<u32> = candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.healthy)
            .map(|(i, _)| i as u32)
            .collect();
        if healthy.is_empty() {
            return Box::new(Empty);
        }
        let start = SharedRng::new().below(healthy.len());
        Box::new(RoundRobinPicker {
            next: AtomicUsize::new(start),
            healthy,
        })
    }
}

#[derive(Debug)]
struct RoundRobinPicker {
    next: AtomicUsize,
    healthy: Vec<u32>,
}

impl Picker for RoundRobinPicker {
    #[inline]
    fn pick(&self, _: &PickContext) -> Option<usize> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.healthy[n % self.healthy.len()] as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn exact_rotation_skips_unhealthy() {
        let mut c = candidates(4);
        c[2].healthy = false;
        let p = RoundRobin::new().build(&c);
        let counts = counts(&*p, 4, 300, &PickContext::default());
        assert_eq!(counts, vec![100, 100, 0, 100]);
    }

    #[test]
    fn none_healthy_picks_none() {
        let mut c = candidates(2);
        c.iter_mut().for_each(|c| c.healthy = false);
        assert_eq!(RoundRobin::new().build(&c).pick(&PickContext::default()), None);
        assert_eq!(RoundRobin::new().build(&[]).pick(&PickContext::default()), None);
    }
}
