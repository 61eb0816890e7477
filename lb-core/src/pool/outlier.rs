//! Passive outlier detection: eject endpoints whose requests fail, for a growing but bounded time.
//!
//! Two detectors, as in Envoy's outlier detection and gRPC A50:
//! - **consecutive failures**: `consecutive_failures` failures in a row (Envoy `consecutive_5xx`,
//!   default 5) eject at once — the guard that records the failure wakes the pool;
//! - **failure rate**: every `interval`, an endpoint with at least `min_requests` requests in that
//!   interval and a failure fraction of at least `failure_rate` is ejected (Envoy's
//!   `failure_percentage`, whose defaults are 85% over 50 requests).
//!
//! The k-th ejection in a row lasts `base_ejection × 2^(k-1)`, capped at `max_ejection`: a flapping
//! endpoint stays out longer each time, but never forever (tower's balancer evicts for good). Each
//! interval an endpoint spends in rotation without being ejected lowers k by one, as Envoy does.
//!
//! At most `max_ejected_fraction` of the endpoints (but always at least one) are ejected at once, so
//! a fault on the client side — every endpoint "failing" — cannot empty the pool.

use std::time::Duration;

/// Tunables of passive outlier detection.
#[derive(Clone, Debug)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint; 0 disables this detector.
    pub consecutive_failures: u32,
    /// Failure fraction in one interval that ejects an endpoint; values above 1 disable this detector.
    pub failure_rate: f64,
    /// Requests an endpoint needs in one interval before its failure rate is judged.
    pub min_requests: u64,
    /// How often failure rates are evaluated and ejection multipliers decay.
    pub interval: Duration,
    /// The first ejection's length.
    pub base_ejection: Duration,
    /// The longest ejection.
    pub max_ejection: Duration,
    /// The largest fraction of endpoints ejected at once (at least one endpoint may always be).
    pub max_ejected_fraction: f64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            failure_rate: 0.85,
            min_requests: 50,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_fraction: 0.1,
        }
    }
}

impl OutlierConfig {
    /// How long the `k`-th ejection in a row lasts (`k ≥ 1`).
    pub fn ejection_time(&self, k: u32) -> Duration {
        let shift = k.saturating_sub(1).min(31);
        self.base_ejection
            .checked_mul(1u32 << shift)
            .unwrap_or(self.max_ejection)
            .min(self.max_ejection)
    }

    /// How many of `n` endpoints may be ejected at once.
    pub fn max_ejected(&self, n: usize) -> usize {
        let by_fraction = (self.max_ejected_fraction.clamp(0.0, 1.0) * n as f64).floor() as usize;
        by_fraction.max(1).min(n)
    }

    /// Whether an interval's counts call for ejection.
    pub fn rate_exceeded(&self, successes: u64, failures: u64) -> bool {
        let total = successes + failures;
        self.failure_rate <= 1.0 && total >= self.min_requests.max(1) && failures as f64 >= self.failure_rate * total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_grows_and_is_capped() {
        let c = OutlierConfig::default();
        assert_eq!(c.ejection_time(1), Duration::from_secs(30));
        assert_eq!(c.ejection_time(2), Duration::from_secs(60));
        assert_eq!(c.ejection_time(4), Duration::from_secs(240));
        assert_eq!(c.ejection_time(5), Duration::from_secs(300));
        assert_eq!(c.ejection_time(500), Duration::from_secs(300));
    }

    #[test]
    fn at_least_one_may_be_ejected() {
        let c = OutlierConfig::default();
        assert_eq!(c.max_ejected(3), 1);
        assert_eq!(c.max_ejected(40), 4);
        assert_eq!(c.max_ejected(0), 0);
    }

    #[test]
    fn failure_rate_needs_volume() {
        let c = OutlierConfig::default();
        assert!(!c.rate_exceeded(0, 49));
        assert!(c.rate_exceeded(0, 50));
        assert!(c.rate_exceeded(10, 90));
        assert!(!c.rate_exceeded(20, 80));
    }
}
