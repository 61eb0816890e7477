//! `LbChannel` and its builder.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use lb_core::discover::BoxDiscover;
use lb_core::pool::{HealthCheck, OutlierConfig};
use lb_core::{Locality, PickContext, Policy};
use lb_hyper::{Balancer, Classify, ConnectorParts, EndpointStatus, HttpConnection, Protocol};
use tonic::body::Body;

use crate::body::ResponseBody;
use crate::health::GrpcHealthCheck;
use crate::retry::{buffer_ready, Buffered, RetryPolicy};
use crate::Error;

/// Builds an [`LbChannel`]; start with [`LbChannel::builder`].
pub struct Builder {
    policy: Option<Box<dyn Policy>>,
    locality: Option<Locality>,
    failfast: Duration,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
    tls: Option<Arc<rustls::ClientConfig>>,
    tls_server_name: Option<String>,
    health: Option<GrpcHealthCheck>,
    retry: Option<RetryPolicy>,
    outlier: Option<OutlierConfig>,
    max_streams: Option<usize>,
    max_connections: Option<usize>,
    hash_header: Option<http::HeaderName>,
    keep_alive: Option<(Duration, Duration)>,
    authority: Option<http::uri::Authority>,
    idle_timeout: Option<Option<Duration>>,
    ewma: Option<lb_core::load::EwmaConfig>,
    subset: Option<(usize, String)>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("policy", &self.policy)
            .field("locality", &self.locality)
            .field("failfast", &self.failfast)
            .field("request_timeout", &self.request_timeout)
            .field("tls", &self.tls.is_some())
            .field("health", &self.health)
            .field("retry", &self.retry)
            .finish()
    }
}

impl Builder {
    fn new() -> Self {
        Builder {
            policy: None,
            locality: None,
            failfast: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(5),
            request_timeout: None,
            tls: None,
            tls_server_name: None,
            health: None,
            retry: None,
            outlier: Some(OutlierConfig::default()),
            max_streams: None,
            max_connections: None,
            hash_header: None,
            keep_alive: None,
            authority: None,
            idle_timeout: None,
            ewma: None,
            subset: None,
        }
    }

