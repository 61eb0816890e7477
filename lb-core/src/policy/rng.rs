//! A lock-free random source shared by every caller of one picker.
//!
//! SplitMix64 (Steele, Lea, Flood 2014) advanced with one `fetch_add`: each draw claims a distinct
//! point of the sequence, so concurrent pickers never take a lock and never see the same number.
//! Seeded from OS entropy by default; [`SharedRng::from_seed`] makes tests deterministic
//! (tower's `from_rng` convention).

use std::sync::atomic::{AtomicU64, Ordering};

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Debug)]
pub(crate) struct SharedRng(AtomicU64);

impl SharedRng {
    pub(crate) fn new() -> Self {
        SharedRng::from_seed(rand::random())
    }

    pub(crate) fn from_seed(seed: u64) -> Self {
        SharedRng(AtomicU64::new(seed))
    }

    #[inline]
    pub(crate) fn next_u64(&self) -> u64 {
        let z = self.0.fetch_add(GAMMA, Ordering::Relaxed).wrapping_add(GAMMA);
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
