//! The metrics a pool emits (`lb_core::metrics`), read back through a recorder installed for this
//! test binary: endpoints per phase, discovery updates and errors, failed connection attempts and
//! ejections (a request that found no endpoint: `metrics.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use lb_core::discover::{self, Update};
use lb_core::metrics::{CONNECT_FAILURES, DISCOVERY_ERRORS, DISCOVERY_UPDATES, EJECTIONS, ENDPOINTS};
use lb_core::policy::RoundRobin;
use lb_core::test_recorder;
use lb_core::test_util::TestConnector;
use lb_core::{Endpoint, Outcome, Pool, PoolConfig};

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
    test_recorder::install();
    let target = [("target", "metrics-pool")];
    let connector = TestConnector::new();
    connector.refuse(addr(3));
    let (tx, rx) = discover::channel();
    let pool = Pool::spawn(Box::pin(rx), connector, RoundRobin::new(), PoolConfig::new("metrics-pool"));

    tx.send(Update::Reset((1..=3).map(|p| Endpoint::new(addr(p))).collect()));
    published(&pool, |p| p.snapshot().healthy() == 2 && !p.snapshot().is_connect_failing()).await;
    published(&pool, |_| test_recorder::recorded().counter(CONNECT_FAILURES, &target) >= 1).await;
    assert_eq!(test_recorder::recorded().counter(DISCOVERY_UPDATES, &target), 1);
    assert_eq!(test_recorder::recorded().counter(DISCOVERY_ERRORS, &target), 0);
    let phase = |name: &str| test_recorder::recorded().gauge(ENDPOINTS, &[("target", "metrics-pool"), ("phase", name)]);
    assert_eq!((phase("ready"), phase("ejected")), (Some(2.0), Some(1.0)), "two ready, the refused one backing off");

    tx.send_error("registry unreachable");
    published(&pool, |p| p.snapshot().discovery_error().is_some()).await;
    assert_eq!(test_recorder::recorded().counter(DISCOVERY_ERRORS, &target), 1);

    // Five failures in a row eject an endpoint (the default outlier detection).
    let victim = addr(1);
    for _ in 0..5 {
        let snap = pool.snapshot();
        let entry = snap.entries().iter().find(|e| e.endpoint.addr() == victim).expect("listed");
        let mut guard = entry.load.start();
        guard.set_outcome(Outcome::Failure);
    }
    published(&pool, |p| p.snapshot().healthy() == 1).await;
    assert_eq!(test_recorder::recorded().counter(EJECTIONS, &target), 1);
    assert_eq!((phase("ready"), phase("ejected")), (Some(1.0), Some(2.0)));
}