    /// Sends an HTTP/2 PING every `interval` and drops a connection whose PING is not answered within
    /// `timeout`, so a backend that vanished without closing (a dead host, a black-holed network) is
    /// noticed without waiting for TCP. Off by default.
    pub fn http2_keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keep_alive = Some((interval, timeout));
        self
    }

    /// The `:authority` of every call (e.g. `greeter.default.svc:50051`). Servers and proxies that
    /// route on the authority (virtual hosts, sidecars, gateways) need the service's name there.
    ///
    /// Without it, a channel built from a target that names a service sends that name, as gRPC
    /// clients send their target's name: `etcd://…/greeter` and `consul://…/greeter` send
    /// `greeter`, `kubernetes:///greeter.default:50051` sends `greeter.default:50051` (a named port,
    /// `greeter.default:grpc`, is dropped: `greeter.default`). A `static:///` list, or
    /// [`Builder::build`] over a discovery stream, sends the chosen endpoint's `ip:port`.
    pub fn authority(mut self, authority: &str) -> Result<Self, Error> {
        let parsed = http::uri::Authority::try_from(authority)
            .map_err(|e| Error::config(format!("invalid authority `{authority}`: {e}")))?;
        self.authority = Some(parsed);
        Ok(self)
    }

    /// For hashing policies (`lb_core::policy::RingHash`): the request metadata key whose value is
    /// the affinity key (e.g. `x-user-id`). Calls without it get no key (the policy picks freely).
    pub fn hash_header(mut self, name: &str) -> Result<Self, Error> {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| Error::config(format!("invalid hash header name `{name}`: {e}")))?;
        self.hash_header = Some(name);
        Ok(self)
    }

    /// The balancing policy (default `lb_core::policy::P2c::peak_ewma()`).
    pub fn policy(mut self, policy: impl Policy) -> Self {
        self.policy = Some(Box::new(policy));
        self
    }

    /// The caller's locality: the policy is wrapped in `lb_core::policy::Topology`, which prefers
    /// endpoints on the same node, then zone, then region, spilling over as Envoy does.
    pub fn locality(mut self, locality: Locality) -> Self {
        self.locality = Some(locality);
        self
    }

    /// How long a call waits for a usable endpoint before failing with `UNAVAILABLE` (default 3 s).
    pub fn failfast(mut self, failfast: Duration) -> Self {
        self.failfast = failfast;
        self
    }

    /// Gives up on a connection attempt after this long (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Fails a call whose response headers have not arrived after this long with
    /// `DEADLINE_EXCEEDED` (default none; gRPC deadlines set per call still apply).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Connects with TLS (ALPN `h2` is set when the configuration lists no protocol).
    pub fn tls(mut self, config: rustls::ClientConfig) -> Self {
        self.tls = Some(Arc::new(config));
        self
    }

    /// The name endpoint certificates must carry (default: the endpoint's IP address).
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.tls_server_name = Some(name.into());
        self
    }

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

    /// Re-sends calls that reached a backend under `policy` (see [`RetryPolicy`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Passive outlier detection (default on with `OutlierConfig::default()`); `None` disables it.
    pub fn outlier_detection(mut self, config: Option<OutlierConfig>) -> Self {
        self.outlier = config;
        self
    }

    /// Streams per HTTP/2 connection before another connection to the same endpoint is opened
    /// (default 100; see `lb_hyper::HttpConnector::max_streams_per_connection`).
    pub fn max_streams_per_connection(mut self, n: usize) -> Self {
        self.max_streams = Some(n);
        self
    }

    /// Most HTTP/2 connections per endpoint (default 4).
    pub fn max_connections_per_endpoint(mut self, n: usize) -> Self {
        self.max_connections = Some(n);
        self
    }

    /// Closes an endpoint's connections beyond its first once they have been idle this long
    /// (default 90 s); `None` keeps them until the server closes them. Extra connections are opened
    /// under load (see [`Builder::max_connections_per_endpoint`]); this gives them back after it.
    pub fn connection_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// The latency estimate's tuning: the decay time constant τ (default 10 s, linkerd's) and the
    /// estimate before an endpoint's first answer (default 30 ms). A shorter τ forgets a latency
    /// spike sooner (see docs/how-it-works.md on PeakEWMA and spikes) at the cost of probing slow
    /// endpoints more often.
    pub fn peak_ewma_config(mut self, config: lb_core::load::EwmaConfig) -> Self {
        self.ewma = Some(config);
        self
    }

    /// Deterministic subsetting for large fleets: connect to only `size` of the target's endpoints,
    /// chosen by rendezvous hashing on `client_id` (see [`lb_core::discover::subsetting`]). Give each
    /// client instance its own stable id (a pod name): clients sharing an id share a subset, and
    /// across many clients every endpoint gets about `clients · size / endpoints` of them. Removing
    /// an endpoint replaces at most one member of a subset. `size` 0 turns it off.
    pub fn subset(mut self, size: usize, client_id: impl Into<String>) -> Self {
        self.subset = Some((size, client_id.into()));
        self
    }

    /// Builds a channel for a target URI (`static:///127.0.0.1:50051,127.0.0.1:50052`, and
    /// `etcd://`, `consul://`, `kubernetes:///` with the cargo features of those names).
    /// Must be called inside a Tokio runtime.
    pub fn build_from_target(self, target: &str) -> Result<LbChannel, Error> {
        let parsed = lb_registry::Target::parse(target).map_err(|e| Error::invalid_target(target, e))?;
        let discover = lb_registry::resolve(&parsed).map_err(|e| Error::invalid_target(target, e))?;
        let mut this = self;
        if this.authority.is_none() {
            this.authority = service_authority(&parsed);
        }
        this.build(discover, target)
    }

    /// Builds a channel over any discovery stream; `name` labels logs, metrics and errors.
    /// Must be called inside a Tokio runtime.
    pub fn build(self, discover: BoxDiscover, name: &str) -> Result<LbChannel, Error> {
        let discover = match &self.subset {
            Some((size, client)) if *size > 0 => lb_core::discover::subset(discover, *size, client),
            _ => discover,
        };
        let parts = ConnectorParts {
            protocol: Protocol::Http2,
            tls: self.tls.clone(),
            tls_server_name: self.tls_server_name.clone(),
            max_streams: self.max_streams,
            max_connections: self.max_connections,
            keep_alive: self.keep_alive,
            idle_timeout: self.idle_timeout,
        };
        let connector = parts.connector::<Body>().map_err(Error::from_hyper)?;
        let health: Option<Arc<dyn HealthCheck<HttpConnection<Body>>>> = match self.health {
            Some(h) => Some(Arc::new(h)),
            None => None,
        };
        let pool = lb_hyper::spawn_pool(
            discover,
            name,
            connector,
            self.policy,
            self.locality,
            self.connect_timeout,
            self.outlier,
            self.ewma,
            health,
        );
        let balancer = Balancer::new(pool, Protocol::Http2, self.tls.is_some(), Classify::grpc(), self.failfast)
            .with_authority(self.authority);
        Ok(LbChannel {
            inner: Arc::new(Inner {
                balancer,
                request_timeout: self.request_timeout,
                retry: self.retry,
                hash_header: self.hash_header,
            }),
        })
    }
}

struct Inner {
    balancer: Balancer<Body>,
    request_timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
    hash_header: Option<http::HeaderName>,
}

