//! The greeter backend: answers `SayHello` with a message naming its own address.
//!
//! Naming the address in the reply is what lets a client count, from the outside, which backend
//! served each request — the per-backend shares in `greeter-client`'s JSON line and in the
//! quickstart's table come from there, not from any bookkeeping inside the balancer under test.
//!
//! Every backend also serves the standard `grpc.health.v1.Health` service (tonic-health), so health
//! checking clients (lb-tonic's, `grpc_health_probe`, Kubernetes' gRPC probes) work against it.
//!
//! A backend may play a machine of limited size ([`Config::capacity`]: at most that many calls at
//! once, the rest queue) and report its load with ORCA ([`Config::orca`]): its utilization is the
//! busy share of its capacity over about the last second, its rate the calls it answered.
//!
//! To play a degraded service it can fail a share of calls with `UNAVAILABLE`
//! ([`Config::fail_fraction`]), hold a share for longer ([`Config::tail_fraction`] and
//! [`Config::tail_delay`]: a latency tail), or stall, keeping its connections open while it
//! answers nothing until resumed ([`Backend::set_stalled`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::sync::Mutex;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tonic_health::server::HealthReporter;

use crate::pb::greeter_server::{Greeter, GreeterServer};
use crate::pb::{HelloReply, HelloRequest};

/// The word that separates the greeting from the backend's address in a reply.
const FROM: &str = " from ";

/// The reply a backend at `addr` sends to `name`: `Hello <name> from <addr>`.
pub fn greeting(name: &str, addr: SocketAddr) -> String {
    format!("Hello {name}{FROM}{addr}")
}

/// The backend address a reply names, or `None` when the reply does not come from this greeter
/// (another implementation's hello-world server answers just `Hello <name>`).
pub fn backend_of(message: &str) -> Option<&str> {
    message.rsplit_once(FROM).map(|(_, addr)| addr.trim()).filter(|a| !a.is_empty())
}

/// How a backend behaves.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Artificial delay before every reply.
    pub delay: Duration,
    /// At most this many calls served at once; the rest wait their turn (`None`: no limit).
    pub capacity: Option<usize>,
    /// Report load with ORCA (`endpoint-load-metrics-bin` in every response's trailers).
    pub orca: bool,
    /// The share of calls answered `UNAVAILABLE` at once (`0.0..=1.0`), each call drawn
    /// independently.
    pub fail_fraction: f64,
    /// The share of calls that wait [`Config::tail_delay`] more before their answer (`0.0..=1.0`).
    pub tail_fraction: f64,
    /// The extra wait of the calls in the tail.
    pub tail_delay: Duration,
}

impl Config {
    /// Checks the fractions: each must be a number in `0.0..=1.0`.
    pub fn validate(&self) -> Result<(), String> {
        for (name, f) in [("fail fraction", self.fail_fraction), ("tail fraction", self.tail_fraction)] {
            if !(0.0..=1.0).contains(&f) {
                return Err(format!("the {name} must be between 0 and 1, got {f}"));
            }
        }
        Ok(())
    }
}

/// A limit on calls served at once, resizable while serving, and the busy share of it averaged
/// over windows of about a second.
#[derive(Debug)]
struct Capacity {
    slots: Arc<Semaphore>,
    /// Slots taken out of service by a shrink.
    withheld: Mutex<Vec<tokio::sync::OwnedSemaphorePermit>>,
    state: Mutex<BusyState>,
}

#[derive(Debug)]
struct BusyState {
    capacity: f64,
    busy: usize,
    since: tokio::time::Instant,
    window_start: tokio::time::Instant,
    area: f64,
    last: f64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Capacity {
    fn new(capacity: usize) -> Self {
        let now = tokio::time::Instant::now();
        let capacity = capacity.max(1);
        Capacity {
            slots: Arc::new(Semaphore::new(capacity)),
            withheld: Mutex::new(Vec::new()),
            state: Mutex::new(BusyState { capacity: capacity as f64, busy: 0, since: now, window_start: now, area: 0.0, last: 0.0 }),
        }
    }

    /// Adds `delta` calls in service; returns the utilization to report.
    fn change(&self, delta: isize) -> f64 {
        let now = tokio::time::Instant::now();
        let mut s = lock(&self.state);
        s.area += s.busy as f64 * now.saturating_duration_since(s.since).as_secs_f64();
        s.since = now;
        s.busy = s.busy.saturating_add_signed(delta);
        let window = now.saturating_duration_since(s.window_start).as_secs_f64();
        if window >= 1.0 {
            s.last = s.area / (s.capacity * window);
            s.area = 0.0;
            s.window_start = now;
        } else if s.last == 0.0 && window > 0.0 {
            return s.area / (s.capacity * window);
        }
        s.last
    }

    /// Serves at most `n` calls at once from now on (a shrink waits for calls to finish).
    async fn resize(&self, n: usize) {
        let n = n.max(1);
        let current = lock(&self.state).capacity as usize;
        if n < current {
            if let Ok(p) = Arc::clone(&self.slots).acquire_many_owned((current - n) as u32).await {
                lock(&self.withheld).push(p);
            }
        } else if n > current {
            let mut grow = n - current;
            let mut withheld = lock(&self.withheld);
            while grow > 0 {
                let Some(mut p) = withheld.pop() else { break };
                let give = grow.min(p.num_permits());
                if give < p.num_permits() {
                    // Keep the rest withheld.
                    if let Some(rest) = p.split(p.num_permits() - give) {
                        withheld.push(rest);
                    }
                }
                drop(p);
                grow -= give;
            }
            drop(withheld);
            self.slots.add_permits(grow);
        }
        lock(&self.state).capacity = n as f64;
    }
}

/// A greeter that names `addr` in its replies, after an optional artificial delay.
#[derive(Debug, Clone)]
pub struct GreeterService {
    addr: SocketAddr,
    delay: Duration,
    fail_fraction: f64,
    tail_fraction: f64,
    tail_delay: Duration,
    served: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    /// `true` while the greeter is stalled: calls wait until it turns `false`.
    stalled: Arc<tokio::sync::watch::Sender<bool>>,
    capacity: Option<Arc<Capacity>>,
    orca: Option<lb_orca::Recorder>,
}

impl GreeterService {
    /// A greeter for the backend listening on `addr`, answering after `delay`.
    pub fn new(addr: SocketAddr, delay: Duration) -> Self {
        GreeterService::with_config(addr, &Config { delay, ..Config::default() })
    }

