//! `LbChannel` and its builder.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use lb_core::discover::BoxDiscover;
use lb_core::pool::HealthCheck;
use lb_hyper::{EndpointStatus, HttpConnection, LbClient, Options, Protocol, Replay, TrackBody};
use pin_project_lite::pin_project;
use tonic::body::Body;

use crate::body::ResponseBody;
use crate::health::GrpcHealthCheck;
use crate::retry::{buffer_ready, Buffered, RetryPolicy};

use crate::Error;

/// Builds an [`LbChannel`]; start with [`LbChannel::builder`]. The setters record; `build`
/// checks them all and says what is wrong.
#[derive(Debug, Default)]
pub struct Builder {
    options: Options,
    health: Option<GrpcHealthCheck>,
    retry: Option<RetryPolicy>,
}

impl Builder {
    lb_hyper::__builder_options!();

    /// Active health checking with `grpc.health.v1.Health/Watch` for the whole server (`""`).
    pub fn health_check(mut self, on: bool) -> Self {
        self.health = on.then(|| GrpcHealthCheck::new(""));
        self
    }

    /// Active health checking with a configured checker (e.g. for one named service).
    pub fn health_check_with(mut self, check: GrpcHealthCheck) -> Self {
        self.health = Some(check);
        self
    }

    /// Re-sends calls that reached a backend under `policy` (see [`RetryPolicy`]); retries draw
    /// on the channel's [`retry_budget`](Builder::retry_budget).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.options.retry = Some(policy.to_hyper());
        self.retry = Some(policy);
        self
    }

    /// Builds a channel for a target URI (`static:///127.0.0.1:50051,127.0.0.1:50052`, and
    /// `etcd://`, `consul://`, `kubernetes:///` with the cargo features of those names).
    ///
    /// Without an [`authority`](Builder::authority), a channel built from a target that names a
    /// service sends that name as the `:authority`, as gRPC clients send their target's name:
    /// `etcd://…/greeter` and `consul://…/greeter` send `greeter`,
    /// `kubernetes:///greeter.default:50051` sends `greeter.default:50051` (a named port,
    /// `greeter.default:grpc`, is dropped: `greeter.default`). A `static:///` list, or
    /// [`Builder::build`] over a discovery stream, sends the chosen endpoint's `ip:port`.
    ///
    /// Must be called inside a Tokio runtime (an error otherwise).
    pub fn build_from_target(mut self, target: &str) -> Result<LbChannel, Error> {
        let parsed = lb_registry::Target::parse(target).map_err(|e| Error::invalid_target(target, e))?;
        let discover = lb_registry::resolve(&parsed).map_err(|e| Error::invalid_target(target, e))?;
        if self.options.authority.is_none() {
            self.options.authority = service_authority(&parsed);
        }
        self.build(discover, target)
    }

    /// Builds a channel over any discovery stream; `name` labels logs, metrics and errors.
    /// Must be called inside a Tokio runtime (an error otherwise).
    pub fn build(self, discover: BoxDiscover, name: &str) -> Result<LbChannel, Error> {
        let health: Option<Arc<dyn HealthCheck<HttpConnection<Body>>>> = match self.health {
            Some(h) => Some(Arc::new(h)),
            None => None,
        };
        let client = self
            .options
            .build_client(name, discover, Protocol::Http2, TrackBody::grpc(), health)
            .map_err(Error::from_hyper)?;
        Ok(LbChannel {
            inner: Arc::new(Inner {
                client,
                retry: self.retry,
            }),
        })
    }
}

struct Inner {
    client: LbClient<Body>,
    retry: Option<RetryPolicy>,
}

/// A tonic channel that picks an endpoint for every call; see the [crate docs](crate).
#[derive(Clone)]
pub struct LbChannel {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LbChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbChannel")
            .field("client", &self.inner.client)
            .field("retry", &self.inner.retry)
            .finish()
    }
}

impl LbChannel {
    /// Starts building a channel.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A channel with the defaults for a target URI (P2C PeakEWMA, a 3 s wait for an endpoint).
    /// Must be called inside a Tokio runtime (an error otherwise).
    pub fn from_target(target: &str) -> Result<LbChannel, Error> {
        Builder::default().build_from_target(target)
    }

    /// Waits until at least one endpoint can take calls, or `timeout`; returns whether one can.
    pub async fn ready(&self, timeout: Duration) -> bool {
        self.inner.client.ready(timeout).await
    }

    /// Waits until discovery has delivered its first full set (possibly empty), or `timeout`;
    /// returns whether it has. Until then [`LbChannel::endpoints`] is empty.
    pub async fn discovered(&self, timeout: Duration) -> bool {
        self.inner.client.discovered(timeout).await
    }

