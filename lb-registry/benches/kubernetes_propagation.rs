//! Propagation from an EndpointSlice change to a client's picker, through the Kubernetes API
//! server double (lb-doubles' double of the list/watch protocol on 127.0.0.1, not a real API server)
//! and kube-runtime's watcher, side by side with the floor: the same change pushed straight into an
//! identical pool through `lb_core::discover::channel` (no registry at all).
//!
//! Two service sizes: 3 endpoints in one slice, and 10,000 endpoints in 100 slices (the largest
//! slices the controller makes), where each event re-derives only the changed slice's pods. Each
//! sample flips one endpoint between ready and not ready and waits until the pool's published
//! picker reflects it. Reported: p50 / p99 / max per case and the ratio to the floor of the same
//! size.
//!
//! ```text
//! cargo bench -p lb-registry --features kubernetes --bench kubernetes_propagation
//! ```
//!
//! `SAMPLES` (default 200) sets the samples per case.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lb_core::discover::{self, BoxDiscover};
use lb_core::policy::RoundRobin;
use lb_core::test_util::TestConnector;
use lb_core::{Endpoint, Pool, PoolConfig, Update};
use lb_doubles::kube::{endpoint, endpoint_slice, KubeDouble};
use lb_registry::kubernetes::KubernetesResolver;

fn pool(discover: BoxDiscover) -> Pool<SocketAddr> {
    let mut config = PoolConfig::new("bench");
    config.outlier = None;
    Pool::spawn(discover, TestConnector::new(), RoundRobin::new(), config)
}

fn ip(slice: usize, i: usize) -> String {
    format!("10.{}.{}.{}", slice / 250, slice % 250, i + 1)
}

fn addr(slice: usize, i: usize) -> SocketAddr {
    SocketAddr::new(ip(slice, i).parse().expect("an IPv4 address"), 80)
}

/// Waits until the picker's healthy set does (or does not) contain `target`, and how many are healthy.
async fn until_picker(pool: &Pool<SocketAddr>, target: SocketAddr, present: bool, healthy: usize) {
    let mut rx = pool.subscribe();
    loop {
        {
            let snap = pool.snapshot();
            if snap.healthy() == healthy && snap.entries().iter().any(|e| e.healthy && e.endpoint.addr() == target) == present {
                return;
            }
        }
        if tokio::time::timeout(Duration::from_secs(10), rx.changed()).await.is_err() {
            panic!("the picker never reflected the change");
        }
    }
}

struct Stats {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Stats { p50: at(0.5), p99: at(0.99), max: at(1.0) }
}

fn slice_of(s: usize, per_slice: usize, down: Option<usize>) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    let mut b = endpoint_slice(&format!("greeter-{s:03}"), "greeter").port(Some("grpc"), 80);
    for i in 0..per_slice {
        let e = endpoint(&ip(s, i));
        b = b.endpoint(if down == Some(i) { e.not_ready() } else { e });
    }
    b.build()
}

/// Through the double: flip endpoint 0 of slice 0 per sample.
async fn through_kubernetes(slices: usize, per_slice: usize, samples: usize) -> Vec<Duration> {
    let double = KubeDouble::start().await.expect("double");
    for s in 0..slices {
        double.apply(slice_of(s, per_slice, None));
    }
    let url = double.url().parse().expect("a URI");
    // As KubernetesResolverBuilder::client asks: kube's retry layer off.
    let mut config = kube::Config::new(url);
    config.default_retry = false;
    let client = kube::Client::try_from(config).expect("a client");
    let resolver = KubernetesResolver::builder().client(client).ignore_env().build();
    let pool = pool(resolver.watch("greeter.default:grpc").expect("valid service"));
    let total = slices * per_slice;
    until_picker(&pool, addr(0, 0), true, total).await;
    let mut out = Vec::with_capacity(samples);
    for n in 0..samples {
        let down = n % 2 == 0;
        let start = Instant::now();
        double.apply(slice_of(0, per_slice, down.then_some(0)));
        until_picker(&pool, addr(0, 0), !down, if down { total - 1 } else { total }).await;
        out.push(start.elapsed());
    }
    out
}

/// The floor: the same set and the same flips pushed straight into the pool.
async fn floor(slices: usize, per_slice: usize, samples: usize) -> Vec<Duration> {
    let (tx, rx) = discover::channel();
    let all: Vec<Endpoint> = (0..slices).flat_map(|s| (0..per_slice).map(move |i| Endpoint::new(addr(s, i)))).collect();
    let total = all.len();
    tx.send(Update::Reset(all));
    let pool = pool(Box::pin(rx));
    until_picker(&pool, addr(0, 0), true, total).await;
    let mut out = Vec::with_capacity(samples);
    for n in 0..samples {
        let down = n % 2 == 0;
        let start = Instant::now();
        if down {
            tx.send(Update::Remove(vec![addr(0, 0).into()]));
        } else {
            tx.send(Update::Add(vec![Endpoint::new(addr(0, 0))]));
        }
        until_picker(&pool, addr(0, 0), !down, if down { total - 1 } else { total }).await;
        out.push(start.elapsed());
    }
    out
}

fn main() {
    let samples: usize = std::env::var("SAMPLES").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!("propagation of one endpoint flip to the picker, {samples} samples per case");
    println!("{:<44} {:>10} {:>10} {:>10} {:>12}", "case", "p50", "p99", "max", "p50 / floor");
    for (slices, per_slice) in [(1, 3), (100, 100)] {
        let f = stats(rt.block_on(floor(slices, per_slice, samples)));
        let k = stats(rt.block_on(through_kubernetes(slices, per_slice, samples)));
        let n = slices * per_slice;
        for (name, s) in [(format!("floor (discover::channel), {n} endpoints"), &f), (format!("kubernetes watch via double, {n} endpoints"), &k)] {
            println!(
                "{:<44} {:>10.2?} {:>10.2?} {:>10.2?} {:>11.1}×",
                name,
                s.p50,
                s.p99,
                s.max,
                s.p50.as_secs_f64() / f.p50.as_secs_f64()
            );
        }
    }
}
