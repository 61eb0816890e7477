//! The connector lb's pool uses to open HTTP/1.1 and HTTP/2 connections to endpoints.
//!
//! [`HttpConnector`] implements [`lb_core::pool::Connect`]: TCP with `TCP_NODELAY` (small gRPC
//! messages must not wait for Nagle), optional TLS with rustls (ALPN `h2` or `http/1.1`), then hyper's
//! client handshake. Its [`HttpConnection`] is a cheap `Clone` handle over *several* transport
//! connections to one endpoint — more HTTP/2 connections when streams pile up (see
//! [`HttpConnector::max_streams_per_connection`]), a small pool for HTTP/1.1 — and its close signal
//! fires when the endpoint's primary connection ends, so the pool reconnects at once.
//!
//! An [`HttpConnection`] is the per-endpoint `tower::Service` that lb-core's engine
//! ([`lb_core::Balance`]) sends through. It points each request at its endpoint (origin-form and
//! `Host` over HTTP/1.1, `scheme://authority/path` over HTTP/2, the authority being the one the
//! caller addressed — see [`HttpConnector::authority`] — or else the endpoint's `ip:port`) and sends
//! with hyper's `try_send_request` (hyper ≥ 1.4): when a request could not be written to the
//! connection, hyper hands it back, and the error ([`SendError`]) hands it on to the engine, which
//! sends it elsewhere without having had to buffer its body. A request carrying a [`Replay`] is
//! rebuilt and handed back the same way when an HTTP/2 server refused its stream unprocessed.

mod dial;
mod h1;
mod h2;
mod slot;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use lb_core::balance::EndpointError;
use lb_core::pool::{Connect, Connected};
use lb_core::{BoxError, Endpoint};
use rustls::pki_types::ServerName;

use self::dial::{Dialer, H2Settings, Tls};
pub use self::slot::{SlotBody, StreamSlot};

/// Which HTTP version a connector speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1: one request at a time per connection, a small pool of connections per endpoint.
    Http1,
    /// HTTP/2 (prior knowledge over TCP, ALPN `h2` over TLS): many streams per connection.
    Http2,
}

/// Opens [`HttpConnection`]s; see the [module docs](self).
pub struct HttpConnector<B> {
    protocol: Protocol,
    route: Arc<Route>,
    dialer: Dialer,
    tls_config: Option<Arc<rustls::ClientConfig>>,
    max_streams: usize,
    max_connections: usize,
    idle_timeout: Option<Duration>,
    _body: std::marker::PhantomData<fn(B)>,
}

impl<B> Clone for HttpConnector<B> {
    fn clone(&self) -> Self {
        HttpConnector {
            protocol: self.protocol,
            route: Arc::clone(&self.route),
            dialer: self.dialer.clone(),
            tls_config: self.tls_config.clone(),
            max_streams: self.max_streams,
            max_connections: self.max_connections,
            idle_timeout: self.idle_timeout,
            _body: std::marker::PhantomData,
        }
    }
}

impl<B> fmt::Debug for HttpConnector<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConnector")
            .field("protocol", &self.protocol)
            .field("tls", &self.dialer.tls.is_some())
            .field("max_streams", &self.max_streams)
            .field("max_connections", &self.max_connections)
            .field("idle_timeout", &self.idle_timeout)
            .field("authority", &self.route.authority)
            .finish()
    }
}

impl<B> HttpConnector<B> {
    /// In-flight streams per HTTP/2 connection at which another connection is opened (see
    /// [`HttpConnector::max_streams_per_connection`]).
    pub const DEFAULT_MAX_STREAMS: usize = 100;
    /// How long a connection beyond an endpoint's first may sit idle before it is closed (90 s,
    /// as hyper-util's pool).
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
    /// Most HTTP/2 connections per endpoint.
    pub const DEFAULT_MAX_H2_CONNECTIONS: usize = 4;
    /// Most HTTP/1.1 connections per endpoint.
    pub const DEFAULT_MAX_H1_CONNECTIONS: usize = 16;

    /// An HTTP/2 connector (what gRPC needs).
    pub fn http2() -> Self {
        Self::new(Protocol::Http2)
    }

    /// An HTTP/1.1 connector.
    pub fn http1() -> Self {
        Self::new(Protocol::Http1)
    }

