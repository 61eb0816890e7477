//! `LbClient`: a hyper 1.x client that picks an endpoint per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use lb_core::discover::BoxDiscover;
use lb_core::policy::{P2c, Topology};
use lb_core::pool::{HealthCheck, OutlierConfig, Pool, PoolConfig};
use lb_core::{BoxError, Locality, PickContext, Policy};

use crate::balancer::{Balancer, EndpointStatus};
use crate::body::TrackedBody;
use crate::classify::Classify;
use crate::connect::{HttpConnection, HttpConnector, Protocol};
use crate::health::HttpHealthCheck;
use crate::Error;

/// Builds an [`LbClient`].
pub struct Builder {
    protocol: Protocol,
    policy: Option<Box<dyn Policy>>,
    locality: Option<Locality>,
    failfast: Duration,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
    tls: Option<Arc<rustls::ClientConfig>>,
    tls_server_name: Option<String>,
    outlier: Option<OutlierConfig>,
    health_path: Option<(String, Duration)>,
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
            .field("protocol", &self.protocol)
            .field("policy", &self.policy)
            .field("locality", &self.locality)
            .field("failfast", &self.failfast)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Builder {
    fn new() -> Self {
        Builder {
            protocol: Protocol::Http1,
            policy: None,
            locality: None,
            failfast: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(5),
            request_timeout: None,
            tls: None,
            tls_server_name: None,
            outlier: Some(OutlierConfig::default()),
            health_path: None,
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

    /// HTTP/2: sends a PING every `interval` and drops a connection whose PING is not answered within
    /// `timeout`, so a peer that vanished without closing (a dead host, a black-holed network) is
    /// noticed without waiting for TCP. Off by default.
    pub fn http2_keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keep_alive = Some((interval, timeout));
        self
    }

    /// Addresses every request to `authority` (e.g. `orders.internal` or `orders.internal:8080`):
    /// `Host` over HTTP/1.1 unless the request sets one, `:authority` over HTTP/2, whatever the
    /// request URI says. Without it a request goes to its URI's authority, and a path-only URI to
    /// the chosen endpoint's `ip:port`. Servers and proxies that route on the authority (virtual
    /// hosts, sidecars) need this.
    pub fn authority(mut self, authority: &str) -> Result<Self, Error> {
        let parsed = http::uri::Authority::try_from(authority)
            .map_err(|e| Error::config(format!("invalid authority `{authority}`: {e}")))?;
        self.authority = Some(parsed);
        Ok(self)
    }

    /// For hashing policies (`lb_core::policy::RingHash`): the request header whose value is the
    /// affinity key (e.g. `x-user-id`). Requests without it get no key (the policy picks freely).
    pub fn hash_header(mut self, name: &str) -> Result<Self, Error> {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| Error::config(format!("invalid hash header name `{name}`: {e}")))?;
        self.hash_header = Some(name);
        Ok(self)
    }

    /// HTTP/1.1 (the default) or HTTP/2.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The balancing policy (default `P2c::peak_ewma()`).
    pub fn policy(mut self, policy: impl Policy) -> Self {
        self.policy = Some(Box::new(policy));
        self
    }

    /// The caller's locality: wraps the policy in [`Topology`] (node, then zone, then region).
    pub fn locality(mut self, locality: Locality) -> Self {
        self.locality = Some(locality);
        self
    }

    /// How long a request waits for a usable endpoint before failing as unavailable (default 3 s).
    pub fn failfast(mut self, failfast: Duration) -> Self {
        self.failfast = failfast;
        self
    }

    /// Gives up on a connection attempt after this long (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Fails a request whose response headers have not arrived after this long (default none).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Connects with TLS (see [`HttpConnector::tls`]).
    pub fn tls(mut self, config: rustls::ClientConfig) -> Self {
        self.tls = Some(Arc::new(config));
        self
    }

    /// The name endpoint certificates must carry (default: the endpoint's IP address).
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.tls_server_name = Some(name.into());
        self
    }

    /// Passive outlier detection (default on with [`OutlierConfig::default`]); `None` disables it.
    pub fn outlier_detection(mut self, config: Option<OutlierConfig>) -> Self {
        self.outlier = config;
        self
    }

    /// Actively checks each endpoint with `GET path` every `interval`: a 2xx answer puts it in
    /// rotation, anything else takes it out.
    pub fn health_check_path(mut self, path: impl Into<String>, interval: Duration) -> Self {
        self.health_path = Some((path.into(), interval));
        self
    }

