//! The one options type behind `LbClient` and `lb_tonic::LbChannel`, and the builder setters both
//! share.
//!
//! [`Options`] holds the balancing options ([`lb_core::Options`], which the C ABI's `options_json`
//! maps onto too) and the HTTP ones (TLS, connections per endpoint, authority, affinity header,
//! request timeout). Setters only record; [`Options::validate`], which every `build()` calls,
//! refuses what cannot mean what it says — a TLS server name without TLS, an authority or header
//! name that does not parse, a topology-aware policy given a second locality — so no builder chain
//! carries a `Result` in its middle and no setter silently does nothing.

use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use http::HeaderName;
use lb_core::discover::BoxDiscover;
use lb_core::pool::HealthCheck;
use lb_core::BoxError;

use lb_core::balance::Avoid;
use lb_core::retry::{Budget, RetryBudget};

use crate::body::TrackBody;
use crate::retry::{HedgePolicy, Plan, RetryPolicy};
use crate::client::LbClient;
use crate::connect::{HttpConnection, HttpConnector, Protocol};
use crate::Error;

/// HTTP/2 keep-alive: a PING every `interval`, the connection dropped when one is not answered
/// within `timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepAlive {
    /// How often to PING.
    pub interval: Duration,
    /// How long to wait for the answer.
    pub timeout: Duration,
}

/// When an endpoint's connections beyond its first are closed for idleness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IdleTimeout {
    /// The connector's default ([`HttpConnector::DEFAULT_IDLE_TIMEOUT`], 90 s).
    #[default]
    Default,
    /// Never: kept until the server closes them.
    Never,
    /// After this long without a request.
    After(Duration),
}

/// The one options type behind `LbClient` and `lb_tonic::LbChannel`: the balancing options
/// ([`lb_core::Options`], which the C ABI's `options_json` maps onto too) and the HTTP ones. The
/// builders' setters only record; [`Options::validate`], which every `build()` calls, refuses what
/// cannot mean what it says, so no builder chain carries a `Result` in its middle and no setter
/// silently does nothing.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Options {
    /// Balancing: policy, locality, waiting for an endpoint, connect timeout, outliers, PeakEWMA,
    /// subsetting.
    pub balance: lb_core::Options,
    /// TLS to the endpoints (see the builders' `tls`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The name endpoint certificates must carry (needs `tls`).
    pub tls_server_name: Option<String>,
    /// HTTP/2 streams per connection before another connection is opened.
    pub max_streams_per_connection: Option<usize>,
    /// The most connections per endpoint.
    pub max_connections_per_endpoint: Option<usize>,
    /// HTTP/2 keep-alive PINGs.
    pub http2_keep_alive: Option<KeepAlive>,
    /// When surplus connections are closed for idleness.
    pub connection_idle_timeout: IdleTimeout,
    /// The authority every request is addressed to (parsed at build).
    pub authority: Option<String>,
    /// The request header whose value is the affinity key for hashing policies (parsed at build).
    pub hash_header: Option<String>,
    /// Fails a request whose response headers have not arrived after this long (its retries and
    /// hedges included).
    pub request_timeout: Option<Duration>,
    /// Re-sends calls that reached a backend and got a retryable answer (see [`crate::retry`]).
    pub retry: Option<RetryPolicy>,
    /// Sends more attempts of a call while earlier ones are slow (see [`crate::retry`]).
    pub hedge: Option<HedgePolicy>,
    /// Bounds the retries and hedges of every call of the client together (default: 0.2 of the
    /// recent calls plus 10 per second, over 10 s).
    pub retry_budget: RetryBudget,
}

/// What [`Options::validate`] parsed.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) authority: Option<Authority>,
    pub(crate) hash_header: Option<HeaderName>,
}

impl Options {
    /// Checks every option: a TLS server name without TLS, an authority or header name that does
    /// not parse, and what [`lb_core::Options::validate`] refuses are errors.
    pub fn validate(&self) -> Result<(), Error> {
        self.parse().map(|_| ())
    }