    /// A connector for `protocol` with the defaults: no TLS, `TCP_NODELAY`.
    pub fn new(protocol: Protocol) -> Self {
        HttpConnector {
            protocol,
            route: Arc::new(Route {
                protocol,
                scheme: Scheme::HTTP,
                authority: None,
            }),
            dialer: Dialer {
                tls: None,
                nodelay: true,
                h2: H2Settings::default(),
            },
            tls_config: None,
            max_streams: Self::DEFAULT_MAX_STREAMS,
            max_connections: match protocol {
                Protocol::Http1 => Self::DEFAULT_MAX_H1_CONNECTIONS,
                Protocol::Http2 => Self::DEFAULT_MAX_H2_CONNECTIONS,
            },
            idle_timeout: Some(Self::DEFAULT_IDLE_TIMEOUT),
            _body: std::marker::PhantomData,
        }
    }

    /// The protocol spoken.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Uses TLS with this rustls configuration. When it lists no ALPN protocols, `h2` (or
    /// `http/1.1`) is set. The certificate is verified against `server_name` when given (see
    /// [`HttpConnector::tls_server_name`]), otherwise against the endpoint's IP address.
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        let alpn: &[&[u8]] = match self.protocol {
            Protocol::Http1 => &[b"http/1.1"],
            Protocol::Http2 => &[b"h2"],
        };
        let config = dial::with_alpn(config, alpn);
        let server_name = self.dialer.tls.as_ref().and_then(|t| t.server_name.clone());
        self.dialer.tls = Some(Tls {
            connector: tokio_rustls::TlsConnector::from(Arc::clone(&config)),
            server_name,
        });
        self.tls_config = Some(config);
        Arc::make_mut(&mut self.route).scheme = Scheme::HTTPS;
        self
    }

    /// Addresses every request to `authority` (`:authority` over HTTP/2, `Host` over HTTP/1.1
    /// unless the request carries one), whatever its URI says; `None` (the default) sends each
    /// request to the authority it names — its URI's, else (HTTP/2) its `Host` header's — and only
    /// a request that names none to the chosen endpoint's `ip:port`, the way a client addresses a
    /// virtual host and not a socket. Servers and proxies that route on the authority (virtual
    /// hosts, sidecars) need the service's name there.
    pub fn authority(mut self, authority: Option<Authority>) -> Self {
        Arc::make_mut(&mut self.route).authority = authority;
        self
    }

    /// The name every endpoint's certificate must carry (e.g. the service's DNS name). Without it,
    /// certificates are checked against the endpoint's IP address. Needs [`HttpConnector::tls`]
    /// first: without TLS there is no certificate to check, and that is an error, not a no-op.
    pub fn tls_server_name(mut self, name: &str) -> Result<Self, crate::Error> {
        let parsed = ServerName::try_from(name.to_string())
            .map_err(|e| crate::Error::config(format!("invalid TLS server name `{name}`: {e}")))?;
        match &mut self.dialer.tls {
            Some(tls) => tls.server_name = Some(parsed),
            None => {
                return Err(crate::Error::config(format!(
                    "TLS server name `{name}` given without TLS: set tls() too, or drop the name"
                )))
            }
        }
        Ok(self)
    }

    /// Sets `TCP_NODELAY` (default on).
    pub fn nodelay(mut self, on: bool) -> Self {
        self.dialer.nodelay = on;
        self
    }

    /// HTTP/2: when every connection to an endpoint carries this many in-flight streams, open
    /// another one (up to [`HttpConnector::max_connections`]).
    ///
    /// The default is 100. The ideal value is the server's `SETTINGS_MAX_CONCURRENT_STREAMS`, but
    /// hyper does not expose the peer's settings; 100 is the lowest value RFC 9113 recommends a server
    /// allow, so with it no request queues invisibly inside h2 behind a server that follows the
    /// recommendation. Servers with a lower limit need this set to match.
    pub fn max_streams_per_connection(mut self, n: usize) -> Self {
        self.max_streams = n.max(1);
        self
    }

    /// The most connections per endpoint (HTTP/2 default 4, HTTP/1.1 default 16).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Closes connections beyond an endpoint's first one — extra HTTP/2 connections opened under
    /// stream pressure, surplus HTTP/1.1 connections after a burst — once they have been idle this
    /// long (default [`HttpConnector::DEFAULT_IDLE_TIMEOUT`]); `None` keeps them until the server
    /// closes them. An endpoint's first connection is kept for as long as the endpoint is.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout.filter(|t| !t.is_zero());
        self
    }

    /// HTTP/2 keep-alive PINGs at this interval, failing the connection when one is not answered
    /// within `timeout`. Off by default.
    pub fn http2_keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.dialer.h2.keep_alive_interval = Some(interval);
        self.dialer.h2.keep_alive_timeout = timeout;
        self
    }
}

