//! Pick + report round trip through the C ABI, next to the same pick + guard drop in Rust.
//!
//! Run: `cargo bench -p lb-ffi --bench roundtrip`
//!
//! Both sides use the same engine (`lb-core`'s pool, P2C PeakEWMA over three endpoints, picks read
//! from the lock-free snapshot). The C ABI adds the argument checks, filling the `lb_pick` struct
//! (address formatting) and the sharded token map that holds the `LoadGuard` between pick and
//! report. "2 threads": two threads run the round trip at once; the time is per round trip per
//! thread (so the aggregate rate is twice 1/time).

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::ffi::CString;
use std::net::TcpListener;
use std::ptr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lb_core::policy::{P2c, PickContext};
use lb_core::test_util::TestConnector;
use lb_core::{Endpoint, Outcome, Pool, PoolConfig};
use lb_ffi::*;

struct CBalancer(*mut lb_balancer);
// SAFETY: every lb_balancer_* function but free is documented thread-safe.
unsafe impl Send for CBalancer {}
// SAFETY: as above.
unsafe impl Sync for CBalancer {}

impl CBalancer {
    #[inline]
    fn round_trip(&self) {
        let mut pick = std::mem::MaybeUninit::<lb_pick>::uninit();
        // SAFETY: a live balancer and a writable lb_pick; no key.
        let s = unsafe { lb_balancer_pick(self.0, ptr::null(), 0, pick.as_mut_ptr()) };
        assert_eq!(s, lb_status::LB_OK);
        // SAFETY: LB_OK means the pick was written.
        let token = unsafe { pick.assume_init_ref() }.token;
        // SAFETY: a live balancer.
        let s = unsafe { lb_balancer_report(self.0, token, 0, -1) };
        assert_eq!(s, lb_status::LB_OK);
    }
}

impl Drop for CBalancer {
    fn drop(&mut self) {
        // SAFETY: from lb_balancer_new, freed once.
        unsafe { lb_balancer_free(self.0) }
    }
}

fn two_threads(iters: u64, f: impl Fn() + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        let a = s.spawn(|| (0..iters).for_each(|_| f()));
        (0..iters).for_each(|_| f());
        a.join().expect("bench thread");
    });
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").to_string())
        .collect();
    let target = format!("static:///{}", addrs.join(","));

    // Rust: the pool directly.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let endpoints = addrs
        .iter()
        .map(|a| Endpoint::new(a.parse().expect("addr")))
        .collect();
    let pool = {
        let _g = rt.enter();
        Pool::spawn(
            lb_core::discover::fixed(endpoints),
            TestConnector::with_connection(|_| ()),
            P2c::peak_ewma(),
            PoolConfig::new(&target),
        )
    };
    assert!(rt.block_on(pool.ready_timeout(Duration::from_secs(5))));
    let rust_round_trip = || {
        let mut picked = pool.pick(&PickContext::default()).expect("a pick");
        picked.guard.set_outcome(Outcome::Success);
        drop(picked);
    };

    // C ABI: the same policy and endpoints, no probing (the Rust side connects nowhere either).
    let t = CString::new(target.clone()).expect("no NUL");
    let o = CString::new(r#"{"policy":"p2c-ewma","probe":false}"#).expect("no NUL");
    let mut b = ptr::null_mut();
    // SAFETY: valid strings and out-pointer.
    assert_eq!(
        unsafe { lb_balancer_new(t.as_ptr(), o.as_ptr(), &mut b) },
        lb_status::LB_OK
    );
    let cb = CBalancer(b);
    // SAFETY: a live balancer.
    assert_eq!(
        unsafe { lb_balancer_wait_ready(cb.0, 5000) },
        lb_status::LB_OK
    );

    let mut g = c.benchmark_group("pick_report");
    g.bench_function(BenchmarkId::new("rust", "1 thread"), |bch| {
        bch.iter(rust_round_trip)
    });
    g.bench_function(BenchmarkId::new("c_abi", "1 thread"), |bch| {
        bch.iter(|| cb.round_trip())
    });
    g.bench_function(BenchmarkId::new("rust", "2 threads"), |bch| {
        bch.iter_custom(|n| two_threads(n, rust_round_trip))
    });
    g.bench_function(BenchmarkId::new("c_abi", "2 threads"), |bch| {
        bch.iter_custom(|n| two_threads(n, || cb.round_trip()))
    });
    g.finish();
    drop(cb);
    drop(pool);
    drop(listeners);
}

criterion_group!(benches, bench);
criterion_main!(benches);
