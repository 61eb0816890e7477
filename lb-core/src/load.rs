//! Per-endpoint load: in-flight requests, a peak-sensitive latency EWMA, and outcome counters.
//!
//! Every request holds a [`LoadGuard`] from the moment it is picked until the protocol crate drops it
//! — at the end of the response *stream*, not at response headers, as linkerd's `hyper-balance` does —
//! so a long server stream keeps counting as load for as long as it runs.
//!
//! The latency estimate is Finagle's PeakEWMA, as in tower's `load::peak_ewma`: a sample above the
//! estimate replaces it at once (peak), a lower one is blended in with weight `1 - e^(-Δt/τ)`, and
//! between samples the estimate decays toward zero with the same time constant so an endpoint that
//! was once slow, and has since been avoided, is probed again. Readers never write: the decayed value
//! is computed from two atomics, so the request path takes no lock.
//!
//! Failures are recorded with the larger of their latency and the current estimate, so an endpoint
//! that fails fast never looks faster than it was (the "failure black hole"); ejecting it is the outlier
//! detector's job.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::{EndpointSeries, Record, Status};

/// How a request ended, as recorded by [`LoadGuard`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The backend answered and the answer was not a failure.
    Success,
    /// The backend failed the request (connection error, 5xx, gRPC `UNAVAILABLE`, …).
    Failure,
    /// The caller gave up (dropped) before the end: counts neither way.
    Cancelled,
}

/// Tuning for [`Load`]'s latency estimate.
#[derive(Clone, Copy, Debug)]
pub struct EwmaConfig {
    /// The estimate used before the first measurement. linkerd and tower use 30 ms; an endpoint
    /// starts as "moderately expensive" and earns traffic by answering quickly.
    pub default_rtt: Duration,
    /// The decay time constant τ (linkerd: 10 s).
    pub decay: Duration,
}

impl Default for EwmaConfig {
    fn default() -> Self {
        EwmaConfig {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
        }
    }
}

/// The live load of one endpoint, shared by the pool, the pickers and every in-flight guard.
///
/// It survives discovery resets: an endpoint whose id is unchanged keeps its `Load`.
pub struct Load {
    in_flight: AtomicU32,
    /// PeakEWMA estimate, `f64` nanoseconds stored as bits.
    rtt_ns: AtomicU64,
    /// When `rtt_ns` was last written, nanoseconds since `epoch`.
    rtt_at: AtomicU64,
    epoch: Instant,
    decay_ns: f64,
    // Outcome counters, read (and reset) by the outlier detector.
    successes: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU32,
    consecutive_threshold: u32,
    alarm: Option<Arc<Notify>>,
    series: Option<EndpointSeries>,
}

impl fmt::Debug for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Load")
            .field("in_flight", &self.in_flight())
            .field("rtt", &self.rtt_estimate())
            .field("consecutive_failures", &self.consecutive_failures())
            .finish()
    }
}

impl Default for Load {
    fn default() -> Self {
        Load::new(EwmaConfig::default())
    }
}

impl Load {
    /// A fresh load with no history.
    pub fn new(config: EwmaConfig) -> Self {
        Load {
            in_flight: AtomicU32::new(0),
            rtt_ns: AtomicU64::new((config.default_rtt.as_nanos() as f64).to_bits()),
            rtt_at: AtomicU64::new(0),
            epoch: Instant::now(),
            decay_ns: (config.decay.as_nanos() as f64).max(1.0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            consecutive_threshold: u32::MAX,
            alarm: None,
            series: None,
        }
    }

    /// Records this endpoint's requests into `series` (see [`crate::metrics`]).
    pub(crate) fn with_series(mut self, series: EndpointSeries) -> Self {
        self.series = Some(series);
        self
    }

    /// Wakes `alarm` whenever the consecutive-failure count reaches `threshold`, so the pool can
    /// eject at once instead of at its next periodic sweep.
    pub(crate) fn with_alarm(mut self, threshold: u32, alarm: Arc<Notify>) -> Self {
        self.consecutive_threshold = threshold.max(1);
        self.alarm = Some(alarm);
        self
    }

    /// Starts tracking one request. The returned guard records latency and outcome when dropped.
    pub fn start(self: &Arc<Self>) -> LoadGuard {
        self.start_at(Instant::now())
    }

    /// Like [`Load::start`], with a start time the caller has just read.
    #[inline]
    pub fn start_at(self: &Arc<Self>, now: Instant) -> LoadGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        LoadGuard {
            load: Arc::clone(self),
            start: now,
            outcome: Outcome::Cancelled,
            latency: None,
            record: Record::default(),
        }
    }

