//! Active HTTP health checking: `GET <path>` on each endpoint's own connection, periodically.
//!
//! A 2xx answer within the interval puts the endpoint in rotation; any other answer, an error or a
//! timeout takes it out until a later probe succeeds. The probe travels over the endpoint's pooled
//! connection, so it also proves the connection itself works.

use std::marker::PhantomData;
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use http::{Request, Uri};
use http_body_util::BodyExt;
use lb_core::pool::HealthCheck;
use lb_core::{BoxError, Endpoint};

use crate::connect::HttpConnection;
use crate::Error;

/// Probes `GET path` every `interval`; see the [module docs](self).
pub struct HttpHealthCheck<B> {
    path: http::uri::PathAndQuery,
    interval: Duration,
    https: bool,
    _body: PhantomData<fn(B)>,
}

impl<B> std::fmt::Debug for HttpHealthCheck<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpHealthCheck")
            .field("path", &self.path)
            .field("interval", &self.interval)
            .finish()
    }
}

impl<B> HttpHealthCheck<B> {
    /// Probes `path` every `interval`; `https` selects the URI scheme.
    pub fn new(path: &str, interval: Duration, https: bool) -> Result<Self, Error> {
        let path = path
            .parse()
            .map_err(|e| Error::config(format!("invalid health check path `{path}`: {e}")))?;
        Ok(HttpHealthCheck {
            path,
            interval: interval.max(Duration::from_millis(10)),
            https,
            _body: PhantomData,
        })
    }
}

impl<B> HealthCheck<HttpConnection<B>> for HttpHealthCheck<B>
where
    B: http_body::Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn watch(&self, endpoint: &Endpoint, connection: &HttpConnection<B>) -> BoxStream<'static, bool> {
        let scheme = if self.https { "https" } else { "http" };
        let addr = endpoint.addr();
        let uri: Option<Uri> = format!("{scheme}://{addr}{}", self.path).parse().ok();
        let conn = connection.clone();
        let interval = self.interval;
        stream::unfold(true, move |first| {
            let conn = conn.clone();
            let uri = uri.clone();
            async move {
                if !first {
                    tokio::time::sleep(interval).await;
                }
                let ok = match uri {
                    Some(uri) => probe(&conn, uri, interval).await,
                    None => false,
                };
                Some((ok, false))
            }
        })
        .boxed()
    }
}

async fn probe<B>(conn: &HttpConnection<B>, uri: Uri, timeout: Duration) -> bool
where
    B: http_body::Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let host = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let Ok(req) = Request::get(uri).header(http::header::HOST, host).body(B::default()) else {
        return false;
    };
    let check = async {
        let rsp = conn.request(req).await.ok()?;
        let ok = rsp.status().is_success();
        // Read the body so an HTTP/1.1 connection goes back to its pool.
        rsp.into_body().collect().await.ok()?;
        Some(ok)
    };
    matches!(tokio::time::timeout(timeout, check).await, Ok(Some(true)))
}
