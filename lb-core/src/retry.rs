//! What bounds the extra requests a client sends on its own: retry budgets, and the latency
//! percentiles adaptive hedging waits for.
//!
//! When a whole service degrades, every client that retries multiplies the load on it by its
//! attempt count — the retry storm. A [`Budget`] shared by every call of one client stops it:
//!
//! - [`RetryBudget::ratio`] (linkerd's and Finagle's retry budget; the default, 0.2 with 10 per
//!   second over 10 s): retries and hedges may add at most `ratio` of the requests of the last
//!   `ttl`, plus `min_per_second` so that a quiet client can still retry. Built on tower's
//!   [`TpsBudget`]; a ratio is applied as one retry per `⌊1/ratio⌋` requests (0.3 allows one per 3).
//! - [`RetryBudget::throttle`] (gRPC's `retryThrottling`, gRFC A6): a token bucket of
//!   `max_tokens`; each failed attempt takes a token, each other attempt gives back `token_ratio`,
//!   and retries and hedges are allowed only while more than half the tokens are left.
//! - [`RetryBudget::unlimited`]: no bound beyond each call's own attempt count.
//!
//! A refused retry or hedge is not sent: the call ends with the answer it has, and the refusal is
//! counted in `lb_retry_budget_exhausted_total{target}`; sent ones in
//! `lb_retries_total{target,kind}` (`kind` is `retry` or `hedge`). Requests the engine re-sends
//! because they never reached a backend are not retries and take nothing from a budget.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower::retry::budget::{Budget as _, TpsBudget};

/// How many retries and hedges a client may add; see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RetryBudget {
    /// At most `ratio` of the requests of the last `ttl`, plus `min_per_second`.
    Ratio {
        /// Extra requests per request (0.2: one in five).
        ratio: f32,
        /// Extra requests allowed per second whatever the traffic.
        min_per_second: u32,
        /// The window requests are counted over (1–60 s).
        ttl: Duration,
    },
    /// gRFC A6's `retryThrottling`.
    Throttle {
        /// The bucket's size (at most 1000).
        max_tokens: u32,
        /// Tokens an attempt that did not fail gives back (at most three decimals are kept).
        token_ratio: f32,
    },
    /// No budget.
    Unlimited,
}

impl RetryBudget {
    /// `ratio` of the recent requests, plus 10 per second, over 10 s.
    pub const fn ratio(ratio: f32) -> Self {
        RetryBudget::Ratio {
            ratio,
            min_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }

    /// gRFC A6's retry throttling: `max_tokens` tokens, `token_ratio` back per attempt that did
    /// not fail.
    pub const fn throttle(max_tokens: u32, token_ratio: f32) -> Self {
        RetryBudget::Throttle { max_tokens, token_ratio }
    }

    /// No budget: each call's own attempt count is the only bound.
    pub const fn unlimited() -> Self {
        RetryBudget::Unlimited
    }

    /// For a ratio budget, the extra requests allowed per second whatever the traffic.
    pub fn min_per_second(mut self, n: u32) -> Self {
        if let RetryBudget::Ratio { min_per_second, .. } = &mut self {
            *min_per_second = n;
        }
        self
    }

    /// For a ratio budget, the window requests are counted over.
    pub fn ttl(mut self, window: Duration) -> Self {
        if let RetryBudget::Ratio { ttl, .. } = &mut self {
            *ttl = window;
        }
        self
    }

    /// Checks the numbers: a ratio in 0–1000, a window of 1–60 s; 1–1000 tokens and a positive
    /// token ratio.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            RetryBudget::Ratio {
                ratio,
                min_per_second,
                ttl,
            } => {
                if !(0.0..=1000.0).contains(&ratio) {
                    return Err(format!("retry budget ratio must be within 0 and 1000, got {ratio}"));
                }
                if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(60) {
                    return Err(format!("retry budget window must be within 1 s and 60 s, got {ttl:?}"));
                }
                if min_per_second >= i32::MAX as u32 {
                    return Err(format!("retry budget floor of {min_per_second} per second is too large"));
                }
            }
            RetryBudget::Throttle { max_tokens, token_ratio } => {
                if max_tokens == 0 || max_tokens > 1000 {
                    return Err(format!("retry throttling max_tokens must be within 1 and 1000, got {max_tokens}"));
                }
                if !(token_ratio > 0.0 && token_ratio.is_finite()) {
                    return Err(format!("retry throttling token_ratio must be positive, got {token_ratio}"));
                }
            }
            RetryBudget::Unlimited => {}
        }
        Ok(())
    }
}

