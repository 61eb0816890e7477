//! Per-request load balancing for hyper 1.x over HTTP/1.1 and HTTP/2.
//!
//! lb's HTTP/2 (and HTTP/1.1) core, free of tonic, so any gRPC face can stand on it:
//!
//! - [`HttpConnector`] implements [`lb_core::pool::Connect`]: it is how lb's pool opens connections
//!   to endpoints (TCP with `TCP_NODELAY`, optional rustls TLS, hyper's handshake; extra HTTP/2
//!   connections under stream pressure, a small HTTP/1.1 pool). Each [`HttpConnection`] is the
//!   per-endpoint `tower::Service` lb-core's engine ([`lb_core::Balance`]) sends through, and hands
//!   back requests that never reached the backend so the engine sends them elsewhere.
//! - [`TrackBody`] ends each request with its response body ([`TrackedBody`]), taking the outcome
//!   from the status or the gRPC trailers ([`Classify`]).
//! - [`LbClient`] is that engine over a target URI (P2C PeakEWMA by default); [`Options`] is the
//!   one options type it and `lb_tonic::LbChannel` are built from.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use http_body_util::{BodyExt, Empty};
//! use bytes::Bytes;
//!
//! let client = lb_hyper::LbClient::builder()
//!     .endpoint_wait_timeout(std::time::Duration::from_secs(1))
//!     .build_from_target::<Empty<Bytes>>("static:///127.0.0.1:8080,127.0.0.1:8081")?;
//! let req = http::Request::get("http://orders.internal/health").body(Empty::new())?;
//! let rsp = client.request(req).await?;
//! let body = rsp.into_body().collect().await?.to_bytes();
//! # let _ = body; Ok(()) }
//! ```

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod body;
pub mod classify;
mod client;
pub mod connect;
mod error;
pub mod health;
mod options;
pub mod retry;

pub use self::body::{TrackBody, TrackedBody};
pub use self::classify::Classify;
pub use self::client::{Builder, EndpointStatus, LbClient, ResponseBody, ResponseFuture};
pub use self::connect::{HttpConnection, HttpConnector, Protocol, Replay};
pub use self::error::Error;
pub use self::options::{IdleTimeout, KeepAlive, Options};
pub use self::retry::{HedgeDelay, HedgePolicy, Hedgeable, RetryOn, RetryPolicy};
pub use lb_core::retry::RetryBudget;

/// What [`__builder_options!`] expands to needs, reachable from other crates.
#[doc(hidden)]
pub mod __private {
    pub use lb_core;
    pub use rustls;
}
