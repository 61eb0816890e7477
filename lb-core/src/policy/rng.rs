//! A lock-free random source shared by every caller of one picker.
//!
//! By default each thread draws from its own SplitMix64 state (seeded from OS entropy on first use):
//! no lock, and no cache line shared between threads picking at once. [`SharedRng::from_seed`] makes
//! a picker deterministic instead (tower's `from_rng` convention): one SplitMix64 sequence (Steele,
//! Lea, Flood 2014) advanced with one `fetch_add`, so concurrent draws still never take a lock.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Debug)]
pub(crate) enum SharedRng {
    PerThread,
    Seeded(AtomicU64),
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(rand::random());
}

impl SharedRng {
    pub(crate) fn new() -> Self {
        SharedRng::PerThread
    }

    /// Sets the calling thread's generator state; see [`seed_thread_rng`](super::seed_thread_rng).
    pub(crate) fn seed_thread(seed: u64) {
        STATE.with(|s| s.set(seed));
    }

    pub(crate) fn from_seed(seed: u64) -> Self {
        SharedRng::Seeded(AtomicU64::new(seed))
    }

    #[inline]
    pub(crate) fn next_u64(&self) -> u64 {
        let z = match self {
            SharedRng::PerThread => STATE.with(|s| {
                let z = s.get().wrapping_add(GAMMA);
                s.set(z);
                z
            }),
            SharedRng::Seeded(state) => state.fetch_add(GAMMA, Ordering::Relaxed).wrapping_add(GAMMA),
        };
        mix(z)
    }

    /// A uniform draw from `0..n` (`n > 0`), by Lemire's multiply-shift reduction.
    #[inline]
    pub(crate) fn below(&self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// SplitMix64's finaliser: a good 64-bit mixer, also used to spread hash keys.
#[inline]
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_thread_repeats_its_draws() {
        SharedRng::seed_thread(42);
        let first: Vec<u64> = (0..4).map(|_| SharedRng::new().next_u64()).collect();
        SharedRng::seed_thread(42);
        let again: Vec<u64> = (0..4).map(|_| SharedRng::new().next_u64()).collect();
        assert_eq!(first, again);
    }

    #[test]
    fn below_is_in_range_and_spread() {
        let rng = SharedRng::from_seed(7);
        let mut hits = [0usize; 5];
        for _ in 0..50_000 {
            hits[rng.below(5)] += 1;
        }
        for h in hits {
            assert!((9_000..11_000).contains(&h), "{hits:?}");
        }
    }
}
