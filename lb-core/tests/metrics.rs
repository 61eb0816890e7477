//! The metrics a pool emits (`lb_core::metrics`), read back through a recorder installed for this
//! test binary: endpoints per phase, discovery updates and errors, failed connection attempts,
//! ejections, and requests that found no endpoint. Each test uses its own target name, the label
//! that tells their metrics apart.

use std::net::SocketAddr;
use std::time::Duration;

use lb_core::balance::Wait;
use lb_core::discover::{self, Update};
use lb_core::metrics::{CONNECT_FAILURES, DISCOVERY_ERRORS, DISCOVERY_UPDATES, EJECTIONS, ENDPOINTS, NO_ENDPOINT};
use lb_core::policy::RoundRobin;
use lb_core::test_util::{TestConnector, TestRecorder};
use lb_core::{Endpoint, Outcome, PickContext, Pool, PoolConfig};

fn addr(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// Waits for the pool to publish a snapshot that satisfies `cond` (paused clock: no real time).
async fn published(pool: &Pool<SocketAddr>, cond: impl Fn(&Pool<SocketAddr>) -> bool) {
    let mut rx = pool.subscribe();
    tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|_| cond(pool)))
        .await
        .expect("published in time")
        .expect("the pool runs");
}

#[tokio::test(start_paused = true)]
async fn a_pool_counts_what_happens_to_it() {
    let recorder = TestRecorder::global();
    let target = [("target", "metrics-pool")];
    let connector = TestConnector::new();
    connector.refuse(addr(3));
    let (tx, rx) = discover::channel();
    let pool = Pool::spawn(Box::pin(rx), connector, RoundRobin::new(), PoolConfig::new("metrics-pool"));

    tx.send(Update::Reset((1..=3).map(|p| Endpoint::new(addr(p))).collect()));
    published(&pool, |p| p.snapshot().healthy() == 2 && !p.snapshot().is_connect_failing()).await;
    published(&pool, |_| recorder.counter(CONNECT_FAILURES, &target) >= 1).await;
    assert_eq!(recorder.counter(DISCOVERY_UPDATES, &target), 1);
    assert_eq!(recorder.counter(DISCOVERY_ERRORS, &target), 0);
    let phase = |name: &str| recorder.gauge(ENDPOINTS, &[("target", "metrics-pool"), ("phase", name)]);
    assert_eq!((phase("ready"), phase("ejected")), (Some(2.0), Some(1.0)), "two ready, the refused one backing off");

    tx.send_error("registry unreachable");
    published(&pool, |p| p.snapshot().discovery_error().is_some()).await;
    assert_eq!(recorder.counter(DISCOVERY_ERRORS, &target), 1);

    // Five failures in a row eject an endpoint (the default outlier detection).
    let victim = addr(1);
    for _ in 0..5 {
        let snap = pool.snapshot();
        let entry = snap.entries().iter().find(|e| e.endpoint.addr() == victim).expect("listed");
        let mut guard = entry.load.start();
        guard.set_outcome(Outcome::Failure);
    }
    published(&pool, |p| p.snapshot().healthy() == 1).await;
    assert_eq!(recorder.counter(EJECTIONS, &target), 1);
    assert_eq!((phase("ready"), phase("ejected")), (Some(1.0), Some(2.0)));
}

#[tokio::test(start_paused = true)]
async fn a_request_that_finds_no_endpoint_is_counted() {
    let recorder = TestRecorder::global();
    let (_tx, rx) = discover::channel();
    let pool: Pool<SocketAddr> = Pool::spawn(Box::pin(rx), TestConnector::new(), RoundRobin::new(), PoolConfig::new("metrics-empty"));
    let err = pool.pick_or_wait(PickContext::default(), Wait::at_most(Duration::from_secs(1))).await.expect_err("no endpoint");
    assert!(!err.discovery_initialized());
    assert_eq!(recorder.counter(NO_ENDPOINT, &[("target", "metrics-empty")]), 1);
}