    /// Requests currently in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The latency estimate, decayed to now.
    pub fn rtt_estimate(&self) -> Duration {
        Duration::from_nanos(self.decayed_rtt_ns(self.now_ns()) as u64)
    }

    /// PeakEWMA cost: decayed latency estimate × (in-flight + 1), in nanoseconds.
    #[inline]
    pub fn peak_ewma_cost(&self, now: Instant) -> f64 {
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let pending = self.in_flight.load(Ordering::Relaxed) as f64;
        self.decayed_rtt_ns(now_ns) * (pending + 1.0)
    }

    /// Consecutive failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Takes the (successes, failures) counted since the last call.
    pub(crate) fn take_outcomes(&self) -> (u64, u64) {
        (
            self.successes.swap(0, Ordering::Relaxed),
            self.failures.swap(0, Ordering::Relaxed),
        )
    }

    pub(crate) fn reset_failures(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    fn now_ns(&self) -> u64 {
        Instant::now().saturating_duration_since(self.epoch).as_nanos() as u64
    }

    #[inline]
    fn decayed_rtt_ns(&self, now_ns: u64) -> f64 {
        let rtt = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let at = self.rtt_at.load(Ordering::Relaxed);
        let elapsed = now_ns.saturating_sub(at) as f64;
        if elapsed <= 0.0 {
            return rtt;
        }
        rtt * decay(elapsed / self.decay_ns)
    }

    fn record(&self, latency: Duration, outcome: Outcome, now: Instant) {
        match outcome {
            Outcome::Cancelled => return,
            Outcome::Success => {
                self.successes.fetch_add(1, Ordering::Relaxed);
                // Skip the store (and the cache-line write) in the common all-is-well case.
                if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    self.consecutive_failures.store(0, Ordering::Relaxed);
                }
            }
            Outcome::Failure => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if n == self.consecutive_threshold {
                    if let Some(alarm) = &self.alarm {
                        alarm.notify_one();
                    }
                }
            }
        }
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let raw = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let elapsed = now_ns.saturating_sub(self.rtt_at.load(Ordering::Relaxed)) as f64;
        // One exponential serves both the decay to now and the recency weight of the new sample.
        let decay = decay(elapsed / self.decay_ns);
        let current = raw * decay;
        let mut sample = latency.as_nanos() as f64;
        if outcome == Outcome::Failure {
            sample = sample.max(current);
        }
        let next = if sample > current {
            sample
        } else {
            current * decay + sample * (1.0 - decay)
        };
        // Two relaxed stores: a reader racing with them may see a new value with an old timestamp,
        // which only over-decays one read. Concurrent writers: last one wins, as with a sample lost.
        self.rtt_ns.store(next.to_bits(), Ordering::Relaxed);
        self.rtt_at.store(now_ns, Ordering::Relaxed);
    }
}

/// `e^(-x)` for `x ≥ 0`. A busy endpoint is read and updated microseconds apart against a τ of
/// seconds, so `x` is usually tiny; there a cubic Taylor polynomial (error below 5·10⁻¹⁰) replaces
/// the libm call, which is most of a pick's arithmetic.
#[inline]
fn decay(x: f64) -> f64 {
    if x < 0.01 {
        1.0 - x * (1.0 - x * (0.5 - x / 6.0))
    } else {
        (-x).exp()
    }
}

/// Tracks one request against an endpoint's [`Load`]; records when dropped.
///
/// The outcome defaults to [`Outcome::Cancelled`]; protocol crates call [`LoadGuard::set_outcome`]
/// when they know how the response ended, then drop the guard at the end of the response stream.
#[must_use = "the request is counted as in flight until the guard is dropped"]
pub struct LoadGuard {
    load: Arc<Load>,
    start: Instant,
    outcome: Outcome,
    latency: Option<Duration>,
    record: Record,
}

impl fmt::Debug for LoadGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadGuard")
            .field("elapsed", &self.start.elapsed())
            .field("outcome", &self.outcome)
            .finish()
    }
}

impl LoadGuard {
    /// Sets how the request ended (the last call wins).
    pub fn set_outcome(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }

    /// Records `latency` instead of the time since the pick when the guard drops.
    ///
    /// For callers that time the request themselves, e.g. through the C ABI, where the report may
    /// arrive well after the response (the caller's own measurement is the truer one).
    pub fn set_latency(&mut self, latency: Duration) {
        self.latency = Some(latency);
    }

    /// The outcome recorded so far.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// When the request started.
    pub fn started_at(&self) -> Instant {
        self.start
    }

