//! The request path shared by [`LbClient`](crate::LbClient) and `lb_tonic::LbChannel`.
//!
//! Per request: pick an endpoint from the pool's current snapshot (lock-free; no worker task or
//! `Buffer` between caller and connection, unlike tower's balancer behind tonic's
//! `balance_channel`), rewrite the URI to it, send, and wrap the response body so the pick's
//! [`LoadGuard`](lb_core::LoadGuard) lives until the body ends.
//!
//! The request goes out addressed to the authority the caller gave — a fixed one set with
//! [`Balancer::with_authority`], else the one in the request's URI, else (HTTP/2) its `Host`
//! header — and only without any to the chosen endpoint's `ip:port`, the way a client addresses a
//! virtual host and not a socket.
//! Over HTTP/2 that authority is the `:authority`; over HTTP/1.1 it is `Host` (a `Host` header the
//! caller set is kept) and the request-target is in origin-form (`/path?query`): a server that
//! receives absolute-form must ignore `Host` (RFC 9112 §3.2.2).
//!
//! A request that never reached a backend — the connection was closed, refused, or the endpoint
//! vanished between the pick and the send — comes back from hyper's `try_send_request` unsent and is
//! sent to another endpoint, up to `max_reroutes` times; a request that may have reached a backend
//! is never re-sent here (that takes a user-configured retry policy, see `lb-tonic`). When no endpoint
//! is usable the request waits for the next pool snapshot, at most the failfast time, then fails
//! as unavailable.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use lb_core::pool::{EndpointPhase, Picked, Pool};
use lb_core::{BoxError, Endpoint, EndpointId, Outcome, PickContext};
use tokio::time::Instant;

use crate::body::TrackedBody;
use crate::classify::Classify;
use crate::connect::{HttpConnection, Protocol};
use crate::Error;

/// How many times a pick that returned an excluded or closed endpoint is repeated before waiting
/// for a new snapshot.
const PICK_ATTEMPTS: usize = 4;

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
    /// The PeakEWMA latency estimate.
    pub rtt: Duration,
    /// Open transport connections.
    pub connections: usize,
}

struct Inner<B> {
    pool: Pool<HttpConnection<B>>,
    failfast: Duration,
    max_reroutes: u8,
    classify: Classify,
    protocol: Protocol,
    scheme: Scheme,
    authority: Option<Authority>,
}

/// Picks an endpoint per request and sends over its connection; see the [module docs](self).
pub struct Balancer<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for Balancer<B> {
    fn clone(&self) -> Self {
        Balancer {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B> std::fmt::Debug for Balancer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("pool", &self.inner.pool)
            .field("failfast", &self.inner.failfast)
            .field("classify", &self.inner.classify)
            .finish()
    }
}

impl<B> Balancer<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Balances over `pool`. `tls` selects the `https` scheme in rewritten URIs.
    pub fn new(pool: Pool<HttpConnection<B>>, protocol: Protocol, tls: bool, classify: Classify, failfast: Duration) -> Self {
        Balancer {
            inner: Arc::new(Inner {
                pool,
                failfast,
                max_reroutes: 3,
                classify,
                protocol,
                scheme: if tls { Scheme::HTTPS } else { Scheme::HTTP },
                authority: None,
            }),
        }
    }

    /// Addresses every request to `authority` (`:authority` over HTTP/2, `Host` over HTTP/1.1
    /// unless the request carries one), whatever its URI says; `None` restores the default: the
    /// URI's authority, else the chosen endpoint's `ip:port`. Servers and proxies that route on
    /// the authority (virtual hosts, sidecars) need the service's name here, not an address.
    pub fn with_authority(self, authority: Option<Authority>) -> Self {
        let i = &*self.inner;
        Balancer {
            inner: Arc::new(Inner {
                pool: i.pool.clone(),
                failfast: i.failfast,
                max_reroutes: i.max_reroutes,
                classify: i.classify.clone(),
                protocol: i.protocol,
                scheme: i.scheme.clone(),
                authority,
            }),
        }
    }