impl<B> Connect for HttpConnector<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Connection = HttpConnection<B>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Connected<HttpConnection<B>>, BoxError>> + Send + 'static>>;

    fn connect(&self, endpoint: &Endpoint) -> Self::Future {
        let addr = endpoint.addr();
        let dialer = self.dialer.clone();
        let protocol = self.protocol;
        let route = Arc::clone(&self.route);
        let (max_streams, max_connections, idle_timeout) = (self.max_streams, self.max_connections, self.idle_timeout);
        Box::pin(async move {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let inner = match protocol {
                Protocol::Http2 => {
                    let (send, driver) = dialer.h2::<B>(addr).await?;
                    tokio::spawn(async move {
                        driver.await;
                        let _ = tx.send(());
                    });
                    Inner::H2(Arc::new(h2::H2Pool::new(addr, send, dialer, max_streams, max_connections, idle_timeout)))
                }
                Protocol::Http1 => {
                    let (send, driver) = dialer.h1::<B>(addr).await?;
                    tokio::spawn(async move {
                        driver.await;
                        let _ = tx.send(());
                    });
                    Inner::H1(Arc::new(h1::H1Pool::new(addr, send, dialer, max_connections, idle_timeout)))
                }
            };
            let closed = async move {
                let _ = rx.await;
            };
            let authority = Authority::try_from(addr.to_string().as_str())?;
            let shared = Arc::new(Shared {
                inner,
                addr,
                authority,
                route,
            });
            Ok(Connected::new(HttpConnection { shared }, closed))
        })
    }
}

enum Inner<B> {
    H1(Arc<h1::H1Pool<B>>),
    H2(Arc<h2::H2Pool<B>>),
}

/// How requests are addressed: set on the connector, shared by its connections.
#[derive(Clone, Debug)]
struct Route {
    protocol: Protocol,
    scheme: Scheme,
    authority: Option<Authority>,
}

struct Shared<B> {
    inner: Inner<B>,
    addr: std::net::SocketAddr,
    authority: Authority,
    route: Arc<Route>,
}

/// A cheap `Clone` handle on one endpoint's connections (one reference count), and the
/// per-endpoint `tower::Service` the engine sends through; see the [module docs](self).
pub struct HttpConnection<B> {
    shared: Arc<Shared<B>>,
}