    pub(crate) fn parse(&self) -> Result<Parsed, Error> {
        self.balance.validate().map_err(|e| Error::config(e.to_string()))?;
        self.retry_budget.validate().map_err(Error::config)?;
        if let Some(h) = &self.hedge {
            h.validate().map_err(Error::config)?;
        }
        if self.tls_server_name.is_some() && self.tls.is_none() {
            return Err(Error::config(
                "a TLS server name was given without TLS: set tls() too, or drop tls_server_name()",
            ));
        }
        let authority = match &self.authority {
            Some(a) => Some(
                Authority::try_from(a.as_str()).map_err(|e| Error::config(format!("invalid authority `{a}`: {e}")))?,
            ),
            None => None,
        };
        let hash_header = match &self.hash_header {
            Some(h) => Some(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|e| Error::config(format!("invalid hash header name `{h}`: {e}")))?,
            ),
            None => None,
        };
        Ok(Parsed { authority, hash_header })
    }

    /// The connector these options describe, for `protocol`.
    pub fn connector<B>(&self, protocol: Protocol) -> Result<HttpConnector<B>, Error> {
        let parsed = self.parse()?;
        self.connector_with(protocol, parsed.authority)
    }

    fn connector_with<B>(&self, protocol: Protocol, authority: Option<Authority>) -> Result<HttpConnector<B>, Error> {
        let mut c = HttpConnector::<B>::new(protocol).authority(authority);
        if let Some(tls) = &self.tls {
            c = c.tls(Arc::clone(tls));
        }
        if let Some(name) = &self.tls_server_name {
            c = c.tls_server_name(name)?;
        }
        if let Some(n) = self.max_streams_per_connection {
            c = c.max_streams_per_connection(n);
        }
        if let Some(n) = self.max_connections_per_endpoint {
            c = c.max_connections(n);
        }
        if let Some(k) = self.http2_keep_alive {
            c = c.http2_keep_alive(k.interval, k.timeout);
        }
        match self.connection_idle_timeout {
            IdleTimeout::Default => {}
            IdleTimeout::Never => c = c.idle_timeout(None),
            IdleTimeout::After(t) => c = c.idle_timeout(Some(t)),
        }
        Ok(c)
    }

    /// Validates the options and builds a client over `discover` (the target called `name`):
    /// spawns the pool on the current Tokio runtime (an error outside one), with `health` checking
    /// endpoints when given, and the engine that sends over it, ending each request as `track` says.
    pub fn build_client<B>(
        self,
        name: &str,
        discover: BoxDiscover,
        protocol: Protocol,
        track: TrackBody,
        health: Option<Arc<dyn HealthCheck<HttpConnection<B>>>>,
    ) -> Result<LbClient<B>, Error>
    where
        B: http_body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let parsed = self.parse()?;
        let connector = self.connector_with::<B>(protocol, parsed.authority)?;
        let pool = self
            .balance
            .spawn_pool(name, discover, connector, health)
            .map_err(|e| Error::config(e.to_string()))?;
        let grpc = track.is_grpc();
        let mut engine = self.balance.balance(pool).track(track);
        if let Some(h) = parsed.hash_header {
            engine = engine.with_key(move |req: &http::Request<B>| {
                req.headers().get(&h).map(|v| lb_core::policy::hash_key(v.as_bytes()))
            });
        }
        if self.retry.is_some() || self.hedge.is_some() {
            // The engine keeps each call's attempted endpoints out of its next attempt's pick.
            engine = engine.with_avoid(|req: &http::Request<B>| req.extensions().get::<Avoid>().cloned());
        }
        let budget = Budget::new(self.retry_budget, name).map_err(Error::config)?;
        let plan = Plan::new(self.retry, self.hedge, budget, grpc);
        Ok(LbClient::new(engine, self.request_timeout, plan))
    }
}

