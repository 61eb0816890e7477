//! `LbClient`: a hyper 1.x client that picks an endpoint per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use lb_core::balance::future::ResponseFuture as EngineFuture;
use lb_core::discover::BoxDiscover;
use lb_core::pool::{EndpointPhase, HealthCheck, Pool};
use lb_core::retry::Budget;
use lb_core::{Balance, BoxError, Endpoint};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::body::{TrackBody, TrackedBody};
use crate::connect::{HttpConnection, Protocol, Replay, SlotBody};
use crate::health::HttpHealthCheck;
use crate::retry::{self, Driven, Plan};
use crate::{Error, Options};

/// The response body of [`LbClient`]: counts the request until its end, then frees its slot on
/// the connection.
pub type ResponseBody = TrackedBody<SlotBody<Incoming>>;

/// A point-in-time view of one endpoint, for diagnostics and tests.
#[derive(Clone, Debug)]
pub struct EndpointStatus {
    /// The endpoint as discovery reported it.
    pub endpoint: Arc<Endpoint>,
    /// Its state-machine phase.
    pub phase: EndpointPhase,
    /// Whether new requests may go to it.
    pub healthy: bool,
    /// Requests in flight (counted until the end of their response bodies).
    pub in_flight: u32,
    /// Requests sent to it since it was discovered (retries and hedges included).
    pub requests: u64,
    /// The PeakEWMA latency estimate, decayed to now: what the policy prices the endpoint at. It
    /// starts at 30 ms before the first answer and is not a measured round trip.
    pub latency_estimate: Duration,
    /// Open transport connections.
    pub connections: usize,
}

/// Builds an [`LbClient`]; start with [`LbClient::builder`]. The setters record, `build` checks.
#[derive(Debug)]
pub struct Builder {
    options: Options,
    protocol: Protocol,
    health_path: Option<(String, Duration)>,
}

impl Builder {
    fn new() -> Self {
        Builder {
            options: Options::default(),
            protocol: Protocol::Http1,
            health_path: None,
        }
    }

    crate::__builder_options!();

    /// Re-sends requests that reached a backend and got a retryable answer (see
    /// [`crate::retry`]); only requests that can be rebuilt (sent with
    /// [`LbClient::request_replayable`], or carrying a [`Replay`]).
    pub fn retry(mut self, policy: crate::RetryPolicy) -> Self {
        self.options.retry = Some(policy);
        self
    }

    /// HTTP/1.1 (the default) or HTTP/2.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Actively checks each endpoint with `GET path` every `interval`: a 2xx answer puts it in
    /// rotation, anything else takes it out.
    pub fn health_check_path(mut self, path: impl Into<String>, interval: Duration) -> Self {
        self.health_path = Some((path.into(), interval));
        self
    }

    /// Builds a client for a target URI (`static:///10.0.0.1:80,10.0.0.2:80`, `etcd://…`, …).
    /// Must be called inside a Tokio runtime (an error otherwise).
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
    /// Must be called inside a Tokio runtime (an error otherwise).
    pub fn build<B>(self, discover: BoxDiscover, name: &str) -> Result<LbClient<B>, Error>
    where
        B: http_body::Body + Default + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let health: Option<Arc<dyn HealthCheck<HttpConnection<B>>>> = match &self.health_path {
            Some((path, interval)) => Some(Arc::new(HttpHealthCheck::new(path, *interval, self.options.tls.is_some())?)),
            None => None,
        };
        self.options.build_client(name, discover, self.protocol, TrackBody::http(), health)
    }
}

