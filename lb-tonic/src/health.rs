//! Active health checking with the standard `grpc.health.v1.Health/Watch` (gRFC A17).
//!
//! Each endpoint's own connection carries one `Watch` stream (tonic-health's generated client):
//! `SERVING` puts the endpoint in rotation, any other status takes it out. As in A17, a server that
//! answers `UNIMPLEMENTED` does not do health checking and is treated as serving; a stream that fails
//! otherwise counts as not serving and is re-opened after a delay (the connection itself failing is
//! the pool's business: it reconnects and starts a new watch).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use hyper::body::Incoming;
use lb_core::pool::HealthCheck;
use lb_core::{BoxError, Endpoint};
use lb_hyper::connect::SlotBody;
use lb_hyper::HttpConnection;
use tonic::body::Body;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Watches `grpc.health.v1.Health` for one service name; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct GrpcHealthCheck {
    service: String,
    retry: Duration,
}

impl GrpcHealthCheck {
    /// Watches `service` (`""` is the server as a whole).
    pub fn new(service: impl Into<String>) -> Self {
        GrpcHealthCheck {
            service: service.into(),
            retry: Duration::from_secs(1),
        }
    }

    /// How long to wait before re-opening a failed watch (default 1 s).
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry = delay;
        self
    }
}

enum State {
    Connect,
    Streaming(Box<tonic::Streaming<tonic_health::pb::HealthCheckResponse>>),
    Sleep,
    Done,
}

impl HealthCheck<HttpConnection<Body>> for GrpcHealthCheck {
    fn watch(&self, endpoint: &Endpoint, connection: &HttpConnection<Body>) -> BoxStream<'static, bool> {
        let client = HealthClient::new(EndpointService {
            conn: connection.clone(),
            authority: endpoint.addr().to_string(),
        });
        let service = self.service.clone();
        let retry = self.retry;
        let addr = endpoint.addr();
        stream::unfold((State::Connect, client), move |(state, mut client)| {
            let service = service.clone();
            async move {
                let mut state = state;
                loop {
                    match state {
                        State::Done => return None,
                        State::Sleep => {
                            tokio::time::sleep(retry).await;
                            state = State::Connect;
                        }
                        State::Connect => {
                            let req = HealthCheckRequest { service: service.clone() };
                            match client.watch(req).await {
                                Ok(rsp) => state = State::Streaming(Box::new(rsp.into_inner())),
                                Err(s) if s.code() == tonic::Code::Unimplemented => {
                                    tracing::debug!(endpoint = %addr, "no grpc.health.v1 service: treated as serving");
                                    return Some((true, (State::Done, client)));
                                }
                                Err(s) => {
                                    tracing::debug!(endpoint = %addr, status = %s, "health watch failed");
                                    return Some((false, (State::Sleep, client)));
                                }
                            }
                        }
                        State::Streaming(mut s) => match s.message().await {
                            Ok(Some(msg)) => {
                                let serving = msg.status == ServingStatus::Serving as i32;
                                return Some((serving, (State::Streaming(s), client)));
                            }
                            Ok(None) | Err(_) => return Some((false, (State::Sleep, client))),
                        },
                    }
                }
            }
        })
        .boxed()
    }
}

/// One endpoint's connection as a tower `Service`, for generated clients.
#[derive(Clone, Debug)]
struct EndpointService {
    conn: HttpConnection<Body>,
    authority: String,
}

impl tower_service::Service<http::Request<Body>> for EndpointService {
    type Response = http::Response<SlotBody<Incoming>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let conn = self.conn.clone();
        let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
        let uri = format!("http://{}{}", self.authority, path);
        Box::pin(async move {
            *req.uri_mut() = uri.parse()?;
            conn.request(req).await
        })
    }
}
