//! The greeter backend: answers `SayHello` with a message naming its own address.
//!
//! Naming the address in the reply is what lets a client count, from the outside, which backend
//! served each request — the per-backend shares in `greeter-client`'s JSON line and in the
//! quickstart's table come from there, not from any bookkeeping inside the balancer under test.
//!
//! Every backend also serves the standard `grpc.health.v1.Health` service (tonic-health), so health
//! checking clients (lb-tonic's, `grpc_health_probe`, Kubernetes' gRPC probes) work against it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
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

/// A greeter that names `addr` in its replies, after an optional artificial delay.
#[derive(Debug, Clone)]
pub struct GreeterService {
    addr: SocketAddr,
    delay: Duration,
    served: Arc<AtomicU64>,
}

impl GreeterService {
    /// A greeter for the backend listening on `addr`, answering after `delay`.
    pub fn new(addr: SocketAddr, delay: Duration) -> Self {
        GreeterService {
            addr,
            delay,
            served: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many requests this greeter (and its clones) answered.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

#[tonic::async_trait]
impl Greeter for GreeterService {
    async fn say_hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        // gRFC A66's server metrics (no-ops unless the process installed a recorder).
        let started = std::time::Instant::now();
        metrics::counter!(crate::metrics::SERVER_CALLS_STARTED, "grpc.method" => SAY_HELLO).increment(1);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.served.fetch_add(1, Ordering::Relaxed);
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
        let listener = TcpListener::bind(addr).await?;
        Ok(Backend::serve(listener, delay))
    }

    /// Serves on an already bound listener.
    pub fn serve(listener: TcpListener, delay: Duration) -> Backend {
        let addr = listener
            .local_addr()
            .expect("a bound TCP listener has a local address");
        let greeter = GreeterService::new(addr, delay);
        let (health, health_service) = tonic_health::server::health_reporter();
        // Both the whole server ("") and the Greeter service report SERVING from the start; the
        // greeter status is set before the server accepts its first connection.
        let greeter_name = <GreeterServer<GreeterService> as tonic::server::NamedService>::NAME;
        let (shutdown, stop) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(GreeterServer::new(greeter.clone()));
        let reporter = health.clone();
        let task = tokio::spawn(async move {
            reporter
                .set_service_status(greeter_name, tonic_health::ServingStatus::Serving)
                .await;
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop.await;
                })
                .await
        });
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

    /// How many requests the backend answered.
    pub fn served(&self) -> u64 {
        self.greeter.served()
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