/// A hyper client that balances every request over a target's endpoints.
///
/// It is lb-core's engine ([`lb_core::Balance`]) over lb-hyper's connections, ending each
/// request with its response body ([`TrackBody`]). The request goes to the chosen endpoint's
/// connection with its path and query kept, addressed to the authority the caller named:
/// [`Builder::authority`] if set, else the request URI's (`http://orders.internal/x` →
/// `orders.internal`), else — over HTTP/2, a path-only URI with a `Host` header — that header's
/// value, else the endpoint's `ip:port`. Over HTTP/1.1 that authority is the `Host` header (a
/// `Host` the caller set is kept) and the request-target is origin-form (`GET /x`), since a server
/// given absolute-form must ignore `Host`; over HTTP/2 it is the `:authority`. Virtual hosting on
/// the backends, and sidecars that route on the authority, keep working.
///
/// Unavailable (no endpoint in time, or every endpoint failing to connect) is
/// [`Error::is_unavailable`]; an HTTP server fronting this client should answer it with 503.
pub struct LbClient<B> {
    engine: Balance<HttpConnection<B>, Request<B>, TrackBody>,
    request_timeout: Option<Duration>,
    plan: Option<Arc<Plan>>,
}

impl<B> Clone for LbClient<B> {
    fn clone(&self) -> Self {
        LbClient {
            engine: self.engine.clone(),
            request_timeout: self.request_timeout,
            plan: self.plan.clone(),
        }
    }
}

impl<B> std::fmt::Debug for LbClient<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbClient")
            .field("engine", &self.engine)
            .field("request_timeout", &self.request_timeout)
            .field("plan", &self.plan)
            .finish()
    }
}

impl LbClient<()> {
    /// Starts building a client.
    pub fn builder() -> Builder {
        Builder::new()
    }
}

impl<B> LbClient<B> {
    pub(crate) fn new(
        engine: Balance<HttpConnection<B>, Request<B>, TrackBody>,
        request_timeout: Option<Duration>,
        plan: Option<Arc<Plan>>,
    ) -> Self {
        LbClient {
            engine,
            request_timeout,
            plan,
        }
    }

    /// The retry budget's counters (retries and hedges sent, refused), when a retry or hedging
    /// policy is set.
    pub fn retry_budget(&self) -> Option<&Budget> {
        self.plan.as_deref().map(|p| &*p.budget)
    }

    /// The pool of the target's endpoints.
    pub fn pool(&self) -> &Pool<HttpConnection<B>> {
        self.engine.get_ref()
    }

    /// The target name (the URI given to the builder).
    pub fn target(&self) -> &str {
        self.pool().target()
    }

    /// Waits until an endpoint can take requests, or `timeout`; returns whether one can.
    pub async fn ready(&self, timeout: Duration) -> bool {
        self.pool().ready_timeout(timeout).await
    }

    /// Waits until discovery has delivered its first full set (possibly empty), or `timeout`;
    /// returns whether it has. Until then [`LbClient::endpoints`] is empty.
    pub async fn discovered(&self, timeout: Duration) -> bool {
        self.pool().initialized_timeout(timeout).await
    }
}

