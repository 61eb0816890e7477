//! The counters a user alerts on, observed through a process-wide `metrics` recorder (so this file
//! holds a single test): invalid registry values and refused empty updates.

mod support;

use std::time::Duration;

use lb_core::test_recorder;
use support::{eventually, Etcd, SetWatcher};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_values_and_refused_empty_updates_are_counted() {
    support::init_tracing();
    test_recorder::install();

    let etcd = Etcd::start().await;
    let mut c = etcd.client().await.expect("connect");
    let p = "/lb/services/counted/";
    c.put(format!("{p}ok"), r#"{"v":1,"addr":"127.0.0.1:7701"}"#, None).await.expect("put");
    c.put(format!("{p}a"), "not json", None).await.expect("put");
    c.put(format!("{p}b"), r#"{"v":9,"addr":"127.0.0.1:7702"}"#, None).await.expect("put");
    c.put(format!("{p}c"), vec![b' '; 65 * 1024], None).await.expect("put");

    let target = lb_registry::Target::parse(&format!("etcd://{}/counted", etcd.endpoint())).expect("valid");
    let w = SetWatcher::new(lb_registry::resolve(&target).expect("resolves"));
    w.wait("the valid entry", Duration::from_secs(30), |s| s.len() == 1).await;
    for reason in ["malformed", "unknown_version", "too_large"] {
        let labels = [("registry", "etcd"), ("reason", reason)];
        assert_eq!(test_recorder::recorded().counter("lb_registry_invalid_entries_total", &labels), 1, "{reason}");
    }

    // The last instance disappears (a registry that lost its data would look the same): refused,
    // counted, and the client keeps it.
    c.delete(format!("{p}ok"), None).await.expect("delete");
    let target = format!("etcd://{}/counted", etcd.endpoint());
    let refused = || test_recorder::recorded().counter("lb_registry_empty_updates_refused_total", &[("target", target.as_str())]);
    eventually("refusal counted", Duration::from_secs(30), || async { refused() == 1 }).await;
    assert_eq!(w.ids(), vec!["ok"], "the set was not wiped");
}
