//! `/healthz` and Prometheus `/metrics`, on a tiny hyper HTTP/1 server.
//!
//! `/healthz` answers 200 once the first sync has been committed and while the last sync succeeded,
//! 503 otherwise, so a liveness probe restarts an agent that keeps failing to program the kernel.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::Error;

/// The agent's health as `/healthz` reports it.
#[derive(Debug, Default)]
pub struct Health {
    synced: AtomicBool,
    failing: AtomicBool,
}

impl Health {
    /// Records a sync's outcome.
    pub fn record(&self, ok: bool) {
        if ok {
            self.synced.store(true, Ordering::Relaxed);
        }
        self.failing.store(!ok, Ordering::Relaxed);
    }

    /// True once a sync was committed and the last one succeeded.
    pub fn is_healthy(&self) -> bool {
        self.synced.load(Ordering::Relaxed) && !self.failing.load(Ordering::Relaxed)
    }
}

/// Binds `addr` and serves until the process ends; returns the bound address.
pub async fn serve(addr: SocketAddr, metrics: PrometheusHandle, health: Arc<Health>) -> Result<SocketAddr, Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("cannot bind metrics address {addr}: {e}")))?;
    let local = listener.local_addr().map_err(|e| Error::io(e.to_string()))?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (metrics, health) = (metrics.clone(), health.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (metrics, health) = (metrics.clone(), health.clone());
                    async move { Ok::<_, Infallible>(respond(req.uri().path(), &metrics, &health)) }
                });
                if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await {
                    tracing::debug!(error = %e, "metrics connection ended");
                }
            });
        }
    });
    Ok(local)
}

fn respond(path: &str, metrics: &PrometheusHandle, health: &Health) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/healthz" if health.is_healthy() => (StatusCode::OK, "ok\n".to_string()),
        "/healthz" => (StatusCode::SERVICE_UNAVAILABLE, "not synced\n".to_string()),
        "/metrics" => (StatusCode::OK, metrics.render()),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}
