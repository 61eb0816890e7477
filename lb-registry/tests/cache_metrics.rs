//! The cache's staleness gauge (`lb_registry_staleness_seconds{target}`), read back through a
//! recorder installed for this test binary, on a paused clock.

use std::time::Duration;

use futures_util::StreamExt as _;
use lb_core::discover::{self, Update};
use lb_core::test_recorder;
use lb_core::Endpoint;
use lb_registry::cache::{Cache, STALENESS};

#[tokio::test(start_paused = true)]
async fn the_staleness_gauge_grows_while_the_source_fails_and_drops_to_zero_when_it_answers() {
    test_recorder::install();
    let gauge = || test_recorder::recorded().gauge(STALENESS, &[("target", "stale-target")]);
    let (tx, rx) = discover::channel();
    let mut cached = Cache::builder().name("stale-target").wrap(Box::pin(rx));
    let handle = cached.handle();

    tx.send(Update::Reset(vec![Endpoint::new(([127, 0, 0, 1], 1).into())]));
    let first = tokio::time::timeout(Duration::from_secs(5), cached.next()).await.expect("forwarded").expect("open");
    assert!(matches!(first, Ok(Update::Reset(_))), "{first:?}");
    assert_eq!(gauge(), Some(0.0), "fresh data");

    // The source fails: the gauge reports the age at the next staleness report (every 30 s).
    tx.send_error("registry unreachable");
    let error = tokio::time::timeout(Duration::from_secs(5), cached.next()).await.expect("forwarded").expect("open");
    assert!(error.is_err());
    tokio::time::sleep(Duration::from_secs(95)).await;
    let stale = gauge().expect("reported");
    assert!((60.0..=95.0).contains(&stale), "{stale} s stale after 95 s of errors, reported every 30 s");
    assert_eq!(handle.staleness().map(|s| s.as_secs()), Some(95));

    // The source confirms its set: fresh again, the gauge back to zero at once.
    tx.send(Update::Current);
    let current = tokio::time::timeout(Duration::from_secs(5), cached.next()).await.expect("forwarded").expect("open");
    assert!(matches!(current, Ok(Update::Current)), "{current:?}");
    assert_eq!(gauge(), Some(0.0));
    assert!(handle.is_fresh());
}