impl<B> Clone for HttpConnection<B> {
    fn clone(&self) -> Self {
        HttpConnection {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<B> fmt::Debug for HttpConnection<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConnection")
            .field("addr", &self.shared.addr)
            .field("protocol", &self.shared.route.protocol)
            .finish()
    }
}

impl<B> HttpConnection<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// The endpoint's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.shared.addr
    }

    /// The endpoint's address as a URI authority (`ip:port`).
    pub fn authority(&self) -> &Authority {
        &self.shared.authority
    }

    /// How many transport connections are open to the endpoint.
    pub fn connections(&self) -> usize {
        match &self.shared.inner {
            Inner::H1(p) => p.connections(),
            Inner::H2(p) => p.connections(),
        }
    }

    /// True when no connection can carry a request any more.
    pub fn is_closed(&self) -> bool {
        match &self.shared.inner {
            Inner::H1(p) => p.is_closed(),
            Inner::H2(p) => p.is_closed(),
        }
    }

    /// Sends a request as it is, without pointing it at the endpoint. On success, the
    /// [`StreamSlot`] must live as long as the response body: it holds the connection's stream
    /// (HTTP/2) or the connection itself (HTTP/1.1).
    pub async fn send(&self, req: Request<B>) -> Result<(Response<Incoming>, StreamSlot), SendError<B>> {
        match &self.shared.inner {
            Inner::H1(p) => p.send(req).await,
            Inner::H2(p) => p.send(req).await,
        }
    }

    /// Sends a request as it is and ties the connection slot to the response body (for callers
    /// that do not track load themselves, e.g. health checks).
    pub async fn request(&self, req: Request<B>) -> Result<Response<SlotBody<Incoming>>, BoxError> {
        let (rsp, slot) = self.send(req).await.map_err(|e| e.error)?;
        Ok(rsp.map(|b| SlotBody::new(b, slot)))
    }

    /// Points `req` at this endpoint; returns what to restore should the request come back unsent
    /// (so the next endpoint sees the request as the caller made it).
    fn point(&self, req: &mut Request<B>) -> Result<Uri, BoxError> {
        let route = &*self.shared.route;
        let original = req.uri().clone();
        // The authority the caller addresses: the configured one, else the URI's, else (HTTP/2) a
        // Host header the caller set, so `:authority` and `Host` never disagree (RFC 9113 §8.3.1).
        let addressed: Option<Authority> = route.authority.clone().or_else(|| original.authority().cloned()).or_else(|| {
            match route.protocol {
                Protocol::Http2 => req
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| Authority::try_from(h).ok()),
                Protocol::Http1 => None,
            }
        });
        let mut parts = original.clone().into_parts();
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        match route.protocol {
            Protocol::Http1 => {
                // Origin-form: a server given absolute-form must ignore `Host` (RFC 9112 §3.2.2).
                parts.scheme = None;
                parts.authority = None;
                if !req.headers().contains_key(http::header::HOST) {
                    let host = addressed.as_ref().unwrap_or(&self.shared.authority);
                    if let Ok(h) = HeaderValue::from_str(host.as_str()) {
                        req.headers_mut().insert(http::header::HOST, h);
                        if addressed.is_none() {
                            req.extensions_mut().insert(HostIsEndpoint);
                        }
                    }
                }
            }
            Protocol::Http2 => {
                parts.scheme = Some(route.scheme.clone());
                parts.authority = Some(addressed.unwrap_or_else(|| self.shared.authority.clone()));
            }
        }
        *req.uri_mut() = Uri::from_parts(parts).map_err(|e| format!("cannot build the request URI: {e}"))?;
        Ok(original)
    }
}

/// Marks a `Host` header this crate set to one endpoint's address, to undo when the request goes
/// to another.
#[derive(Clone, Copy, Debug)]
struct HostIsEndpoint;

fn restore<B>(req: &mut Request<B>, uri: Uri) {
    *req.uri_mut() = uri;
    if req.extensions_mut().remove::<HostIsEndpoint>().is_some() {
        req.headers_mut().remove(http::header::HOST);
    }
}

/// A way to rebuild a request whose body can be cloned, carried in its extensions: when an HTTP/2
/// server refuses the stream unprocessed (`REFUSED_STREAM`, or a graceful `GOAWAY` above its last
/// stream id) after hyper had consumed the request, the connection hands a rebuilt copy back to the
/// engine, which sends it to another endpoint. RFC 9113 §8.7 makes that safe for any method.
pub struct Replay<B>(Arc<dyn Fn() -> Request<B> + Send + Sync>);

impl<B> Replay<B> {
    /// Rebuilds with `make` (which must return the request as the caller first made it).
    pub fn new(make: impl Fn() -> Request<B> + Send + Sync + 'static) -> Self {
        Replay(Arc::new(make))
    }

    /// A copy of the request, carrying this replay too (so a second refusal can be replayed).
    pub fn rebuild(&self) -> Request<B>
    where
        B: 'static,
    {
        let mut req = (self.0)();
        req.extensions_mut().insert(self.clone());
        req
    }
}

impl<B> Clone for Replay<B> {
    fn clone(&self) -> Self {
        Replay(Arc::clone(&self.0))
    }
}

impl<B> fmt::Debug for Replay<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Replay")
    }
}

