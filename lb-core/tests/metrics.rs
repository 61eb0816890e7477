//! The engine's books for a hand-built Tower stack (`CompleteOnResponse`, plain words): a call that
//! answers, one the caller drops mid-flight, one that finds no endpoint.

use std::time::Duration;

use futures_util::FutureExt;
use lb_core::balance::Wait;
use lb_core::metrics::{ATTEMPTS_STARTED, ATTEMPT_DURATION, CALL_DURATION, NO_ENDPOINT};
use lb_core::test_recorder;
use lb_core::test_util::TestConnector;
use lb_core::{discover, Balance, BoxError, Endpoint, Pool, PoolConfig, Update};

type Svc = tower::util::BoxCloneSyncService<u32, u32, BoxError>;

/// A pool over one endpoint whose service answers even numbers at once and never answers odd ones.
async fn pool(name: &str, endpoints: usize) -> Pool<Svc> {
    test_recorder::install();
    let eps = (0..endpoints).map(|i| Endpoint::new(([10, 0, 0, 1 + i as u8], 80).into())).collect();
    let (tx, rx) = discover::channel();
    tx.send(Update::Reset(eps));
    std::mem::forget(tx);
    let connector = TestConnector::with_connection(|_| {
        Svc::new(tower::service_fn(|n: u32| async move {
            if n % 2 == 1 {
                std::future::pending::<()>().await;
            }
            Ok::<_, BoxError>(n)
        }))
    });
    let pool = Pool::spawn(Box::pin(rx), connector, lb_core::policy::RoundRobin::new(), PoolConfig::new(name));
    assert!(pool.initialized_timeout(Duration::from_secs(5)).await);
    pool
}

#[tokio::test(start_paused = true)]
async fn answered_dropped_and_unavailable_calls_in_plain_words() {
    let name = "core-plain";
    let pool = pool(name, 1).await;
    assert!(pool.ready_timeout(Duration::from_secs(5)).await);
    let balance: Balance<Svc, u32> = Balance::new(pool);
    for n in [0, 2, 4] {
        assert_eq!(balance.send(n).await.expect("answered"), n);
    }
    // The caller gives up on a call whose endpoint never answers.
    let mut hanging = Box::pin(balance.send(1));
    assert!((&mut hanging).now_or_never().is_none(), "sent, not answered");
    drop(hanging);
    let seen = test_recorder::recorded();
    let status = |s| [("grpc.target", name), ("grpc.status", s)];
    assert_eq!(seen.histogram_count(CALL_DURATION, &status("success")), 3);
    assert_eq!(seen.histogram_count(ATTEMPT_DURATION, &status("success")), 3);
    assert_eq!(seen.histogram_count(CALL_DURATION, &status("cancelled")), 1);
    assert_eq!(seen.histogram_count(ATTEMPT_DURATION, &status("cancelled")), 1);
    assert_eq!(seen.counter(ATTEMPTS_STARTED, &[("grpc.target", name)]), 4);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_waits_out_the_endpoint_wait_is_unavailable_for_that_long() {
    let name = "core-empty";
    let pool = pool(name, 0).await;
    let balance: Balance<Svc, u32> = Balance::new(pool).wait(Wait::at_most(Duration::from_millis(300)));
    balance.send(0).await.expect_err("no endpoint");
    let seen = test_recorder::recorded();
    let calls = seen.samples(CALL_DURATION, &[("grpc.target", name), ("grpc.status", "unavailable")]);
    assert_eq!(calls, vec![0.3], "the call lasted its wait (paused clock)");
    assert_eq!(seen.counter(NO_ENDPOINT, &[("target", name)]), 1);
    assert_eq!(seen.counter(ATTEMPTS_STARTED, &[("grpc.target", name)]), 0);
}
