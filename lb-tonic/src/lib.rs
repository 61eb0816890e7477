//! `LbChannel`: a drop-in tonic channel that balances every gRPC call over a target's endpoints.
//!
//! gRPC runs on HTTP/2, which multiplexes all of a client's calls over one long-lived connection, so
//! a connection balancer (kube-proxy, an L4 load balancer) pins each client to one backend forever.
//! `LbChannel` picks a backend *per call* instead, over one (or, under stream pressure, a few)
//! HTTP/2 connections per backend:
//!
//! - discovery from a target URI (`static:///`, and `etcd://`, `consul://`, `kubernetes:///` with
//!   the cargo features of those names) or any stream of `lb_core::Update`s;
//! - lb's one request engine ([`lb_core::Balance`] over [`lb_hyper`]'s connections): picks from the
//!   pool's lock-free snapshot on the caller's task — no `Buffer` worker that every call must pass
//!   through (tonic's `balance_channel` has one, which caps throughput, tonic #607);
//! - P2C PeakEWMA by default, with the load of a call counted until the *end of its response
//!   stream*, so long server streams count as load for as long as they run;
//! - no endpoint → `UNAVAILABLE` naming the target after the endpoint wait, never a hang; at once,
//!   with the connection error, while every endpoint refuses connections (unless
//!   `wait_for_ready`);
//! - the builder's `request_timeout` → `DEADLINE_EXCEEDED` (a `tower::timeout` stacked around the
//!   channel reaches a generated client as `UNKNOWN`: its error is not a gRPC status);
//! - calls that never reached a backend are re-sent elsewhere; calls that did are re-sent only under
//!   a [`RetryPolicy`], to a backend the call has not tried, within the channel's
//!   [`RetryBudget`] (default: a fifth of the recent calls plus 10 per second) and the server's
//!   `grpc-retry-pushback-ms`;
//! - hedging ([`HedgePolicy`]: another attempt to another backend after a fixed delay or the
//!   target's recent latency percentile, the first answer wins, the others are cancelled) for calls
//!   marked [`Hedgeable`];
//! - circuit breaking (`max_in_flight`, `max_in_flight_per_endpoint`, `max_waiting`): overflow fails
//!   at once with `RESOURCE_EXHAUSTED`;
//! - optional `grpc.health.v1` health checking ([`GrpcHealthCheck`]) and passive outlier detection;
//! - gRFC A66's client metrics (`grpc.client.attempt.started`, `…attempt.duration`,
//!   `…call.duration`, labelled `grpc.target` and `grpc.status`) and per-endpoint gauges, through
//!   the `metrics` facade to whatever recorder the application installs before building the
//!   channel ([`lb_core::metrics`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use lb_tonic::LbChannel;
//!
//! let channel = LbChannel::builder()
//!     .endpoint_wait_timeout(Duration::from_secs(1))
//!     .health_check(true)
//!     .build_from_target("static:///127.0.0.1:50051,127.0.0.1:50052")?;
//! // Use it wherever a tonic Channel goes: `GreeterClient::new(channel.clone())`.
//! let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
//! let _ = health.check(tonic_health::pb::HealthCheckRequest::default()).await?;
//! # Ok(()) }
//! ```
//!
//! Every way a generated client is built takes it — with an interceptor, or behind tower layers:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tonic_health::pb::health_client::HealthClient;
//!
//! let channel = lb_tonic::LbChannel::from_target("static:///127.0.0.1:50051,127.0.0.1:50052")?;
//! let mut with_token = HealthClient::with_interceptor(channel.clone(), |mut req: tonic::Request<()>| {
//!     req.metadata_mut().insert("authorization", tonic::metadata::MetadataValue::from_static("Bearer t"));
//!     Ok(req)
//! });
//! let limited = tower::ServiceBuilder::new().concurrency_limit(64).service(channel);
//! let mut bounded = HealthClient::new(limited);
//! let probe = tonic_health::pb::HealthCheckRequest::default();
//! with_token.check(probe.clone()).await?;
//! bounded.check(probe).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
#![forbid(unsafe_code)]

mod body;
mod channel;
mod error;
pub mod health;
pub mod retry;

pub use self::body::ResponseBody;
pub use self::channel::{Builder, LbChannel, ResponseFuture};
pub use self::error::Error;
pub use self::health::GrpcHealthCheck;
pub use self::retry::{grpc_codes, RetryPolicy};
pub use lb_hyper::{Classify, EndpointStatus, HedgeDelay, HedgePolicy, Hedgeable, Options, RetryBudget, RetryOn};

// What a user of the channel needs, so that `lb-tonic` alone is enough to depend on.
pub use lb_core::load::EwmaConfig;
pub use lb_core::pool::{EndpointPhase, OutlierConfig};
pub use lb_core::{policy, Locality};
