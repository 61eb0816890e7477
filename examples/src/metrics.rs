//! `--metrics-addr HOST:PORT`: Prometheus text at `/metrics`, through metrics-exporter-prometheus.
//!
//! How an application sees lb's metrics (`lb_core::metrics`): install a recorder of the `metrics`
//! facade *before* building a channel — lb registers each target's series when its pool starts —
//! give it A66's histogram buckets, and serve what it renders.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// gRFC A66's server metric: calls started (greeter-server records it per `SayHello`).
pub const SERVER_CALLS_STARTED: &str = "grpc.server.call.started";
/// gRFC A66's server metric: call duration in seconds, by `grpc.status`.
pub const SERVER_CALL_DURATION: &str = "grpc.server.call.duration";

/// Installs a Prometheus recorder as the process's metrics recorder and serves its text at
/// `http://addr/metrics`; returns the bound address (port 0 picks one).
pub async fn serve(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let handle = PrometheusBuilder::new()
        .set_buckets(lb_core::metrics::DURATION_BUCKETS)
        .context("A66's buckets are valid")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    lb_core::metrics::describe();
    metrics::describe_counter!(SERVER_CALLS_STARTED, metrics::Unit::Count, "Calls the server started.");
    metrics::describe_histogram!(SERVER_CALL_DURATION, metrics::Unit::Seconds, "Server-side call duration.");
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for /metrics"))?;
    let bound = listener.local_addr()?;
    // The recorder folds histogram samples into its buckets only when told to.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "metrics listener: accept failed");
                    continue;
                }
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    let handle = handle.clone();
                    async move { Ok::<_, Infallible>(respond(req.uri().path(), &handle)) }
                });
                if let Err(error) = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await {
                    tracing::debug!(%error, "metrics connection ended");
                }
            });
        }
    });
    tracing::info!(addr = %bound, "serving Prometheus metrics at /metrics");
    Ok(bound)
}

fn respond(path: &str, handle: &PrometheusHandle) -> http::Response<Full<Bytes>> {
    let (status, body) = match path {
        "/metrics" => (http::StatusCode::OK, handle.render()),
        _ => (http::StatusCode::NOT_FOUND, "not found: try /metrics\n".to_string()),
    };
    let mut rsp = http::Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    rsp
}