    /// A greeter for the backend listening on `addr`, behaving as `config` says.
    pub fn with_config(addr: SocketAddr, config: &Config) -> Self {
        GreeterService {
            addr,
            delay: config.delay,
            fail_fraction: config.fail_fraction,
            tail_fraction: config.tail_fraction,
            tail_delay: config.tail_delay,
            served: Arc::new(AtomicU64::new(0)),
            received: Arc::new(AtomicU64::new(0)),
            stalled: Arc::new(tokio::sync::watch::Sender::new(false)),
            capacity: config.capacity.map(|n| Arc::new(Capacity::new(n))),
            orca: config.orca.then(|| lb_orca::Recorder::new().with_cpu_sampling()),
        }
    }

    /// The ORCA recorder, when the greeter reports load.
    pub fn recorder(&self) -> Option<&lb_orca::Recorder> {
        self.orca.as_ref()
    }

    fn busy(&self, delta: isize) {
        if let Some(capacity) = &self.capacity {
            let utilization = capacity.change(delta);
            if let Some(orca) = &self.orca {
                orca.set_application_utilization(utilization);
            }
        }
    }

    /// Serves at most `n` calls at once from now on, when the greeter has a capacity (a shrink
    /// waits for enough calls to finish); returns whether it has one.
    pub async fn set_capacity(&self, n: usize) -> bool {
        match &self.capacity {
            Some(c) => {
                c.resize(n).await;
                true
            }
            None => false,
        }
    }

    /// How many requests this greeter (and its clones) answered with OK.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// How many requests this greeter (and its clones) received: answered, failed, cancelled or
    /// still in progress.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Stalls the greeter (calls, new and in progress, wait without an answer while their
    /// connections stay open) or resumes it.
    pub fn set_stalled(&self, stalled: bool) {
        self.stalled.send_replace(stalled);
    }

    /// Waits while the greeter is stalled.
    async fn unstalled(&self) {
        let mut rx = self.stalled.subscribe();
        // The sender lives as long as `self`: the wait cannot fail while this call runs.
        let _ = rx.wait_for(|stalled| !*stalled).await;
    }
}

#[tonic::async_trait]
impl Greeter for GreeterService {
    async fn say_hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        // gRFC A66's server metrics (no-ops unless the process installed a recorder).
        let started = std::time::Instant::now();
        metrics::counter!(crate::metrics::SERVER_CALLS_STARTED, "grpc.method" => SAY_HELLO).increment(1);
        self.received.fetch_add(1, Ordering::Relaxed);
        self.unstalled().await;
        if self.fail_fraction > 0.0 && rand::random::<f64>() < self.fail_fraction {
            metrics::histogram!(crate::metrics::SERVER_CALL_DURATION, "grpc.method" => SAY_HELLO, "grpc.status" => "UNAVAILABLE")
                .record(started.elapsed().as_secs_f64());
            return Err(Status::unavailable(format!("{} fails this call (fail fraction {})", self.addr, self.fail_fraction)));
        }
        let tail = self.tail_fraction > 0.0 && rand::random::<f64>() < self.tail_fraction;
        let _permit = match &self.capacity {
            Some(c) => Some(
                Arc::clone(&c.slots)
                    .acquire_owned()
                    .await
                    .map_err(|_| Status::unavailable("shutting down"))?,
            ),
            None => None,
        };
        self.busy(1);
        let delay = if tail { self.delay + self.tail_delay } else { self.delay };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.unstalled().await;
        self.busy(-1);
        self.served.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(addr = %self.addr, "hello answered");
        let name = request.into_inner().name;
        metrics::histogram!(crate::metrics::SERVER_CALL_DURATION, "grpc.method" => SAY_HELLO, "grpc.status" => "OK")
            .record(started.elapsed().as_secs_f64());
        Ok(Response::new(HelloReply {
            message: greeting(&name, self.addr),
        }))
    }
}