impl<B> LbClient<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// The endpoints and their state. Empty until discovery delivered its first set (see
    /// [`LbClient::discovered`]).
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        self.pool()
            .snapshot()
            .entries()
            .iter()
            .map(|e| EndpointStatus {
                endpoint: Arc::clone(&e.endpoint),
                phase: e.phase,
                healthy: e.healthy,
                in_flight: e.load.in_flight(),
                requests: e.load.sent(),
                latency_estimate: e.load.rtt_estimate(),
                connections: e.connection.as_ref().map(|c| c.connections()).unwrap_or(0),
            })
            .collect()
    }

    /// Sends one request; under a retry or hedging policy (see [`crate::retry`]), a request that
    /// carries a [`Replay`] may be sent more than once.
    pub fn request(&self, req: Request<B>) -> ResponseFuture<B> {
        if let Some(plan) = &self.plan {
            if plan.applies(&req) {
                if let Some(replay) = req.extensions().get::<Replay<B>>().cloned() {
                    let driven = retry::drive(self.clone(), Arc::clone(plan), req, replay);
                    return ResponseFuture::driven(driven, self.request_timeout);
                }
            }
        }
        ResponseFuture::new(self.engine.send(req), self.request_timeout)
    }

    /// One attempt through the engine, with no policy and no timeout of its own.
    pub(crate) fn send_once(&self, req: Request<B>) -> impl Future<Output = Result<Response<ResponseBody>, Error>> + Send + 'static {
        let fut = self.engine.send(req);
        async move { fut.await.map_err(Error::from_engine) }
    }

    /// Like [`LbClient::request`], for a body that can be cloned (`Full<Bytes>`, `Empty`, …): when
    /// an HTTP/2 server says it did not process the request — a `REFUSED_STREAM` reset, or a
    /// graceful `GOAWAY` above its last stream id, as during a rolling restart — a copy goes to
    /// another endpoint instead of failing (RFC 9113 §8.7 makes that safe for any method). A
    /// request that a server may have processed is never re-sent — except under a retry or
    /// hedging policy, which this makes the request eligible for (see [`crate::retry`]). The copy
    /// carries the method, URI, version, headers and body, not the request's other extensions.
    pub fn request_replayable(&self, mut req: Request<B>) -> ResponseFuture<B>
    where
        B: Clone + Sync,
    {
        let (method, uri, version, headers, body) =
            (req.method().clone(), req.uri().clone(), req.version(), req.headers().clone(), req.body().clone());
        req.extensions_mut().insert(Replay::new(move || {
            let mut r = Request::new(body.clone());
            *r.method_mut() = method.clone();
            *r.uri_mut() = uri.clone();
            *r.version_mut() = version;
            *r.headers_mut() = headers.clone();
            r
        }));
        self.request(req)
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<B>
    where
        B: http_body::Body,
        B: Send,
        B: Unpin,
        B: 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        Once { #[pin] fut: EngineFuture<HttpConnection<B>, Request<B>, TrackBody> },
        Driven { fut: Driven },
    }
}

pin_project! {
    /// The future of an [`LbClient`] request: the engine's (or, under a retry or hedging policy,
    /// its attempts'), bounded by the request timeout, with errors as [`Error`].
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<B>
    where
        B: http_body::Body,
        B: Send,
        B: Unpin,
        B: 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        #[pin]
        inner: Inner<B>,
        timeout: Option<(Duration, Pin<Box<Sleep>>)>,
    }
}

impl<B> std::fmt::Debug for ResponseFuture<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Once { fut } => f.debug_struct("ResponseFuture").field("inner", fut).finish(),
            Inner::Driven { .. } => f.debug_struct("ResponseFuture").field("inner", &"attempts").finish(),
        }
    }
}

impl<B> ResponseFuture<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn new(fut: EngineFuture<HttpConnection<B>, Request<B>, TrackBody>, timeout: Option<Duration>) -> Self {
        ResponseFuture {
            inner: Inner::Once { fut },
            timeout: timeout.map(|t| (t, Box::pin(tokio::time::sleep(t)))),
        }
    }

    fn driven(fut: Driven, timeout: Option<Duration>) -> Self {
        ResponseFuture {
            inner: Inner::Driven { fut },
            timeout: timeout.map(|t| (t, Box::pin(tokio::time::sleep(t)))),
        }
    }
}

impl<B> Future for ResponseFuture<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let done = match this.inner.as_mut().project() {
            InnerProj::Once { fut } => match fut.poll(cx) {
                Poll::Ready(result) => Some(result.map_err(Error::from_engine)),
                Poll::Pending => None,
            },
            InnerProj::Driven { fut } => match fut.as_mut().poll(cx) {
                Poll::Ready(result) => Some(result),
                Poll::Pending => None,
            },
        };
        if let Some(result) = done {
            return Poll::Ready(result);
        }
        if let Some((after, sleep)) = this.timeout.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            // Dropped with this future, the call is recorded as timed out, not cancelled.
            if let InnerProj::Once { fut } = this.inner.project() {
                fut.timed_out();
            }
            return Poll::Ready(Err(Error::timeout(*after)));
        }
        Poll::Pending
    }
}

impl<B> tower_service::Service<Request<B>> for LbClient<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Error;
    type Future = ResponseFuture<B>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // The endpoint is chosen per request; waiting for one is bounded by the endpoint wait.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.request(req)
    }
}
