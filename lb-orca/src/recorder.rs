//! What a server reports: per-server values the application sets, per-call values set while a
//! request is handled, and what is measured automatically.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::pb::OrcaLoadReport;

/// A scalar the application may set; NaN means "not set" (measured or left out).
#[derive(Debug)]
struct Slot(AtomicU64);

impl Slot {
    fn unset() -> Self {
        Slot(AtomicU64::new(f64::NAN.to_bits()))
    }

    fn set(&self, v: f64) {
        // Negative or non-finite values are not utilizations or rates: treat them as unset.
        let v = if v.is_finite() && v >= 0.0 { v } else { f64::NAN };
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    fn get(&self) -> Option<f64> {
        let v = f64::from_bits(self.0.load(Ordering::Relaxed));
        (!v.is_nan()).then_some(v)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps hold plain values; a panic elsewhere cannot leave them half-written.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The per-server side of a report, shared by every clone; see the [crate docs](crate).
///
/// Values the application sets win; `cpu_utilization` is otherwise this process's CPU use over
/// roughly the last second (with [`Recorder::with_cpu_sampling`], Linux), and `rps_fractional` and
/// `eps` the rates [`OrcaLayer`](crate::OrcaLayer) counts — responses, and failed ones (HTTP 5xx,
/// a non-zero `grpc-status`) — over roughly the last second.
#[derive(Clone, Debug)]
pub struct Recorder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cpu: Slot,
    mem: Slot,
    app: Slot,
    qps: Slot,
    eps: Slot,
    utilization: Mutex<BTreeMap<String, f64>>,
    named: Mutex<BTreeMap<String, f64>>,
    cpu_sampler: Option<Mutex<CpuSampler>>,
    rates: Mutex<Rates>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// A recorder with nothing set and rates counted by the layer.
    pub fn new() -> Self {
        Recorder::with_sampler(None)
    }

    /// A recorder that reports this process's CPU utilization (its CPU time over wall time ×
    /// cores, sampled at most once a second) unless the application sets one. Linux only:
    /// elsewhere nothing is reported for it. Values set before are not carried over: call it first.
    pub fn with_cpu_sampling(self) -> Self {
        Recorder::with_sampler(Some(CpuSampler::new()))
    }

    fn with_sampler(sampler: Option<CpuSampler>) -> Self {
        Recorder {
            inner: Arc::new(Inner {
                cpu: Slot::unset(),
                mem: Slot::unset(),
                app: Slot::unset(),
                qps: Slot::unset(),
                eps: Slot::unset(),
                utilization: Mutex::new(BTreeMap::new()),
                named: Mutex::new(BTreeMap::new()),
                cpu_sampler: sampler.map(Mutex::new),
                rates: Mutex::new(Rates::new(Instant::now())),
            }),
        }
    }

    /// Sets the CPU utilization (a fraction of the server's CPU).
    pub fn set_cpu_utilization(&self, v: f64) {
        self.inner.cpu.set(v);
    }

    /// Sets the memory utilization (a fraction of the server's memory).
    pub fn set_mem_utilization(&self, v: f64) {
        self.inner.mem.set(v);
    }

    /// Sets the application's utilization (a fraction of its capacity). Weighting clients (A58)
    /// prefer it to the CPU's.
    pub fn set_application_utilization(&self, v: f64) {
        self.inner.app.set(v);
    }

    /// Sets queries per second, instead of the rate the layer counts.
    pub fn set_qps(&self, v: f64) {
        self.inner.qps.set(v);
    }

    /// Sets errors per second, instead of the rate the layer counts.
    pub fn set_eps(&self, v: f64) {
        self.inner.eps.set(v);
    }

    /// Sets a named utilization (`utilization` map).
    pub fn set_utilization(&self, name: impl Into<String>, v: f64) {
        lock(&self.inner.utilization).insert(name.into(), v);
    }

    /// Sets a named metric (`named_metrics` map).
    pub fn set_named_metric(&self, name: impl Into<String>, v: f64) {
        lock(&self.inner.named).insert(name.into(), v);
    }

    pub(crate) fn on_request(&self) {
        lock(&self.inner.rates).requests += 1;
    }

    pub(crate) fn on_error(&self) {
        lock(&self.inner.rates).errors += 1;
    }

    #[cfg(test)]
    pub(crate) fn counted(&self) -> (u64, u64) {
        let r = lock(&self.inner.rates);
        (r.requests, r.errors)
    }

    /// The report of this server now (before any per-call values).
    pub fn report(&self) -> OrcaLoadReport {
        let i = &*self.inner;
        let now = Instant::now();
        let (rps, eps) = lock(&i.rates).rates(now);
        let cpu = i.cpu.get().or_else(|| i.cpu_sampler.as_ref().and_then(|s| lock(s).sample(now)));
        OrcaLoadReport {
            cpu_utilization: cpu.unwrap_or(0.0),
            mem_utilization: i.mem.get().unwrap_or(0.0),
            application_utilization: i.app.get().unwrap_or(0.0),
            rps_fractional: i.qps.get().unwrap_or(rps),
            eps: i.eps.get().unwrap_or(eps),
            utilization: lock(&i.utilization).clone(),
            named_metrics: lock(&i.named).clone(),
            ..Default::default()
        }
    }
}

/// Requests and errors counted over windows of about a second.
#[derive(Debug)]
struct Rates {
    requests: u64,
    errors: u64,
    window_start: Instant,
    at_start: (u64, u64),
    last: (f64, f64),
}

impl Rates {
    const WINDOW: Duration = Duration::from_secs(1);

    fn new(now: Instant) -> Self {
        Rates {
            requests: 0,
            errors: 0,
            window_start: now,
            at_start: (0, 0),
            last: (0.0, 0.0),
        }
    }

    fn rates(&mut self, now: Instant) -> (f64, f64) {
        let elapsed = now.saturating_duration_since(self.window_start);
        let fresh = (
            (self.requests - self.at_start.0) as f64,
            (self.errors - self.at_start.1) as f64,
        );
        if elapsed >= Self::WINDOW {
            let secs = elapsed.as_secs_f64();
            self.last = (fresh.0 / secs, fresh.1 / secs);
            self.window_start = now;
            self.at_start = (self.requests, self.errors);
        } else if self.last == (0.0, 0.0) && elapsed >= Duration::from_millis(100) {
            // The first second: a partial window beats reporting no traffic at all.
            let secs = elapsed.as_secs_f64();
            return (fresh.0 / secs, fresh.1 / secs);
        }
        self.last
    }
}

/// This process's CPU utilization from `/proc/self/stat`.
#[derive(Debug)]
struct CpuSampler {
    at: Instant,
    cpu_secs: Option<f64>,
    last: Option<f64>,
    cores: f64,
}

impl CpuSampler {
    fn new() -> Self {
        CpuSampler {
            at: Instant::now(),
            cpu_secs: process_cpu_secs(),
            last: None,
            cores: std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
        }
    }

    fn sample(&mut self, now: Instant) -> Option<f64> {
        let elapsed = now.saturating_duration_since(self.at);
        if elapsed >= Duration::from_secs(1) || (self.last.is_none() && elapsed >= Duration::from_millis(100)) {
            let cpu = process_cpu_secs();
            if let (Some(before), Some(after)) = (self.cpu_secs, cpu) {
                self.last = Some(((after - before) / (elapsed.as_secs_f64() * self.cores)).max(0.0));
            }
            self.at = now;
            self.cpu_secs = cpu;
        }
        self.last
    }
}

/// User + system CPU time of this process, in seconds (Linux; `None` elsewhere).
fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after `(comm)`: utime and stime are the 12th and 13th, in USER_HZ (100/s on Linux).
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// The per-call side of a report: [`OrcaLayer`](crate::OrcaLayer) puts one in every request's
/// extensions; a handler sets what this call cost, and it goes out with this call's report.
///
/// ```
/// fn handle(req: &http::Request<()>) {
///     if let Some(orca) = req.extensions().get::<lb_orca::CallRecorder>() {
///         orca.record_request_cost("rows_read", 120.0);
///     }
/// }
/// # handle(&http::Request::new(()));
/// ```
#[derive(Clone, Debug, Default)]
pub struct CallRecorder {
    inner: Arc<Mutex<OrcaLoadReport>>,
}

impl CallRecorder {
    /// Records a cost of this request (`request_cost` map).
    pub fn record_request_cost(&self, name: impl Into<String>, v: f64) {
        lock(&self.inner).request_cost.insert(name.into(), v);
    }

    /// Records a named utilization for this call's report (`utilization` map).
    pub fn record_utilization(&self, name: impl Into<String>, v: f64) {
        lock(&self.inner).utilization.insert(name.into(), v);
    }

    /// Records a named metric for this call's report (`named_metrics` map).
    pub fn record_named_metric(&self, name: impl Into<String>, v: f64) {
        lock(&self.inner).named_metrics.insert(name.into(), v);
    }

    /// Sets the application utilization for this call's report, over the server's.
    pub fn set_application_utilization(&self, v: f64) {
        if v.is_finite() && v >= 0.0 {
            lock(&self.inner).application_utilization = v;
        }
    }

    /// Sets the CPU utilization for this call's report, over the server's.
    pub fn set_cpu_utilization(&self, v: f64) {
        if v.is_finite() && v >= 0.0 {
            lock(&self.inner).cpu_utilization = v;
        }
    }

    /// The server's report with this call's values laid over it.
    pub(crate) fn merge_into(&self, mut report: OrcaLoadReport) -> OrcaLoadReport {
        let call = lock(&self.inner);
        if call.application_utilization > 0.0 {
            report.application_utilization = call.application_utilization;
        }
        if call.cpu_utilization > 0.0 {
            report.cpu_utilization = call.cpu_utilization;
        }
        report.request_cost.extend(call.request_cost.iter().map(|(k, v)| (k.clone(), *v)));
        report.utilization.extend(call.utilization.iter().map(|(k, v)| (k.clone(), *v)));
        report.named_metrics.extend(call.named_metrics.iter().map(|(k, v)| (k.clone(), *v)));
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_values_win_and_garbage_is_unset() {
        let r = Recorder::new();
        r.set_cpu_utilization(0.5);
        r.set_application_utilization(f64::NAN);
        r.set_mem_utilization(-1.0);
        r.set_qps(42.0);
        r.set_named_metric("queue", 3.0);
        let report = r.report();
        assert_eq!((report.cpu_utilization, report.application_utilization, report.mem_utilization), (0.5, 0.0, 0.0));
        assert_eq!(report.rps_fractional, 42.0);
        assert_eq!(report.named_metrics.get("queue"), Some(&3.0));
    }

    #[test]
    fn rates_are_counted_per_second() {
        let t0 = Instant::now();
        let mut rates = Rates::new(t0);
        rates.requests = 50;
        rates.errors = 5;
        assert_eq!(rates.rates(t0 + Duration::from_millis(500)), (100.0, 10.0), "a partial first window");
        rates.requests = 200;
        rates.errors = 20;
        assert_eq!(rates.rates(t0 + Duration::from_secs(2)), (100.0, 10.0), "200 requests over 2 s");
        assert_eq!(rates.rates(t0 + Duration::from_millis(2500)), (100.0, 10.0), "until the next window ends");
    }

    #[test]
    fn call_values_lie_over_the_servers() {
        let r = Recorder::new();
        r.set_application_utilization(0.2);
        let call = CallRecorder::default();
        call.set_application_utilization(0.7);
        call.record_request_cost("rows", 10.0);
        let report = call.merge_into(r.report());
        assert_eq!(report.application_utilization, 0.7);
        assert_eq!(report.request_cost.get("rows"), Some(&10.0));
    }

    // The sampler reads /proc/self/stat, which Linux always has; elsewhere it samples nothing.
    #[cfg(target_os = "linux")]
    #[test]
    fn cpu_sampling_reports_a_fraction() {
        assert!(process_cpu_secs().is_some(), "/proc/self/stat is readable on Linux");
        let r = Recorder::new().with_cpu_sampling();
        // Burn some CPU so the sample has something to see, for a bounded number of iterations.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(150) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let cpu = r.report().cpu_utilization;
        assert!(cpu > 0.0 && cpu <= 1.5, "a busy thread shows: {cpu}");
    }
}