    /// HTTP/2: streams per connection before another connection is opened (default 100).
    pub fn max_streams_per_connection(mut self, n: usize) -> Self {
        self.max_streams = Some(n);
        self
    }

    /// Most connections per endpoint.
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

    /// Builds a client for a target URI (`static:///10.0.0.1:80,10.0.0.2:80`, `etcd://…`, …).
    /// Must be called inside a Tokio runtime.
    pub fn build_from_target<B>(self, target: &str) -> Result<LbClient<B>, Error>
    where
        B: http_body::Body + Default + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let parsed = lb_registry::Target::parse(target).map_err(Error::target)?;
        let discover = lb_registry::resolve(&parsed).map_err(Error::target)?;
        self.build(discover, target)
    }

    /// Builds a client over any discovery stream; `name` labels logs, metrics and errors.
    /// Must be called inside a Tokio runtime.
    pub fn build<B>(self, discover: BoxDiscover, name: &str) -> Result<LbClient<B>, Error>
    where
        B: http_body::Body + Default + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let discover = match &self.subset {
            Some((size, client)) if *size > 0 => lb_core::discover::subset(discover, *size, client),
            _ => discover,
        };
        let health: Option<Arc<dyn HealthCheck<HttpConnection<B>>>> = match &self.health_path {
            Some((path, interval)) => Some(Arc::new(HttpHealthCheck::new(path, *interval, self.tls.is_some())?)),
            None => None,
        };
        let parts = ConnectorParts {
            protocol: self.protocol,
            tls: self.tls.clone(),
            tls_server_name: self.tls_server_name.clone(),
            max_streams: self.max_streams,
            max_connections: self.max_connections,
            keep_alive: self.keep_alive,
            idle_timeout: self.idle_timeout,
        };
        let connector = parts.connector::<B>()?;
        let pool = spawn_pool(
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
        let balancer = Balancer::new(pool, self.protocol, self.tls.is_some(), Classify::http(), self.failfast)
            .with_authority(self.authority);
        Ok(LbClient {
            balancer,
            request_timeout: self.request_timeout,
            hash_header: self.hash_header,
        })
    }
}

/// What an [`HttpConnector`] is built from; shared with `lb-tonic`.
#[derive(Clone, Debug)]
pub struct ConnectorParts {
    /// HTTP version.
    pub protocol: Protocol,
    /// TLS configuration.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Certificate name.
    pub tls_server_name: Option<String>,
    /// HTTP/2 streams per connection.
    pub max_streams: Option<usize>,
    /// Connections per endpoint.
    pub max_connections: Option<usize>,
    /// HTTP/2 keep-alive PING interval and timeout.
    pub keep_alive: Option<(Duration, Duration)>,
    /// Idle timeout of connections beyond an endpoint's first (`None`: the connector's default).
    pub idle_timeout: Option<Option<Duration>>,
}

impl ConnectorParts {
    /// Builds the connector.
    pub fn connector<B>(&self) -> Result<HttpConnector<B>, Error> {
        let mut c = HttpConnector::<B>::new(self.protocol);
        if let Some(tls) = &self.tls {
            c = c.tls(Arc::clone(tls));
            if let Some(name) = &self.tls_server_name {
                c = c.tls_server_name(name)?;
            }
        }
        if let Some(n) = self.max_streams {
            c = c.max_streams_per_connection(n);
        }
        if let Some(n) = self.max_connections {
            c = c.max_connections(n);
        }
        if let Some((interval, timeout)) = self.keep_alive {
            c = c.http2_keep_alive(interval, timeout);
        }
        if let Some(timeout) = self.idle_timeout {
            c = c.idle_timeout(timeout);
        }
        Ok(c)
    }
}

/// Spawns the pool with the policy (default P2C PeakEWMA), wrapped in [`Topology`] when the
/// caller's locality is known. Shared with `lb-tonic`.
#[allow(clippy::too_many_arguments)]
pub fn spawn_pool<B>(
    discover: BoxDiscover,
    name: &str,
    connector: HttpConnector<B>,
    policy: Option<Box<dyn Policy>>,
    locality: Option<Locality>,
    connect_timeout: Duration,
    outlier: Option<OutlierConfig>,
    ewma: Option<lb_core::load::EwmaConfig>,
    health: Option<Arc<dyn HealthCheck<HttpConnection<B>>>>,
) -> Pool<HttpConnection<B>>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let policy: Box<dyn Policy> = policy.unwrap_or_else(|| Box::new(P2c::peak_ewma()));
    let policy: Box<dyn Policy> = match locality {
        Some(l) => Box::new(Topology::new(policy, l)),
        None => policy,
    };
    let mut config = PoolConfig::new(name);
    config.connect_timeout = connect_timeout;
    config.outlier = outlier;
    if let Some(ewma) = ewma {
        config.ewma = ewma;
    }
    Pool::spawn_with_health(discover, connector, policy, config, health)
}