impl Default for RetryBudget {
    /// linkerd's default: 0.2 of the recent requests, plus 10 per second, over 10 s.
    fn default() -> Self {
        RetryBudget::ratio(0.2)
    }
}

/// What an extra request is, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extra {
    /// A retry after a retryable answer.
    Retry,
    /// A hedge racing an attempt still in flight.
    Hedge,
}

impl Extra {
    fn as_str(self) -> &'static str {
        match self {
            Extra::Retry => "retry",
            Extra::Hedge => "hedge",
        }
    }
}

/// A [`RetryBudget`] in use: the state shared by every call of one client.
pub struct Budget {
    kind: Kind,
    target: Arc<str>,
    retries: AtomicU64,
    hedges: AtomicU64,
    exhausted: AtomicU64,
}

enum Kind {
    Ratio(TpsBudget),
    /// Tokens in thousandths, as A6 keeps them (three decimals of `token_ratio`).
    Throttle {
        milli_tokens: AtomicU32,
        max: u32,
        ratio: u32,
    },
    Unlimited,
}

impl Budget {
    /// Starts a budget for `target` (which labels its metrics); checks `config` first.
    pub fn new(config: RetryBudget, target: &str) -> Result<Arc<Budget>, String> {
        config.validate()?;
        let kind = match config {
            RetryBudget::Ratio {
                ratio,
                min_per_second,
                ttl,
            } => Kind::Ratio(TpsBudget::new(ttl, min_per_second, ratio)),
            RetryBudget::Throttle { max_tokens, token_ratio } => Kind::Throttle {
                milli_tokens: AtomicU32::new(max_tokens * 1000),
                max: max_tokens * 1000,
                ratio: ((token_ratio * 1000.0).round() as u32).max(1),
            },
            RetryBudget::Unlimited => Kind::Unlimited,
        };
        Ok(Arc::new(Budget {
            kind,
            target: Arc::from(target),
            retries: AtomicU64::new(0),
            hedges: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
        }))
    }

    /// A call began: it earns the ratio budget its share.
    pub fn deposit(&self) {
        if let Kind::Ratio(b) = &self.kind {
            b.deposit();
        }
    }

    /// An attempt ended: `failed` if with a retryable (or non-fatal) status or a pushback, which
    /// takes a token from a throttle; any other answer gives `token_ratio` back.
    pub fn record(&self, failed: bool) {
        if let Kind::Throttle { milli_tokens, max, ratio } = &self.kind {
            let _ = milli_tokens.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(if failed { t.saturating_sub(1000) } else { (t + ratio).min(*max) })
            });
        }
    }

    /// Asks for one extra request; `false` means the budget is spent and it must not be sent
    /// (counted in `lb_retry_budget_exhausted_total`).
    pub fn withdraw(&self, extra: Extra) -> bool {
        let allowed = match &self.kind {
            Kind::Ratio(b) => b.withdraw(),
            Kind::Throttle { milli_tokens, max, .. } => milli_tokens.load(Ordering::Relaxed) > max / 2,
            Kind::Unlimited => true,
        };
        if allowed {
            let n = match extra {
                Extra::Retry => &self.retries,
                Extra::Hedge => &self.hedges,
            };
            n.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::metrics::RETRIES, "target" => self.target.to_string(), "kind" => extra.as_str())
                .increment(1);
        } else {
            self.exhausted.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::metrics::RETRY_BUDGET_EXHAUSTED, "target" => self.target.to_string()).increment(1);
            tracing::debug!(target_uri = %self.target, kind = extra.as_str(), "retry budget spent");
        }
        allowed
    }

    /// Retries sent so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Hedges sent so far.
    pub fn hedges(&self) -> u64 {
        self.hedges.load(Ordering::Relaxed)
    }

    /// Retries and hedges refused so far.
    pub fn exhausted(&self) -> u64 {
        self.exhausted.load(Ordering::Relaxed)
    }

    /// A throttle's tokens now (`None` for other budgets).
    pub fn tokens(&self) -> Option<f64> {
        match &self.kind {
            Kind::Throttle { milli_tokens, .. } => Some(f64::from(milli_tokens.load(Ordering::Relaxed)) / 1000.0),
            _ => None,
        }
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Ratio(_) => "ratio",
            Kind::Throttle { .. } => "throttle",
            Kind::Unlimited => "unlimited",
        };
        f.debug_struct("Budget")
            .field("kind", &kind)
            .field("target", &self.target)
            .field("retries", &self.retries())
            .field("hedges", &self.hedges())
            .field("exhausted", &self.exhausted())
            .finish()
    }
}

