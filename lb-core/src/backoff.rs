//! Exponential backoff with jitter: how long to wait before retrying something that failed.
//!
//! Every retry loop in lb (reconnecting a watch, registering again, re-reading a registry) waits
//! `first`, then twice that, and so on up to `max`; a success [resets](Backoff::reset) it. Each
//! delay is spread by a random factor in `[1 - jitter, 1 + jitter)` (±20 % by default), so a fleet
//! of clients that lost their registry at the same moment does not come back in lockstep — the
//! "thundering herd" that AWS's *Exponential Backoff and Jitter* (Brooker, 2015) and gRPC's
//! connection-backoff spec (which also uses ±20 %) are written against. The jitter is symmetric
//! around the capped base, as gRPC's is, so a delay at the cap lies in `[max × 0.8, max × 1.2)`:
//! clamping it to `max` would put half the fleet back on the same instant.
//!
//! [`Backoff::new`] draws its jitter from a per-thread generator seeded by the OS;
//! [`Backoff::with_seed`] makes the sequence reproducible for tests (tower's `from_rng`
//! convention).
//!
//! ```
//! use std::time::Duration;
//! use lb_core::backoff::Backoff;
//!
//! let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).with_seed(7);
//! let first = backoff.next();
//! assert!(first >= Duration::from_millis(80) && first < Duration::from_millis(120));
//! backoff.reset(); // after a success
//! ```

use std::time::Duration;

use crate::policy::rng::SharedRng;

/// The jitter of [`Backoff::new`]: each delay varies by up to this fraction either way.
pub const DEFAULT_JITTER: f64 = 0.2;

/// Exponential backoff from `first`, doubling up to `max`, with jitter. See the
/// [module docs](self).
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    jitter: f64,
    /// The base of the next delay, before jitter.
    base: Duration,
    attempts: u32,
    rng: SharedRng,
}

impl Backoff {
    /// A backoff waiting `first`, then doubling up to `max` (raised to `first` if smaller), with
    /// ±20 % jitter drawn from OS-seeded randomness.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max: max.max(first),
            jitter: DEFAULT_JITTER,
            base: first,
            attempts: 0,
            rng: SharedRng::new(),
        }
    }

    /// Draws the jitter from a sequence determined by `seed`, so that tests see the same delays
    /// every run.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = SharedRng::from_seed(seed);
        self
    }

    /// Each delay varies by up to this fraction either way (default [`DEFAULT_JITTER`]); clamped
    /// to `0.0..=1.0`, and `0.0` turns jitter off.
    pub fn with_jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_nan() { 0.0 } else { fraction.clamp(0.0, 1.0) };
        self
    }

    /// The delay before the next attempt; each call doubles the base, up to `max`.
    // Not `Iterator::next`: the sequence never ends, and an `Option` would make every retry loop
    // handle a `None` that cannot happen.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Duration {
        let base = self.base;
        self.base = self.base.saturating_mul(2).min(self.max);
        self.attempts = self.attempts.saturating_add(1);
        if self.jitter == 0.0 {
            return base;
        }
        // 53 random bits give a uniform float in [0, 1).
        let unit = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let factor = 1.0 - self.jitter + 2.0 * self.jitter * unit;
        // `mul_f64` panics on overflow; a delay that large is "forever" anyway.
        Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(Duration::MAX)
    }

    /// Starts again from `first` (after a success).
    pub fn reset(&mut self) {
        self.base = self.first;
        self.attempts = 0;
    }

    /// How many delays were handed out since the start or the last [`reset`](Self::reset).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The largest base delay (a jittered delay can exceed it by the jitter fraction).
    pub fn max(&self) -> Duration {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(100 * MS, 1000 * MS).with_jitter(0.0);
        let delays: Vec<Duration> = (0..6).map(|_| b.next()).collect();
        assert_eq!(delays, [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]);
        assert_eq!(b.attempts(), 6);
        b.reset();
        assert_eq!((b.attempts(), b.next()), (0, 100 * MS));
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_spreads() {
        let mut b = Backoff::new(1000 * MS, 1000 * MS);
        let delays: Vec<Duration> = (0..1000).map(|_| b.next()).collect();
        for d in &delays {
            assert!(*d >= 800 * MS && *d < 1200 * MS, "{d:?}");
        }
        // Both halves of the range are used: a fleet at the cap does not retry together.
        let below = delays.iter().filter(|d| **d < 1000 * MS).count();
        assert!((400..600).contains(&below), "{below} of 1000 below the base");
    }

    #[test]
    fn a_seed_repeats_the_sequence_and_another_seed_does_not() {
        let run = |seed| {
            let mut b = Backoff::new(100 * MS, 10_000 * MS).with_seed(seed);
            (0..8).map(|_| b.next()).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn degenerate_inputs_are_safe() {
        let b = Backoff::new(5 * MS, MS);
        assert_eq!(b.max(), 5 * MS, "a cap below the first delay is raised to it");
        let mut zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.next(), Duration::ZERO);
        let mut huge = Backoff::new(Duration::MAX, Duration::MAX).with_jitter(0.0);
        assert_eq!((huge.next(), huge.next()), (Duration::MAX, Duration::MAX), "no overflow");
        let mut huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert!(huge.next() >= Duration::MAX.mul_f64(0.79), "no overflow with jitter either");
        assert!(b.with_jitter(f64::NAN).next() <= 5 * MS);
    }
}
