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
//! The difference is the engine's state machine: the future, the endpoint service's readiness and
//! call, the completion tracker.

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

fn pool(rt: &tokio::runtime::Runtime, n: usize) -> Pool<Instant> {
    rt.block_on(async {
        let (tx, rx) = discover::channel();
        let endpoints = (0..n).map(|i| Endpoint::new(([10, 0, (i >> 8) as u8, i as u8], 80).into())).collect();
        tx.send(Update::Reset(endpoints));
        let connector =
            connect_fn(|_: &Endpoint| std::future::ready(Ok::<_, Infallible>(Connected::without_close_signal(Instant))));
        let pool = Pool::spawn(Box::pin(rx), connector, P2c::peak_ewma(), PoolConfig::new("bench"));
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
    for n in [10, 1_000] {
        let pool = pool(&rt, n);
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
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
