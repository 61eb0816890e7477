//! Pick cost per policy, against tower's P2C balancer over PeakEwma services, in one run.
//!
//! `cargo bench -p lb-core --bench pick`
//!
//! Each iteration is one request's balancing work: pick + start load tracking + record completion.
//! - `lb/<policy>/<n>`: `Pool::pick` on a live pool of `n` connected endpoints, then the guard is
//!   dropped with a success.
//! - `tower-p2c-peak-ewma/<n>`: `tower::balance::p2c::Balance` over `n` `PeakEwma`-wrapped
//!   always-ready services: `poll_ready` (which samples and compares) + `call` + completion.
//! - `pick-only/…`: the pick alone (the guard is dropped without an outcome, recording nothing).
//! - `…/2-threads/…`: two threads doing the same at once on one shared balancer (the tower one behind
//!   a `Mutex`, since it needs `&mut self`); time is per pick per thread.
//! - `hash-build/<policy>/<n>`: `Policy::build` alone for the two consistent-hashing policies over
//!   `n` healthy candidates (what every membership change costs them).

#![allow(missing_docs)] // criterion_group! generates an undocumented fn

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lb_core::discover::{self, Update};
use lb_core::pool::PoolConfig;
use lb_core::policy::{hash_key, Candidate, Maglev, P2c, PickContext, RingHash, RoundRobin, Topology, WeightedRoundRobin};
use lb_core::test_util::TestConnector;
use lb_core::{Endpoint, Locality, LoadReport, Outcome, Policy, Pool};
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwma};
use tower::Service;

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

fn endpoints(n: usize) -> Vec<Endpoint> {
    (0..n)
        .map(|i| {
            let zone = if i % 4 == 0 { "a" } else { "b" };
            Endpoint::new(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 80).into())
                .with_locality(Locality::unknown().with_zone(zone))
        })
        .collect()
}

