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
//!
//! Servers may also say how loaded they are: a [`LoadReport`] (ORCA's `OrcaLoadReport`, parsed by
//! the protocol crate from the response's trailers) rides the guard like the outcome and is kept in
//! the endpoint's `Load` — utilization, queries and errors per second, and when they were reported —
//! for the policies that weigh endpoints by what the servers report (gRFC A58). An answer that says
//! the server is overloaded (`RESOURCE_EXHAUSTED`, HTTP 429/503 with `Retry-After`) sets a penalty
//! on the guard; the pool keeps the endpoint out of picks for that long.

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

/// A server's own report of its load: the scalar fields of ORCA's `OrcaLoadReport`
/// (`xds.data.orca.v3`), which is what weighting by reported load uses. Zero means "not reported",
/// as in the protobuf.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// CPU utilization as a fraction of the server's CPU (may exceed 1 past soft limits).
    pub cpu_utilization: f64,
    /// Memory utilization as a fraction of the server's memory.
    pub mem_utilization: f64,
    /// The application's own utilization figure (a fraction of its capacity).
    pub application_utilization: f64,
    /// Queries per second the server is serving, across all its callers.
    pub rps_fractional: f64,
    /// Errors per second the server is answering.
    pub eps: f64,
}

impl LoadReport {
    /// The utilization weighting uses: `application_utilization` when reported, else
    /// `cpu_utilization` (gRFC A58).
    pub fn utilization(&self) -> f64 {
        if self.application_utilization > 0.0 {
            self.application_utilization
        } else {
            self.cpu_utilization
        }
    }
}

/// What an endpoint's servers last reported, as [`Load::reported`] returns it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reported {
    /// [`LoadReport::utilization`] of the last report.
    pub utilization: f64,
    /// Its `rps_fractional`.
    pub qps: f64,
    /// Its `eps`.
    pub eps: f64,
    /// When it arrived.
    pub at: Instant,
    /// Since when reports have said the endpoint is doing work (non-zero utilization and
    /// queries), without a gap longer than the weight expiration (A58's `non_empty_since`).
    pub non_empty_since: Option<Instant>,
}

