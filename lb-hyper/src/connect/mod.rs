//! The connector lb's pool uses to open HTTP/1.1 and HTTP/2 connections to endpoints.
//!
//! [`HttpConnector`] implements [`lb_core::pool::Connect`]: TCP with `TCP_NODELAY` (small gRPC
//! messages must not wait for Nagle), optional TLS with rustls (ALPN `h2` or `http/1.1`), then hyper's
//! client handshake. Its [`HttpConnection`] is a cheap `Clone` handle over *several* transport
//! connections to one endpoint — more HTTP/2 connections when streams pile up (see
//! [`HttpConnector::max_streams_per_connection`]), a small pool for HTTP/1.1 — and its close signal
//! fires when the endpoint's primary connection ends, so the pool reconnects at once.
//!
//! [`HttpConnection::send`] uses hyper's `try_send_request` (hyper ≥ 1.4): when a request could not
//! be written to the connection, hyper hands it back, and the balancer re-sends it elsewhere without
//! having had to buffer its body.

mod dial;
mod h1;
mod h2;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use lb_core::pool::{Connect, Connected};
use lb_core::{BoxError, Endpoint};
use rustls::pki_types::ServerName;

use self::dial::{Dialer, H2Settings, Tls};

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
        self
    }

    /// The name every endpoint's certificate must carry (e.g. the service's DNS name). Without it,
    /// certificates are checked against the endpoint's IP address. Takes effect with
    /// [`HttpConnector::tls`]; call it after.
    pub fn tls_server_name(mut self, name: &str) -> Result<Self, crate::Error> {
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| crate::Error::config(format!("invalid TLS server name `{name}`: {e}")))?;
        if let Some(tls) = &mut self.dialer.tls {
            tls.server_name = Some(name);
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
            let authority = http::uri::Authority::try_from(addr.to_string().as_str())?;
            Ok(Connected::new(HttpConnection { inner, addr, authority }, closed))
        })
    }
}

enum Inner<B> {
    H1(Arc<h1::H1Pool<B>>),
    H2(Arc<h2::H2Pool<B>>),
}

/// A cheap `Clone` handle on one endpoint's connections; see the [module docs](self).
pub struct HttpConnection<B> {
    inner: Inner<B>,
    addr: std::net::SocketAddr,
    authority: http::uri::Authority,
}

impl<B> Clone for HttpConnection<B> {
    fn clone(&self) -> Self {
        let inner = match &self.inner {
            Inner::H1(p) => Inner::H1(Arc::clone(p)),
            Inner::H2(p) => Inner::H2(Arc::clone(p)),
        };
        HttpConnection {
            inner,
            addr: self.addr,
            authority: self.authority.clone(),
        }
    }
}

impl<B> fmt::Debug for HttpConnection<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protocol = match self.inner {
            Inner::H1(_) => Protocol::Http1,
            Inner::H2(_) => Protocol::Http2,
        };
        f.debug_struct("HttpConnection")
            .field("addr", &self.addr)
            .field("protocol", &protocol)
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
        self.addr
    }

    /// The endpoint's address as a URI authority (`ip:port`).
    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    /// How many transport connections are open to the endpoint.
    pub fn connections(&self) -> usize {
        match &self.inner {
            Inner::H1(p) => p.connections(),
            Inner::H2(p) => p.connections(),
        }
    }

    /// True when no connection can carry a request any more.
    pub fn is_closed(&self) -> bool {
        match &self.inner {
            Inner::H1(p) => p.is_closed(),
            Inner::H2(p) => p.is_closed(),
        }
    }

    /// Sends a request. On success, the [`StreamSlot`] must live as long as the response body: it
    /// holds the connection's stream (HTTP/2) or the connection itself (HTTP/1.1).
    pub async fn send(&self, req: Request<B>) -> Result<(Response<Incoming>, StreamSlot), SendError<B>> {
        match &self.inner {
            Inner::H1(p) => p.send(req).await,
            Inner::H2(p) => p.send(req).await,
        }
    }

    /// Sends a request and ties the connection slot to the response body (for callers that do not
    /// track load themselves, e.g. health checks).
    pub async fn request(&self, req: Request<B>) -> Result<Response<crate::body::SlotBody<Incoming>>, BoxError> {
        let (rsp, slot) = self.send(req).await.map_err(|e| e.into_error())?;
        Ok(rsp.map(|b| crate::body::SlotBody::new(b, slot)))
    }
}

/// Holds what a response occupies on its connection until dropped: an HTTP/2 stream counted
/// against the connection's limit, or an HTTP/1.1 connection lent to the request.
pub struct StreamSlot(#[allow(dead_code)] Box<dyn Send + Sync + 'static>);

impl StreamSlot {
    pub(crate) fn new(inner: impl Send + Sync + 'static) -> Self {
        StreamSlot(Box::new(inner))
    }
}

impl fmt::Debug for StreamSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamSlot")
    }
}

/// A request that failed; carries the request back when it was never written to the connection.
pub struct SendError<B> {
    error: BoxError,
    request: Option<Request<B>>,
}

impl<B> SendError<B> {
    pub(crate) fn unsent(request: Request<B>, error: impl Into<BoxError>) -> Self {
        SendError {
            error: error.into(),
            request: Some(request),
        }
    }

    pub(crate) fn sent(error: impl Into<BoxError>) -> Self {
        SendError {
            error: error.into(),
            request: None,
        }
    }

    /// True when the request never reached the connection, so sending it elsewhere is safe.
    pub fn is_unsent(&self) -> bool {
        self.request.is_some()
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

impl<B> fmt::Debug for SendError<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendError")
            .field("error", &self.error)
            .field("unsent", &self.request.is_some())
            .finish()
    }
}