impl<B> tower_service::Service<Request<B>> for HttpConnection<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<SlotBody<Incoming>>;
    type Error = SendError<B>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, SendError<B>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), SendError<B>>> {
        // A closed connection cannot take the request: the engine picks another endpoint. (Which
        // of an endpoint's connections carries it is chosen in `call`.)
        if self.is_closed() {
            Poll::Ready(Err(SendError::not_sent("connection closed")))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // Taken out, not cloned: hyper has no use for it, and a refused stream puts it back.
        let replay = req.extensions_mut().remove::<Replay<B>>();
        let original = match self.point(&mut req) {
            Ok(original) => original,
            Err(e) => return Box::pin(std::future::ready(Err(SendError::not_sent(e)))),
        };
        let h1 = match &self.shared.inner {
            Inner::H2(pool) => {
                // Handed to the connection now; only the answer is awaited.
                let (sent, slot) = match pool.start(req) {
                    Ok(started) => started,
                    Err(e) => return Box::pin(std::future::ready(Err(handed_back(e, original, replay)))),
                };
                return Box::pin(async move {
                    match sent.await {
                        Ok(rsp) => Ok(rsp.map(|b| SlotBody::new(b, slot))),
                        Err(e) => Err(handed_back(e, original, replay)),
                    }
                });
            }
            Inner::H1(pool) => Arc::clone(pool),
        };
        Box::pin(async move {
            match h1.send(req).await {
                Ok((rsp, slot)) => Ok(rsp.map(|b| SlotBody::new(b, slot))),
                Err(e) => Err(handed_back(e, original, replay)),
            }
        })
    }
}

/// Prepares a failed send for the engine: an unsent request is restored to what the caller made
/// (keeping its replay); a stream refused unprocessed is rebuilt from its replay, when it has one.
fn handed_back<B: 'static>(mut e: SendError<B>, original: Uri, replay: Option<Replay<B>>) -> SendError<B> {
    match e.request.as_mut() {
        Some(unsent) => {
            restore(unsent, original);
            if let Some(replay) = replay {
                unsent.extensions_mut().insert(replay);
            }
        }
        None if e.unprocessed => e.request = replay.map(|r| r.rebuild()),
        None => {}
    }
    e
}

/// A request that failed; carries the request back when it never reached the backend.
pub struct SendError<B> {
    error: BoxError,
    request: Option<Request<B>>,
    /// The request was certainly not processed (never written, or refused unprocessed).
    unprocessed: bool,
}

impl<B> SendError<B> {
    pub(crate) fn unsent(request: Request<B>, error: impl Into<BoxError>) -> Self {
        SendError {
            error: error.into(),
            request: Some(request),
            unprocessed: true,
        }
    }

    pub(crate) fn sent(error: impl Into<BoxError>) -> Self {
        let error = error.into();
        SendError {
            unprocessed: refused_unprocessed(&error),
            error,
            request: None,
        }
    }

    fn not_sent(error: impl Into<BoxError>) -> Self {
        SendError {
            error: error.into(),
            request: None,
            unprocessed: true,
        }
    }

    /// True when the request certainly never reached a backend that processed it.
    pub fn is_unsent(&self) -> bool {
        self.unprocessed
    }

    /// Takes the unsent request back.
    pub fn take_request(&mut self) -> Option<Request<B>> {
        self.request.take()
    }

    /// The underlying error.
    pub fn error(&self) -> &BoxError {
        &self.error
    }

    /// Unwraps the underlying error.
    pub fn into_error(self) -> BoxError {
        self.error
    }
}

impl<B> EndpointError<Request<B>> for SendError<B> {
    fn take_unsent(&mut self) -> Option<Request<B>> {
        self.request.take()
    }

    fn is_unprocessed(&self) -> bool {
        self.unprocessed
    }

    fn into_error(self) -> BoxError {
        Box::new(crate::Error::transport(self.error, !self.unprocessed))
    }
}

impl<B> fmt::Debug for SendError<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendError")
            .field("error", &self.error)
            .field("unprocessed", &self.unprocessed)
            .field("request", &self.request.is_some())
            .finish()
    }
}

/// True when HTTP/2 says the server did not process the stream: a `REFUSED_STREAM` reset, or the
/// error h2 gives streams above the last stream id of a graceful (`NO_ERROR`) `GOAWAY` — a graceful
/// shutdown promises to finish every stream at or below that id, so a stream failing with it was not
/// taken.
pub fn refused_unprocessed(error: &BoxError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&**error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<::h2::Error>() {
            return h2.is_remote()
                && (h2.reason() == Some(::h2::Reason::REFUSED_STREAM)
                    || (h2.is_go_away() && h2.reason() == Some(::h2::Reason::NO_ERROR)));
        }
        source = e.source();
    }
    false
}
