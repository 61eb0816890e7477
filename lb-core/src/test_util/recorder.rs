//! [`TestRecorder`]: a `metrics` recorder that keeps what the library emits, for assertions.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// One metric's value: a counter's count, or a gauge's `f64` bits.
#[derive(Default)]
struct Cell(AtomicU64);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        self.update(|v| v + value);
    }

    fn decrement(&self, value: f64) {
        self.update(|v| v - value);
    }

    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }
}

impl Cell {
    fn update(&self, f: impl Fn(f64) -> f64) {
        // A compare-and-swap loop: two threads adding at once must both count.
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some(f(f64::from_bits(bits)).to_bits()));
    }
}

#[derive(Default)]
struct Store {
    counters: HashMap<Key, Arc<Cell>>,
    gauges: HashMap<Key, Arc<Cell>>,
}

/// A `metrics` recorder that keeps every counter and gauge in memory (histograms are dropped).
///
/// The `metrics` facade has one global recorder per process, and each integration-test file is its
/// own process: [`TestRecorder::global`] installs one the first time it is called and returns it
/// after that, so several tests of one file can share it. Tests running at once tell their
/// metrics apart by label (each pool's `target`), so read with the labels that identify the test:
///
/// ```
/// use lb_core::test_util::TestRecorder;
///
/// let recorder = TestRecorder::global();
/// metrics::counter!("lb_example_total", "target" => "doc").increment(2);
/// assert_eq!(recorder.counter("lb_example_total", &[("target", "doc")]), 2);
/// assert_eq!(recorder.counter("lb_example_total", &[("target", "other")]), 0);
/// ```
#[derive(Clone, Default)]
pub struct TestRecorder {
    store: Arc<Mutex<Store>>,
}

impl fmt::Debug for TestRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let store = self.lock();
        f.debug_struct("TestRecorder")
            .field("counters", &store.counters.len())
            .field("gauges", &store.gauges.len())
            .finish()
    }
}

impl TestRecorder {
    /// The process's recorder, installed by the first call.
    ///
    /// # Panics
    /// When another recorder was installed before (the process can have only one).
    pub fn global() -> &'static TestRecorder {
        static GLOBAL: OnceLock<TestRecorder> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            let recorder = TestRecorder::default();
            metrics::set_global_recorder(recorder.clone())
                .expect("TestRecorder::global must be the process's only metrics recorder");
            recorder
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sum of the counters named `name` whose labels include every one of `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.lock()
            .counters
            .iter()
            .filter(|(k, _)| matches(k, name, labels))
            .map(|(_, c)| c.0.load(Ordering::Relaxed))
            .sum()
    }

    /// The gauge named `name` whose labels include every one of `labels`, if one was set (the
    /// first match, when several do).
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.lock()
            .gauges
            .iter()
            .find(|(k, _)| matches(k, name, labels))
            .map(|(_, g)| f64::from_bits(g.0.load(Ordering::Relaxed)))
    }
}

fn matches(key: &Key, name: &str, labels: &[(&str, &str)]) -> bool {
    key.name() == name && labels.iter().all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let cell = Arc::clone(self.lock().counters.entry(key.clone()).or_default());
        Counter::from_arc(cell)
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let cell = Arc::clone(self.lock().gauges.entry(key.clone()).or_default());
        Gauge::from_arc(cell)
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