/// The live load of one endpoint, shared by the pool, the pickers and every in-flight guard.
///
/// It survives discovery resets: an endpoint whose id is unchanged keeps its `Load`.
pub struct Load {
    in_flight: AtomicU32,
    /// Requests sent, ever (attempts begun: [`LoadGuard::begin_attempt`]).
    sent: AtomicU64,
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
    // The last load report (f64 bits) and its times, nanoseconds since `epoch` plus one (0: none).
    report_util: AtomicU64,
    report_qps: AtomicU64,
    report_eps: AtomicU64,
    report_at: AtomicU64,
    non_empty_since: AtomicU64,
    /// An overload penalty waiting for the pool, in nanoseconds (0: none).
    penalty_ns: AtomicU64,
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
            sent: AtomicU64::new(0),
            rtt_ns: AtomicU64::new((config.default_rtt.as_nanos() as f64).to_bits()),
            rtt_at: AtomicU64::new(0),
            epoch: Instant::now(),
            decay_ns: (config.decay.as_nanos() as f64).max(1.0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            consecutive_threshold: u32::MAX,
            alarm: None,
            report_util: AtomicU64::new(0),
            report_qps: AtomicU64::new(0),
            report_eps: AtomicU64::new(0),
            report_at: AtomicU64::new(0),
            non_empty_since: AtomicU64::new(0),
            penalty_ns: AtomicU64::new(0),
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

    /// What the endpoint's servers last reported, if anything.
    pub fn reported(&self) -> Option<Reported> {
        let at = self.report_at.load(Ordering::Relaxed);
        if at == 0 {
            return None;
        }
        let since = self.non_empty_since.load(Ordering::Relaxed);
        let instant = |ns: u64| self.epoch + Duration::from_nanos(ns - 1);
        Some(Reported {
            utilization: f64::from_bits(self.report_util.load(Ordering::Relaxed)),
            qps: f64::from_bits(self.report_qps.load(Ordering::Relaxed)),
            eps: f64::from_bits(self.report_eps.load(Ordering::Relaxed)),
            at: instant(at),
            non_empty_since: (since != 0).then(|| instant(since)),
        })
    }

    /// The reported utilization when the last report is younger than `max_age` (the pick path's
    /// read: two atomics).
    #[inline]
    pub fn utilization_at(&self, now: Instant, max_age: Duration) -> Option<f64> {
        let at = self.report_at.load(Ordering::Relaxed);
        if at == 0 {
            return None;
        }
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64 + 1;
        if now_ns.saturating_sub(at) >= max_age.as_nanos() as u64 {
            return None;
        }
        Some(f64::from_bits(self.report_util.load(Ordering::Relaxed)))
    }

    /// Forgets since when reports were non-empty (A58: after the weight expired, the blackout
    /// period starts again with the next report).
    pub fn reset_non_empty_since(&self) {
        self.non_empty_since.store(0, Ordering::Relaxed);
    }

    /// Records a server's load report that arrived at `now`.
    pub fn record_report(&self, report: &LoadReport, now: Instant) {
        let u = report.utilization();
        if !u.is_finite() || u < 0.0 {
            return;
        }
        let qps = if report.rps_fractional.is_finite() { report.rps_fractional.max(0.0) } else { 0.0 };
        let eps = if report.eps.is_finite() { report.eps.max(0.0) } else { 0.0 };
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64 + 1;
        self.report_util.store(u.to_bits(), Ordering::Relaxed);
        self.report_qps.store(qps.to_bits(), Ordering::Relaxed);
        self.report_eps.store(eps.to_bits(), Ordering::Relaxed);
        self.report_at.store(now_ns, Ordering::Relaxed);
        if u > 0.0 && qps > 0.0 {
            // Racing reports may both see 0: either time is a fine start of the blackout.
            if self.non_empty_since.load(Ordering::Relaxed) == 0 {
                self.non_empty_since.store(now_ns, Ordering::Relaxed);
            }
        }
    }

    /// Asks the pool to keep the endpoint out of picks for `duration` (an overload answer); the
    /// pool applies it, capped, at its next wake-up, which this triggers.
    pub fn penalize(&self, duration: Duration) {
        let ns = (duration.as_nanos() as u64).max(1);
        self.penalty_ns.fetch_max(ns, Ordering::Relaxed);
        if let Some(alarm) = &self.alarm {
            alarm.notify_one();
        }
    }

    /// Takes the penalty waiting to be applied, if any.
    pub(crate) fn take_penalty(&self) -> Option<Duration> {
        match self.penalty_ns.swap(0, Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
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
            report: None,
            penalty: None,
            permit: None,
            record: Record::default(),
        }
    }

    /// Requests currently in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests sent to this endpoint since it was discovered: attempts begun with
    /// [`LoadGuard::begin_attempt`], not picks (a pick the engine passes over sends nothing).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
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
    report: Option<LoadReport>,
    penalty: Option<Duration>,
    permit: Option<crate::balance::Permit>,
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

    /// Attaches the server's load report from the response (the last call wins); recorded in
    /// the endpoint's [`Load`] when the guard drops.
    pub fn set_report(&mut self, report: LoadReport) {
        self.report = Some(report);
    }

    /// The server answered that it is overloaded: keep the endpoint out of picks for `duration`
    /// (capped by the pool). Applied when the guard drops.
    pub fn set_penalty(&mut self, duration: Duration) {
        self.penalty = Some(duration);
    }

    /// Holds a circuit breaker's in-flight slot for as long as the request counts (to the end of
    /// its response), giving it back when the guard drops.
    pub fn hold(&mut self, permit: crate::balance::Permit) {
        self.permit = Some(permit);
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
            self.load.sent.fetch_add(1, Ordering::Relaxed);
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
        if let Some(report) = self.report.take() {
            self.load.record_report(&report, Instant::now());
        }
        if let Some(penalty) = self.penalty.take() {
            self.load.penalize(penalty);
        }
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

    #[tokio::test(start_paused = true)]
    async fn reports_ride_the_guard() {
        let load = Arc::new(Load::default());
        assert!(load.reported().is_none());
        let mut g = load.start();
        g.set_report(LoadReport { cpu_utilization: 0.5, application_utilization: 0.25, rps_fractional: 100.0, eps: 2.0, ..Default::default() });
        g.set_outcome(Outcome::Success);
        drop(g);
        let r = load.reported().expect("recorded");
        assert_eq!((r.utilization, r.qps, r.eps), (0.25, 100.0, 2.0), "application utilization wins over cpu");
        assert_eq!(r.non_empty_since, Some(r.at));
        tokio::time::advance(Duration::from_secs(2)).await;
        let mut g = load.start();
        g.set_report(LoadReport { cpu_utilization: 0.75, rps_fractional: 50.0, ..Default::default() });
        drop(g);
        let r2 = load.reported().expect("recorded");
        assert_eq!(r2.utilization, 0.75, "cpu when the application reports none");
        assert_eq!(r2.non_empty_since, r.non_empty_since, "still the first non-empty report");
        assert_eq!(load.utilization_at(tokio::time::Instant::now(), Duration::from_secs(1)), Some(0.75));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(load.utilization_at(tokio::time::Instant::now(), Duration::from_secs(1)), None, "expired");
        // A garbage report changes nothing.
        let mut g = load.start();
        g.set_report(LoadReport { cpu_utilization: f64::NAN, ..Default::default() });
        drop(g);
        assert_eq!(load.reported().map(|r| r.utilization), Some(0.75));
    }

    #[tokio::test(start_paused = true)]
    async fn a_penalty_wakes_the_pool() {
        let alarm = Arc::new(Notify::new());
        let load = Arc::new(Load::default().with_alarm(u32::MAX, alarm.clone()));
        let mut g = load.start();
        g.set_penalty(Duration::from_secs(2));
        drop(g);
        tokio::time::timeout(Duration::from_millis(1), alarm.notified()).await.expect("alarm notified");
        assert_eq!(load.take_penalty(), Some(Duration::from_secs(2)));
        assert_eq!(load.take_penalty(), None, "taken once");
    }
}