fn lb_pool(rt: &tokio::runtime::Runtime, n: usize, policy: Box<dyn Policy>) -> Pool<()> {
    rt.block_on(async {
        let (tx, rx) = discover::channel();
        tx.send(Update::Reset(endpoints(n)));
        // `()` connections: the measured pick clones no connection handle.
        let pool = Pool::spawn(Box::pin(rx), TestConnector::with_connection(|_| ()), policy, PoolConfig::new("bench"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while pool.snapshot().healthy() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(pool.snapshot().healthy(), n, "every endpoint connected");
        // Servers' load reports, for the policies that use them (weights take a rebuild, 100 ms).
        for (i, e) in pool.snapshot().entries().iter().enumerate() {
            let report = LoadReport { application_utilization: 0.1 + (i % 10) as f64 / 10.0, rps_fractional: 100.0, ..Default::default() };
            e.load.record_report(&report, tokio::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        std::mem::forget(tx); // keep discovery open for the run
        pool
    })
}

/// A policy's name and how to make one.
type NamedPolicy = (&'static str, fn() -> Box<dyn Policy>);

fn policies() -> Vec<NamedPolicy> {
    vec![
        ("round-robin", || Box::new(RoundRobin::new())),
        ("weighted-round-robin", || Box::new(WeightedRoundRobin::new())),
        ("p2c-least-request", || Box::new(P2c::least_request())),
        ("p2c-peak-ewma", || Box::new(P2c::peak_ewma())),
        ("ring-hash", || Box::new(RingHash::new())),
        ("maglev", || Box::new(Maglev::new())),
        ("weighted-round-robin-orca", || {
            Box::new(
                WeightedRoundRobin::from_load_reports()
                    .blackout_period(Duration::ZERO)
                    .weight_update_period(Duration::from_millis(100)),
            )
        }),
        ("p2c-utilization", || Box::new(P2c::utilization())),
        ("topology-p2c-peak-ewma", || {
            Box::new(Topology::new(P2c::peak_ewma(), Locality::unknown().with_zone("a")))
        }),
    ]
}

#[inline]
fn lb_pick(pool: &Pool<()>, ctx: &PickContext) {
    let mut picked = pool.pick(ctx).expect("a healthy endpoint");
    picked.guard.set_outcome(Outcome::Success);
}

type TowerBalance = Balance<ServiceList<Vec<PeakEwma<tower::util::ServiceFn<fn(()) -> std::future::Ready<Result<(), Infallible>>>>>>, ()>;

fn ok(_: ()) -> std::future::Ready<Result<(), Infallible>> {
    std::future::ready(Ok(()))
}

fn tower_balance(n: usize) -> TowerBalance {
    let svcs = (0..n)
        .map(|_| {
            PeakEwma::new(
                tower::service_fn(ok as fn(()) -> std::future::Ready<Result<(), Infallible>>),
                Duration::from_millis(30),
                Duration::from_secs(10).as_nanos() as f64,
                CompleteOnResponse::default(),
            )
        })
        .collect::<Vec<_>>();
    let mut b = Balance::new(ServiceList::new(svcs));
    // The first poll_ready drains discovery (inserting every service).
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(b.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    b
}

#[inline]
fn tower_pick(b: &mut TowerBalance) {
    let mut cx = Context::from_waker(Waker::noop());
    match b.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("always-ready services"),
    }
    let fut = pin!(b.call(()));
    match fut.poll(&mut cx) {
        Poll::Ready(Ok(_)) => {}
        _ => panic!("ready response"),
    }
}

fn on_two_threads(iters: u64, f: impl Fn() + Sync) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let run = || {
            barrier.wait();
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed()
        };
        let a = s.spawn(run);
        let b = s.spawn(run);
        let (a, b) = (a.join().expect("bench thread"), b.join().expect("bench thread"));
        a.max(b)
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let ctx = PickContext::with_hash(hash_key(b"user-42"));

    let mut single = c.benchmark_group("pick/1-thread");
    single.measurement_time(Duration::from_secs(1)).warm_up_time(Duration::from_millis(300)).sample_size(30);
    for &n in &SIZES {
        let mut tb = tower_balance(n);
        single.bench_with_input(BenchmarkId::new("tower-p2c-peak-ewma", n), &n, |bch, _| bch.iter(|| tower_pick(&mut tb)));
        for (name, make) in policies() {
            let pool = lb_pool(&rt, n, make());
            single.bench_with_input(BenchmarkId::new(format!("lb-{name}"), n), &n, |bch, _| bch.iter(|| lb_pick(&pool, &ctx)));
        }
    }
    single.finish();

    let mut double = c.benchmark_group("pick/2-threads");
    double.measurement_time(Duration::from_secs(1)).warm_up_time(Duration::from_millis(300)).sample_size(20);
    for &n in &SIZES {
        let tb = Mutex::new(tower_balance(n));
        double.bench_with_input(BenchmarkId::new("tower-p2c-peak-ewma", n), &n, |bch, _| {
            bch.iter_custom(|iters| on_two_threads(iters, || tower_pick(&mut tb.lock().expect("lock"))))
        });
        for (name, make) in policies() {
            let pool = Arc::new(lb_pool(&rt, n, make()));
            double.bench_with_input(BenchmarkId::new(format!("lb-{name}"), n), &n, |bch, _| {
                bch.iter_custom(|iters| on_two_threads(iters, || lb_pick(&pool, &ctx)))
            });
        }
    }
    double.finish();

    // The pick alone (guard dropped without an outcome, so nothing is recorded), at 1,000 endpoints.
    let mut only = c.benchmark_group("pick-only/1-thread");
    only.measurement_time(Duration::from_secs(1)).warm_up_time(Duration::from_millis(300)).sample_size(30);
    for (name, make) in policies() {
        let pool = lb_pool(&rt, 1_000, make());
        only.bench_with_input(BenchmarkId::new(format!("lb-{name}"), 1_000), &1_000, |bch, _| {
            bch.iter(|| drop(pool.pick(&ctx).expect("a healthy endpoint")))
        });
    }
    only.finish();

    // Building a picker, for the two hashing policies (their builds are the expensive ones).
    let mut build = c.benchmark_group("hash-build");
    build.measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(300)).sample_size(10);
    for n in [10, 100, 1_000] {
        let candidates: Vec<Candidate> = endpoints(n).into_iter().map(Candidate::new).collect();
        let hashing: [(&str, Box<dyn Policy>); 2] = [("ring-hash", Box::new(RingHash::new())), ("maglev", Box::new(Maglev::new()))];
        for (name, policy) in hashing {
            build.bench_with_input(BenchmarkId::new(name, n), &n, |bch, _| bch.iter(|| policy.build(&candidates)));
        }
    }
    build.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
