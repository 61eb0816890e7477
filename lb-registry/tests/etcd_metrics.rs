//! The counters a user alerts on, observed through a process-wide `metrics` recorder (so this file
//! holds a single test): invalid registry values and refused empty updates.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use support::{eventually, Etcd, SetWatcher};

type Counts = Arc<Mutex<HashMap<String, u64>>>;

#[derive(Debug, Default)]
struct Rec(Counts);

struct C(String, Counts);

impl CounterFn for C {
    fn increment(&self, v: u64) {
        *self.1.lock().expect("counts lock").entry(self.0.clone()).or_default() += v;
    }
    fn absolute(&self, v: u64) {
        let mut m = self.1.lock().expect("counts lock");
        let e = m.entry(self.0.clone()).or_default();
        *e = (*e).max(v);
    }
}

impl Recorder for Rec {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        Counter::from_arc(Arc::new(C(name, Arc::clone(&self.0))))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn count(counts: &Counts, name: &str) -> u64 {
    counts.lock().expect("counts lock").get(name).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_values_and_refused_empty_updates_are_counted() {
    support::init_tracing();
    let counts: Counts = Arc::default();
    metrics::set_global_recorder(Rec(Arc::clone(&counts))).expect("the only recorder in this binary");

    let etcd = Etcd::start().await;
    let mut c = etcd.client().await.expect("connect");
    let p = "/lb/services/counted/";
    c.put(format!("{p}ok"), r#"{"v":1,"addr":"127.0.0.1:7701"}"#, None).await.expect("put");
    c.put(format!("{p}a"), "not json", None).await.expect("put");
    c.put(format!("{p}b"), r#"{"v":9,"addr":"127.0.0.1:7702"}"#, None).await.expect("put");
    c.put(format!("{p}c"), vec![b' '; 65 * 1024], None).await.expect("put");

    let target = lb_registry::Target::parse(&format!("etcd://{}/counted", etcd.endpoint())).expect("valid");
    let w = SetWatcher::new(lb_registry::resolve(&target).expect("resolves"));
    w.wait("the valid entry", Duration::from_secs(10), |s| s.len() == 1).await;
    for reason in ["malformed", "unknown_version", "too_large"] {
        let name = format!("lb_registry_invalid_entries_total{{reason={reason},registry=etcd}}");
        assert_eq!(count(&counts, &name), 1, "{name}: {:?}", counts.lock().expect("lock"));
    }

    // The last instance disappears (a registry that lost its data would look the same): refused,
    // counted, and the client keeps it.
    c.delete(format!("{p}ok"), None).await.expect("delete");
    let refused = format!("lb_registry_empty_updates_refused_total{{target=etcd://{}/counted}}", etcd.endpoint());
    eventually("refusal counted", Duration::from_secs(10), || async { count(&counts, &refused) == 1 }).await;
    assert_eq!(w.ids(), vec!["ok"], "the set was not wiped");
}