/// The setters `LbClient`'s and `LbChannel`'s builders share, written once: each builder is a
/// struct with an `options: lb_hyper::Options` field and invokes this inside its `impl`.
#[doc(hidden)]
#[macro_export]
macro_rules! __builder_options {
    () => {
        /// The balancing policy (default `P2c::peak_ewma()`): any `lb_core::policy` or your own
        /// `lb_core::Policy`.
        pub fn policy(mut self, policy: impl $crate::__private::lb_core::Policy) -> Self {
            self.options.balance = self.options.balance.policy(policy);
            self
        }

        /// The caller's locality: the policy is wrapped in `lb_core::policy::Topology`, which
        /// prefers endpoints on the same node, then zone, then region, spilling over as Envoy
        /// does. `build()` refuses it together with a policy that is already topology-aware (give
        /// the locality to that `Topology` instead).
        pub fn locality(mut self, locality: $crate::__private::lb_core::Locality) -> Self {
            self.options.balance = self.options.balance.locality(locality);
            self
        }

        /// The longest a request waits for an endpoint that can take it before failing as
        /// unavailable (default 3 s; gRPC `UNAVAILABLE`, HTTP 503). While every endpoint's last
        /// connection attempt has failed, requests fail at once with that error instead (see
        /// `wait_for_ready`).
        pub fn endpoint_wait_timeout(mut self, timeout: ::std::time::Duration) -> Self {
            self.options.balance = self.options.balance.endpoint_wait_timeout(timeout);
            self
        }

        /// Renamed `endpoint_wait_timeout`.
        #[deprecated(note = "renamed `endpoint_wait_timeout`: it is the longest wait for an endpoint")]
        pub fn failfast(self, timeout: ::std::time::Duration) -> Self {
            self.endpoint_wait_timeout(timeout)
        }

        /// Requests wait out `endpoint_wait_timeout` even while every endpoint is failing to
        /// connect (gRPC's wait-for-ready; default off: they fail at once, naming the last
        /// connection error).
        pub fn wait_for_ready(mut self, on: bool) -> Self {
            self.options.balance = self.options.balance.wait_for_ready(on);
            self
        }

        /// Gives up on a connection attempt after this long (default 5 s).
        pub fn connect_timeout(mut self, timeout: ::std::time::Duration) -> Self {
            self.options.balance = self.options.balance.connect_timeout(timeout);
            self
        }

        /// Fails a request whose response headers have not arrived after this long (default
        /// none); through `LbChannel` that is `DEADLINE_EXCEEDED`.
        pub fn request_timeout(mut self, timeout: ::std::time::Duration) -> Self {
            self.options.request_timeout = Some(timeout);
            self
        }

        /// Hedges calls (see `lb_hyper::retry`): while an attempt is slow, another goes to an
        /// endpoint the call has not tried; the first answer wins and the others are cancelled.
        /// Only calls marked `lb_hyper::Hedgeable` unless the policy hedges every call.
        pub fn hedge(mut self, policy: $crate::HedgePolicy) -> Self {
            self.options.hedge = Some(policy);
            self
        }

        /// What bounds the retries and hedges of all calls together (default
        /// `RetryBudget::ratio(0.2)`: 0.2 of the recent calls plus 10 per second, over 10 s;
        /// `RetryBudget::throttle` is gRPC's retry throttling). A spent budget sends nothing more:
        /// the call ends with the answer it has.
        pub fn retry_budget(mut self, budget: $crate::RetryBudget) -> Self {
            self.options.retry_budget = budget;
            self
        }

        /// Connects with TLS (ALPN `h2` or `http/1.1` is set when the configuration lists none).
        /// Certificates are checked against the endpoint's IP address unless `tls_server_name`.
        pub fn tls(mut self, config: $crate::__private::rustls::ClientConfig) -> Self {
            self.options.tls = Some(::std::sync::Arc::new(config));
            self
        }

        /// The name every endpoint's certificate must carry (e.g. the service's DNS name); needs
        /// `tls` (`build()` refuses it without).
        pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
            self.options.tls_server_name = Some(name.into());
            self
        }

        /// Passive outlier detection (default on with `OutlierConfig::default()`); `None`
        /// disables it.
        pub fn outlier_detection(mut self, config: Option<$crate::__private::lb_core::pool::OutlierConfig>) -> Self {
            self.options.balance = self.options.balance.outlier_detection(config);
            self
        }

        /// HTTP/2: streams per connection before another connection to the same endpoint is
        /// opened (default 100; see `lb_hyper::HttpConnector::max_streams_per_connection`).
        pub fn max_streams_per_connection(mut self, n: usize) -> Self {
            self.options.max_streams_per_connection = Some(n);
            self
        }

        /// The most connections per endpoint (default 4 for HTTP/2, 16 for HTTP/1.1).
        pub fn max_connections_per_endpoint(mut self, n: usize) -> Self {
            self.options.max_connections_per_endpoint = Some(n);
            self
        }

        /// Closes an endpoint's connections beyond its first once idle this long (default 90 s);
        /// `None` keeps them until the server closes them.
        pub fn connection_idle_timeout(mut self, timeout: Option<::std::time::Duration>) -> Self {
            self.options.connection_idle_timeout = match timeout {
                Some(t) => $crate::IdleTimeout::After(t),
                None => $crate::IdleTimeout::Never,
            };
            self
        }

        /// HTTP/2: a PING every `interval`, and a connection whose PING is not answered within
        /// `timeout` is dropped, so a backend that vanished without closing (a dead host) is
        /// noticed without waiting for TCP. Off by default.
        pub fn http2_keep_alive(mut self, interval: ::std::time::Duration, timeout: ::std::time::Duration) -> Self {
            self.options.http2_keep_alive = Some($crate::KeepAlive { interval, timeout });
            self
        }

        /// The PeakEWMA latency estimate's tuning (default τ 10 s, 30 ms before the first answer);
        /// see `lb_core::Options::peak_ewma_config`.
        pub fn peak_ewma_config(mut self, config: $crate::__private::lb_core::load::EwmaConfig) -> Self {
            self.options.balance = self.options.balance.peak_ewma_config(config);
            self
        }

        /// Deterministic subsetting for large fleets: connect to only `size` endpoints, chosen for
        /// this client's stable `client_id` (its pod name); see `lb_core::Options::subset`.
        pub fn subset(mut self, size: usize, client_id: impl Into<String>) -> Self {
            self.options.balance = self.options.balance.subset(size, client_id);
            self
        }

        /// The longest an endpoint sits out after answering that it is overloaded (gRPC
        /// `RESOURCE_EXHAUSTED`, HTTP 429/503 with `Retry-After`): default 30 s; `None` ignores such
        /// answers. See `lb_core::Options::overload_penalty_cap`.
        pub fn overload_penalty_cap(mut self, cap: Option<::std::time::Duration>) -> Self {
            self.options.balance = self.options.balance.overload_penalty_cap(cap);
            self
        }

        /// Circuit breaking: at most `n` requests of the target in flight at once (to the end of
        /// their responses); more fail at once — `RESOURCE_EXHAUSTED` from `LbChannel`,
        /// `Error::is_overloaded` from `LbClient`. Default unbounded.
        pub fn max_in_flight(mut self, n: usize) -> Self {
            self.options.balance = self.options.balance.max_in_flight(n);
            self
        }

        /// Circuit breaking: an endpoint with `n` requests in flight is not picked; when every
        /// endpoint tried is at that bound the request fails at once. Default unbounded.
        pub fn max_in_flight_per_endpoint(mut self, n: u32) -> Self {
            self.options.balance = self.options.balance.max_in_flight_per_endpoint(n);
            self
        }

        /// Circuit breaking: at most `n` requests wait for an endpoint at once; more fail at once.
        /// Default unbounded.
        pub fn max_waiting(mut self, n: usize) -> Self {
            self.options.balance = self.options.balance.max_waiting(n);
            self
        }

        /// How many times a request that never reached its endpoint is sent to another
        /// (default 3).
        pub fn max_reroutes(mut self, n: u8) -> Self {
            self.options.balance = self.options.balance.max_reroutes(n);
            self
        }

        /// The authority every request is addressed to (`:authority` over HTTP/2, `Host` over
        /// HTTP/1.1 unless the request sets one), e.g. `orders.internal:8080`; servers and proxies
        /// that route on it (virtual hosts, sidecars) need the service's name there. Checked at
        /// `build()`.
        pub fn authority(mut self, authority: impl Into<String>) -> Self {
            self.options.authority = Some(authority.into());
            self
        }

        /// For hashing policies (`RingHash`, `Maglev`): the request header whose value is the
        /// affinity key (e.g. `x-user-id`); requests without it get no key. Checked at `build()`.
        pub fn hash_header(mut self, name: impl Into<String>) -> Self {
            self.options.hash_header = Some(name.into());
            self
        }

        /// Labels the per-attempt metrics (`grpc.client.attempt.*`) with the endpoint's address
        /// (`lb.endpoint`); default off, since it multiplies their series by the number of
        /// endpoints. See `lb_core::metrics`.
        pub fn metrics_endpoint_labels(mut self, on: bool) -> Self {
            self.options.balance = self.options.balance.metrics_endpoint_labels(on);
            self
        }

        /// Replaces every option at once.
        pub fn options(mut self, options: $crate::Options) -> Self {
            self.options = options;
            self
        }

        /// The options recorded so far.
        pub fn get_options(&self) -> &$crate::Options {
            &self.options
        }
    };
}