    /// The endpoint load this guard counts against.
    pub fn load(&self) -> &Arc<Load> {
        &self.load
    }

    /// Counts this pick as an attempt: a request sent to its endpoint (`grpc.client.attempt.started`,
    /// `lb_endpoint_picks_total`), whose end records `grpc.client.attempt.duration` (see
    /// [`crate::metrics`]). The engine calls it as it sends; callers of
    /// [`Pool::pick_or_wait`](crate::Pool::pick_or_wait) that send themselves call it too. A pick
    /// dropped without it records nothing.
    pub fn begin_attempt(&mut self) {
        if !self.record.attempt {
            self.record.attempt = true;
            if let Some(s) = &self.load.series {
                s.attempt_started();
            }
        }
    }

    /// The `grpc.status` the attempt (and its call) is recorded with (the last call wins); unset, it
    /// is the outcome's word (`success`, `failure`, `cancelled`).
    pub fn set_status(&mut self, status: Status) {
        self.record.status = Some(status);
    }

    /// Makes this attempt its call's last: its end records the call's duration
    /// (`grpc.client.call.duration`) as well, from `started` — before any wait for an endpoint and
    /// any earlier attempt.
    pub fn end_call(&mut self, started: Instant) {
        self.record.call_start = Some(started);
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.outcome == Outcome::Cancelled && !self.record.attempt {
            return;
        }
        let now = Instant::now();
        let latency = self.latency.unwrap_or_else(|| now.saturating_duration_since(self.start));
        if self.record.attempt {
            if let Some(s) = &self.load.series {
                s.attempt_ended(&self.record, self.outcome, self.start, latency);
            }
        }
        if self.outcome == Outcome::Cancelled {
            return;
        }
        self.load.record(latency, self.outcome, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_matches_exp() {
        for x in [0.0, 1e-9, 1e-5, 0.003, 0.0099, 0.01, 0.5, 3.0, 50.0] {
            assert!((decay(x) - (-x).exp()).abs() < 1e-9, "x = {x}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn guard_counts_in_flight_until_dropped() {
        let load = Arc::new(Load::default());
        let g1 = load.start();
        let g2 = load.start();
        assert_eq!(load.in_flight(), 2);
        drop(g1);
        assert_eq!(load.in_flight(), 1);
        drop(g2);
        assert_eq!(load.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn peak_then_decay() {
        let load = Arc::new(Load::default());
        assert_eq!(load.rtt_estimate(), Duration::from_millis(30), "default rtt before any sample");

        let mut g = load.start();
        tokio::time::advance(Duration::from_millis(200)).await;
        g.set_outcome(Outcome::Success);
        drop(g);
        // A slow sample replaces the estimate at once.
        assert_eq!(load.rtt_estimate(), Duration::from_millis(200));

        // Without samples the estimate decays: after one τ it is e^-1 of the peak.
        tokio::time::advance(Duration::from_secs(10)).await;
        let est = load.rtt_estimate().as_secs_f64();
        assert!((est - 0.2 / std::f64::consts::E).abs() < 0.001, "decayed to {est}");
    }

    #[tokio::test(start_paused = true)]
    async fn fast_failures_do_not_look_fast() {
        let load = Arc::new(Load::default());
        let mut g = load.start();
        g.set_outcome(Outcome::Failure);
        drop(g);
        assert!(load.rtt_estimate() >= Duration::from_millis(29), "a 0 ms failure kept the estimate");
        assert_eq!(load.consecutive_failures(), 1);
        assert_eq!(load.take_outcomes(), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn explicit_latency_replaces_elapsed_time() {
        let load = Arc::new(Load::default());
        let mut g = load.start();
        tokio::time::advance(Duration::from_millis(5)).await;
        g.set_outcome(Outcome::Success);
        g.set_latency(Duration::from_millis(400));
        drop(g);
        assert_eq!(load.rtt_estimate(), Duration::from_millis(400), "the caller's latency is the sample");
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_records_nothing() {
        let load = Arc::new(Load::default());
        let g = load.start();
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(g);
        assert_eq!(load.take_outcomes(), (0, 0));
        assert_eq!(load.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn alarm_fires_at_threshold() {
        let alarm = Arc::new(Notify::new());
        let load = Arc::new(Load::default().with_alarm(3, alarm.clone()));
        for _ in 0..3 {
            let mut g = load.start();
            g.set_outcome(Outcome::Failure);
        }
        tokio::time::timeout(Duration::from_millis(1), alarm.notified())
            .await
            .expect("alarm notified at the third consecutive failure");
    }
}