    /// The fixed authority requests are addressed to, if one was set.
    pub fn authority(&self) -> Option<&Authority> {
        self.inner.authority.as_ref()
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<HttpConnection<B>> {
        &self.inner.pool
    }

    /// The failfast time.
    pub fn failfast_time(&self) -> Duration {
        self.inner.failfast
    }

    /// Waits until at least one endpoint can take requests, or `timeout`.
    pub async fn ready(&self, timeout: Duration) -> bool {
        self.inner.pool.ready_timeout(timeout).await
    }

    /// Every endpoint the pool knows, with its phase and load.
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        self.inner
            .pool
            .snapshot()
            .entries()
            .iter()
            .map(|e| EndpointStatus {
                endpoint: Arc::clone(&e.endpoint),
                phase: e.phase,
                healthy: e.healthy,
                in_flight: e.load.in_flight(),
                rtt: e.load.rtt_estimate(),
                connections: e.connection.as_ref().map(|c| c.connections()).unwrap_or(0),
            })
            .collect()
    }

    /// Sends `req` to one endpoint; see the [module docs](self).
    pub async fn send(&self, req: Request<B>, ctx: PickContext) -> Result<Response<TrackedBody<Incoming>>, Error> {
        self.send_inner(req, ctx, None).await
    }

    /// Like [`Balancer::send`], and when the server refused the stream unprocessed (`REFUSED_STREAM`,
    /// or a graceful `GOAWAY` above its last stream id) after hyper had consumed the request,
    /// re-sends a copy from `replay` to another endpoint. HTTP/2 lets a server say it did not process
    /// a stream (RFC 9113 §8.7), so this is as safe as re-sending a request that never left.
    pub async fn send_replayable(
        &self,
        req: Request<B>,
        ctx: PickContext,
        replay: &(dyn Fn() -> Request<B> + Send + Sync),
    ) -> Result<Response<TrackedBody<Incoming>>, Error> {
        self.send_inner(req, ctx, Some(replay)).await
    }