/// Buckets grow by 10 %: a quantile is read to within 10 %.
const GROWTH: f64 = 1.1;
/// 1 µs to over a minute.
const BUCKETS: usize = 190;
/// How often a reader recomputes the quantile.
const REFRESH: Duration = Duration::from_millis(50);

/// A latency quantile over a sliding window: what adaptive hedging waits for (hedge after the
/// target's p95, say). Two windows of `window` each are kept (the current and the one before), in
/// buckets 10 % apart; recording is one atomic add, and the quantile is recomputed at most every
/// 50 ms by whoever reads it. Until `min_samples` latencies are in the windows there is no quantile.
pub struct LatencyQuantile {
    quantile: f64,
    min_samples: u64,
    window: Duration,
    windows: [Box<[AtomicU32]>; 2],
    current: AtomicUsize,
    state: Mutex<Refresh>,
    /// The cached quantile in nanoseconds plus one (0: none yet).
    cached: AtomicU64,
}

struct Refresh {
    rotated: Instant,
    computed: Option<Instant>,
}

impl LatencyQuantile {
    /// Tracks the `quantile` (0.95 for p95) of the last `window` to `2 × window` of latencies.
    pub fn new(quantile: f64, window: Duration, min_samples: u64) -> Self {
        let buckets = || (0..BUCKETS).map(|_| AtomicU32::new(0)).collect::<Vec<_>>().into_boxed_slice();
        LatencyQuantile {
            quantile: quantile.clamp(0.0, 1.0),
            min_samples: min_samples.max(1),
            window,
            windows: [buckets(), buckets()],
            current: AtomicUsize::new(0),
            state: Mutex::new(Refresh {
                rotated: Instant::now(),
                computed: None,
            }),
            cached: AtomicU64::new(0),
        }
    }

    /// Records one latency.
    pub fn record(&self, latency: Duration) {
        let i = bucket(latency);
        let w = self.current.load(Ordering::Relaxed) & 1;
        self.windows[w][i].fetch_add(1, Ordering::Relaxed);
    }

    /// The quantile now, or `None` while fewer than `min_samples` latencies are recorded.
    pub fn get(&self) -> Option<Duration> {
        let now = Instant::now();
        if let Ok(mut state) = self.state.try_lock() {
            if state.computed.is_none_or(|c| now.saturating_duration_since(c) >= REFRESH) {
                if now.saturating_duration_since(state.rotated) >= self.window {
                    // The older window is cleared and becomes the current one.
                    let old = (self.current.load(Ordering::Relaxed) + 1) & 1;
                    for b in self.windows[old].iter() {
                        b.store(0, Ordering::Relaxed);
                    }
                    self.current.store(old, Ordering::Relaxed);
                    state.rotated = now;
                }
                state.computed = Some(now);
                self.cached.store(self.compute().map_or(0, |d| d.as_nanos() as u64 + 1), Ordering::Relaxed);
            }
        }
        match self.cached.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n - 1)),
        }
    }

    fn compute(&self) -> Option<Duration> {
        let counts: Vec<u64> = (0..BUCKETS)
            .map(|i| u64::from(self.windows[0][i].load(Ordering::Relaxed)) + u64::from(self.windows[1][i].load(Ordering::Relaxed)))
            .collect();
        let total: u64 = counts.iter().sum();
        if total < self.min_samples {
            return None;
        }
        let rank = ((self.quantile * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(upper_bound(i));
            }
        }
        Some(upper_bound(BUCKETS - 1))
    }
}

impl fmt::Debug for LatencyQuantile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencyQuantile")
            .field("quantile", &self.quantile)
            .field("window", &self.window)
            .field("min_samples", &self.min_samples)
            .finish()
    }
}

fn bucket(latency: Duration) -> usize {
    let micros = latency.as_secs_f64() * 1e6;
    if micros <= 1.0 {
        return 0;
    }
    ((micros.ln() / GROWTH.ln()).ceil() as usize).min(BUCKETS - 1)
}

