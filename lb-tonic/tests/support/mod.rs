//! Shared fixtures: real tonic servers on 127.0.0.1 that can be slowed, failed, marked not serving,
//! and killed (every connection dropped at once, as when a process dies).
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub mod lbtest {
    include!("lbtest.rs");
}

use lbtest::echo_server::{Echo, EchoServer};
use lbtest::{EchoReply, EchoRequest};

#[derive(Clone)]
struct EchoSvc {
    addr: SocketAddr,
    delay: Duration,
    served: Arc<AtomicUsize>,
}

type ReplyStream = Pin<Box<dyn futures_util::Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoSvc {
    async fn unary(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let req = req.into_inner();
        let delay = self.delay + Duration::from_millis(req.delay_ms);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.served.fetch_add(1, Ordering::Relaxed);
        if req.fail_code != 0 {
            return Err(Status::new(tonic::Code::from_i32(req.fail_code), format!("failed by request at {}", self.addr)));
        }
        Ok(Response::new(EchoReply {
            backend: self.addr.to_string(),
            message: req.message,
        }))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(&self, req: Request<EchoRequest>) -> Result<Response<ReplyStream>, Status> {
        let req = req.into_inner();
        self.served.fetch_add(1, Ordering::Relaxed);
        let addr = self.addr.to_string();
        let delay = Duration::from_millis(req.delay_ms);
        let stream = futures_util::stream::unfold(0u32, move |i| {
            let addr = addr.clone();
            let count = req.count;
            async move {
                if i >= count {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(delay).await;
                }
                Some((Ok(EchoReply { backend: addr, message: i.to_string() }), i + 1))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A running tonic backend.
pub struct Backend {
    pub addr: SocketAddr,
    pub served: Arc<AtomicUsize>,
    /// The `:authority` of every request, in arrival order.
    pub authorities: Arc<Mutex<Vec<String>>>,
    health: HealthReporter,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl Backend {
    /// Starts a backend that answers after `delay`.
    pub async fn start(delay: Duration) -> Backend {
        Self::start_with(delay, None).await
    }

    /// Starts a backend that answers after `delay`, over TLS when `tls` is given.
    pub async fn start_with(delay: Duration, tls: Option<tokio_rustls::TlsAcceptor>) -> Backend {
        Self::start_on("127.0.0.1:0".parse().expect("an address"), delay, tls).await
    }

    /// Starts a backend on `bind` (e.g. `[::1]:0`).
    pub async fn start_on(bind: SocketAddr, delay: Duration, tls: Option<tokio_rustls::TlsAcceptor>) -> Backend {
        let listener = TcpListener::bind(bind).await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound socket has an address");
        let served = Arc::new(AtomicUsize::new(0));
        let authorities = Arc::new(Mutex::new(Vec::new()));
        let (health, health_svc) = tonic_health::server::health_reporter();
        let echo = EchoServer::new(EchoSvc {
            addr,
            delay,
            served: served.clone(),
        });
        let routes = tonic::service::Routes::new(echo).add_service(health_svc);
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let conns = tasks.clone();
        let recorded = authorities.clone();
        tasks.lock().expect("not poisoned").spawn(async move {
            let authorities = recorded;
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let grpc = TowerToHyperService::new(routes.clone());
                let seen = authorities.clone();
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let authority = req.uri().authority().map(ToString::to_string).unwrap_or_default();
                    seen.lock().expect("not poisoned").push(authority);
                    hyper::service::Service::call(&grpc, req)
                });
                let tls = tls.clone();
                conns.lock().expect("not poisoned").spawn(async move {
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder.http2_only().serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else { return };
                            let _ = builder.http2_only().serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        Backend {
            addr,
            served,
            authorities,
            health,
            tasks,
        }
    }

    pub fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    /// Drops the listener and every connection at once, and returns when they are gone.
    pub async fn kill(&self) {
        // Twice: a connection accepted while the first sweep ran was spawned into the fresh set.
        for _ in 0..2 {
            let mut set = std::mem::take(&mut *self.tasks.lock().expect("not poisoned"));
            set.shutdown().await;
        }
    }

    pub async fn set_serving(&self, serving: bool) {
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        self.health.set_service_status("", status).await;
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Ok(mut set) = self.tasks.lock() {
            set.abort_all();
        }
    }
}

pub async fn backends(delays: &[u64]) -> Vec<Backend> {
    let mut out = Vec::new();
    for d in delays {
        out.push(Backend::start(Duration::from_millis(*d)).await);
    }
    out
}

pub fn static_target(backends: &[Backend]) -> String {
    let list: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    format!("static:///{}", list.join(","))
}

/// Waits until `n` endpoints of the channel are healthy.
pub async fn wait_healthy(channel: &lb_tonic::LbChannel, n: usize, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let healthy = channel.endpoints().iter().filter(|e| e.healthy).count();
        if healthy == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{healthy} of {n} endpoints healthy after {timeout:?}: {:?}",
            channel.endpoints()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends `total` unary calls from `concurrency` callers; returns replies per backend and errors.
pub async fn load(
    channel: &lb_tonic::LbChannel,
    total: usize,
    concurrency: usize,
) -> (BTreeMap<String, usize>, Vec<Status>) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..concurrency {
        let mut client = lbtest::echo_client::EchoClient::new(channel.clone());
        let next = next.clone();
        set.spawn(async move {
            let mut per: BTreeMap<String, usize> = BTreeMap::new();
            let mut errors = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                match client.unary(EchoRequest::default()).await {
                    Ok(r) => *per.entry(r.into_inner().backend).or_default() += 1,
                    Err(s) => errors.push(s),
                }
            }
            (per, errors)
        });
    }
    let mut per = BTreeMap::new();
    let mut errors = Vec::new();
    while let Some(r) = set.join_next().await {
        let (p, e) = r.expect("load task does not panic");
        for (k, v) in p {
            *per.entry(k).or_default() += v;
        }
        errors.extend(e);
    }
    (per, errors)
}

/// A tonic `Server` backend that shuts down gracefully (GOAWAY, in-flight calls finish) on signal.
pub struct GracefulBackend {
    pub addr: SocketAddr,
    pub served: Arc<AtomicUsize>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl GracefulBackend {
    pub async fn start(delay: Duration) -> GracefulBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound socket has an address");
        let served = Arc::new(AtomicUsize::new(0));
        let echo = EchoServer::new(EchoSvc {
            addr,
            delay,
            served: served.clone(),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(echo)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        GracefulBackend {
            addr,
            served,
            shutdown: Some(tx),
            task,
        }
    }

    /// Starts a graceful shutdown and waits until the server has finished.
    pub async fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for GracefulBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}
