//! Shared fixtures: real hyper servers on 127.0.0.1 (HTTP/1.1 and HTTP/2) whose replies name them.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A running hyper backend. `GET /health` answers 200 or 503 as set; anything else answers with
/// the backend's address and the `Host` header it saw, after `delay`.
pub struct Backend {
    pub addr: SocketAddr,
    pub served: Arc<AtomicUsize>,
    pub healthy: Arc<AtomicBool>,
    pub fail: Arc<AtomicBool>,
    /// Connections accepted so far, and those still open.
    pub accepted: Arc<AtomicUsize>,
    pub open: Arc<AtomicUsize>,
    /// The request-target of every health probe, as the server parsed it (over HTTP/2 it carries
    /// the scheme the client sent).
    pub probes: Arc<Mutex<Vec<String>>>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl Backend {
    pub async fn start(delay: Duration) -> Backend {
        Self::start_with("127.0.0.1:0".parse().expect("an address"), delay, None).await
    }

    /// A backend that answers every request with `status` and `headers` (e.g. 429 and a
    /// `Retry-After`).
    pub async fn start_answering(status: u16, headers: &[(&'static str, &'static str)]) -> Backend {
        Self::spawn("127.0.0.1:0".parse().expect("an address"), Duration::ZERO, None, Some((status, headers.to_vec()))).await
    }

    /// A backend on `bind` (e.g. `[::1]:0`), over TLS when `tls` is given (its ALPN offers h2 and
    /// http/1.1; the protocol is whatever the handshake settles on).
    pub async fn start_with(bind: SocketAddr, delay: Duration, tls: Option<tokio_rustls::TlsAcceptor>) -> Backend {
        Self::spawn(bind, delay, tls, None).await
    }

    async fn spawn(
        bind: SocketAddr,
        delay: Duration,
        tls: Option<tokio_rustls::TlsAcceptor>,
        fixed: Option<(u16, Vec<(&'static str, &'static str)>)>,
    ) -> Backend {
        let fixed = Arc::new(fixed);
        let listener = TcpListener::bind(bind).await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound socket has an address");
        let served = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let fail = Arc::new(AtomicBool::new(false));
        let (accepted, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (accepted_in, open_in) = (accepted.clone(), open.clone());
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let conns = tasks.clone();
        let probes: Arc<Mutex<Vec<String>>> = Arc::default();
        let (s, h, f, p) = (served.clone(), healthy.clone(), fail.clone(), probes.clone());
        tasks.lock().expect("not poisoned").spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (s, h, f, p, fixed) = (s.clone(), h.clone(), f.clone(), p.clone(), fixed.clone());
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (s, h, f, p, fixed) = (s.clone(), h.clone(), f.clone(), p.clone(), fixed.clone());
                    async move {
                        if let Some((status, headers)) = &*fixed {
                            s.fetch_add(1, Ordering::Relaxed);
                            let mut rsp = Response::builder().status(*status);
                            for (k, v) in headers {
                                rsp = rsp.header(*k, *v);
                            }
                            return Ok::<_, Infallible>(rsp.body(Full::new(Bytes::new())).expect("valid"));
                        }
                        if req.uri().path() == "/health" {
                            p.lock().expect("not poisoned").push(req.uri().to_string());
                            let status = if h.load(Ordering::Relaxed) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                            return Ok::<_, Infallible>(Response::builder().status(status).body(Full::new(Bytes::new())).expect("valid"));
                        }
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        s.fetch_add(1, Ordering::Relaxed);
                        let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_string();
                        let status = if f.load(Ordering::Relaxed) { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK };
                        // The request-target as the server parsed it: origin-form stays a path;
                        // absolute-form over HTTP/1.1, and HTTP/2's :scheme/:authority, give a full URI.
                        let body = format!("{addr} {host} {:?} {}", req.version(), req.uri());
                        Ok(Response::builder().status(status).body(Full::new(Bytes::from(body))).expect("valid"))
                    }
                });
                accepted_in.fetch_add(1, Ordering::Relaxed);
                open_in.fetch_add(1, Ordering::Relaxed);
                let open = open_in.clone();
                let tls = tls.clone();
                conns.lock().expect("not poisoned").spawn(async move {
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                    }
                    open.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        Backend {
            addr,
            served,
            healthy,
            fail,
            accepted,
            open,
            probes,
            tasks,
        }
    }

    pub fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    pub async fn kill(&self) {
        for _ in 0..2 {
            let mut set = std::mem::take(&mut *self.tasks.lock().expect("not poisoned"));
            set.shutdown().await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Ok(mut set) = self.tasks.lock() {
            set.abort_all();
        }
    }
}

pub async fn backends(n: usize, delay: Duration) -> Vec<Backend> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Backend::start(delay).await);
    }
    out
}

pub fn static_target(backends: &[Backend]) -> String {
    let list: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    format!("static:///{}", list.join(","))
}
