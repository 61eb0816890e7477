//! A pick allocates nothing: counted with a global allocator wrapper.
//!
//! This file is its own test binary so the counting allocator (from `allocation-counter`) sees only
//! this test.

use std::time::Duration;

use lb_core::discover::{self, Update};
use lb_core::pool::PoolConfig;
use lb_core::policy::{hash_key, Maglev, P2c, PickContext, RingHash, RoundRobin, SlowStart, Topology, WeightedRoundRobin};
use lb_core::test_util::TestConnector;
use lb_core::{Endpoint, Locality, Outcome, Policy, Pool};

/// Allocations made by `f` on this thread (allocation-counter installs the counting allocator).
fn allocations_during(f: impl FnOnce()) -> u64 {
    allocation_counter::measure(f).count_total
}

async fn pool_with(policy: impl Policy) -> Pool<()> {
    let eps = (0..1000u32)
        .map(|i| {
            let zone = if i % 3 == 0 { "a" } else { "b" };
            Endpoint::new(([10, 0, (i >> 8) as u8, i as u8], 80).into())
                .with_weight(1 + i % 5)
                .with_locality(Locality::unknown().with_zone(zone))
        })
        .collect();
    let (tx, rx) = discover::channel();
    tx.send(Update::Reset(eps));
    let pool = Pool::spawn(Box::pin(rx), TestConnector::with_connection(|_| ()), policy, PoolConfig::new("alloc"));
    assert!(pool.ready_timeout(Duration::from_secs(5)).await);
    // Let every endpoint connect.
    for _ in 0..50 {
        if pool.snapshot().healthy() == 1000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pool.snapshot().healthy(), 1000);
    pool
}

#[tokio::test]
async fn a_pick_allocates_nothing() {
    let policies: Vec<(&str, Box<dyn Policy>)> = vec![
        ("round robin", Box::new(RoundRobin::new())),
        ("weighted round robin", Box::new(WeightedRoundRobin::new())),
        ("p2c least request", Box::new(P2c::least_request())),
        ("p2c peak ewma", Box::new(P2c::peak_ewma())),
        ("p2c utilization", Box::new(P2c::utilization())),
        ("weighted round robin from load reports", Box::new(WeightedRoundRobin::from_load_reports())),
        ("ring hash", Box::new(RingHash::new())),
        ("maglev", Box::new(Maglev::new())),
        ("slow start(p2c least request)", Box::new(SlowStart::new(P2c::least_request(), std::time::Duration::from_secs(30)).expect("not hashing"))),
        ("topology(p2c peak ewma)", Box::new(Topology::new(P2c::peak_ewma(), Locality::unknown().with_zone("a")))),
    ];
    assert!(allocations_during(|| drop(Box::new(7u64))) >= 1, "the counting allocator is installed");
    for (name, policy) in policies {
        let pool = pool_with(policy).await;
        let ctx = PickContext::with_hash(hash_key(b"user-7"));
        // Warm up: the first snapshot load on a thread may set up per-thread state.
        for _ in 0..10 {
            drop(pool.pick(&ctx));
        }
        let n = allocations_during(|| {
            for _ in 0..10_000 {
                let mut picked = pool.pick(&ctx).expect("picked");
                picked.guard.set_outcome(Outcome::Success);
                drop(picked);
            }
        });
        assert_eq!(n, 0, "{name}: {n} allocations in 10,000 pick + complete");
    }
}

/// A recorder whose handles are bare atomics: what it stores allocates nothing, so any allocation
/// counted below would be lb's (labels built or series looked up per call).
mod atomics {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};

    pub(crate) struct Samples(pub(crate) AtomicU64);

    impl HistogramFn for Samples {
        fn record(&self, _: f64) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) struct Atomics;

    impl Recorder for Atomics {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(Arc::new(AtomicU64::new(0)))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(Arc::new(AtomicU64::new(0)))
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(Arc::new(Samples(AtomicU64::new(0))))
        }
    }
}

#[tokio::test]
async fn a_request_through_the_engine_allocates_nothing_for_its_metrics() {
    use futures_util::FutureExt;
    use lb_core::Balance;

    // This binary's only recorder; every series is registered (allocating) when the pool starts
    // and the first time an endpoint sees each status. Round robin, so that the warm-up below
    // ends a call at every endpoint (a P2C warm-up may leave one unpicked, and its first
    // series would be registered inside the measured sends).
    metrics::set_global_recorder(atomics::Atomics).expect("the first recorder of this binary");
    let eps = (0..10u32).map(|i| Endpoint::new(([10, 0, 0, i as u8], 80).into())).collect();
    let (tx, rx) = discover::channel();
    tx.send(Update::Reset(eps));
    let connector = TestConnector::with_connection(|_| tower::service_fn(|n: u32| async move { Ok::<_, lb_core::BoxError>(n) }));
    let config = PoolConfig {
        metrics_endpoint_labels: true,
        ..PoolConfig::new("alloc-metrics")
    };
    let pool = Pool::spawn(Box::pin(rx), connector, RoundRobin::new(), config);
    let mut published = pool.subscribe();
    let all = tokio::time::timeout(Duration::from_secs(60), published.wait_for(|_| pool.snapshot().healthy() == 10)).await;
    assert!(matches!(all, Ok(Ok(_))), "{} of 10 endpoints healthy", pool.snapshot().healthy());
    let balance: Balance<_, u32> = Balance::new(pool);
    let send = |n: u32| balance.send(n).now_or_never().expect("the endpoint answers at once").expect("answered");
    for n in 0..100 {
        assert_eq!(send(n), n);
    }
    let n = allocations_during(|| {
        for n in 0..10_000 {
            std::hint::black_box(send(n));
        }
    });
    assert_eq!(n, 0, "{n} allocations in 10,000 sends recording attempt and call metrics");
}
