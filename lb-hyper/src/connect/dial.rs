//! Dialing one transport connection: TCP (with `TCP_NODELAY`), optional TLS, HTTP handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use lb_core::BoxError;

/// The byte stream under a connection: plain TCP or TLS over TCP.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

pub(crate) type BoxIo = TokioIo<Box<dyn Io>>;

/// TLS settings: the rustls configuration (ALPN already set) and the name to verify.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) connector: TlsConnector,
    /// `None`: verify the endpoint's IP address (needs an IP SAN in the certificate).
    pub(crate) server_name: Option<ServerName<'static>>,
}

/// HTTP/2 tunables passed to hyper's handshake.
#[derive(Clone, Debug)]
pub(crate) struct H2Settings {
    pub(crate) keep_alive_interval: Option<Duration>,
    pub(crate) keep_alive_timeout: Duration,
    pub(crate) initial_stream_window: Option<u32>,
    pub(crate) initial_connection_window: Option<u32>,
    pub(crate) adaptive_window: bool,
}

impl Default for H2Settings {
    fn default() -> Self {
        H2Settings {
            keep_alive_interval: None,
            keep_alive_timeout: Duration::from_secs(20),
            initial_stream_window: None,
            initial_connection_window: None,
            // Off, as in tonic: BDP probing sends PINGs alongside data frames, which costs small
            // request/response traffic more than the larger window gains it.
            adaptive_window: false,
        }
    }
}

/// Everything needed to open one more connection to an endpoint.
#[derive(Clone)]
pub(crate) struct Dialer {
    pub(crate) tls: Option<Tls>,
    pub(crate) nodelay: bool,
    pub(crate) h2: H2Settings,
}

impl Dialer {
    pub(crate) async fn io(&self, addr: SocketAddr) -> Result<BoxIo, BoxError> {
        let tcp = TcpStream::connect(addr).await?;
        if self.nodelay {
            tcp.set_nodelay(true)?;
        }
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let name = match &tls.server_name {
                    Some(n) => n.clone(),
                    None => ServerName::IpAddress(addr.ip().into()),
                };
                Box::new(tls.connector.connect(name, tcp).await?)
            }
        };
        Ok(TokioIo::new(io))
    }

    /// Opens an HTTP/2 connection; the returned future drives it and ends when it closes.
    pub(crate) async fn h2<B>(
        &self,
        addr: SocketAddr,
    ) -> Result<(hyper::client::conn::http2::SendRequest<B>, impl std::future::Future<Output = ()> + Send), BoxError>
    where
        B: http_body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let io = self.io(addr).await?;
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        builder.adaptive_window(self.h2.adaptive_window);
        if let Some(w) = self.h2.initial_stream_window {
            builder.initial_stream_window_size(w);
        }
        if let Some(w) = self.h2.initial_connection_window {
            builder.initial_connection_window_size(w);
        }
        if let Some(i) = self.h2.keep_alive_interval {
            builder.keep_alive_interval(i).keep_alive_timeout(self.h2.keep_alive_timeout).keep_alive_while_idle(true);
        }
        let (send, conn) = builder.handshake(io).await?;
        let driver = async move {
            if let Err(error) = conn.await {
                tracing::debug!(endpoint = %addr, %error, "http/2 connection ended with an error");
            }
        };
        Ok((send, driver))
    }

    /// Opens an HTTP/1.1 connection; the returned future drives it and ends when it closes.
    pub(crate) async fn h1<B>(
        &self,
        addr: SocketAddr,
    ) -> Result<(hyper::client::conn::http1::SendRequest<B>, impl std::future::Future<Output = ()> + Send), BoxError>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let io = self.io(addr).await?;
        let (send, conn) = hyper::client::conn::http1::Builder::new().handshake(io).await?;
        let driver = async move {
            if let Err(error) = conn.await {
                tracing::debug!(endpoint = %addr, %error, "http/1.1 connection ended with an error");
            }
        };
        Ok((send, driver))
    }
}

/// Clones `config` and sets its ALPN list to `protocols` when the caller set none.
pub(crate) fn with_alpn(config: Arc<rustls::ClientConfig>, protocols: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    if !config.alpn_protocols.is_empty() {
        return config;
    }
    let mut c = (*config).clone();
    c.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}
