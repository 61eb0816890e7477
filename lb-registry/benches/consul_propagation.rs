//! Propagation from a Consul registration change to a client's picker, against the Consul double
//! (a test double of Consul's HTTP API on 127.0.0.1, not Consul), side by side with:
//!
//! - the floor: the same change pushed straight into the pool through `lb_core::discover::channel`
//!   (no registry at all);
//! - a polling baseline: the same client code, but with blocking reduced to 10 ms and queries 1 s
//!   apart, i.e. polling once a second (the ginepro style, which polls every 10 s by default).
//!
//! Each sample: register (or deregister) an instance, then wait until the pool's published picker
//! includes (or excludes) it; samples through Consul are spaced by a random pause (0–1 s), so a
//! change lands at a random moment of the client's query cycle, as real changes do. Reported:
//! p50 / p99 / max per case and ratios to the floor.
//!
//! ```text
//! cargo bench -p lb-registry --features consul --bench consul_propagation
//! ```
//!
//! `SAMPLES` (default 200) sets the samples of the blocking-query and floor cases; the polling
//! baseline takes a tenth of them (each costs about half a second).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lb_core::discover::{self, BoxDiscover};
use lb_core::policy::RoundRobin;
use lb_core::test_util::TestConnector;
use lb_core::{Endpoint, Pool, PoolConfig, Update};
use lb_doubles::consul::ConsulDouble;
use lb_registry::consul::{ConsulRegistrar, ConsulResolver};
use lb_registry::{Registrar as _, Resolver as _};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn pool(discover: BoxDiscover) -> Pool<SocketAddr> {
    Pool::spawn(discover, TestConnector::new(), RoundRobin::new(), PoolConfig::new("bench"))
}

/// Waits until the picker's healthy set does (or does not) contain `port`.
async fn until_picker(pool: &Pool<SocketAddr>, port: u16, present: bool) {
    let mut rx = pool.subscribe();
    loop {
        let has = pool
            .snapshot()
            .entries()
            .iter()
            .any(|e| e.healthy && e.endpoint.addr().port() == port);
        if has == present {
            return;
        }
        if tokio::time::timeout(Duration::from_secs(30), rx.changed()).await.is_err() {
            panic!("the picker never {} port {port}", if present { "gained" } else { "lost" });
        }
    }
}

#[derive(Default)]
struct Samples {
    add: Vec<Duration>,
    remove: Vec<Duration>,
}

async fn through_consul(double: &ConsulDouble, resolver: ConsulResolver, service: &str, n: usize) -> Samples {
    let registrar = ConsulRegistrar::builder().address(double.authority()).build().expect("options");
    // A standing instance, so a removal never empties the set (which the cache would refuse).
    let _base = registrar.register(service, Endpoint::new(addr(9000))).await.expect("register");
    let pool = pool(resolver.resolve(service));
    until_picker(&pool, 9000, true).await;
    let mut s = Samples::default();
    for i in 0..n {
        let port = 10_000 + i as u16;
        let t = Instant::now();
        let reg = registrar.register(service, Endpoint::new(addr(port))).await.expect("register");
        until_picker(&pool, port, true).await;
        s.add.push(t.elapsed());
        let t = Instant::now();
        reg.deregister().await;
        until_picker(&pool, port, false).await;
        s.remove.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..1000))).await;
    }
    s
}

async fn floor(n: usize) -> Samples {
    let (tx, rx) = discover::channel();
    let base = Endpoint::new(addr(9000));
    tx.send(Update::Reset(vec![base]));
    let pool = pool(Box::pin(rx));
    until_picker(&pool, 9000, true).await;
    let mut s = Samples::default();
    for i in 0..n {
        let ep = Endpoint::new(addr(10_000 + i as u16));
        let t = Instant::now();
        tx.send(Update::Add(vec![ep.clone()]));
        until_picker(&pool, ep.addr().port(), true).await;
        s.add.push(t.elapsed());
        let t = Instant::now();
        tx.send(Update::Remove(vec![ep.id().clone()]));
        until_picker(&pool, ep.addr().port(), false).await;
        s.remove.push(t.elapsed());
    }
    s
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn stats(v: &[Duration]) -> (Duration, Duration, Duration) {
    let mut v = v.to_vec();
    v.sort();
    (pct(&v, 0.5), pct(&v, 0.99), *v.last().expect("samples"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let n: usize = std::env::var("SAMPLES").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let double = ConsulDouble::start().await.expect("start the consul double");

    let floor = floor(n).await;
    let blocking = ConsulResolver::builder().address(double.authority()).build().expect("options");
    let ours = through_consul(&double, blocking, "blocking", n).await;
    let polling = ConsulResolver::builder()
        .address(double.authority())
        .wait(Duration::from_millis(10))
        .min_interval(Duration::from_secs(1))
        .build()
        .expect("options");
    let polled = through_consul(&double, polling, "polling", (n / 10).max(5)).await;

    println!("propagation of a registration change to the picker (consul double on 127.0.0.1)");
    println!("{:<44} {:>7} {:>10} {:>10} {:>10} {:>12}", "case", "samples", "p50 ms", "p99 ms", "max ms", "p50 / floor");
    let (floor_add, _, _) = stats(&floor.add);
    let (floor_remove, _, _) = stats(&floor.remove);
    for (name, s) in [
        ("floor: update pushed into the pool", &floor),
        ("consul blocking queries (lb)", &ours),
        ("consul polling every 1 s (baseline)", &polled),
    ] {
        for (kind, v, base) in [("register", &s.add, floor_add), ("deregister", &s.remove, floor_remove)] {
            let (p50, p99, max) = stats(v);
            println!(
                "{:<44} {:>7} {:>10.3} {:>10.3} {:>10.3} {:>11.0}x",
                format!("{name}, {kind}"),
                v.len(),
                ms(p50),
                ms(p99),
                ms(max),
                p50.as_secs_f64() / base.as_secs_f64().max(1e-9)
            );
        }
    }
    let (ours_p50, _, _) = stats(&ours.add);
    let (poll_p50, _, _) = stats(&polled.add);
    println!(
        "register p50: polling / blocking = {:.0}x",
        poll_p50.as_secs_f64() / ours_p50.as_secs_f64().max(1e-9)
    );
}
