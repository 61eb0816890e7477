//! A bounded closed-loop load driver that keeps every call as an [`Event`].
//!
//! Closed loop (each caller waits for its reply before sending the next), like most RPC clients
//! and like `lb_examples::load`; unlike that module it keeps the completion time and backend of
//! every call, which the fault scenarios need for their timelines. Shares are counted from the
//! backend address each reply names, not from the balancer's own bookkeeping.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use lb_examples::pb::greeter_client::GreeterClient;
use lb_examples::pb::HelloRequest;
use tokio::time::Instant;

/// One finished call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Event {
    /// When the call finished, from the start of the run.
    pub(crate) at: Duration,
    /// How long it took.
    pub(crate) latency: Duration,
    /// The backend that answered; `None` when the call failed.
    pub(crate) backend: Option<SocketAddr>,
}

/// Every call of one run.
#[derive(Clone, Debug, Default)]
pub(crate) struct Run {
    /// The calls, in no particular order.
    pub(crate) events: Vec<Event>,
    /// How long the run lasted.
    pub(crate) elapsed: Duration,
}

impl Run {
    /// Successful calls per second.
    pub(crate) fn throughput(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Successful calls.
    pub(crate) fn ok(&self) -> u64 {
        self.events.iter().filter(|e| e.backend.is_some()).count() as u64
    }

    /// Failed calls.
    pub(crate) fn errors(&self) -> u64 {
        self.events.len() as u64 - self.ok()
    }

    /// Nearest-rank latency percentile over every call (failed ones included), in milliseconds.
    pub(crate) fn percentile_ms(&self, q: f64) -> f64 {
        let mut lat: Vec<Duration> = self.events.iter().map(|e| e.latency).collect();
        lat.sort_unstable();
        lb_examples::load::percentile(&lat, q).as_secs_f64() * 1e3
    }

    /// Mean latency over every call, in milliseconds.
    pub(crate) fn mean_ms(&self) -> f64 {
        let n = self.events.len().max(1) as f64;
        self.events.iter().map(|e| e.latency.as_secs_f64()).sum::<f64>() / n * 1e3
    }

    /// Successful calls by backend.
    pub(crate) fn per_backend(&self) -> BTreeMap<SocketAddr, u64> {
        let mut m = BTreeMap::new();
        for b in self.events.iter().filter_map(|e| e.backend) {
            *m.entry(b).or_insert(0) += 1;
        }
        m
    }

    /// The share of successful calls `backend` answered.
    pub(crate) fn share(&self, backend: SocketAddr) -> f64 {
        let ok = self.ok();
        if ok == 0 {
            return 0.0;
        }
        self.per_backend().get(&backend).copied().unwrap_or(0) as f64 / ok as f64
    }
}

/// Runs `concurrency` callers on `client` for `dur` after a warm-up of `warmup`.
pub(crate) async fn closed_loop<T>(client: GreeterClient<T>, concurrency: usize, warmup: Duration, dur: Duration) -> Run
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    if !warmup.is_zero() {
        once(client.clone(), concurrency, warmup).await;
    }
    once(client, concurrency, dur).await
}

async fn once<T>(client: GreeterClient<T>, concurrency: usize, dur: Duration) -> Run
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let start = Instant::now();
    let stop = start + dur;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let mut c = client.clone();
        tasks.spawn(async move {
            let mut events = Vec::with_capacity(8 * 1024);
            while Instant::now() < stop {
                let t = Instant::now();
                let result = c.say_hello(HelloRequest { name: "bench".into() }).await;
                let backend = result.ok().and_then(|r| {
                    lb_examples::server::backend_of(&r.into_inner().message).and_then(|a| a.parse().ok())
                });
                let now = Instant::now();
                events.push(Event { at: now - start, latency: now - t, backend });
                if backend.is_none() {
                    // A failing call returns at once; without a pause a dead target spins a core.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            events
        });
    }
    let mut run = Run::default();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(events) => run.events.extend(events),
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => {}
        }
    }
    run.elapsed = start.elapsed();
    run
}
