//! The request engine's own cost: `Balance::send` (pick, readiness, call, completion) over
//! endpoint services that answer at once, beside the bare pick + completion it wraps, in one run.
//!
//! `cargo bench -p lb-core --bench engine`
//!
//! - `engine/pick+complete/<n>`: `Pool::pick`, then the guard dropped with a success — what every
//!   face pays at the least;
//! - `engine/balance-send/<n>`: `Balance::send` polled to completion over the same pool, the
//!   endpoint service an always-ready `tower::Service` returning at once.
//!
//! - `engine/balance-send-recorded/<n>`: the same over a pool built once a Prometheus recorder
//!   (metrics-exporter-prometheus) is installed, so each send records its attempt and call
//!   (`lb_core::metrics`); the first two run over pools built before it, whose metric handles are
//!   the no-ops a process without a recorder has.
//!
//! The difference between the first two is the engine's state machine: the future, the endpoint
//! service's readiness and call, the completion tracker; between the last two, recording.

#![allow(missing_docs)] // criterion_group! generates an undocumented fn

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lb_core::discover::{self, Update};
use lb_core::policy::{P2c, PickContext};
use lb_core::pool::{connect_fn, Connected, PoolConfig};
use lb_core::{Balance, BoxError, Endpoint, Outcome, Pool};

/// An endpoint service that is always ready and answers at once.
#[derive(Clone, Copy)]
struct Instant;

impl tower_service::Service<()> for Instant {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

fn pool(rt: &tokio::runtime::Runtime, n: usize, name: &str) -> Pool<Instant> {
    rt.block_on(async {
        let (tx, rx) = discover::channel();
        let endpoints = (0..n).map(|i| Endpoint::new(([10, 0, (i >> 8) as u8, i as u8], 80).into())).collect();
        tx.send(Update::Reset(endpoints));
        let connector =
            connect_fn(|_: &Endpoint| std::future::ready(Ok::<_, Infallible>(Connected::without_close_signal(Instant))));
        let pool = Pool::spawn(Box::pin(rx), connector, P2c::peak_ewma(), PoolConfig::new(name));
        assert!(pool.ready_timeout(Duration::from_secs(30)).await, "endpoints connect");
        while pool.snapshot().healthy() < n {
            let mut changed = pool.subscribe();
            let _ = tokio::time::timeout(Duration::from_secs(30), changed.changed()).await;
        }
        std::mem::forget(tx); // keep discovery open for the run
        pool
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let mut group = c.benchmark_group("engine");
    let sizes = [10, 1_000];
    let pools: Vec<Pool<Instant>> = sizes.iter().map(|n| pool(&rt, *n, "bench")).collect();
    // A status's series is registered the first time it is recorded: once each, before the recorder.
    for pool in &pools {
        let balance: Balance<Instant, ()> = Balance::new(pool.clone());
        let fut = pin!(balance.send(()));
        assert!(fut.poll(&mut Context::from_waker(Waker::noop())).is_ready());
    }
    // Pools built from here on record into Prometheus; the ones above keep no-op handles.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(lb_core::metrics::DURATION_BUCKETS)
        .expect("valid buckets")
        .install_recorder()
        .expect("the first recorder of this process");
    let recorded: Vec<Pool<Instant>> = sizes.iter().map(|n| pool(&rt, *n, "bench-recorded")).collect();
    for ((n, pool), recorded) in sizes.into_iter().zip(pools).zip(recorded) {
        let ctx = PickContext::default();
        group.bench_with_input(BenchmarkId::new("pick+complete", n), &n, |b, _| {
            b.iter(|| {
                let mut p = pool.pick(&ctx).expect("a healthy endpoint");
                p.guard.set_outcome(Outcome::Success);
            })
        });
        let balance: Balance<Instant, ()> = Balance::new(pool.clone());
        let mut cx = Context::from_waker(Waker::noop());
        group.bench_with_input(BenchmarkId::new("balance-send", n), &n, |b, _| {
            b.iter(|| {
                let fut = pin!(balance.send(()));
                match fut.poll(&mut cx) {
                    Poll::Ready(r) => r.expect("answered"),
                    Poll::Pending => panic!("an always-ready endpoint answers at once"),
                }
            })
        });
        let balance: Balance<Instant, ()> = Balance::new(recorded);
        group.bench_with_input(BenchmarkId::new("balance-send-recorded", n), &n, |b, _| {
            b.iter(|| {
                let fut = pin!(balance.send(()));
                match fut.poll(&mut cx) {
                    Poll::Ready(r) => r.expect("answered"),
                    Poll::Pending => panic!("an always-ready endpoint answers at once"),
                }
            });
            // What a scrape does with the samples, outside the measured loop.
            prometheus.run_upkeep();
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
