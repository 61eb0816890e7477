//! A metrics recorder for tests (feature `test-util`): what lb recorded, by series.
//!
//! The `metrics` facade has one global recorder per process, and lb's per-target series are
//! registered with whichever recorder is installed when a pool is spawned, so a test that asserts on
//! metrics installs this one ([`install`]) before building its channel, and gives its channel a
//! target name of its own: tests of one binary share the recorder. It keeps every series in
//! metrics-util's registry of atomics, and [`recorded`] reads them without draining, so no test
//! takes another's samples.
//!
//! ```
//! use lb_core::test_recorder;
//!
//! test_recorder::install();
//! metrics::counter!("doc_total", "target" => "t").increment(2);
//! assert_eq!(test_recorder::recorded().counter("doc_total", &[("target", "t")]), 2);
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};

/// A series: its name and labels.
pub type Series = (String, BTreeMap<String, String>);

/// Everything recorded so far; see the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    counters: HashMap<Series, u64>,
    gauges: HashMap<Series, f64>,
    histograms: HashMap<Series, Vec<f64>>,
}

fn matches(series: &Series, name: &str, labels: &[(&str, &str)]) -> bool {
    series.0 == name && labels.iter().all(|(k, v)| series.1.get(*k).is_some_and(|x| x == v))
}

impl Recorded {
    /// The sum of the counters named `name` whose labels include `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters.iter().filter(|(s, _)| matches(s, name, labels)).map(|(_, v)| *v).sum()
    }

    /// The value of the one gauge named `name` whose labels include `labels` (`None`: no such gauge).
    ///
    /// # Panics
    /// When several gauges match.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self.gauges.iter().filter(|(s, _)| matches(s, name, labels)).map(|(_, v)| *v).collect();
        assert!(found.len() <= 1, "{} gauges `{name}` match {labels:?}", found.len());
        found.first().copied()
    }

    /// How many samples the histograms named `name` whose labels include `labels` hold in all.
    pub fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.samples(name, labels).len()
    }

    /// The samples of the histograms named `name` whose labels include `labels`.
    pub fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.histograms
            .iter()
            .filter(|(s, _)| matches(s, name, labels))
            .flat_map(|(_, v)| v.iter().copied())
            .collect()
    }

    /// The label sets of every series (of any kind) named `name` whose labels include `labels`.
    pub fn series(&self, name: &str, labels: &[(&str, &str)]) -> Vec<BTreeMap<String, String>> {
        let keys = self.counters.keys().chain(self.gauges.keys()).chain(self.histograms.keys());
        let mut out: Vec<_> = keys.filter(|s| matches(s, name, labels)).map(|s| s.1.clone()).collect();
        out.sort();
        out
    }

    /// The names of every series recorded so far.
    pub fn names(&self) -> BTreeSet<String> {
        let keys = self.counters.keys().chain(self.gauges.keys()).chain(self.histograms.keys());
        keys.map(|s| s.0.clone()).collect()
    }
}

/// A recorder over metrics-util's registry of atomics: values are read, never drained.
struct TestRecorder {
    registry: Registry<Key, AtomicStorage>,
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.registry.get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.registry.get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.registry.get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

static INSTALLED: OnceLock<&'static TestRecorder> = OnceLock::new();

fn installed() -> &'static TestRecorder {
    INSTALLED.get_or_init(|| {
        let recorder: &'static TestRecorder = Box::leak(Box::new(TestRecorder {
            registry: Registry::atomic(),
        }));
        if metrics::set_global_recorder(recorder).is_err() {
            panic!("another metrics recorder is installed in this test process: test_recorder must be the only one");
        }
        recorder
    })
}

/// Installs the recorder as the process's global one (once; later calls do nothing).
///
/// # Panics
/// When another recorder was installed first.
pub fn install() {
    installed();
}

fn series(key: &Key) -> Series {
    let labels = key.labels().map(|l| (l.key().to_string(), l.value().to_string())).collect();
    (key.name().to_string(), labels)
}

/// Everything recorded so far (installing the recorder if needed).
pub fn recorded() -> Recorded {
    let registry = &installed().registry;
    Recorded {
        counters: registry
            .get_counter_handles()
            .iter()
            .map(|(k, c)| (series(k), c.load(Ordering::Relaxed)))
            .collect(),
        gauges: registry
            .get_gauge_handles()
            .iter()
            .map(|(k, g)| (series(k), f64::from_bits(g.load(Ordering::Relaxed))))
            .collect(),
        histograms: registry.get_histogram_handles().iter().map(|(k, h)| (series(k), h.data())).collect(),
    }
}