/// A hyper client that balances every request over a target's endpoints.
///
/// The request goes to the chosen endpoint's connection with its path and query kept, addressed
/// to the authority the caller named: [`Builder::authority`] if set, else the request URI's
/// (`http://orders.internal/x` → `orders.internal`), else — over HTTP/2, a path-only URI with a
/// `Host` header — that header's value, else the endpoint's `ip:port`. Over HTTP/1.1 that authority is the `Host` header (a `Host` the caller set is kept)
/// and the request-target is origin-form (`GET /x`), since a server given absolute-form must ignore
/// `Host`; over HTTP/2 it is the `:authority`. Virtual hosting on the backends, and sidecars that
/// route on the authority, keep working.
///
/// Unavailable (no endpoint within the failfast time) is [`Error::is_unavailable`]; an HTTP server
/// fronting this client should answer it with 503.
pub struct LbClient<B> {
    balancer: Balancer<B>,
    request_timeout: Option<Duration>,
    hash_header: Option<http::HeaderName>,
}

impl<B> Clone for LbClient<B> {
    fn clone(&self) -> Self {
        LbClient {
            balancer: self.balancer.clone(),
            request_timeout: self.request_timeout,
            hash_header: self.hash_header.clone(),
        }
    }
}

impl<B> std::fmt::Debug for LbClient<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbClient").field("balancer", &self.balancer).finish()
    }
}

impl LbClient<()> {
    /// Starts building a client.
    pub fn builder() -> Builder {
        Builder::new()
    }
}

impl<B> LbClient<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Sends one request.
    pub async fn request(&self, req: Request<B>) -> Result<Response<TrackedBody<Incoming>>, Error> {
        let ctx = self.context(&req);
        let fut = self.balancer.send(req, ctx);
        match self.request_timeout {
            Some(t) => tokio::time::timeout(t, fut).await.map_err(|_| Error::timeout(t))?,
            None => fut.await,
        }
    }

    /// Like [`LbClient::request`], for a body that can be cloned (`Full<Bytes>`, `Empty`, …): when
    /// an HTTP/2 server says it did not process the request — a `REFUSED_STREAM` reset, or a
    /// graceful `GOAWAY` above its last stream id, as during a rolling restart — a copy goes to
    /// another endpoint instead of failing (RFC 9113 §8.7 makes that safe for any method). A
    /// request that a server may have processed is never re-sent. The copy carries the method,
    /// URI, version, headers and body, not the request's extensions.
    pub async fn request_replayable(&self, req: Request<B>) -> Result<Response<TrackedBody<Incoming>>, Error>
    where
        B: Clone + Sync,
    {
        let ctx = self.context(&req);
        let (method, uri, version, headers, body) =
            (req.method().clone(), req.uri().clone(), req.version(), req.headers().clone(), req.body().clone());
        let replay = move || {
            let mut r = Request::new(body.clone());
            *r.method_mut() = method.clone();
            *r.uri_mut() = uri.clone();
            *r.version_mut() = version;
            *r.headers_mut() = headers.clone();
            r
        };
        let fut = self.balancer.send_replayable(req, ctx, &replay);
        match self.request_timeout {
            Some(t) => tokio::time::timeout(t, fut).await.map_err(|_| Error::timeout(t))?,
            None => fut.await,
        }
    }

    fn context(&self, req: &Request<B>) -> PickContext {
        match &self.hash_header {
            Some(h) => req
                .headers()
                .get(h)
                .map(|v| PickContext::with_hash(lb_core::policy::hash_key(v.as_bytes())))
                .unwrap_or_default(),
            None => PickContext::default(),
        }
    }

    /// Waits until an endpoint can take requests, or `timeout`; returns whether one can.
    pub async fn ready(&self, timeout: Duration) -> bool {
        self.balancer.ready(timeout).await
    }

    /// The endpoints and their state.
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        self.balancer.endpoints()
    }

    /// The underlying balancer.
    pub fn balancer(&self) -> &Balancer<B> {
        &self.balancer
    }
}

impl<B> tower_service::Service<Request<B>> for LbClient<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<TrackedBody<Incoming>>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // The endpoint is chosen per request, in `call`; waiting for one is bounded by failfast.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.request(req).await })
    }
}