    /// The endpoints and their state (phase, health, in-flight calls, latency estimate). Empty
    /// until discovery delivered its first set (see [`LbChannel::discovered`]).
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        self.inner.client.endpoints()
    }

    /// The target name (the URI given to the builder).
    pub fn target(&self) -> &str {
        self.inner.client.target()
    }

    /// The HTTP/2 client underneath (lb-hyper's engine over the same pool).
    pub fn client(&self) -> &LbClient<Body> {
        &self.inner.client
    }

    fn send(&self, req: http::Request<Body>) -> ResponseFuture {
        let client = &self.inner.client;
        let limit = self.inner.retry.as_ref().map_or(REPLAY_LIMIT, |p| p.max_buffer_bytes().max(REPLAY_LIMIT));
        let (parts, body) = req.into_parts();
        // A body that is complete at once (every unary call) is kept, so a stream the server
        // refused unprocessed can be re-sent elsewhere, and a retry policy can re-send it.
        let bytes = match buffer_ready(body, limit) {
            Buffered::Complete(bytes) => bytes,
            Buffered::Partial(body) => {
                return ResponseFuture::once(client.request(http::Request::from_parts(parts, body)));
            }
        };
        let template = Template::of(&parts);
        let mut first = http::Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes.clone())));
        // Rebuilds the call for a stream refused unprocessed, a retry or a hedge (lb-hyper's
        // `retry` module drives those under the channel's policies and budget).
        first.extensions_mut().insert(Replay::new(move || template.request(&bytes)));
        ResponseFuture::once(client.request(first))
    }
}

/// Bodies up to this size are kept for re-sending streams a server refused unprocessed.
const REPLAY_LIMIT: usize = 64 * 1024;

/// What is needed to rebuild a request. `http::request::Parts` is not `Clone` (extensions are
/// not); the transport needs none of tonic's extensions, so re-sent copies go without them.
struct Template {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
}

impl Template {
    fn of(parts: &http::request::Parts) -> Self {
        Template {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        }
    }

    fn request(&self, bytes: &bytes::Bytes) -> http::Request<Body> {
        let mut req = http::Request::new(Body::new(http_body_util::Full::new(bytes.clone())));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

impl tower_service::Service<http::Request<Body>> for LbChannel {
    type Response = http::Response<ResponseBody>;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // The endpoint is chosen per call; waiting for one is bounded by the endpoint wait.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> ResponseFuture {
        self.send(req)
    }
}

pin_project! {
    /// The future of an [`LbChannel`] call.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture {
        #[pin]
        fut: lb_hyper::ResponseFuture<Body>,
    }
}

impl ResponseFuture {
    fn once(fut: lb_hyper::ResponseFuture<Body>) -> Self {
        ResponseFuture { fut }
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<ResponseBody>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = ready!(self.project().fut.poll(cx));
        Poll::Ready(result.map(|r| r.map(ResponseBody::new)).map_err(Error::from_hyper))
    }
}

/// The authority a channel built from `target` sends by default: the service the target names
/// (see [`Builder::authority`]), or `None` for address lists.
fn service_authority(target: &lb_registry::Target) -> Option<String> {
    let name = target.path().trim();
    if target.scheme() == "static" || name.is_empty() || name.contains([',', '/']) {
        return None;
    }
    // `svc.ns:grpc`: a port name is not an authority's port; keep the host.
    let name = match name.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && !port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => name,
    };
    http::uri::Authority::try_from(name).ok().map(|a| a.to_string())
}

#[cfg(test)]
mod tests {
    use super::service_authority;

    fn of(target: &str) -> Option<String> {
        let t = lb_registry::Target::parse(target).expect("a valid target");
        service_authority(&t)
    }

    #[test]
    fn a_named_service_is_the_default_authority() {
        assert_eq!(of("etcd://127.0.0.1:2379/greeter?prefix=/lb").as_deref(), Some("greeter"));
        assert_eq!(of("consul://127.0.0.1:8500/greeter?dc=eu1").as_deref(), Some("greeter"));
        assert_eq!(of("kubernetes:///greeter.default:50051").as_deref(), Some("greeter.default:50051"));
        assert_eq!(of("kubernetes:///greeter.default:grpc").as_deref(), Some("greeter.default"), "named ports are dropped");
        assert_eq!(of("static:///127.0.0.1:50051,127.0.0.1:50052"), None, "addresses name no service");
        assert_eq!(of("static:///127.0.0.1:50051"), None);
        assert_eq!(of("etcd://127.0.0.1:2379/"), None);
        assert_eq!(of("etcd://127.0.0.1:2379/bad name"), None, "not an authority: the endpoint's address is sent");
    }
}