/// The largest latency bucket `i` holds.
fn upper_bound(i: usize) -> Duration {
    Duration::from_secs_f64(GROWTH.powi(i as i32) / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(config: RetryBudget) -> Arc<Budget> {
        Budget::new(config, "test").expect("valid budget")
    }

    #[tokio::test(start_paused = true)]
    async fn a_ratio_budget_allows_its_share_plus_the_floor() {
        // No floor: only the ratio counts. 0.2 of 100 requests is 20 retries.
        let b = budget(RetryBudget::ratio(0.2).min_per_second(0));
        for _ in 0..100 {
            b.deposit();
        }
        let allowed = (0..100).filter(|_| b.withdraw(Extra::Retry)).count();
        assert_eq!(allowed, 20);
        assert_eq!((b.retries(), b.exhausted()), (20, 80));
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_lets_a_quiet_client_retry() {
        // 10 per second over a 10 s window: 100 retries with no traffic at all, then none.
        let b = budget(RetryBudget::ratio(0.2));
        let allowed = (0..150).filter(|_| b.withdraw(Extra::Retry)).count();
        assert_eq!(allowed, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_window() {
        let b = budget(RetryBudget::ratio(0.5).min_per_second(0).ttl(Duration::from_secs(10)));
        for _ in 0..10 {
            b.deposit();
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!b.withdraw(Extra::Retry), "requests older than the window earn nothing");
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!((0..10).filter(|_| b.withdraw(Extra::Hedge)).count(), 5);
        assert_eq!(b.hedges(), 5);
    }

    #[test]
    fn throttle_tokens_follow_a6() {
        // A6's example numbers: 10 tokens, 0.1 back per success; retries stop at or below 5.
        let b = budget(RetryBudget::throttle(10, 0.1));
        assert_eq!(b.tokens(), Some(10.0));
        for _ in 0..4 {
            b.record(true);
        }
        assert_eq!(b.tokens(), Some(6.0));
        assert!(b.withdraw(Extra::Retry), "6 > 5");
        assert_eq!(b.tokens(), Some(6.0), "a retry itself takes no token");
        b.record(true);
        assert!(!b.withdraw(Extra::Retry), "5 is not above half of 10");
        b.record(false);
        assert_eq!(b.tokens(), Some(5.1));
        assert!(b.withdraw(Extra::Retry), "5.1 > 5");
        for _ in 0..20 {
            b.record(true);
        }
        assert_eq!(b.tokens(), Some(0.0), "never below zero");
        for _ in 0..200 {
            b.record(false);
        }
        assert_eq!(b.tokens(), Some(10.0), "never above max_tokens");
    }

    #[test]
    fn bad_numbers_are_refused() {
        assert!(RetryBudget::ratio(-0.1).validate().is_err());
        assert!(RetryBudget::ratio(0.2).ttl(Duration::from_millis(10)).validate().is_err());
        assert!(RetryBudget::throttle(0, 0.1).validate().is_err());
        assert!(RetryBudget::throttle(1001, 0.1).validate().is_err());
        assert!(RetryBudget::throttle(10, 0.0).validate().is_err());
        assert!(RetryBudget::throttle(10, f32::NAN).validate().is_err());
        assert!(Budget::new(RetryBudget::ratio(2000.0), "t").is_err());
        assert!(RetryBudget::default().validate().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_quantile_tracks_recent_latencies() {
        let q = LatencyQuantile::new(0.95, Duration::from_secs(10), 100);
        for _ in 0..99 {
            q.record(Duration::from_millis(1));
        }
        assert_eq!(q.get(), None, "fewer than min_samples");
        tokio::time::advance(REFRESH).await;
        // 99 fast and 5 slow: the 99th of 104 (p95's rank) is fast; one more slow, the 100th of 105 is slow.
        q.record(Duration::from_millis(200));
        for _ in 0..4 {
            q.record(Duration::from_millis(200));
        }
        let p95 = q.get().expect("enough samples");
        assert!(p95 >= Duration::from_millis(1) && p95 < Duration::from_micros(1100), "{p95:?}");
        tokio::time::advance(REFRESH).await;
        q.record(Duration::from_millis(200));
        let p95 = q.get().expect("enough samples");
        assert!(p95 >= Duration::from_millis(200) && p95 < Duration::from_millis(220), "{p95:?}");
        // Two windows later the old latencies are gone.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(q.get().is_some(), "one window back is still counted");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(q.get(), None, "both windows rotated out");
    }

    #[test]
    fn buckets_bound_their_latencies() {
        for micros in [1u64, 2, 10, 999, 1000, 12_345, 200_000, 59_000_000] {
            let d = Duration::from_micros(micros);
            let i = bucket(d);
            assert!(upper_bound(i) >= d - Duration::from_nanos(1), "{d:?} above its bucket {i}");
            if i > 0 {
                assert!(upper_bound(i - 1) < d, "{d:?} belongs in a lower bucket than {i}");
            }
        }
    }
}