/// The `grpc.method` label of `SayHello`.
const SAY_HELLO: &str = "helloworld.Greeter/SayHello";

/// A running greeter backend: a tonic server with the greeter and the health service.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    greeter: GreeterService,
    health: HealthReporter,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Backend {
    /// Binds `addr` (port 0 picks a free one) and starts serving in the background.
    pub async fn bind(addr: SocketAddr, delay: Duration) -> std::io::Result<Backend> {
        Backend::bind_with(addr, Config { delay, ..Config::default() }).await
    }

    /// Like [`Backend::bind`], behaving as `config` says.
    pub async fn bind_with(addr: SocketAddr, config: Config) -> std::io::Result<Backend> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Backend::serve_with(listener, config))
    }

    /// Serves on an already bound listener.
    pub fn serve(listener: TcpListener, delay: Duration) -> Backend {
        Backend::serve_with(listener, Config { delay, ..Config::default() })
    }

    /// Serves on an already bound listener, behaving as `config` says.
    pub fn serve_with(listener: TcpListener, config: Config) -> Backend {
        let addr = listener
            .local_addr()
            .expect("a bound TCP listener has a local address");
        let greeter = GreeterService::with_config(addr, &config);
        let (health, health_service) = tonic_health::server::health_reporter();
        // Both the whole server ("") and the Greeter service report SERVING from the start; the
        // greeter status is set before the server accepts its first connection.
        let greeter_name = <GreeterServer<GreeterService> as tonic::server::NamedService>::NAME;
        let (shutdown, stop) = oneshot::channel::<()>();
        let reporter = health.clone();
        let greeter_service = GreeterServer::new(greeter.clone());
        let ready = async move {
            reporter
                .set_service_status(greeter_name, tonic_health::ServingStatus::Serving)
                .await;
            TcpIncoming::from(listener).with_nodelay(Some(true))
        };
        let stopped = async {
            let _ = stop.await;
        };
        // With ORCA the router's type changes (its responses carry the report), hence two arms.
        let task = match greeter.recorder().cloned() {
            Some(recorder) => {
                let router = tonic::transport::Server::builder()
                    .layer(lb_orca::OrcaLayer::new(recorder))
                    .add_service(health_service)
                    .add_service(greeter_service);
                tokio::spawn(async move { router.serve_with_incoming_shutdown(ready.await, stopped).await })
            }
            None => {
                let router = tonic::transport::Server::builder()
                    .add_service(health_service)
                    .add_service(greeter_service);
                tokio::spawn(async move { router.serve_with_incoming_shutdown(ready.await, stopped).await })
            }
        };
        Backend {
            addr,
            greeter,
            health,
            shutdown: Some(shutdown),
            task,
        }
    }

    /// The address the backend listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many requests the backend answered with OK.
    pub fn served(&self) -> u64 {
        self.greeter.served()
    }

    /// The greeter it serves (its clones share the counters).
    pub fn greeter(&self) -> &GreeterService {
        &self.greeter
    }

    /// How many requests the backend received (see [`GreeterService::received`]).
    pub fn received(&self) -> u64 {
        self.greeter.received()
    }

    /// Stalls or resumes the backend (see [`GreeterService::set_stalled`]).
    pub fn set_stalled(&self, stalled: bool) {
        self.greeter.set_stalled(stalled);
    }

    /// Serves at most `n` calls at once from now on (see [`GreeterService::set_capacity`]).
    pub async fn set_capacity(&self, n: usize) -> bool {
        self.greeter.set_capacity(n).await
    }

    /// Reports NOT_SERVING on `grpc.health.v1` (for the whole server and the Greeter service),
    /// so health-checking clients stop sending new requests before the backend goes away.
    pub async fn set_not_serving(&self) {
        let greeter_name = <GreeterServer<GreeterService> as tonic::server::NamedService>::NAME;
        for name in ["", greeter_name] {
            self.health
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
    }

    /// Stops accepting connections, lets in-flight requests finish, and waits for the server.
    pub async fn shutdown(mut self) -> Result<(), tonic::transport::Error> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result,
            // A panic in the server task is a bug worth surfacing; a cancelled task (the runtime is
            // shutting down) has nothing left to report.
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => Ok(()),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_name_their_backend() {
        let addr: SocketAddr = "127.0.0.1:50051".parse().expect("valid address");
        assert_eq!(backend_of(&greeting("world", addr)), Some("127.0.0.1:50051"));
        // A name containing the separator does not confuse the parser: the address is last.
        assert_eq!(backend_of(&greeting("x from y", addr)), Some("127.0.0.1:50051"));
        assert_eq!(backend_of("Hello world"), None);
    }
}