/// A tonic channel that picks an endpoint for every call; see the [crate docs](crate).
#[derive(Clone)]
pub struct LbChannel {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LbChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbChannel")
            .field("balancer", &self.inner.balancer)
            .field("retry", &self.inner.retry)
            .finish()
    }
}

impl LbChannel {
    /// Starts building a channel.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// A channel with the defaults for a target URI (P2C PeakEWMA, 3 s failfast).
    pub fn from_target(target: &str) -> Result<LbChannel, Error> {
        Builder::new().build_from_target(target)
    }

    /// Waits until at least one endpoint can take calls, or `timeout`; returns whether one can.
    pub async fn ready(&self, timeout: Duration) -> bool {
        self.inner.balancer.ready(timeout).await
    }

    /// The endpoints and their state (phase, health, in-flight calls, latency estimate).
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        self.inner.balancer.endpoints()
    }

    /// The target name (the URI given to the builder).
    pub fn target(&self) -> &str {
        self.inner.balancer.pool().target()
    }

    async fn call_once(
        &self,
        req: http::Request<Body>,
        replay: Option<&(dyn Fn() -> http::Request<Body> + Send + Sync)>,
    ) -> Result<http::Response<ResponseBody>, Error> {
        let ctx = match &self.inner.hash_header {
            Some(h) => req
                .headers()
                .get(h)
                .map(|v| PickContext::with_hash(lb_core::policy::hash_key(v.as_bytes())))
                .unwrap_or_default(),
            None => PickContext::default(),
        };
        let balancer = &self.inner.balancer;
        let fut = async move {
            match replay {
                Some(replay) => balancer.send_replayable(req, ctx, replay).await,
                None => balancer.send(req, ctx).await,
            }
        };
        let rsp = match self.inner.request_timeout {
            Some(t) => match tokio::time::timeout(t, fut).await {
                Ok(r) => r,
                Err(_) => return Err(Error::timeout(t)),
            },
            None => fut.await,
        };
        rsp.map(|r| r.map(ResponseBody::new)).map_err(Error::from_hyper)
    }

    async fn call(self, req: http::Request<Body>) -> Result<http::Response<ResponseBody>, Error> {
        let policy = self.inner.retry.clone();
        let limit = policy.as_ref().map_or(REPLAY_LIMIT, |p| p.max_buffer_bytes());
        let (parts, body) = req.into_parts();
        // A body that is complete at once (every unary call) is kept, so a stream the server
        // refused unprocessed can be re-sent elsewhere, and a retry policy can re-send it.
        let bytes = match buffer_ready(body, limit) {
            Buffered::Complete(bytes) => bytes,
            Buffered::Partial(body) => return self.call_once(http::Request::from_parts(parts, body), None).await,
        };
        let template = Template::of(&parts);
        let first = http::Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes.clone())));
        let replay = move || template.request(&bytes);
        let Some(policy) = policy else {
            return self.call_once(first, Some(&replay)).await;
        };
        let mut req = first;
        let mut attempt = 1;
        loop {
            let result = self.call_once(req, Some(&replay)).await;
            if attempt >= policy.max_attempts() {
                return result;
            }
            let retry = match &result {
                // A trailers-only answer carries its status in the headers: nothing is committed yet.
                Ok(rsp) => lb_hyper::classify::grpc_status(rsp.headers())
                    .is_some_and(|c| policy.retries_code(tonic::Code::from_i32(c))),
                // Waiting longer for an endpoint than failfast already did would not help.
                Err(e) => !e.is_unavailable() && policy.retries_code(e.code()),
            };
            if !retry {
                return result;
            }
            tracing::debug!(target_uri = %self.target(), attempt, "retrying call");
            drop(result);
            tokio::time::sleep(policy.delay(attempt)).await;
            attempt += 1;
            req = replay();
        }
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
        // The endpoint is chosen per call; waiting for one is bounded by the failfast time.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> ResponseFuture {
        ResponseFuture {
            inner: Box::pin(self.clone().call(req)),
        }
    }
}

/// The future of an [`LbChannel`] call.
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Result<http::Response<ResponseBody>, Error>> + Send>>,
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<ResponseBody>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// The authority a channel built from `target` sends by default: the service the target names
/// (see [`Builder::authority`]), or `None` for address lists.
fn service_authority(target: &lb_registry::Target) -> Option<http::uri::Authority> {
    let name = target.path().trim();
    if target.scheme() == "static" || name.is_empty() || name.contains([',', '/']) {
        return None;
    }
    // `svc.ns:grpc`: a port name is not an authority's port; keep the host.
    let name = match name.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && !port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => name,
    };
    http::uri::Authority::try_from(name).ok()
}

#[cfg(test)]
mod tests {
    use super::service_authority;

    fn of(target: &str) -> Option<String> {
        let t = lb_registry::Target::parse(target).expect("a valid target");
        service_authority(&t).map(|a| a.to_string())
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