    async fn send_inner(
        &self,
        mut req: Request<B>,
        ctx: PickContext,
        replay: Option<&(dyn Fn() -> Request<B> + Send + Sync)>,
    ) -> Result<Response<TrackedBody<Incoming>>, Error> {
        let inner = &*self.inner;
        let started = Instant::now();
        let deadline = started + inner.failfast;
        // The authority the caller addresses: the configured one, else the URI's, else (HTTP/2) a
        // Host header the caller set, so `:authority` and `Host` never disagree (RFC 9113 §8.3.1);
        // without any, each attempt's endpoint. HTTP/1.1 needs a Host header: the caller's, else
        // that authority.
        let addressed: Option<Authority> = inner.authority.clone().or_else(|| req.uri().authority().cloned()).or_else(|| {
            match inner.protocol {
                Protocol::Http2 => req
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| Authority::try_from(h).ok()),
                Protocol::Http1 => None,
            }
        });
        let mut host_from_endpoint = false;
        if inner.protocol == Protocol::Http1 && !req.headers().contains_key(http::header::HOST) {
            match addressed.as_ref().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
                Some(h) => {
                    req.headers_mut().insert(http::header::HOST, h);
                }
                None => host_from_endpoint = true,
            }
        }
        let mut excluded: Option<EndpointId> = None;
        let mut reroutes = 0u8;
        loop {
            let Some(picked) = self.pick(&ctx, &mut excluded, deadline).await else {
                metrics::counter!(lb_core::metrics::NO_ENDPOINT, "target" => inner.pool.target().to_string()).increment(1);
                return Err(Error::unavailable(
                    Arc::clone(inner.pool.target()),
                    started.elapsed(),
                    inner.pool.is_initialized(),
                ));
            };
            let Picked {
                endpoint,
                connection,
                mut guard,
            } = picked;
            self.rewrite(&mut req, connection.authority(), addressed.as_ref(), host_from_endpoint)?;
            match connection.send(req).await {
                Ok((rsp, slot)) => {
                    let head = inner.classify.head(rsp.status(), rsp.headers());
                    let classify = inner.classify.clone();
                    return Ok(rsp.map(|b| TrackedBody::new(b, guard, slot, classify, head)));
                }
                Err(mut e) => {
                    // A request that never left counts for nothing: the pool learns of the closed
                    // connection from its close signal. Counting it would let one benign close (a
                    // server's max connection age) under many concurrent callers look like a burst
                    // of failures and eject a healthy endpoint.
                    let unprocessed = e.is_unsent() || refused_unprocessed(e.error());
                    guard.set_outcome(if unprocessed { Outcome::Cancelled } else { Outcome::Failure });
                    drop(guard);
                    let unsent = match e.take_request() {
                        Some(r) => Some(r),
                        None => match replay {
                            Some(replay) if refused_unprocessed(e.error()) => {
                                let mut r = replay();
                                if host_from_endpoint {
                                    r.headers_mut().remove(http::header::HOST);
                                }
                                Some(r)
                            }
                            _ => None,
                        },
                    };
                    match unsent {
                        Some(unsent) if reroutes < inner.max_reroutes => {
                            reroutes += 1;
                            tracing::debug!(endpoint = %endpoint.addr(), error = %e.error(), "request not processed; re-sending to another endpoint");
                            excluded = Some(endpoint.id().clone());
                            req = unsent;
                        }
                        Some(_) => return Err(Error::transport(e.into_error(), false)),
                        None => return Err(Error::transport(e.into_error(), true)),
                    }
                }
            }
        }
    }

    async fn pick(
        &self,
        ctx: &PickContext,
        excluded: &mut Option<EndpointId>,
        deadline: Instant,
    ) -> Option<Picked<HttpConnection<B>>> {
        let pool = &self.inner.pool;
        let usable = |p: &Picked<HttpConnection<B>>, excluded: &Option<EndpointId>| {
            Some(p.endpoint.id()) != excluded.as_ref() && !p.connection.is_closed()
        };
        // The common case touches nothing shared but the snapshot pointer.
        if let Some(p) = pool.pick(ctx) {
            if usable(&p, excluded) {
                return Some(p);
            }
        }
        loop {
            // Subscribe before looking again, so a snapshot published in between is not missed.
            let mut rx = pool.subscribe();
            for _ in 0..PICK_ATTEMPTS {
                let Some(p) = pool.pick(ctx) else { break };
                if usable(&p, excluded) {
                    return Some(p);
                }
                // Dropping the guard un-counts the pick without recording an outcome.
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {
                    // A new snapshot reflects the failure that caused the exclusion (or not yet, in
                    // which case the closed-connection check still skips it).
                    *excluded = None;
                }
                _ => return None,
            }
        }
    }

    /// Points `req` at `endpoint`: origin-form over HTTP/1.1 (with `Host` set to the endpoint when
    /// nothing else named the authority), `scheme://authority/path` over HTTP/2.
    fn rewrite(
        &self,
        req: &mut Request<B>,
        endpoint: &Authority,
        addressed: Option<&Authority>,
        host_from_endpoint: bool,
    ) -> Result<(), Error> {
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        match self.inner.protocol {
            Protocol::Http1 => {
                parts.scheme = None;
                parts.authority = None;
            }
            Protocol::Http2 => {
                parts.scheme = Some(self.inner.scheme.clone());
                parts.authority = Some(addressed.unwrap_or(endpoint).clone());
            }
        }
        *req.uri_mut() = Uri::from_parts(parts).map_err(|e| Error::config(format!("cannot build request URI: {e}")))?;
        if host_from_endpoint {
            if let Ok(h) = HeaderValue::from_str(endpoint.as_str()) {
                req.headers_mut().insert(http::header::HOST, h);
            }
        }
        Ok(())
    }
}

/// True when HTTP/2 says the server did not process the stream: a `REFUSED_STREAM` reset, or the
/// error h2 gives streams above the last stream id of a graceful (`NO_ERROR`) `GOAWAY` — a graceful
/// shutdown promises to finish every stream at or below that id, so a stream failing with it was not
/// taken.
pub fn refused_unprocessed(error: &BoxError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&**error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && (h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                    || (h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR)));
        }
        source = e.source();
    }
    false
}
